"""Hugging Face Hub: pin a repo revision in mithril.lock, download the pinned files, verify each one.

LFS files are verified by sha256, other files by their git blob SHA-1 (what the Hub reports as
`blobId`). The token comes from $HF_TOKEN or the HF token file, is registered as a secret (so
`run.redact` removes it) and is never written anywhere.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from . import log
from .errors import BadInput, ToolFailed, VerificationFailed
from .files import sha256_file
from .lock import LOCK_FILE, ModelPin
from .run import add_secret, redact


def hub_token() -> str | None:
    """$HF_TOKEN, else the token file huggingface_hub knows about ($HF_TOKEN_PATH, ~/.cache/huggingface/token)."""
    from huggingface_hub import get_token

    token = os.environ.get("HF_TOKEN") or get_token()
    add_secret(token)
    return token or None


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "on", "yes", "true")


def git_blob_sha1(path: Path) -> str:
    """git's object id of a file: sha1(b'blob <size>\\0' + content)."""
    h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def matches(path: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatch(path, p) for p in patterns)


def _hub_error(repo: str, revision: str, e: Exception) -> Exception:
    """Map huggingface_hub / HTTP errors to ours, without the token."""
    from huggingface_hub import errors as hf_errors

    if isinstance(e, hf_errors.GatedRepoError):
        return BadInput(f"{repo}@{revision}", "gated repository: access denied",
                        "accept the licence on huggingface.co and set HF_TOKEN (or `hf auth login`)")
    if isinstance(e, hf_errors.RepositoryNotFoundError):
        return BadInput(f"{repo}", "repository not found or not accessible", "check `repo` in mithril.yaml and HF_TOKEN")
    if isinstance(e, hf_errors.RevisionNotFoundError):
        return BadInput(f"{repo}@{revision}", "revision not found", "check `revision` in mithril.yaml")
    if isinstance(e, (hf_errors.OfflineModeIsEnabled, hf_errors.LocalEntryNotFoundError)):
        return ToolFailed(f"{repo}@{revision}: not in the local Hugging Face cache and the Hub is not reachable "
                          f"(HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '')}): {redact(str(e)).splitlines()[0]}")
    return ToolFailed(f"{repo}@{revision}: Hugging Face Hub request failed: "
                      f"{type(e).__name__}: {redact(str(e)).splitlines()[0] if str(e) else ''}")


def resolve_model_lock(repo: str, revision: str = "main", token: str | None = None,
                       allow_patterns: Iterable[str] | None = None) -> dict:
    """Resolve a branch/tag/commit to its 40-hex commit and every file's digest (from the Hub's
    files metadata), as a `models.<name>` entry of mithril.lock. Only files matching
    allow_patterns are recorded when patterns are given."""
    import httpx2
    from huggingface_hub import HfApi
    from huggingface_hub import errors as hf_errors

    add_secret(token)
    try:
        info = HfApi(token=token or False).model_info(repo, revision=revision, files_metadata=True)
    except (hf_errors.HfHubHTTPError, hf_errors.OfflineModeIsEnabled, httpx2.HTTPError, OSError) as e:
        raise _hub_error(repo, revision, e) from None
    patterns = tuple(allow_patterns) if allow_patterns is not None else None
    files: dict[str, dict] = {}
    for s in info.siblings or []:
        if patterns is not None and not matches(s.rfilename, patterns):
            continue
        if s.lfs:
            files[s.rfilename] = {"size": s.lfs.size, "sha256": s.lfs.sha256}
        elif s.blob_id:
            files[s.rfilename] = {"size": s.size, "git_sha1": s.blob_id}
        else:
            raise ToolFailed(f"{repo}@{info.sha}: the Hub sent no digest for {s.rfilename}")
    if not files:
        raise BadInput(f"{repo}@{revision}", "no file matches allow_patterns " + ", ".join(patterns or ()),
                       "fix models.<name>.allow_patterns in mithril.yaml")
    return {"repo": repo, "revision": revision, "commit": info.sha, "files": dict(sorted(files.items()))}


