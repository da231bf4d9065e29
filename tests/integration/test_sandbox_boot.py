"""Your own images, run the way a container runtime runs them, on one real boot (docs/sandbox.md).

The app is a hostile image that runs as root and tries, every way we could think of, to read the
attestation CA key and the TLS leaf key; it serves the list of its attempts and their outcomes,
which we fetch through `connect`. Beside it run the image shapes of issue 20 as extra images
(`appdisk.extra_images`, each at /<name>/ through the ingress), all built with podman: scratch +
numeric USER, a named user from the image's passwd, no USER, WorkingDir + Env + Cmd only, an app
that writes to /tmp, a multi-layer image with whiteouts, and one that cannot start (what `run`
and `connect` say about it). Who each runs as is compared with what podman + runc give the same
image (the reference runtime), not with our own resolution.
"""

from __future__ import annotations

import hashlib
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests import podman
from tests.conftest import SEED, mb, need
from tests.stack import free_port

pytestmark = pytest.mark.slow

WHO = b"""#!/bin/busybox sh
echo "Content-Type: text/plain"
echo
/bin/busybox id
echo "HOME=$HOME"
echo "GREETING=$GREETING"
echo "pid1=$([ -e /proc/1 ] && echo visible || echo hidden)"
"""
PAGE = b"<p>served</p>\n"

# name: (Containerfile, files). The busybox base (tests/podman.py) has /bin/busybox and /bin/sh.
SHAPES = {
    # the image: FROM scratch, a static busybox, a numeric user with no passwd entry
    "numeric": ("""FROM scratch
COPY --chmod=755 busybox /bin/busybox
COPY page.html /www/index.html
COPY --chmod=755 who /www/cgi-bin/who
USER 1000
EXPOSE 8081
ENTRYPOINT ["/bin/busybox", "httpd", "-f", "-p", "8081", "-h", "/www"]
""", {}),
    "named": ("""FROM BASE
COPY passwd /etc/passwd
COPY group /etc/group
COPY page.html /www/index.html
COPY --chmod=755 who /www/cgi-bin/who
USER app
EXPOSE 8082
ENTRYPOINT ["/bin/busybox", "httpd", "-f", "-p", "8082", "-h", "/www"]
""", {"passwd": b"root:x:0:0:root:/root:/bin/sh\napp:x:1500:1500:app:/home/app:/bin/sh\n",
      "group": b"root:x:0:\napp:x:1500:\nstaff:x:1600:app\nother:x:1700:root\n"}),
    "nouser": ("""FROM BASE
COPY page.html /www/index.html
COPY --chmod=755 who /www/cgi-bin/who
EXPOSE 8083
ENTRYPOINT ["/bin/busybox", "httpd", "-f", "-p", "8083", "-h", "/www"]
""", {}),
    "workdir": ("""FROM BASE
WORKDIR /srv/site
COPY page.html /srv/site/index.html
COPY --chmod=755 who /srv/site/cgi-bin/who
ENV PATH=/bin GREETING=hello-from-env
EXPOSE 8084
CMD ["busybox", "httpd", "-f", "-p", "8084", "-h", "."]
""", {}),
    "tmpwriter": ("""FROM BASE
EXPOSE 8085
ENTRYPOINT ["/bin/sh", "-c", "/bin/busybox mkdir -p /tmp/site && echo written-at-runtime > /tmp/site/index.html && \
(/bin/busybox touch /root-file 2>/dev/null && echo root-writable || echo root-read-only) >> /tmp/site/index.html && \
exec /bin/busybox httpd -f -p 8085 -h /tmp/site"]
""", {}),
    "layers": ("""FROM BASE
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN mkdir -p /site/gone /site/opaque && echo old > /site/old.html && echo x > /site/opaque/a.html && echo y > /site/gone/b.html
RUN rm /site/old.html && rm -rf /site/gone && rm -rf /site/opaque && mkdir /site/opaque && echo new > /site/opaque/c.html
COPY page.html /site/index.html
EXPOSE 8086
ENTRYPOINT ["/bin/busybox", "httpd", "-f", "-p", "8086", "-h", "/site"]
""", {}),
    # an entrypoint that does not exist: the service never starts
    "dead": ("""FROM BASE
EXPOSE 8087
ENTRYPOINT ["/bin/no-such-server"]
""", {}),
}

