"""Provenance: statement validity, subjects, determinism, DSSE sign/verify (synthetic out dir)."""

import json
import textwrap
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from pipeline import provenance as prov
from pipeline.cache import StageResult, output_digests
from pipeline.project import context
from pipeline.run import run
from pipeline.stages.provenance import Provenance

CONFIG = textwrap.dedent("""\
    seed: 5c8a2e4f-6d1b-4a7e-9b3c-2f0e1d4c5b6a
    source_date_epoch: 1704067200
    profiles: {demo: {platform: qemu, mode: production, app: demo}}
""")
FILE_SHA, IMAGE_SHA = "ab" * 32, "cd" * 32
LOCK = textwrap.dedent(f"""\
    version: 1
    debian: {{mirror: http://deb.debian.org/debian, suites: [bookworm]}}
    files:
      busybox-static: {{url: http://deb.debian.org/b.deb, sha256: "{FILE_SHA}"}}
    images:
      caddy: {{ref: "docker.io/library/caddy:2.7", digest: "sha256:{IMAGE_SHA}"}}
    tools: {{mkosi: "24.3"}}
""")
OUTPUTS = {"os": {"os_disk.raw": b"os", "uki.efi": b"uki"},
           "appdisk": {"application_disk.raw": b"app", "appdisk.json": b"{}"},
           "measurements": {"measurements.json": b'{"version": 1}', "eventlog.json": b"[]"}}


def make_project(tmp: Path, git: bool = False) -> Path:
    root = tmp / "project"
    root.mkdir(parents=True)
    (root / ".gitignore").write_text("/out/\n")
    (root / "mithril.yaml").write_text(CONFIG)
    (root / "mithril.lock").write_text(LOCK)
    if git:
        for argv in (["init", "-q"], ["add", "-A"],
                     ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "x"]):
            run(["git", *argv], cwd=root)
    return root


def build(root: Path, tmp: Path, outputs: dict = OUTPUTS) -> Path:
    """Run the provenance stage against synthetic dependency results; return a published out dir."""
    ctx = context(root, None, None, tmp / "cache", False)
    out = ctx.out_dir
    out.mkdir(parents=True, exist_ok=True)
    deps = {}
    for stage, files in outputs.items():
        d = tmp / "results" / stage
        d.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (d / name).write_bytes(data)
            (out / name).write_bytes(data)
        deps[stage] = StageResult(d, {"outputs": output_digests(d)})
    work = tmp / "prov-out"
    work.mkdir(exist_ok=True)
    Provenance().build(ctx, work, deps)
    (out / prov.FILE).write_bytes((work / prov.FILE).read_bytes())
    return out


def keypair(tmp: Path) -> tuple[Path, Path]:
    key = ed25519.Ed25519PrivateKey.generate()
    priv, pub = tmp / "key.pem", tmp / "key.pub"
    priv.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return priv, pub


def test_statement_validates_and_subjects_match_files(tmp_path):
    out = build(make_project(tmp_path, git=True), tmp_path)
    stmt = json.loads((out / prov.FILE).read_text())
    prov.validate(stmt)
    assert stmt["predicateType"] == "https://slsa.dev/provenance/v1"
    names = [s["name"] for s in stmt["subject"]]
    assert names == sorted(n for files in OUTPUTS.values() for n in files)
    deps = {d["name"]: d for d in stmt["predicate"]["buildDefinition"]["resolvedDependencies"]}
    head = run(["git", "rev-parse", "HEAD"], cwd=out.parent.parent).text.strip()
    assert deps["source"]["digest"] == {"gitCommit": head}
    assert deps["source"]["annotations"]["dirty"] is False
    assert deps["image:caddy"]["digest"] == {"sha256": IMAGE_SHA}
    assert deps["tool:mkosi"]["annotations"] == {"version": "24.3"}
    assert stmt["predicate"]["buildDefinition"]["externalParameters"]["profile"] == "demo"
    report = prov.verify_file(out / prov.FILE, allow_unsigned=True)
    assert report["ok"], report["problems"]
    assert "measurements.json" in names


def test_identical_inputs_give_identical_bytes(tmp_path):
    a = build(make_project(tmp_path / "a"), tmp_path / "a")
    b = build(make_project(tmp_path / "b"), tmp_path / "b")
    assert (a / prov.FILE).read_bytes() == (b / prov.FILE).read_bytes()
    assert str(tmp_path).encode() not in (a / prov.FILE).read_bytes()


