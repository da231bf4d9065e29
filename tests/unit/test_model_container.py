"""The engine container's command line is a contract: exact argv for docker and podman."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import container
from pipeline.errors import BadInput, ToolFailed

IMAGE = "nvcr.io/nvidia/tritonserver@sha256:" + "0123456789abcdef" * 4
MOUNTS = [container.Mount(Path("/cache/w"), "/weights"), container.Mount(Path("/src/model_engine"), "/scripts"),
          container.Mount(Path("/cache/build"), "/out", readonly=False)]
CMD = ["bash", "/scripts/build_engine.sh", "llama", "float16", "1", "--", "trtllm-build", "--workers", "1"]


def test_docker_argv_exact():
    assert container.run_argv("docker", IMAGE, MOUNTS, CMD, user="1000:1000") == [
        "docker", "run", "--rm", "--network=none", "--pull=missing",
        "--gpus", "all",
        "--shm-size", "16g", "--ulimit", "memlock=-1:-1", "--ulimit", "stack=67108864:67108864",
        "--user", "1000:1000",
        "--volume", "/cache/w:/weights:ro", "--volume", "/src/model_engine:/scripts:ro",
        "--volume", "/cache/build:/out:rw",
        "--workdir", "/work", IMAGE, *CMD]


def test_podman_argv_exact():
    assert container.run_argv("podman", IMAGE, MOUNTS, CMD) == [
        "podman", "run", "--rm", "--network=none", "--pull=missing",
        "--device", "nvidia.com/gpu=all", "--security-opt=label=disable",
        "--shm-size", "16g", "--ulimit", "memlock=-1:-1", "--ulimit", "stack=67108864:67108864",
        "--volume", "/cache/w:/weights:ro", "--volume", "/src/model_engine:/scripts:ro",
        "--volume", "/cache/build:/out:rw",
        "--workdir", "/work", IMAGE, *CMD]


@pytest.mark.parametrize("image", [
    "nvcr.io/nvidia/tritonserver:26.02-trtllm-python-py3",
    "nvcr.io/nvidia/tritonserver:latest",
    "nvcr.io/nvidia/tritonserver",
    "nvcr.io/nvidia/tritonserver@sha256:short",
])
def test_only_digest_pinned_images_run(image):
    with pytest.raises(BadInput, match="not pinned by @sha256"):
        container.run_argv("docker", image, MOUNTS, CMD)


def test_no_latest_and_inputs_read_only():
    for runtime in container.RUNTIMES:
        argv = container.run_argv(runtime, IMAGE, MOUNTS, CMD)
        assert not any(":latest" in a for a in argv)
        vols = [argv[i + 1] for i, a in enumerate(argv) if a == "--volume"]
        assert [v.rsplit(":", 1)[1] for v in vols] == ["ro", "ro", "rw"]
        assert [v for v in vols if v.endswith(":rw")] == ["/cache/build:/out:rw"]


def test_symbolic_hides_host_paths():
    argv = container.run_argv("podman", IMAGE, MOUNTS, CMD)
    sym = container.symbolic(argv, MOUNTS)
    assert "$WEIGHTS:/weights:ro" in sym and "$OUT:/out:rw" in sym
    assert not any("/cache/" in a or "/src/" in a for a in sym)


def test_no_runtime_names_what_is_missing(monkeypatch):
    monkeypatch.setattr(container, "which", lambda name, path=None: None)
    monkeypatch.delenv("MITHRIL_CONTAINER_RUNTIME", raising=False)
    with pytest.raises(ToolFailed, match="no container runtime was found.*docker or podman"):
        container.find_runtime()


def test_runtime_choice(monkeypatch):
    present = {"podman"}
    monkeypatch.setattr(container, "which", lambda name, path=None: f"/usr/bin/{name}" if name in present else None)
    monkeypatch.delenv("MITHRIL_CONTAINER_RUNTIME", raising=False)
    assert container.find_runtime() == "podman"
    present.add("docker")
    assert container.find_runtime() == "docker"
    monkeypatch.setenv("MITHRIL_CONTAINER_RUNTIME", "podman")
    assert container.find_runtime() == "podman"
    monkeypatch.setenv("MITHRIL_CONTAINER_RUNTIME", "lxc")
    with pytest.raises(BadInput, match="MITHRIL_CONTAINER_RUNTIME"):
        container.find_runtime()


def test_no_gpu_names_nvidia_smi(monkeypatch):
    monkeypatch.setattr(container, "which", lambda name, path=None: None)
    with pytest.raises(ToolFailed, match="needs an NVIDIA GPU, but nvidia-smi was not found"):
        container.query_gpus()


def test_parse_nvidia_smi():
    gpus = container.parse_nvidia_smi("NVIDIA A100 80GB PCIe, 8.0, 550.54.15, 81920\nNVIDIA H100, 9.0, 560.1, 81559\n")
    assert gpus[0] == container.Gpu("NVIDIA A100 80GB PCIe", "8.0", "550.54.15", 81920)
    assert gpus[1].compute_capability == "9.0"
    assert container.parse_nvidia_smi("") == []


def test_image_refs():
    assert container.split_ref("nvcr.io/nvidia/tritonserver:26.02-trtllm-python-py3") == (
        "nvcr.io", "nvidia/tritonserver", "26.02-trtllm-python-py3")
    with pytest.raises(BadInput, match="latest"):
        container.split_ref("nvcr.io/nvidia/tritonserver:latest")
    with pytest.raises(BadInput):
        container.split_ref("tritonserver:26.02")  # no registry host


def test_unreachable_registry_is_a_clear_error():
    # .invalid never resolves (RFC 2606): the error names the registry and says the pin stays unresolved
    with pytest.raises(ToolFailed, match="cannot reach the registry registry.invalid.*unresolved"):
        container.resolve_image_digest("registry.invalid/nvidia/tritonserver:26.02-trtllm-python-py3", timeout=5)
