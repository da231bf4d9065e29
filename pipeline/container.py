"""The engine-build container: which runtime, which GPU, and the exact `run` command line.

The argv is a contract (tests/unit/test_model_container.py): the image only by `@sha256:` digest,
all GPUs (`--gpus all` for docker, CDI `--device nvidia.com/gpu=all` for podman), a fixed
`--shm-size` and ulimits, no network, inputs mounted read-only and only the output writable.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import BadInput, ToolFailed
from .run import run, which

RUNTIMES = ("docker", "podman")
SHM_SIZE = "16g"
# TensorRT-LLM's documented container settings: unlimited locked memory, 64 MiB stack.
ULIMITS = ("memlock=-1:-1", "stack=67108864:67108864")
DIGEST_REF = re.compile(r"[a-z0-9][a-z0-9._/-]*(:[0-9]+)?/[a-z0-9._/-]+@sha256:[0-9a-f]{64}")  # fullmatch


@dataclass(frozen=True)
class Mount:
    source: Path
    target: str
    readonly: bool = True


@dataclass(frozen=True)
class Gpu:
    name: str
    compute_capability: str
    driver: str
    memory_mib: int | None = None


def find_runtime(wanted: str | None = None) -> str:
    """docker or podman ($MITHRIL_CONTAINER_RUNTIME picks one); a clear error when neither exists."""
    wanted = wanted or os.environ.get("MITHRIL_CONTAINER_RUNTIME") or None
    if wanted and wanted not in RUNTIMES:
        raise BadInput("MITHRIL_CONTAINER_RUNTIME", f"{wanted!r} is not a supported runtime", "use docker or podman")
    for name in ([wanted] if wanted else RUNTIMES):
        if which(name):
            return name
    raise ToolFailed("the tensorrt-engine backend builds the engine in a container, but no container runtime "
                     f"was found ({wanted or 'docker or podman'} not on PATH): install docker or podman with the "
                     "NVIDIA Container Toolkit, or import an engine built elsewhere with --engine-dir")


def query_gpus() -> list[Gpu]:
    """The host's NVIDIA GPUs from nvidia-smi; a clear error when there is none."""
    if not which("nvidia-smi"):
        raise ToolFailed("the tensorrt-engine backend needs an NVIDIA GPU, but nvidia-smi was not found "
                         "(no NVIDIA driver on this machine): build on a GPU host, or import an engine built "
                         "elsewhere with --engine-dir")
    res = run(["nvidia-smi", "--query-gpu=name,compute_cap,driver_version,memory.total",
               "--format=csv,noheader,nounits"])
    gpus = parse_nvidia_smi(res.text)
    if not gpus:
        raise ToolFailed("the tensorrt-engine backend needs an NVIDIA GPU, but nvidia-smi lists none")
    return gpus


def parse_nvidia_smi(text: str) -> list[Gpu]:
    gpus = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 3 and parts[0]:
            mem = int(parts[3]) if len(parts) > 3 and parts[3].isascii() and parts[3].isdigit() else None
            gpus.append(Gpu(parts[0], parts[1], parts[2], mem))
    return gpus


def run_argv(runtime: str, image: str, mounts: list[Mount], command: list[str], *,
             env: dict[str, str] | None = None, workdir: str = "/work", user: str | None = None) -> list[str]:
    """The full `docker run` / `podman run` command line."""
    if runtime not in RUNTIMES:
        raise BadInput("container runtime", f"{runtime!r} is not supported", "use docker or podman")
    if not DIGEST_REF.fullmatch(image):
        raise BadInput("mithril.lock", f"images: {image!r} is not pinned by @sha256: digest",
                       "run `mithril-build lock` where the registry is reachable")
    argv = [runtime, "run", "--rm", "--network=none", "--pull=missing"]
    if runtime == "docker":
        argv += ["--gpus", "all"]
    else:  # podman reaches GPUs through CDI specs (nvidia-ctk cdi generate)
        argv += ["--device", "nvidia.com/gpu=all", "--security-opt=label=disable"]
    argv += ["--shm-size", SHM_SIZE]
    for u in ULIMITS:
        argv += ["--ulimit", u]
    if user:
        argv += ["--user", user]
    for m in mounts:
        argv += ["--volume", f"{m.source}:{m.target}:{'ro' if m.readonly else 'rw'}"]
    for k, v in sorted((env or {}).items()):
        argv += ["--env", f"{k}={v}"]
    argv += ["--workdir", workdir, image, *command]
    return argv


def symbolic(argv: list[str], mounts: list[Mount]) -> list[str]:
    """argv with host paths replaced by `$TARGET` names, for records (no absolute host paths)."""
    out = []
    for a in argv:
        for m in mounts:
            a = a.replace(f"{m.source}:", f"${m.target.strip('/').upper().replace('/', '_')}:")
        out.append(a)
    return out


MANIFEST_TYPES = ("application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, "
                  "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json")


def split_ref(ref: str) -> tuple[str, str, str]:
    """'nvcr.io/nvidia/tritonserver:26.02-trtllm-python-py3' -> (registry, repository, tag)."""
    m = re.fullmatch(r"([a-z0-9.-]+(?::[0-9]+)?)/([a-z0-9._/-]+):([\w][\w.-]{0,127})", ref)
    if not m or "." not in m.group(1):
        raise BadInput("mithril.lock", f"images: {ref!r} is not a registry/repository:tag reference",
                       "write e.g. nvcr.io/nvidia/tritonserver:26.02-trtllm-python-py3")
    if m.group(3) == "latest":
        raise BadInput("mithril.lock", f"images: {ref!r}: ':latest' is not allowed", "pin a version tag")
    return m.group(1), m.group(2), m.group(3)


def resolve_image_digest(ref: str, timeout: float = 30) -> str:
    """The manifest (index) digest a registry serves for ref, via the registry HTTP API v2
    (anonymous bearer token when the registry asks for one). Raises ToolFailed when unreachable."""
    import json
    import urllib.error
    import urllib.parse
    import urllib.request

    registry, repo, tag = split_ref(ref)
    url = f"https://{registry}/v2/{repo}/manifests/{tag}"

    def head(token: str | None):
        req = urllib.request.Request(url, method="HEAD", headers={"Accept": MANIFEST_TYPES})
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        return urllib.request.urlopen(req, timeout=timeout)

    try:
        try:
            resp = head(None)
        except urllib.error.HTTPError as e:
            challenge = e.headers.get("WWW-Authenticate", "") if e.code == 401 else ""
            if not challenge.lower().startswith("bearer "):
                raise
            params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
            query = {"scope": f"repository:{repo}:pull"}
            if "service" in params:
                query["service"] = params["service"]
            with urllib.request.urlopen(f"{params['realm']}?{urllib.parse.urlencode(query)}", timeout=timeout) as t:
                body = json.load(t)
            resp = head(body.get("token") or body.get("access_token"))
        digest = resp.headers.get("Docker-Content-Digest", "")
    except urllib.error.HTTPError as e:
        raise ToolFailed(f"{ref}: registry answered HTTP {e.code} for {url}") from None
    except (OSError, ValueError, KeyError) as e:
        raise ToolFailed(f"{ref}: cannot reach the registry {registry} ({getattr(e, 'reason', e)}); "
                         "the image stays unresolved in mithril.lock") from None
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        raise ToolFailed(f"{ref}: the registry sent no usable Docker-Content-Digest header ({digest!r})")
    return digest
