"""The application disk stage end to end: reproducibility, verity checks, cache, bad input, SIGKILL."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import yaml

from pipeline.files import tree_digests
from pipeline.measure import gpt
from pipeline.run import run
from tests.conftest import mb, need, new_project

pytestmark = pytest.mark.usefixtures("tools")


@pytest.fixture(scope="module")
def tools():
    need("mksquashfs", "systemd-repart", "veritysetup")


def build(project: Path, cache: Path, *extra) -> subprocess.CompletedProcess:
    return mb("appdisk", "--project", project, "--cache-dir", cache, *extra)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    project = new_project(tmp_path_factory.mktemp("appdisk") / "p")
    res = build(project, project / "cache")
    assert res.returncode == 0, res.stderr
    return project


def test_two_clean_builds_are_byte_identical(built, tmp_path):
    other = new_project(tmp_path / "q")
    res = build(other, tmp_path / "other-cache")
    assert res.returncode == 0, res.stderr
    for name in ("application_disk.raw", "appdisk.json"):
        assert (built / "out/demo" / name).read_bytes() == (other / "out/demo" / name).read_bytes(), name
    record = json.loads((built / "out/demo/appdisk.json").read_text())
    text = json.dumps(record)
    assert str(built) not in text and not re.search(rf"\b{re.escape(os.uname().nodename)}\b", text)
    paths = [f["path"] for f in record["files"]]
    # no k3s: the images are unpacked roots, started by run.d
    assert {"rootfs/app/bin/busybox", "rootfs/caddy/usr/bin/caddy", "rootfs/attestation-server/usr/bin/python3.11",
            "caddy/Caddyfile", "setup.d/main", "run.d/main"} <= set(paths)
    assert "manifests/networkpolicies/default-deny.yaml" in paths


def _partition(disk: Path, label: str) -> gpt.Partition:
    return gpt.read_table(disk).by_label(label, str(disk))


def _extract(disk: Path, label: str, dest: Path) -> Path:
    p = _partition(disk, label)
    with open(disk, "rb") as f:
        f.seek(p.offset)
        dest.write_bytes(f.read(p.size))
    return dest


def _flip(disk: Path, offset: int) -> None:
    with open(disk, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


def test_verify_disk_agrees_with_veritysetup_and_catches_flips(built, tmp_path):
    disk = built / "out/demo/application_disk.raw"
    root = json.loads((built / "out/demo/appdisk.json").read_text())["roothash"]
    data, hashp = _extract(disk, "app", tmp_path / "d"), _extract(disk, "app-verity", tmp_path / "h")
    run(["veritysetup", "verify", data, hashp, root])  # raises when veritysetup disagrees
    res = mb("verify-disk", disk, "--roothash", root, "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["ok"], res.stdout + res.stderr

    for label, offset, area in (("app", 4096 * 7 + 11, "data block 7"), ("app-verity", 4096 + 40, "hash block")):
        copy = tmp_path / f"flip-{label}.raw"
        shutil.copyfile(disk, copy)
        _flip(copy, _partition(copy, label).offset + offset)
        res = mb("verify-disk", copy, "--roothash", root)
        assert res.returncode == 1, res.stdout + res.stderr
        assert f"first bad {area}" in res.stdout
        part = _extract(copy, label, tmp_path / "part")
        args = [part, hashp] if label == "app" else [data, part]
        assert run(["veritysetup", "verify", *args, root], ok=range(256)).returncode != 0


def test_noop_rebuild_is_a_cache_hit(built):
    res = build(built, built / "cache")
    assert res.returncode == 0, res.stderr
    assert "appdisk: cached" in res.stderr and "Building" not in res.stderr


def test_networkpolicy_change_rebuilds_the_stage_and_explain_names_it(built, tmp_path):
    project = tmp_path / "p"
    shutil.copytree(built, project, ignore=shutil.ignore_patterns("cache", "out"))
    policy = project / "appdisk/networkpolicies/default-deny.yaml.j2"
    policy.write_text(policy.read_text().replace("policyTypes: [Ingress, Egress]", "policyTypes: [Egress, Ingress]"))
    res = mb("plan", "--project", project, "--cache-dir", built / "cache", "--json", "appdisk")
    row = json.loads(res.stdout)["stages"][0]
    assert not row["cached"] and "data.appdisk/networkpolicies/default-deny.yaml.j2: changed" in row["reason"]
    cache = tmp_path / "cache"
    shutil.copytree(built / "cache", cache)
    res = build(project, cache, "--explain")
    assert res.returncode == 0, res.stderr
    assert "appdisk/networkpolicies/default-deny.yaml.j2: changed" in res.stderr
    assert "Building appdisk" in res.stderr
    assert (project / "out/demo/application_disk.raw").read_bytes() != \
        (built / "out/demo/application_disk.raw").read_bytes()


def test_sigkill_mid_stage_leaves_nothing_trusted(built, tmp_path):
    project = new_project(tmp_path / "p")
    # A larger tree makes the stage last long enough to be killed in the middle.
    (project / "appdisk/www/big.bin").write_bytes(os.urandom(48 << 20))
    cache = tmp_path / "cache"
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "appdisk", "--project", str(project),
                             "--cache-dir", str(cache)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not list((cache / "tmp").glob("appdisk-*")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.005)
    assert proc.poll() is None, "the build finished before it could be killed"
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (project / "out/demo/application_disk.raw").exists()
    assert not list((cache / "stages").glob("appdisk/*/_record.json"))
    res = build(project, cache)
    assert res.returncode == 0, res.stderr
    assert "Building appdisk" in res.stderr
    clean = new_project(tmp_path / "clean")
    shutil.copyfile(project / "appdisk/www/big.bin", clean / "appdisk/www/big.bin")
    assert build(clean, tmp_path / "clean-cache").returncode == 0
    assert (project / "out/demo/application_disk.raw").read_bytes() == \
        (clean / "out/demo/application_disk.raw").read_bytes()


# ---------------------------------------------------------------------------------------------
# Bad input: one clear line naming the file/field, exit 2, no output folder, cache intact.

def _yaml_edit(rel: str, fn):
    def edit(p: Path):
        doc = yaml.safe_load((p / rel).read_text())
        fn(doc)
        (p / rel).write_text(yaml.safe_dump(doc))
    return edit


def _tar_image(members) -> callable:
    """Pin a hand-made image archive in the lock and put it on the disk via appdisk.extra_images."""
    def edit(p: Path):
        (p / "images").mkdir()
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tf:
            for info, data in members():
                tf.addfile(info, io.BytesIO(data) if data else None)
        (p / "images/mine.tar").write_bytes(buf.getvalue())
        import hashlib
        digest = hashlib.sha256(buf.getvalue()).hexdigest()
        _yaml_edit("mithril.lock", lambda d: d.setdefault("images", {}).update(
            {"mine": {"ref": "localhost/mine:1", "archive": {"path": "images/mine.tar", "sha256": digest}}}))(p)
        _yaml_edit("mithril.yaml", lambda d: d["appdisk"].update({"extra_images": ["mine"]}))(p)
    return edit


def _member(name, kind=tarfile.REGTYPE, link="", data=b"x"):
    def make():
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, link
        info.size = len(data) if kind == tarfile.REGTYPE else 0
        return [(info, data if kind == tarfile.REGTYPE else None)]
    return make


def _write(rel, text):
    def edit(p: Path):
        (p / rel).write_text(text)
    return edit


def _remove(rel):
    return lambda p: (p / rel).unlink()


def _symlink(rel, target):
    return lambda p: (p / rel).symlink_to(target)


BAD = {
    "unknown key": (_yaml_edit("mithril.yaml", lambda d: d.update(colour="red")), (), "mithril.yaml: colour: unknown key"),
    "wrong type": (_yaml_edit("mithril.yaml", lambda d: d["appdisk"].update(ingress_port="https")), (),
                   "appdisk.ingress_port"),
    "unknown profile": (lambda p: None, ("--profile", "staging"), "unknown profile 'staging'"),
    "unknown model": (lambda p: None, ("--model", "gpt-9"), "--model 'gpt-9' is not defined"),
    "yaml syntax": (_write("mithril.yaml", "profiles: [\n"), (), "mithril.yaml: not valid YAML"),
    "lock unknown key": (_yaml_edit("mithril.lock", lambda d: d.update(extra=1)), (), "mithril.lock: extra: unknown key"),
    "lock bad digest format": (_yaml_edit("mithril.lock", lambda d: d["files"]["busybox-static"].update(sha256="abc")),
                               (), "files.busybox-static.sha256"),
    "lock digest mismatch": (_yaml_edit("mithril.lock", lambda d: d["files"]["busybox-static"].update(sha256="0" * 64)),
                             (), "files.busybox-static.sha256: expected 000"),
    "unpinned file": (_yaml_edit("mithril.lock", lambda d: d["files"]["busybox-static"].pop("sha256")), (),
                      "files.busybox-static.sha256: not pinned"),
    "unpinned image under --locked": (
        lambda p: (_yaml_edit("mithril.lock", lambda d: d.setdefault("images", {}).update(
            {"mine": {"ref": "localhost/mine:1"}}))(p),
                   _yaml_edit("mithril.yaml", lambda d: d["appdisk"].update({"extra_images": ["mine"]}))(p)),
        ("--locked",), "images.mine.digest: localhost/mine:1 is not resolved"),
    "archive that is no image": (_tar_image(_member("ok")), (), "neither index.json (OCI) nor manifest.json"),
    "missing setup.d/main": (_remove("appdisk/setup.d/main"), (), "appdisk/setup.d/main: missing"),
    "template syntax error": (_write("appdisk/networkpolicies/default-deny.yaml.j2", "{% if %}\n"), (),
                              "appdisk/networkpolicies/default-deny.yaml.j2: template syntax error at line 1"),
    "template undefined value": (_write("appdisk/manifests/extra.yaml.j2", "name: {{ nonesuch }}\n"), (),
                                 "appdisk/manifests/extra.yaml.j2: template uses an undefined value"),
    "symlink escaping the tree": (_symlink("appdisk/www/passwd", "/etc/passwd"), (),
                                  "appdisk/www/passwd: symlink escapes appdisk/"),
    "tar with ..": (_tar_image(_member("../../etc/cron.d/evil")), (), "escapes the archive root"),
    "tar with absolute path": (_tar_image(_member("/etc/shadow")), (), "has an absolute path"),
    "tar with device file": (_tar_image(_member("dev/sda", tarfile.BLKTYPE)), (), "is a device file"),
    "tar symlink escaping": (_tar_image(_member("lib/x", tarfile.SYMTYPE, "/etc/shadow")), (), "symlink escaping"),
    "archive path outside project": (
        _yaml_edit("mithril.lock", lambda d: d.setdefault("images", {}).update(
            {"mine": {"ref": "x:1", "archive": {"path": "../../etc/hostname", "sha256": "0" * 64}}})), (),
        "images.mine.archive.path: '../../etc/hostname' points outside the project"),
    "missing mithril.yaml": (_remove("mithril.yaml"), (), "mithril.yaml: not found"),
}


def _cache_state(cache: Path) -> dict:
    return tree_digests(cache, "stages", "inputs")


@pytest.fixture(scope="module")
def warm_cache(built) -> Path:
    return built / "cache"


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input(case, warm_cache, tmp_path):
    edit, args, expected = BAD[case]
    project = new_project(tmp_path / "p")
    edit(project)
    if case == "archive path outside project":
        _yaml_edit("mithril.yaml", lambda d: d["appdisk"].update({"extra_images": ["mine"]}))(project)
    before = _cache_state(warm_cache)
    res = build(project, warm_cache, *args)
    assert res.returncode == 2, (res.returncode, res.stderr)
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("mithril-build: error:")]
    assert len(lines) == 1 and expected in lines[0], res.stderr
    assert "Traceback" not in res.stderr
    assert not (project / "out").exists()
    assert _cache_state(warm_cache) == before


def test_plan_status_clean_and_lock_check(tmp_path):
    project = new_project(tmp_path / "p")
    cache = tmp_path / "cache"
    rows = json.loads(mb("plan", "--project", project, "--cache-dir", cache, "--json", "appdisk").stdout)["stages"]
    assert rows[0]["stage"] == "appdisk" and rows[0]["reason"] == "never built for this profile"
    assert build(project, cache).returncode == 0
    status = json.loads(mb("status", "--project", project, "--cache-dir", cache, "--json").stdout)
    assert {s["stage"]: s["state"] for s in status["stages"]}["appdisk"] == "cached"
    check = mb("lock", "--check", "--project", project, "--cache-dir", cache, "--json")
    report = json.loads(check.stdout)
    assert {"entry": "files.busybox-static", "state": "pinned"} in report["entries"]
    assert check.returncode == (1 if report["unpinned"] else 0)
    res = mb("clean", "--project", project, "--cache-dir", cache)
    assert res.returncode == 0 and "removed" in res.stdout
    assert not list(cache.glob("stages/appdisk/*/_record.json"))
    assert (cache / "inputs").exists()  # pinned downloads survive a plain clean


def test_image_roots_get_debians_gosu(demo_build: Path, tmp_path):
    """Every image root the no-k3s runtime drops to a user from holds gosu exactly as Debian ships
    it (docs/sandbox.md): the bytes dpkg-deb extracts from the .deb pinned in mithril.lock."""
    import hashlib

    from pipeline.files import sha256_file
    from pipeline.inputs import download

    pin = yaml.safe_load((demo_build.parent.parent / "mithril.lock").read_text())["files"]["gosu"]
    deb = tmp_path / "gosu.deb"
    download(pin["url"], deb, "gosu")
    assert sha256_file(deb) == pin["sha256"]
    extracted = subprocess.run(f"dpkg-deb --fsys-tarfile {deb} | tar -xO ./usr/sbin/gosu", shell=True,
                               capture_output=True, check=True).stdout
    files = {f["path"]: f for f in json.loads((demo_build / "appdisk.json").read_text())["files"]}
    gosu = files["rootfs/app/.mithril/gosu"]
    assert gosu["mode"] == "0755" and gosu["sha256"] == hashlib.sha256(extracted).hexdigest()
    assert not any(p.startswith(("rootfs/caddy/.mithril", "rootfs/attestation-server/.mithril")) for p in files)
