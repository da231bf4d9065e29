"""mithril.lock: parsing, the input store, and `lock` refreshing what the profile needs."""

import functools
import hashlib
import http.server
import threading
from pathlib import Path

import pytest
import yaml

from pipeline import lock as lk
from pipeline import project
from pipeline.errors import BadInput, ToolFailed
from pipeline.inputs import InputStore, snapshot_url

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def served(tmp_path):
    """A file served on 127.0.0.1 (the stand-in for a download URL)."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "tool.bin").write_bytes(b"pinned bytes\n" * 100)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=root)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/tool.bin", hashlib.sha256((root / "tool.bin").read_bytes()).hexdigest()
    server.shutdown()


def make_project(tmp_path, files: dict) -> Path:
    p = tmp_path / "p"
    p.mkdir()
    (p / "mithril.yaml").write_text((REPO / "mithril.yaml").read_text())
    (p / "mithril.lock").write_text(yaml.safe_dump({"version": 1, "files": files}))
    return p


def test_store_fetches_once_and_verifies_every_use(tmp_path, served):
    url, sha = served
    p = make_project(tmp_path, {"tool": {"url": url, "sha256": sha}})
    ctx = project.context(p, None, None, tmp_path / "cache", False)
    path = ctx.store.path("tool")
    assert path == tmp_path / "cache/inputs/sha256" / sha and path.read_bytes().startswith(b"pinned")
    path.write_bytes(b"tampered")
    with pytest.raises(BadInput, match=f"files.tool.sha256: expected {sha}"):
        ctx.store.path("tool")
    assert not path.exists()  # a wrong file never stays in the content-addressed store
    assert ctx.store.path("tool").read_bytes().startswith(b"pinned")  # fetched again


def test_lock_pins_an_unpinned_url_and_reports(tmp_path, served):
    from pipeline.orchestrate import refresh_lock

    url, sha = served
    p = make_project(tmp_path, {"tool": {"url": url}})
    ctx = project.context(p, None, None, tmp_path / "cache", False)
    assert refresh_lock(ctx, check=True)["entries"][0] == {"entry": "files.tool", "state": "unresolved"}
    report = refresh_lock(ctx)
    assert report["entries"][0]["state"].startswith("pinned now")
    assert lk.load(p / "mithril.lock").files["tool"].sha256 == sha
    # The demo profile needs no registry image or model: nothing is looked up on a registry or the
    # Hub. Its images built here need .deb pins; this lock names no Debian suites, so they stay open.
    states = {e["entry"]: e["state"] for e in report["entries"]}
    assert set(states) == {"files.tool", "debs.caddy", "debs.attestation-server", "debs.os"}
    assert states["debs.os"].startswith("unresolved: ")  # an online OS build needs the project's mkosi/
    assert states["debs.caddy"] == "unresolved: mithril.lock: debian.suites: missing (list the suites, e.g. " \
                                   "[bookworm, bookworm-security])"


def test_what_lock_and_export_inputs_read_is_what_the_stages_declare(tmp_path):
    from pipeline.orchestrate import profile_inputs, profile_pins

    llama = project.context(REPO, "llama", None, tmp_path, False)
    assert profile_inputs(llama) == (["triton", "nvidia-device-plugin"], ["Llama-2-7b-hf"])
    demo = project.context(REPO, "demo", None, tmp_path, False)
    assert profile_inputs(demo) == ([], [])
    pins = profile_pins(demo)
    assert "files.busybox-static" in pins and {n.split(".")[1] for n in pins if n.startswith("debs.")} == \
        {"caddy", "attestation-server", "os"}


def test_image_pins_and_latest_are_checked():
    lock = lk.Lock.model_validate({"images": {"a": {"ref": "r.io/x:1"}, "b": {"ref": "r.io/y:latest",
                                                                              "digest": "sha256:" + "1" * 64}}})
    with pytest.raises(BadInput, match="images.a.digest: r.io/x:1 is not resolved"):
        lock.image("a", locked=True)
    assert lock.image("a", locked=False).digest is None
    with pytest.raises(BadInput, match="':latest' is not allowed"):
        lock.image("b", locked=False)
    pin = lk.ImagePin(ref="nvcr.io/nvidia/tritonserver:26.02-trtllm-python-py3", digest="sha256:" + "2" * 64)
    assert pin.pinned_ref == "nvcr.io/nvidia/tritonserver@sha256:" + "2" * 64


@pytest.mark.parametrize("text,msg", [
    ("files: {a: {sha256: xyz}}", "files.a.sha256: String should match pattern"),
    ("colour: red", "colour: unknown key"),
    ("files: [", "not valid YAML"),
])
def test_bad_lock(tmp_path, text, msg):
    (tmp_path / "mithril.lock").write_text(text)
    with pytest.raises(BadInput, match=msg):
        lk.load(tmp_path / "mithril.lock")


def test_snapshot_url_of_pool_files():
    debian = {"mirror": "http://deb.debian.org/debian", "security": "http://security.debian.org/debian-security",
              "snapshot": "20261128T233728Z"}
    assert snapshot_url("http://deb.debian.org/debian/pool/main/b/bash/bash_5.2.15-2+b7_amd64.deb", debian) == \
        "https://snapshot.debian.org/archive/debian/20261128T233728Z/pool/main/b/bash/bash_5.2.15-2+b7_amd64.deb"
    assert snapshot_url("http://security.debian.org/debian-security/pool/updates/main/o/openssl/x.deb", debian) == \
        "https://snapshot.debian.org/archive/debian-security/20261128T233728Z/pool/updates/main/o/openssl/x.deb"
    assert snapshot_url("https://example.com/pool/x.deb", debian) is None
    assert snapshot_url("http://deb.debian.org/debian/pool/x.deb", {**debian, "snapshot": None}) is None


def test_offline_store_takes_files_from_the_inputs_folder_only(tmp_path):
    import hashlib

    data = b"a pinned input"
    sha = hashlib.sha256(data).hexdigest()
    lock = lk.Lock.model_validate({"files": {"x": {"url": "http://192.0.2.1/x", "sha256": sha}}})
    inputs = tmp_path / "inputs"
    (inputs / "sha256").mkdir(parents=True)
    store = InputStore(tmp_path / "store", lock, tmp_path, offline=inputs)
    with pytest.raises(BadInput, match=f"{sha}: missing from the inputs folder"):
        store.path("x")  # never the network (192.0.2.1 is unreachable by definition)
    (inputs / "sha256" / sha).write_bytes(b"something else")
    with pytest.raises(BadInput, match="content does not match its name"):
        store.path("x")
    (inputs / "sha256" / sha).write_bytes(data)
    assert store.path("x").read_bytes() == data


def test_a_download_the_mirror_refuses_once_is_retried_and_verified(tmp_path, monkeypatch):
    """A mirror's brief failure (HTTP 503 from a local server, then the file) costs a retry, not
    the build; what arrives is still checked against its pin."""
    import hashlib
    import http.server
    import threading

    from pipeline import inputs

    data = b"a pinned input"
    answers = [503, 200]

    class Mirror(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            status = answers.pop(0) if answers else 200
            self.send_response(status)
            self.send_header("Content-Length", str(len(data) if status == 200 else 0))
            self.end_headers()
            if status == 200:
                self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Mirror)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(inputs, "RETRY_PAUSES", (0, 0))
    try:
        url = f"http://127.0.0.1:{server.server_port}/x"
        lock = lk.Lock.model_validate({"files": {"x": {"url": url, "sha256": hashlib.sha256(data).hexdigest()}}})
        assert InputStore(tmp_path / "store", lock, tmp_path).path("x").read_bytes() == data
        assert answers == []  # the 503 was seen, then the retry fetched the file
        answers.extend([503, 503, 503])  # failing every time: an error, never a file
        bad = lk.Lock.model_validate({"files": {"y": {"url": url + "y", "sha256": "0" * 64}}})
        with pytest.raises(ToolFailed):
            InputStore(tmp_path / "store2", bad, tmp_path).path("y")
    finally:
        server.shutdown()
