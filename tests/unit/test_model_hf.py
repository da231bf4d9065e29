"""Hub download and lock resolution against a fake hub (huggingface_hub's client factory)."""

from __future__ import annotations

import hashlib

import pytest
from huggingface_hub import constants

from pipeline import hf
from pipeline.errors import BadInput, ToolFailed, VerificationFailed
from pipeline.lock import ModelPin
from tests.unit.fakehub import FakeHub, online_hub, small_model

REPO = "openai-community/gpt2-medium"
COMMIT = "6dcaa7a952f72f9298047fd5137cd6e4f05f41da"
PATTERNS = ("*.json", "*.safetensors", "tokenizer*")
TOKEN = "hf_FakeSecretToken1234567890"


@pytest.fixture
def hub(monkeypatch, tmp_path):
    yield from online_hub(monkeypatch, tmp_path, REPO, COMMIT, small_model("gpt"))


def pin_for(hub: FakeHub) -> ModelPin:
    return ModelPin.model_validate(hf.resolve_model_lock(REPO, "main", None, PATTERNS))


def test_resolve_pins_commit_and_every_matching_file(hub):
    entry = hf.resolve_model_lock(REPO, "main", None, PATTERNS)
    assert entry["commit"] == COMMIT and entry["revision"] == "main"
    assert sorted(entry["files"]) == ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    data = hub.files["model.safetensors"]
    assert entry["files"]["model.safetensors"] == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    cfg = hub.files["config.json"]
    assert entry["files"]["config.json"]["git_sha1"] == hashlib.sha1(b"blob %d\0" % len(cfg) + cfg).hexdigest()
    ModelPin.model_validate(entry)  # the lock accepts it


def test_resolve_unknown_revision_is_bad_input(hub):
    with pytest.raises(BadInput, match="revision not found"):
        hf.resolve_model_lock(REPO, "no-such-branch", None, PATTERNS)


def test_download_pinned_commit_respects_patterns(hub, tmp_path):
    pin = pin_for(hub)
    hub.branches.clear()  # from now on only the pinned commit resolves: the download must use it
    dest = tmp_path / "weights"
    digests = hf.download_model("gpt2-medium", pin, ("*.json", "*.safetensors"), dest, tmp_path / "hf")
    assert sorted(p.name for p in dest.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json",
                                                      "tokenizer_config.json"]
    assert digests["model.safetensors"] == hashlib.sha256(hub.files["model.safetensors"]).hexdigest()
    fetched = {r.url.path.rsplit("/", 1)[1] for r in hub.requests if "/resolve/" in r.url.path}
    assert "pytorch_model.bin" not in fetched and "README.md" not in fetched
    assert all(f"/resolve/{COMMIT}/" in r.url.path for r in hub.requests if "/resolve/" in r.url.path)


def test_digest_mismatch_fails_and_leaves_nothing(hub, tmp_path):
    pin = pin_for(hub)
    bad = bytearray(hub.files["model.safetensors"])
    bad[10] ^= 1
    hub.served["model.safetensors"] = bytes(bad)
    dest = tmp_path / "weights"
    with pytest.raises(VerificationFailed, match=r"models\.gpt2-medium\.files\.model\.safetensors\.sha256: expected"):
        hf.download_model("gpt2-medium", pin, PATTERNS, dest, tmp_path / "hf")
    assert not dest.exists() and not (tmp_path / ".weights.partial").exists()
    # the bad blob is gone from the Hub cache: a retry after the source is fixed succeeds
    hub.served.clear()
    hf.download_model("gpt2-medium", pin, PATTERNS, dest, tmp_path / "hf")
    assert (dest / "model.safetensors").read_bytes() == hub.files["model.safetensors"]