def selected_files(name: str, pin: ModelPin, allow_patterns: Iterable[str]) -> list[str]:
    """The locked files the build needs; refuses an unpinned entry."""
    where = f"models.{name}"
    if not pin.commit:
        raise BadInput(LOCK_FILE, f"{where}.commit: {pin.repo}@{pin.revision} is not resolved to a commit",
                       f"run `mithril-build lock --model {name}` where the Hub is reachable")
    patterns = tuple(allow_patterns)
    files = sorted(p for p in pin.files if matches(p, patterns))
    if not files:
        raise BadInput(LOCK_FILE, f"{where}.files: no locked file matches allow_patterns {', '.join(patterns)}",
                       f"run `mithril-build lock --model {name}`")
    for p in files:
        f = pin.files[p]
        if not (f.sha256 or f.git_sha1):
            raise BadInput(LOCK_FILE, f"{where}.files.{p}: neither sha256 nor git_sha1 is pinned")
    return files


def verify_file(path: Path, expect, where: str) -> str:
    """Check one downloaded file against its lock entry; return its sha256."""
    size = path.stat().st_size
    if expect.size is not None and size != expect.size:
        raise VerificationFailed(f"{where}: size {size} differs from the lock ({expect.size})")
    actual = sha256_file(path, progress=size > (64 << 20))
    if expect.sha256 and actual != expect.sha256:
        raise VerificationFailed(f"{where}.sha256: expected {expect.sha256}, the downloaded file has {actual}")
    if not expect.sha256:
        blob = git_blob_sha1(path)
        if blob != expect.git_sha1:
            raise VerificationFailed(f"{where}.git_sha1: expected {expect.git_sha1}, the downloaded file has {blob}")
    return actual


def download_model(name: str, pin: ModelPin, allow_patterns: Iterable[str], dest: Path, hf_cache: Path,
                   token: str | None = None) -> dict[str, str]:
    """Download the locked files at the locked commit into dest (which must not exist), verify
    every file, and return {path: sha256}. The Hub cache (hf_cache) makes downloads resumable and
    lets HF_HUB_OFFLINE=1 work; a file that fails verification is removed from that cache and
    dest is left absent."""
    from huggingface_hub import snapshot_download

    files = selected_files(name, pin, allow_patterns)
    add_secret(token)
    tmp = dest.with_name(f".{dest.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    digests: dict[str, str] = {}
    try:
        with log.step(f"Downloading {pin.repo}@{pin.commit[:12]} ({len(files)} files)",
                      f"Downloaded and verified {pin.repo}@{pin.commit[:12]}"):
            try:
                snap = Path(snapshot_download(
                    pin.repo, revision=pin.commit, cache_dir=hf_cache, allow_patterns=files,
                    token=token or False, local_files_only=offline(), max_workers=2))
            except Exception as e:  # huggingface_hub raises many types; all become one clear line
                if isinstance(e, (BadInput, ToolFailed)):
                    raise
                raise _hub_error(pin.repo, pin.commit, e) from None
            for rel in files:
                src = snap / rel
                where = f"{LOCK_FILE}: models.{name}.files.{rel}"
                if not src.is_file():
                    raise ToolFailed(f"{pin.repo}@{pin.commit}: {rel} was not downloaded")
                try:
                    digests[rel] = verify_file(src, pin.files[rel], where)
                except VerificationFailed:
                    _evict(src)  # a retry must fetch it again, not reuse the bad blob
                    raise
                target = tmp / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                real = src.resolve()
                try:
                    os.link(real, target)  # the Hub cache holds the blob already: no second copy
                except OSError:
                    shutil.copyfile(real, target)
                os.chmod(target, 0o644)
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return digests


def _evict(snapshot_file: Path) -> None:
    blob = snapshot_file.resolve()
    snapshot_file.unlink(missing_ok=True)
    if blob != snapshot_file:
        blob.unlink(missing_ok=True)