# The hostile app: root (USER 0), reads what it must not, serves the outcomes on 8000.
PROBE = rb"""#!/bin/sh
out=/tmp/www/index.html
mkdir -p /tmp/www
try() {  # try NAME CMD...: LEAKED when the command prints a private key, else DENIED
    name=$1; shift
    got=$("$@" 2>&1 | head -c 4000)
    case "$got" in *"PRIVATE KEY"*) echo "LEAKED $name" >> $out ;; *) echo "DENIED $name: $(echo "$got" | head -n1 | cut -c1-120)" >> $out ;; esac
}
echo "uid $(id -u) $(grep CapBnd /proc/self/status)" > $out
echo "control $(cat /etc/hostile-control)" >> $out
for k in attestation/ca.key tls/server.key; do
    try "direct /run/mithril/$k" cat /run/mithril/$k
    try "/proc/1/root/run/mithril/$k" cat /proc/1/root/run/mithril/$k
    try "/proc/self/root/../run/mithril/$k" cat /proc/self/root/../../run/mithril/$k
    try "/proc/1/cwd/run/mithril/$k" cat /proc/1/cwd/run/mithril/$k
    for p in /proc/[0-9]*; do
        try "$p/root/run/mithril/$k" cat $p/root/run/mithril/$k
        try "$p/root/$k (in its own root)" cat $p/root/run/mithril/$k
    done
    for pid in $(seq 1 400); do  # pids hidden from /proc's listing, by number
        [ -e /proc/$pid/root ] && try "/proc/$pid/root (by number)/run/mithril/$k" cat /proc/$pid/root/run/mithril/$k
    done
    try "find / -name ${k#*/}" sh -c "find / -xdev -name ${k#*/} -exec cat {} \; 2>&1"
    try "/sys walk" sh -c "find /sys -name '*.key' -exec cat {} \; 2>&1"
done
echo "pids visible: $(ls -d /proc/[0-9]* | wc -l)" >> $out
echo "pid1 visible: $([ -e /proc/1 ] && echo yes || echo no)" >> $out
try "mount proc" sh -c "mkdir -p /tmp/p && mount -t proc proc /tmp/p && cat /tmp/p/1/root/run/mithril/attestation/ca.key"
try "mount tmpfs" sh -c "mount -t tmpfs t /tmp && echo MOUNTED"
try "unshare user+mount ns" unshare -U -r -m sh -c "mount -t proc proc /proc && cat /proc/1/root/run/mithril/attestation/ca.key"
try "nsenter pid 1" nsenter -t 1 -m cat /run/mithril/attestation/ca.key
try "chroot escape" sh -c "mkdir -p /tmp/c && chroot /tmp/c /bin/busybox cat /run/mithril/attestation/ca.key"
try "ptrace-mode read of pid 1 memory" dd if=/proc/1/mem bs=1 count=1 skip=4096
try "/dev/mem" devmem 0x1000
try "mknod /dev/mem" sh -c "mknod /tmp/mem c 1 1 && dd if=/tmp/mem bs=1 count=1"
try "/dev/tpmrm0" sh -c "echo > /dev/tpmrm0"
try "/proc/kcore" dd if=/proc/kcore bs=1 count=1
try "write the root" sh -c "touch /hostile && echo WROTE"
echo "done" >> $out
exec /bin/busybox httpd -f -p 8000 -h /tmp/www
"""
HOSTILE = """FROM BASE
RUN ["/bin/busybox", "--install", "-s", "/bin"]
COPY probe.sh /probe.sh
COPY control /etc/hostile-control
USER 0
EXPOSE 8000
ENTRYPOINT ["/bin/sh", "/probe.sh"]
"""


def _build(work: Path, name: str, containerfile: str, files: dict[str, bytes]) -> Path:
    folder = work / name
    folder.mkdir()
    base = {"page.html": PAGE, "who": WHO}
    if "FROM scratch" in containerfile:
        base["busybox"] = podman.busybox(folder)
    return podman.build(folder, containerfile, {**base, **files})["docker"]


