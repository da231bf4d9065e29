"""Container images built with podman (an independent tool), from a busybox root taken from
Debian's busybox-static .deb pinned in this repository's mithril.lock."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from pipeline.archive import Entry, deb_member, deterministic_tar
from pipeline.files import sha256_file
from pipeline.inputs import download
from pipeline.run import run
from tests.conftest import REPO

# Containers here need runc (crun fails on hybrid cgroups) and explicit ulimits (no CAP_SYS_RESOURCE).
RUNC = ["--runtime", "runc", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]


def busybox(work: Path) -> bytes:
    pin = yaml.safe_load((REPO / "mithril.lock").read_text())["files"]["busybox-static"]
    deb = work / "busybox.deb"
    download(pin["url"], deb, "busybox-static")
    assert sha256_file(deb) == pin["sha256"]
    return deb_member(deb, "./bin/busybox")


def build(work: Path, containerfile: str, files: dict[str, bytes] | None = None) -> dict[str, Path]:
    """`podman build` FROM a busybox base; returns {"docker", "oci", "export"} archives (`podman
    save` as docker-archive and oci-archive, and `podman export` of a container of it)."""
    base = f"localhost/mithril-test-base:{os.getpid()}"
    tag = f"localhost/mithril-test:{os.getpid()}"
    rootfs = [Entry("bin", 0o755), Entry("bin/busybox", 0o755, busybox(work)), Entry("bin/sh", 0o777, target="busybox"),
              Entry("www", 0o755), Entry("www/index.html", data=b"hi\n")]
    (work / "rootfs.tar").write_bytes(deterministic_tar(rootfs, 0))
    (work / "Containerfile").write_text(containerfile.replace("BASE", base))
    for name, data in (files or {}).items():
        (work / name).write_bytes(data)
    out = {k: work / f"{k}.tar" for k in ("docker", "oci", "export")}
    run(["podman", "import", work / "rootfs.tar", base])
    try:
        run(["podman", "build", "-q", *RUNC, "-t", tag, work])
        run(["podman", "save", "-q", "--format", "docker-archive", "-o", out["docker"], tag])
        run(["podman", "save", "-q", "--format", "oci-archive", "-o", out["oci"], tag])
        cid = run(["podman", "create", tag, "/bin/sh"]).text.strip()
        run(["podman", "export", "-o", out["export"], cid])
        run(["podman", "rm", cid])
    finally:
        run(["podman", "rmi", "-f", tag, base], ok=range(256))
    return out
