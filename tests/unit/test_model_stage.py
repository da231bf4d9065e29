"""The model stage end to end against a fake hub and a fake container runtime / GPU.

The fake runtime checks the command line it gets and writes what build_engine.sh would write
(engine, timing cache, versions, fingerprint) into the `/out` mount, deterministically.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from pipeline import container, graph, inputs
from pipeline import lock as lk
from pipeline.config import load as load_config
from pipeline.errors import BadInput, ToolFailed, VerificationFailed
from pipeline.run import Completed
from pipeline.stages import model_engine as me
from pipeline.config import AzureOverride
from tests.conftest import mb
from tests.unit.fakehub import FakeHub, online_hub, small_model

REPO_ROOT = Path(__file__).resolve().parents[2]
REPO = "openai-community/gpt2-medium"
COMMIT = "6dcaa7a952f72f9298047fd5137cd6e4f05f41da"
DIGEST = "sha256:" + "ab" * 32  # a test fixture, not a real image digest
TOKEN = "hf_StageSecretToken987654321"


@pytest.fixture
def hub(monkeypatch, tmp_path):
    yield from online_hub(monkeypatch, tmp_path, REPO, COMMIT, small_model("gpt"), token=TOKEN)


class FakeHost:
    """docker (or podman) and nvidia-smi that exist only in this test."""

    def __init__(self, monkeypatch, runtime="docker", gpu=True):
        self.runtime, self.gpu, self.calls = runtime, gpu, []
        tools = {runtime, *(["nvidia-smi"] if gpu else [])} if runtime else ({"nvidia-smi"} if gpu else set())
        monkeypatch.setattr(container, "which", lambda name, path=None: f"/usr/bin/{name}" if name in tools else None)
        monkeypatch.delenv("MITHRIL_CONTAINER_RUNTIME", raising=False)
        monkeypatch.setattr(container, "run", self.smi)
        monkeypatch.setattr(me, "run", self.container_run)

    def smi(self, argv, **kw):
        assert argv[0] == "nvidia-smi"
        return Completed(tuple(argv), 0, b"NVIDIA A100 80GB PCIe, 8.0, 550.54.15, 81920\n", b"")

    def container_run(self, argv, stdout=None, **kw):
        self.calls.append(list(argv))
        assert argv[:2] == [self.runtime, "run"] and f"nvcr.io/nvidia/tritonserver@{DIGEST}" in argv
        vols = dict(reversed(argv[i + 1].rsplit(":", 2)[:2]) for i, a in enumerate(argv) if a == "--volume")
        weights, out = Path(vols["/weights"]), Path(vols["/out"])
        i = argv.index("/scripts/build_engine.sh")
        assert Path(vols["/scripts"], "build_engine.sh").is_file()
        assert argv[i + 4] == "--" and argv[i + 5] == "trtllm-build"
        seed = hashlib.sha256((weights / "model.safetensors").read_bytes() + " ".join(argv[i:]).encode()).digest()
        (out / "engine").mkdir()
        (out / "engine" / "rank0.engine").write_bytes(seed * 100)
        (out / "engine" / "config.json").write_text(json.dumps({"build_config": {"max_batch_size": 8}}))
        (out / "timing.cache").write_bytes(seed[:16] * 10)
        (out / "versions.json").write_text(json.dumps({"tensorrt_llm": "1.1.0", "tensorrt": "10.13", "cuda": "13.0"}))
        (out / "fingerprint.json").write_text(json.dumps({"results": [{"prompt": "p", "output_ids": [1, 2, 3]}]}))
        if stdout is not None:
            stdout.write(b"[TensorRT-LLM] build log\n")
        return Completed(tuple(argv), 0, b"", b"")


def make_ctx(tmp_path: Path, hub: FakeHub, name="gpt2", locked=False, image_digest=DIGEST, engine_dir=None,
             **model_update) -> graph.Context:
    root = tmp_path / "project"
    if not root.exists():
        root.mkdir(parents=True)
        shutil.copytree(REPO_ROOT / "model_engine", root / "model_engine")
        shutil.copy(REPO_ROOT / "mithril.yaml", root / "mithril.yaml")
    config = load_config(root / "mithril.yaml")
    if model_update:
        models = dict(config.models)
        models["gpt2-medium"] = models["gpt2-medium"].model_copy(update=model_update)
        config = config.model_copy(update={"models": models})
        if model_update.get("tensor_parallel", 1) > 1:  # a size with that many GPUs
            profiles = dict(config.profiles)
            profiles[name] = profiles[name].model_copy(update={"platform": "azure-trusted-launch", "azure": (
                AzureOverride(vm_size="Standard_NC96ads_A100_v4"))})
            config = config.model_copy(update={"profiles": profiles})
    m = config.models["gpt2-medium"]
    lock = lk.Lock(
        models={"gpt2-medium": lk.ModelPin.model_validate(
            hub.lock_entry(paths=[p for p in hub.files if me.hf.matches(p, m.allow_patterns)]))},
        images={"triton": lk.ImagePin(ref="nvcr.io/nvidia/tritonserver:26.02-trtllm-python-py3", digest=image_digest)})
    pname, prof = config.profile(name)
    cache = tmp_path / "cache"
    return graph.Context(root, config, pname, prof, lock, inputs.InputStore(cache / "inputs", lock, root), cache,
                         root / "out" / pname, locked, engine_dir)


def build(ctx: graph.Context) -> graph.StageResult:
    return graph.Orchestrator(ctx, {"model": me.ModelEngine}).run(["model"])["model"]


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_engine_build_outputs_and_record(hub, tmp_path, monkeypatch, capsys):
    from pipeline import invocation

    monkeypatch.setattr(invocation.begin(), "verbose", True)  # log every command line too
    host = FakeHost(monkeypatch, "docker")
    res = build(make_ctx(tmp_path, hub))
    logged = capsys.readouterr()
    assert TOKEN not in logged.out + logged.err
    assert any(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in hub.requests)  # it was used
    out = res.dir
    assert (out / "model_repository" / "engine" / "rank0.engine").is_file()
    assert sorted(p.name for p in (out / "model_repository" / "tokenizer").iterdir()) == [
        "config.json", "tokenizer.json", "tokenizer_config.json"]
    assert not (out / "model_repository" / "checkpoint").exists()  # the engine replaces the weights
    assert sorted(p.name for p in (out / "model_repository" / "triton").iterdir()) == sorted(me.TRITON_MODELS)
    rec = json.loads((out / "engine.json").read_text())
    assert rec["image"] == {"ref": "nvcr.io/nvidia/tritonserver:26.02-trtllm-python-py3", "digest": DIGEST}
    assert rec["gpu"]["name"] == "NVIDIA A100 80GB PCIe" and rec["gpu"]["compute_capability"] == "8.0"
    assert rec["gpu"]["driver"] == "550.54.15"
    assert rec["versions"]["tensorrt_llm"] == "1.1.0" and rec["fingerprint"]["results"][0]["output_ids"] == [1, 2, 3]
    assert rec["timing_cache"]["sha256"] == hashlib.sha256((out / "timing.cache").read_bytes()).hexdigest()
    assert rec["outputs"]["rank0.engine"] == hashlib.sha256(
        (out / "model_repository/engine/rank0.engine").read_bytes()).hexdigest()
    assert rec["checkpoint"]["commit"] == COMMIT
    assert rec["checkpoint"]["files"]["model.safetensors"] == hashlib.sha256(hub.files["model.safetensors"]).hexdigest()
    assert rec["bit_reproducible"] is False
    assert rec["command"][:2] == ["docker", "run"] and "$WEIGHTS:/weights:ro" in rec["command"]
    assert "--user" in rec["command"] and "$UID:$GID" in rec["command"]
    assert "trtllm-build" in rec["command"] and rec["scripts"]["model_engine/build_engine.sh"].endswith("+x")
    # the container really got the weights read-only and only /out writable
    argv = host.calls[0]
    assert [argv[i + 1].rsplit(":", 1)[1] for i, a in enumerate(argv) if a == "--volume"] == ["ro", "ro", "rw"]
    # no absolute host path, no token in any output or record
    for rel, data in {**files_of(out), **files_of(res.dir.parent)}.items():
        assert str(tmp_path).encode() not in data, rel
        assert TOKEN.encode() not in data, rel
    # published to out/<profile>/
    assert (tmp_path / "project/out/gpt2/engine.json").read_bytes() == (out / "engine.json").read_bytes()


def test_two_builds_are_byte_identical(hub, tmp_path, monkeypatch):
    FakeHost(monkeypatch, "podman")
    a = files_of(build(make_ctx(tmp_path / "a", hub)).dir)
    b = files_of(build(make_ctx(tmp_path / "b", hub)).dir)
    a.pop("_record.json"), b.pop("_record.json")  # holds build_seconds
    assert a.keys() == b.keys() and a == b
    assert any(k.startswith("model_repository/triton/") for k in a)


def test_second_run_is_a_cache_hit(hub, tmp_path, monkeypatch):
    host = FakeHost(monkeypatch)
    ctx = make_ctx(tmp_path, hub)
    build(ctx)
    n = len(hub.requests)
    build(ctx)
    assert len(host.calls) == 1 and len(hub.requests) == n


def test_no_container_runtime_fails_before_download(hub, tmp_path, monkeypatch):
    FakeHost(monkeypatch, runtime=None)
    with pytest.raises(ToolFailed, match="no container runtime was found"):
        build(make_ctx(tmp_path, hub))
    assert not any("/resolve/" in r.url.path for r in hub.requests)
    assert not (tmp_path / "project/out/gpt2/engine.json").exists()


def test_no_gpu_fails_naming_nvidia_smi(hub, tmp_path, monkeypatch):
    FakeHost(monkeypatch, "docker", gpu=False)
    with pytest.raises(ToolFailed, match="needs an NVIDIA GPU, but nvidia-smi was not found"):
        build(make_ctx(tmp_path, hub))


def test_unresolved_image_is_refused(hub, tmp_path, monkeypatch):
    FakeHost(monkeypatch)
    with pytest.raises(BadInput, match=r"images\.triton\.digest: .* is not resolved to a digest \(--locked\)"):
        build(make_ctx(tmp_path, hub, locked=True, image_digest=None))
    with pytest.raises(BadInput, match="only built in an image pinned by digest"):
        build(make_ctx(tmp_path / "u", hub, locked=False, image_digest=None))


def test_missing_lock_entry_is_bad_input(hub, tmp_path, monkeypatch):
    FakeHost(monkeypatch)
    ctx = make_ctx(tmp_path, hub)
    ctx = graph.Context(**{**ctx.__dict__, "lock": lk.Lock(images=ctx.lock.images)})
    with pytest.raises(BadInput, match=r"models\.gpt2-medium: no such entry.*lock --model gpt2-medium"):
        build(ctx)


def test_pytorch_backend_serves_the_checkpoint(hub, tmp_path, monkeypatch):
    host = FakeHost(monkeypatch, runtime=None, gpu=False)  # needs neither
    out = build(make_ctx(tmp_path, hub, backend="pytorch")).dir
    assert host.calls == []
    ckpt = out / "model_repository" / "checkpoint"
    assert (ckpt / "model.safetensors").read_bytes() == hub.files["model.safetensors"]
    assert not (out / "model_repository" / "engine").exists()
    assert 'backend: "python"' in (out / "model_repository/triton/tensorrt_llm/config.pbtxt").read_text()
    assert (out / "model_repository/triton/tensorrt_llm/1/model.py").is_file()
    rec = json.loads((out / "engine.json").read_text())
    assert rec["backend"] == "pytorch" and rec["checkpoint"]["commit"] == COMMIT


def test_engine_import_verified(hub, tmp_path, monkeypatch):
    FakeHost(monkeypatch)
    built = build(make_ctx(tmp_path / "gpu-host", hub)).dir
    elsewhere = tmp_path / "imported"
    elsewhere.mkdir()
    shutil.copytree(built / "model_repository" / "engine", elsewhere / "engine")
    shutil.copy(built / "engine.json", elsewhere / "engine.json")
    shutil.copy(built / "timing.cache", elsewhere / "timing.cache")

    host = FakeHost(monkeypatch, runtime=None, gpu=False)  # the importing host has neither
    out = build(make_ctx(tmp_path, hub, engine_dir=Path("../imported"))).dir  # relative to the project
    assert host.calls == []
    assert (out / "engine.json").read_bytes() == (built / "engine.json").read_bytes()
    assert files_of(out / "model_repository") == files_of(built / "model_repository")

    # a tampered engine is refused
    with open(elsewhere / "engine" / "rank0.engine", "ab") as f:
        f.write(b"x")
    with pytest.raises(VerificationFailed, match="engine files differ from the record: rank0.engine"):
        build(make_ctx(tmp_path / "t", hub, engine_dir=elsewhere))


def test_engine_import_with_other_options_is_refused(hub, tmp_path, monkeypatch):
    FakeHost(monkeypatch)
    built = build(make_ctx(tmp_path / "gpu-host", hub)).dir
    with pytest.raises(VerificationFailed, match="build_options differ"):
        build(make_ctx(tmp_path, hub, engine_dir=built, max_batch_size=4))


def test_engine_dir_without_engine_json_is_bad_input(hub, tmp_path, monkeypatch):
    FakeHost(monkeypatch)
    with pytest.raises(BadInput, match="no engine.json here"):
        build(make_ctx(tmp_path, hub, engine_dir=tmp_path))


def test_engine_dir_reaches_every_command_through_the_context(tmp_path):
    """--engine-dir is an override like --model: `plan` and `all` see it too (here: a folder
    that is no engine, refused before anything is built)."""
    for command in ("plan", "all"):
        res = mb(command, "--project", REPO_ROOT, "--profile", "gpt2", "--cache-dir", tmp_path / "cache",
                 "--engine-dir", tmp_path)
        assert res.returncode == 2 and "no engine.json here" in res.stderr, res.stderr
    assert not (tmp_path / "cache" / "stages").exists()


def test_triton_manifest_values(hub, tmp_path, monkeypatch):
    """The model stage writes what the app disk needs to run Triton (triton.json)."""
    from pipeline.records import TritonServing, read

    FakeHost(monkeypatch)
    ctx = make_ctx(tmp_path, hub)
    values = read(build(ctx).dir, TritonServing).model_dump()
    assert values == me.triton_serving(ctx).model_dump()
    assert values["gpus"] == 1 and "runtime_class" not in values and values["model_root"] == "/models"
    assert values["args"][0] == "tritonserver" and "--model-repository=/models/triton" in values["args"]
    assert f"--http-port={ctx.config.appdisk.app_port}" in values["args"]
    tp2 = make_ctx(tmp_path / "tp", hub, tensor_parallel=2)
    args = me.triton_serving(tp2).args
    assert args[0] == "mpirun" and args.count("tritonserver") == 2 and me.triton_serving(tp2).gpus == 2


def test_model_stage_disabled_without_model(hub, tmp_path):
    ctx = make_ctx(tmp_path, hub, name="demo")
    assert not me.ModelEngine().enabled(ctx)


def test_failed_engine_build_keeps_its_log(hub, tmp_path, monkeypatch):
    """The container exits non-zero after writing to its log: the error names the kept log, whose
    bytes are what the container wrote; nothing is published."""
    host = FakeHost(monkeypatch)

    def failing(argv, stdout=None, **kw):
        host.calls.append(list(argv))
        stdout.write(b"[TensorRT-LLM] converting\n[TensorRT-LLM][ERROR] out of memory\n")
        raise ToolFailed("docker run exited with status 1")

    monkeypatch.setattr(me, "run", failing)
    ctx = make_ctx(tmp_path, hub)
    with pytest.raises(ToolFailed, match=r"status 1; engine-build log: .*model-gpt2-medium-engine-build.log "
                                         r"\(ends: .*out of memory\)"):
        build(ctx)
    kept = ctx.cache_dir / "logs" / "model-gpt2-medium-engine-build.log"
    assert kept.read_bytes() == b"[TensorRT-LLM] converting\n[TensorRT-LLM][ERROR] out of memory\n"
    assert not (ctx.out_dir / "engine.json").exists()


def test_engine_build_log_is_published_with_the_engine(hub, tmp_path, monkeypatch):
    FakeHost(monkeypatch)
    result = build(make_ctx(tmp_path, hub))
    record = json.loads((result.dir / "engine.json").read_text())
    assert (result.dir / "engine-build.log").read_bytes() == b"[TensorRT-LLM] build log\n"
    assert record["build_log"]["sha256"] == hashlib.sha256(b"[TensorRT-LLM] build log\n").hexdigest()