def test_non_lfs_mismatch_is_caught_by_git_sha1(hub, tmp_path):
    pin = pin_for(hub)
    hub.served["config.json"] = hub.files["config.json"].replace(b"2", b"3")
    with pytest.raises(VerificationFailed, match=r"config\.json\.git_sha1"):
        hf.download_model("gpt2-medium", pin, PATTERNS, tmp_path / "w", tmp_path / "hf")
    assert not (tmp_path / "w").exists()


def test_interrupted_download_resumes(hub, tmp_path, monkeypatch):
    """A connection cut mid-file resumes at the byte it stopped (HTTP Range) in the same run."""
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 256)  # the fake file is smaller than 10 MB chunks
    pin = pin_for(hub)
    hub.cut_once.add("model.safetensors")
    dest = tmp_path / "weights"
    hf.download_model("gpt2-medium", pin, PATTERNS, dest, tmp_path / "hf")
    assert (dest / "model.safetensors").read_bytes() == hub.files["model.safetensors"]
    gets = hub.gets("model.safetensors")
    half = len(hub.files["model.safetensors"]) // 2
    assert len(gets) == 2 and "Range" not in gets[0].headers and gets[1].headers.get("Range") == f"bytes={half}-"


def test_failed_run_keeps_finished_files(hub, tmp_path):
    """A run that dies part-way leaves no output, and the next run fetches only what is missing."""
    pin = pin_for(hub)
    hub.failing.add("model.safetensors")
    dest = tmp_path / "weights"
    with pytest.raises(ToolFailed):
        hf.download_model("gpt2-medium", pin, PATTERNS, dest, tmp_path / "hf")
    assert not dest.exists()
    assert len(hub.gets("config.json")) == 1
    hub.failing.clear()
    hf.download_model("gpt2-medium", pin, PATTERNS, dest, tmp_path / "hf")
    assert len(hub.gets("config.json")) == 1 and len(hub.gets("model.safetensors")) == 2
    assert (dest / "model.safetensors").read_bytes() == hub.files["model.safetensors"]


def test_offline_mode_uses_the_cache(hub, tmp_path, monkeypatch):
    pin = pin_for(hub)
    hf.download_model("gpt2-medium", pin, PATTERNS, tmp_path / "a", tmp_path / "hf")
    hub.down = True
    n = len(hub.requests)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hf.download_model("gpt2-medium", pin, PATTERNS, tmp_path / "b", tmp_path / "hf")
    assert len(hub.requests) == n  # not one request
    assert (tmp_path / "b" / "model.safetensors").read_bytes() == hub.files["model.safetensors"]
    # and offline with an empty cache is a clear error, not a hang
    with pytest.raises(ToolFailed, match="not in the local Hugging Face cache"):
        hf.download_model("gpt2-medium", pin, PATTERNS, tmp_path / "c", tmp_path / "empty-hf")


def test_unpinned_commit_is_refused(hub, tmp_path):
    pin = ModelPin(repo=REPO, revision="main")
    with pytest.raises(BadInput, match=r"models\.gpt2-medium\.commit"):
        hf.download_model("gpt2-medium", pin, PATTERNS, tmp_path / "w", tmp_path / "hf")


def test_token_is_sent_but_never_logged(hub, tmp_path, monkeypatch, capsys):
    from pipeline import run

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    token = hf.hub_token()
    assert token == TOKEN and run.redact(f"x {TOKEN} y") == "x *** y"
    pin = ModelPin.model_validate(hf.resolve_model_lock(REPO, "main", token, PATTERNS))
    hf.download_model("gpt2-medium", pin, PATTERNS, tmp_path / "w", tmp_path / "hf", token=token)
    assert any(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in hub.requests)
    hub.down = True
    with pytest.raises(ToolFailed) as e:
        hf.resolve_model_lock(REPO, "main", token, PATTERNS)
    out = capsys.readouterr()
    assert TOKEN not in out.out + out.err + str(e.value)
    for p in tmp_path.rglob("*"):
        if p.is_file() and "hf" not in p.relative_to(tmp_path).parts[:1]:
            assert TOKEN.encode() not in p.read_bytes()
