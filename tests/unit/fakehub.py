"""A fake Hugging Face Hub behind huggingface_hub's client factory (httpx2 MockTransport).

It serves one repository at one commit: model info with files metadata, the recursive tree,
file metadata (HEAD) and file content (GET, honouring Range). Switches let tests corrupt a file,
cut a download short once, or refuse every request (to prove offline mode uses the cache).
"""

from __future__ import annotations

import hashlib
import json
import re

import httpx2
import huggingface_hub

LFS_MIN = 1024  # files at least this big are "LFS" files here (the Hub uses its own rule)


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    def __init__(self, repo: str, commit: str, files: dict[str, bytes], branches=("main",)):
        self.repo, self.commit, self.files = repo, commit, dict(files)
        self.branches = set(branches)
        self.requests: list[httpx2.Request] = []
        self.served: dict[str, bytes] = {}  # path -> bytes served instead (corruption)
        self.cut_once: set[str] = set()  # paths whose first GET stops half-way
        self.down = False
        self.failing: set[str] = set()  # paths that answer 500 (a run that dies part-way)

    # what the lock should say
    def entry(self, path: str) -> dict:
        data = self.files[path]
        if len(data) >= LFS_MIN:
            return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        return {"size": len(data), "git_sha1": git_sha1(data)}

    def lock_entry(self, revision: str = "main", paths=None) -> dict:
        return {"repo": self.repo, "revision": revision, "commit": self.commit,
                "files": {p: self.entry(p) for p in sorted(paths or self.files)}}

    def _rev_ok(self, rev: str) -> bool:
        return rev == self.commit or rev in self.branches

    def handler(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        if self.down:
            raise httpx2.ConnectError("fake hub is down", request=request)
        path = request.url.path
        m = re.fullmatch(rf"/api/models/{re.escape(self.repo)}/revision/([^/]+)", path)
        if m:
            if not self._rev_ok(m.group(1)):
                return httpx2.Response(404, headers={"X-Error-Code": "RevisionNotFound"},
                                       json={"error": "Invalid rev id"})
            siblings = []
            for p, data in sorted(self.files.items()):
                s = {"rfilename": p, "size": len(data), "blobId": git_sha1(data)}
                if len(data) >= LFS_MIN:
                    s["lfs"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "pointerSize": 134}
                siblings.append(s)
            return httpx2.Response(200, json={"id": self.repo, "modelId": self.repo, "sha": self.commit,
                                              "private": False, "siblings": siblings})
        m = re.fullmatch(rf"/api/models/{re.escape(self.repo)}/tree/([^/]+)(/.*)?", path)
        if m:
            if not self._rev_ok(m.group(1)):
                return httpx2.Response(404, headers={"X-Error-Code": "RevisionNotFound"}, json={})
            tree = []
            for p, data in sorted(self.files.items()):
                t = {"type": "file", "path": p, "size": len(data), "oid": git_sha1(data)}
                if len(data) >= LFS_MIN:
                    t["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
                tree.append(t)
            return httpx2.Response(200, json=tree)
        m = re.fullmatch(rf"/{re.escape(self.repo)}/resolve/([^/]+)/(.+)", path)
        if m and self._rev_ok(m.group(1)) and m.group(2) in self.files:
            rel = m.group(2)
            if rel in self.failing and request.method == "GET":
                return httpx2.Response(500, json={"error": "fake hub failure"})
            data = self.served.get(rel, self.files[rel])
            real = self.files[rel]
            etag = hashlib.sha256(real).hexdigest() if len(real) >= LFS_MIN else git_sha1(real)
            headers = {"X-Repo-Commit": self.commit, "ETag": f'"{etag}"', "Content-Length": str(len(data))}
            if len(real) >= LFS_MIN:
                headers["X-Linked-Etag"] = f'"{etag}"'
                headers["X-Linked-Size"] = str(len(data))
            if request.method == "HEAD":
                return httpx2.Response(200, headers=headers)
            start = 0
            rng = request.headers.get("Range")
            if rng:
                start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
            body = data[start:]
            headers["Content-Length"] = str(len(body))
            status = 206 if rng else 200
            if rel in self.cut_once:
                self.cut_once.discard(rel)
                half = body[: len(body) // 2]

                def stream():
                    yield half
                    raise httpx2.RemoteProtocolError("peer closed connection without sending complete message body")
                return httpx2.Response(status, headers=headers, content=stream())
            return httpx2.Response(status, headers=headers, content=body)
        return httpx2.Response(404, headers={"X-Error-Code": "EntryNotFound"}, json={"error": "not found"})

    def install(self) -> None:
        huggingface_hub.set_client_factory(
            lambda: httpx2.Client(transport=httpx2.MockTransport(self.handler), follow_redirects=True))

    @staticmethod
    def uninstall() -> None:
        from huggingface_hub.utils._http import default_client_factory

        huggingface_hub.set_client_factory(default_client_factory)

    def gets(self, rel: str) -> list[httpx2.Request]:
        return [r for r in self.requests if r.method == "GET" and r.url.path.endswith("/" + rel)]


def small_model(family: str = "gpt") -> dict[str, bytes]:
    """Files shaped like a tiny HF checkpoint (config, tokenizer, weights, plus files the build skips)."""
    cfg = {"gpt": {"model_type": "gpt2", "n_layer": 2, "n_embd": 8, "n_head": 2, "vocab_size": 50257},
           "llama": {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 8,
                     "num_attention_heads": 2, "vocab_size": 32000}}[family]
    return {
        "config.json": json.dumps(cfg).encode(),
        "tokenizer.json": b'{"version": "1.0", "model": {"type": "BPE"}, "padding": null, "x": "' + b"t" * 80 + b'"}',
        "tokenizer_config.json": b'{"model_max_length": 1024}',
        "model.safetensors": bytes(range(256)) * 8,
        "pytorch_model.bin": b"\x00" * 200,
        "README.md": b"# tiny\n",
    }


def online_hub(monkeypatch, tmp_path, repo: str, commit: str, files: dict, token: str | None = None):
    """Fixture body: a fresh FakeHub installed, online mode, no stray token file; the token (if
    given) in $HF_TOKEN. Yields the hub and uninstalls it afterwards."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "no-token-file"))
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    else:
        monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    hub = FakeHub(repo, commit, files)
    hub.install()
    yield hub
    FakeHub.uninstall()