def _runc_id(archive: Path) -> str:
    """`id` as podman + runc run the image (the reference): same user, same image files."""
    tag = f"localhost/mithril-id-{archive.parent.name}:1"
    loaded = subprocess.run(["podman", "load", "-q", "-i", str(archive)], capture_output=True, text=True, check=True)
    ref = loaded.stdout.strip().split()[-1]
    subprocess.run(["podman", "tag", ref, tag], check=True)
    try:
        res = subprocess.run(["podman", "run", "--rm", *podman.RUNC, "--entrypoint", "/bin/busybox", tag, "id"],
                             capture_output=True, text=True, check=True)
        return res.stdout.strip()
    finally:
        subprocess.run(["podman", "rmi", "-f", tag, ref], capture_output=True)


def _ids(text: str) -> tuple[str, str, list[str]]:
    """(uid, gid, the groups access is checked against) from busybox `id` output. podman and
    docker also list the primary gid among the supplementary groups (getgroups), gosu does not;
    the set the kernel checks (egid + supplementary) is what must agree."""
    uid = re.search(r"uid=(\d+)", text).group(1)
    gid = re.search(r"gid=(\d+)", text).group(1)
    groups = re.search(r"groups=([\d(),\w-]+)", text)
    return uid, gid, sorted({gid, *(re.findall(r"(\d+)", groups.group(1)) if groups else [])})


