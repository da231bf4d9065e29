"""Build small OCI image archives deterministically from files (fixed mtimes, owners, order).

The archive is an OCI image layout in a tar (`oci-layout`, `index.json`, `blobs/sha256/…`) that
also carries a docker-archive `manifest.json`, so `skopeo`, `podman load` and containerd
(`ctr images import`, k3s airgap import) all accept it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from .archive import Entry, deterministic_tar


def _blob(data: bytes) -> tuple[str, bytes]:
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


def _json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def image_archive(name: str, tag: str, rootfs: Sequence[Entry], *, entrypoint: Sequence[str],
                  mtime: int, exposed_ports: Sequence[int] = (), user: str = "0:0",
                  env: Sequence[str] = ()) -> tuple[bytes, str]:
    """Return (archive bytes, manifest digest) for a single-layer linux/amd64 image.
    `env` holds "NAME=value" strings, in the order given."""
    layer_digest, layer = _blob(deterministic_tar(rootfs, mtime))
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": list(entrypoint), "User": user, "WorkingDir": "/", "Env": list(env) or None,
                   "ExposedPorts": {f"{p}/tcp": {} for p in exposed_ports} or None},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }
    config["config"] = {k: v for k, v in config["config"].items() if v is not None}
    config_digest, config_bytes = _blob(_json(config))
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": len(config_bytes)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": len(layer)}],
    }
    manifest_digest, manifest_bytes = _blob(_json(manifest))
    ref = f"{name}:{tag}"
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": manifest["mediaType"], "digest": manifest_digest,
                       "size": len(manifest_bytes),
                       "annotations": {"io.containerd.image.name": ref,
                                       "org.opencontainers.image.ref.name": tag}}],
    }

    def path(digest: str) -> str:
        return "blobs/sha256/" + digest.split(":", 1)[1]

    docker_manifest = [{"Config": path(config_digest), "RepoTags": [ref], "Layers": [path(layer_digest)]}]
    entries = [
        Entry("blobs", 0o755), Entry("blobs/sha256", 0o755),
        Entry(path(layer_digest), data=layer),
        Entry(path(config_digest), data=config_bytes),
        Entry(path(manifest_digest), data=manifest_bytes),
        Entry("oci-layout", data=_json({"imageLayoutVersion": "1.0.0"})),
        Entry("index.json", data=_json(index)),
        Entry("manifest.json", data=_json(docker_manifest)),
    ]
    return deterministic_tar(entries, mtime), manifest_digest