def test_invalid_statements_are_rejected():
    good = prov.statement([{"name": "x", "digest": {"sha256": "00" * 32}}], {"profile": "demo"}, {}, [], {})
    for broken in ({**good, "predicateType": "https://example.com/other"},
                   {**good, "subject": []},
                   {**good, "predicate": {**good["predicate"], "runDetails": {"builder": {}}}},
                   {**good, "subject": [{"name": "../etc/passwd", "digest": {"sha256": "00"}}]},
                   {**good, "unknownField": 1}):
        with pytest.raises(ValueError):
            prov.validate(broken)


def test_changed_file_fails_verification(tmp_path):
    out = build(make_project(tmp_path), tmp_path)
    (out / "uki.efi").write_bytes(b"tampered")
    report = prov.verify_file(out / prov.FILE, allow_unsigned=True)
    assert not report["ok"]
    assert [s["name"] for s in report["subjects"] if not s["ok"]] == ["uki.efi"]


def test_no_false_pass_without_a_key(tmp_path):
    """A signed envelope checked without --key is not "ok": nothing vouched for it."""
    out = build(make_project(tmp_path), tmp_path)
    priv, _ = keypair(tmp_path)
    signed = prov.sign_file(out / prov.FILE, priv)
    for path in (signed, out / prov.FILE):
        report = prov.verify_file(path)
        assert not report["ok"] and any("no --key" in p for p in report["problems"])
        assert prov.verify_file(path, allow_unsigned=True)["ok"]
    assert prov.verify_file(signed, allow_unsigned=True)["signature"] == "NOT CHECKED (no --key)"


def test_measurements_json_must_be_a_subject(tmp_path):
    out = build(make_project(tmp_path), tmp_path)
    stmt = json.loads((out / prov.FILE).read_text())
    stmt["subject"] = [s for s in stmt["subject"] if s["name"] != "measurements.json"]
    (out / "edited.jsonl").write_text(json.dumps(stmt) + "\n")
    report = prov.verify_file(out / "edited.jsonl", allow_unsigned=True)
    assert report["problems"] == ["measurements.json is not a subject of the provenance"]


def test_signed_envelope_verifies_and_tampered_does_not(tmp_path):
    out = build(make_project(tmp_path), tmp_path)
    priv, pub = keypair(tmp_path)
    signed = prov.sign_file(out / prov.FILE, priv)
    assert signed.name == prov.SIGNED_FILE
    assert priv.read_text() not in signed.read_text()
    report = prov.verify_file(signed, pub)
    assert report["ok"] and report["signature"] == "verified", report

    # Tamper with the payload: change one subject digest inside the signed statement.
    env = json.loads(signed.read_text())
    stmt = json.loads(prov.base64.b64decode(env["payload"]))
    stmt["subject"][0]["digest"]["sha256"] = "00" * 32
    env["payload"] = prov.base64.b64encode(prov.canonical_line(stmt).rstrip()).decode()
    signed.write_text(json.dumps(env) + "\n")
    report = prov.verify_file(signed, pub)
    assert not report["ok"] and report["signature"] == "INVALID"

    # A different key does not verify the original either.
    signed = prov.sign_file(out / prov.FILE, priv)
    (tmp_path / "other").mkdir()
    _, other_pub = keypair(tmp_path / "other")
    assert not prov.verify_file(signed, other_pub)["ok"]


def test_cli_exit_codes(tmp_path):
    import sys

    out = build(make_project(tmp_path), tmp_path)
    priv, pub = keypair(tmp_path)

    def mb(*args):
        return run([sys.executable, "-m", "pipeline", "provenance", *map(str, args)], ok=range(256))

    assert mb("sign", "--key", priv, out / prov.FILE).returncode == 0
    assert mb("verify", "--key", pub, out / prov.SIGNED_FILE).returncode == 0
    bad_key = mb("sign", "--key", out / "uki.efi", out / prov.FILE)
    assert bad_key.returncode == 2 and b"uki.efi" in bad_key.stderr
    (out / "application_disk.raw").write_bytes(b"changed")
    failed = mb("verify", "--key", pub, out / prov.SIGNED_FILE)
    assert failed.returncode == 1 and b"application_disk.raw" in failed.stdout


def test_audit_needs_a_recorded_commit(tmp_path):
    from pipeline.audit import CouldNotBuild, audit

    out = build(make_project(tmp_path), tmp_path)  # not a git checkout: no commit recorded
    with pytest.raises(CouldNotBuild, match="no git commit"):
        audit(str(out), tmp_path)