@pytest.fixture(scope="module")
def sandboxed(tmp_path_factory, demo_project: Path, demo_build: Path):
    need("podman", "qemu-system-x86_64", "swtpm", "swtpm_setup")
    work = tmp_path_factory.mktemp("sandbox")
    hostile = _build(work, "hostile", HOSTILE, {"probe.sh": PROBE, "control": b"readable\n"})
    project = work / "project"
    res = mb("init", project, "--image", hostile, "--seed", SEED)
    assert res.returncode == 0, res.stderr
    lock = yaml.safe_load((project / "mithril.lock").read_text())
    refs = {}
    for name, (containerfile, files) in SHAPES.items():
        archive = _build(work, name, containerfile, files)
        dest = project / "images" / f"{name}.tar"
        dest.write_bytes(archive.read_bytes())
        lock["images"][name] = {"ref": f"localhost/{name}:1", "archive": {
            "path": f"images/{name}.tar", "sha256": hashlib.sha256(dest.read_bytes()).hexdigest(),
            "size": dest.stat().st_size}}
        refs[name] = archive
    (project / "mithril.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    config = yaml.safe_load((project / "mithril.yaml").read_text())
    config["appdisk"]["extra_images"] = list(SHAPES)
    (project / "mithril.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    res = mb("all", "--project", project, "--unlocked", "--cache-dir", demo_project / ".mithril/cache", timeout=3600)
    assert res.returncode == 0, res.stderr[-3000:]
    port = free_port()
    err = open(project / "run.err", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", "--project", str(project), "--port", str(port),
                             "--timeout", "1500", "--json"], stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        line = proc.stdout.readline()
        assert line, (project / "run.err").read_text()[-3000:]
        yield project, json.loads(line)["url"], proc, refs
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
        err.close()


def _connect(project: Path, url: str):
    return mb("connect", url, cwd=project, timeout=300)


def _page_when_served(project: Path, url: str):
    """The hostile app serves only once its probe is done (a minute under TCG): ask until it does."""
    for _ in range(60):  # a ceiling for a stuck guest, not a timing claim
        res = _connect(project, url)
        if res.returncode != 22:
            return res
        time.sleep(5)
    return res


def test_a_root_app_reads_neither_key(sandboxed):
    project, url, _, _ = sandboxed
    res = _page_when_served(project, url + "/")
    assert res.returncode == 0, res.stderr
    page = res.stdout
    assert "PRIVATE KEY" not in page and "LEAKED" not in page, page
    assert page.startswith("uid 0 CapBnd:\t0000000000000000"), page  # root, with no capability
    assert "control readable" in page, page  # the probe reads what it may
    attempts = [x for x in page.splitlines() if x.startswith("DENIED ")]
    for name in ("direct /run/mithril/attestation/ca.key", "/proc/1/root/run/mithril/attestation/ca.key",
                 "/proc/1/root/run/mithril/tls/server.key", "mount proc", "unshare user+mount ns", "nsenter pid 1",
                 "chroot escape", "ptrace-mode read of pid 1 memory", "/dev/mem", "/dev/tpmrm0", "write the root"):
        assert any(a.startswith(f"DENIED {name}") for a in attempts), (name, page)
    assert page.rstrip().endswith("done"), page
    # gid 0 is exempt from ProtectProc=invisible (procfs's hidepid gid= defaults to 0), so a root
    # app lists pid 1 and the other services; what stops it is the ptrace access check above
    assert "pid1 visible: yes" in page, page


def test_an_init_image_project_is_the_wrapped_app(sandboxed):
    """`init --image` made the project (what test_wrap_image booted on its own before): the app
    port is the image's EXPOSE, its files and Caddy's are on the disk, the AK is tied."""
    project, url, _, _ = sandboxed
    config = yaml.safe_load((project / "mithril.yaml").read_text())
    assert config["appdisk"]["app_port"] == 8000 and config["default_profile"] == "app"
    files = {f["path"] for f in json.loads((project / "out/app/appdisk.json").read_text())["files"]}
    assert "rootfs/app/probe.sh" in files and "rootfs/caddy/usr/bin/caddy" in files
    res = _page_when_served(project, url + "/")
    assert res.returncode == 0, res.stderr
    assert next(x for x in res.stderr.splitlines() if x.startswith("ak ")).split()[-1] == "ok"


def test_the_busybox_scratch_image_with_a_numeric_user_serves_its_page(sandboxed):
    project, url, _, refs = sandboxed
    res = _connect(project, url + "/numeric/")
    assert res.returncode == 0, res.stderr
    assert res.stdout.encode() == PAGE


@pytest.mark.parametrize("name", ["numeric", "named"])
def test_user_and_groups_are_those_runc_gives(sandboxed, name):
    project, url, _, refs = sandboxed
    res = _connect(project, url + f"/{name}/cgi-bin/who")
    assert res.returncode == 0, res.stderr
    assert _ids(res.stdout) == _ids(_runc_id(refs[name])), (res.stdout, _runc_id(refs[name]))


def test_home_comes_from_the_image_passwd(sandboxed):
    project, url, _, _ = sandboxed
    assert "HOME=/home/app" in _connect(project, url + "/named/cgi-bin/who").stdout
    assert "HOME=/\n" in _connect(project, url + "/numeric/cgi-bin/who").stdout


def test_an_image_without_user_runs_unprivileged(sandboxed):
    project, url, _, _ = sandboxed
    res = _connect(project, url + "/nouser/cgi-bin/who")
    assert res.returncode == 0, res.stderr
    assert _ids(res.stdout)[:2] == ("65532", "65532"), res.stdout
    assert "pid1=hidden" in res.stdout, res.stdout  # ProtectProc=invisible: only its own processes


def test_workdir_env_and_cmd(sandboxed):
    project, url, _, _ = sandboxed
    res = _connect(project, url + "/workdir/")
    assert res.returncode == 0 and res.stdout.encode() == PAGE, res.stderr  # served from "." = WorkingDir
    assert "GREETING=hello-from-env" in _connect(project, url + "/workdir/cgi-bin/who").stdout


def test_tmp_is_writable_and_the_root_is_not(sandboxed):
    project, url, _, _ = sandboxed
    res = _connect(project, url + "/tmpwriter/")
    assert res.returncode == 0, res.stderr
    assert res.stdout == "written-at-runtime\nroot-read-only\n"


def test_whiteouts_of_later_layers_hold(sandboxed):
    project, url, _, _ = sandboxed
    assert _connect(project, url + "/layers/opaque/c.html").stdout == "new\n"
    for gone in ("old.html", "gone/b.html", "opaque/a.html"):
        res = _connect(project, url + f"/layers/{gone}")
        assert res.returncode == 22 and "404" in res.stderr, (gone, res.stderr)


def test_a_dead_app_is_reported_by_run_and_connect_fails(sandboxed):
    project, url, _, _ = sandboxed
    res = _connect(project, url + "/dead/")
    assert res.returncode == 22, res.stderr  # curl --fail's code for an HTTP error
    assert "HTTP 502" in res.stderr and "ATTESTED" in res.stderr
    for _ in range(150):  # run probes for 90 s before it reports (a ceiling, not a timing claim)
        err = (project / "run.err").read_text()
        if "dead does not answer" in err:
            break
        time.sleep(2)
    line = next(x for x in err.splitlines() if "dead does not answer" in x)
    assert "port 8087" in line and "HTTP 502" in line and "app-debug" in line, line
    assert not any("numeric does not answer" in x for x in err.splitlines()), err
