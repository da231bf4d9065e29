"""The model stage: pinned Hugging Face weights -> TensorRT-LLM engine (in the pinned container)
-> Triton `inflight_batcher_llm` model repository.

Output (the stage folder, published to out/<profile>/):
  model_repository/triton/{preprocessing,postprocessing,tensorrt_llm,tensorrt_llm_bls,ensemble}/
  model_repository/tokenizer/     tokenizer + config files of the checkpoint
  model_repository/engine/        TensorRT engine (backend tensorrt-engine)
  model_repository/checkpoint/    the verified checkpoint (backend pytorch: served as is)
  engine.json                     how the engine was made (docs/model.md)
  timing.cache                    TensorRT timing cache of the build (when built here)
  triton.json                     how the app disk runs Triton for it (records.TritonServing)
The app disk mounts model_repository/ at MODEL_ROOT in the Triton container.

Engine builds are not bit-reproducible; everything else here is (the repository is rendered from
templates and copied, verified files).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from pathlib import Path

from .. import container, hf, log
from ..config import ModelConfig
from ..errors import BadInput, ToolFailed, VerificationFailed
from ..graph import Context, Stage, StageResult
from ..records import TritonServing
from ..files import sha256_file
from ..lock import LOCK_FILE, ImagePin, ModelPin
from ..run import run

SOURCE = "model_engine"
MODEL_ROOT = "/models"  # where the app disk's Deployment mounts model_repository/
TRITON_MODELS = ("ensemble", "postprocessing", "preprocessing", "tensorrt_llm", "tensorrt_llm_bls")
LLMAPI = "llmapi"  # backend pytorch: model_engine/triton/llmapi/, one model configured by model.yaml
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack")
PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
ENGINE_JSON_FORMAT = 1


# ---------------------------------------------------------------- pure helpers (tested directly)

def trtllm_build_argv(m: ModelConfig) -> list[str]:
    """The trtllm-build command for the options in mithril.yaml (paths are inside the container)."""
    return [
        "trtllm-build",
        "--checkpoint_dir", "/tmp/trtllm-checkpoint",
        "--output_dir", "/out/engine",
        "--gemm_plugin", m.gemm_plugin,
        "--gpt_attention_plugin", "auto",
        "--remove_input_padding", "enable",
        "--context_fmha", "enable",
        "--kv_cache_type", "paged" if m.paged_kv_cache else "continuous",
        "--max_batch_size", str(m.max_batch_size),
        "--max_input_len", str(m.max_input_len),
        "--max_seq_len", str(m.max_seq_len),
        "--max_beam_width", str(m.max_beam_width),
        "--workers", str(m.tensor_parallel),
        "--output_timing_cache", "/out/timing.cache",
        "--log_level", "info",
    ]


def build_options(m: ModelConfig) -> dict:
    """The config values an engine depends on (an imported engine must match them)."""
    keys = ("family", "dtype", "tensor_parallel", "max_batch_size", "max_input_len", "max_seq_len",
            "max_beam_width", "gemm_plugin", "paged_kv_cache")
    return {k: getattr(m, k) for k in keys}


def template_values(m: ModelConfig) -> dict[str, str]:
    """Every ${…} of model_engine/triton/*/config.pbtxt."""
    engine_dir = f"{MODEL_ROOT}/engine"
    return {
        "triton_backend": "tensorrtllm",
        "triton_max_batch_size": str(m.max_batch_size),
        "max_queue_delay_microseconds": "0",
        "decoupled_mode": "false",
        "batching_strategy": "inflight_fused_batching" if m.inflight_batching else "V1",
        "batch_scheduler_policy": "guaranteed_no_evict",
        "engine_dir": engine_dir,
        "tokenizer_dir": f"{MODEL_ROOT}/tokenizer",
        "max_beam_width": str(m.max_beam_width),
        "kv_cache_free_gpu_mem_fraction": str(m.kv_cache_free_gpu_mem_fraction),
        "add_special_tokens": "true",
        "skip_special_tokens": "true",
        "max_input_len": str(m.max_input_len),
        "max_output_len": str(m.max_seq_len - m.max_input_len),
        "preprocessing_instance_count": "1",
        "postprocessing_instance_count": "1",
        "bls_instance_count": "1",
    }


def substitute(text: str, values: dict[str, str], where: str) -> str:
    """Replace every ${name}; an unknown name or anything left that looks like ${ is an error."""
    def one(match: re.Match) -> str:
        if match.group(1) not in values:
            raise BadInput(where, f"placeholder ${{{match.group(1)}}} has no value",
                           "add it to template_values() in pipeline/stages/model_engine.py or fix the template")
        return values[match.group(1)]

    out = PLACEHOLDER.sub(one, text)
    if "${" in out:
        line = out[: out.index("${")].count("\n") + 1
        raise BadInput(where, f"line {line}: malformed placeholder left after rendering")
    return out


def llmapi_model_yaml(m: ModelConfig) -> dict:
    """1/model.yaml of the llmapi layout: TensorRT-LLM LLM() arguments, then `triton_config`
    (key names as the backend's own model.yaml template uses them)."""
    return {"model": f"{MODEL_ROOT}/checkpoint", "tokenizer": f"{MODEL_ROOT}/tokenizer", "backend": "pytorch",
            "dtype": m.dtype, "tensor_parallel_size": m.tensor_parallel, "pipeline_parallel_size": 1,
            "max_batch_size": m.max_batch_size, "max_seq_len": m.max_seq_len, "max_beam_width": m.max_beam_width,
            "kv_cache_config": {"free_gpu_memory_fraction": m.kv_cache_free_gpu_mem_fraction},
            "triton_config": {"max_batch_size": 0, "decoupled": False}}


def render_repository(src: Path, dest: Path, m: ModelConfig) -> list[str]:
    """Render model_engine/triton into dest (the Triton model repository); return the files written."""
    if m.backend == "pytorch":
        import yaml

        folder = src / LLMAPI / "tensorrt_llm"
        if not (folder / "config.pbtxt").is_file():
            raise BadInput(f"{SOURCE}/triton/{LLMAPI}/tensorrt_llm/config.pbtxt", "template missing")
        (dest / "tensorrt_llm" / "1").mkdir(parents=True)
        shutil.copyfile(folder / "config.pbtxt", dest / "tensorrt_llm" / "config.pbtxt")
        shutil.copyfile(folder / "1" / "model.py", dest / "tensorrt_llm" / "1" / "model.py")
        (dest / "tensorrt_llm" / "1" / "model.yaml").write_text(
            yaml.safe_dump(llmapi_model_yaml(m), sort_keys=False))
        _normalise(dest)
        return ["tensorrt_llm/config.pbtxt", "tensorrt_llm/1/model.py", "tensorrt_llm/1/model.yaml"]
    values = template_values(m)
    written = []
    for model in TRITON_MODELS:
        folder = src / model
        where = f"{SOURCE}/triton/{model}/config.pbtxt"
        if not (folder / "config.pbtxt").is_file():
            raise BadInput(where, "template missing")
        (dest / model / "1").mkdir(parents=True)
        text = substitute((folder / "config.pbtxt").read_text(), values, where)
        (dest / model / "config.pbtxt").write_text(text)
        written.append(f"{model}/config.pbtxt")
        code = folder / "1" / "model.py"
        if code.is_file():
            shutil.copyfile(code, dest / model / "1" / "model.py")
            written.append(f"{model}/1/model.py")
    _normalise(dest)
    return written


def tokenizer_files(files: list[str]) -> list[str]:
    """Checkpoint files the pre/postprocessing models need (everything but the weights)."""
    return [f for f in files if not f.endswith(WEIGHT_SUFFIXES) and not f.endswith(".index.json")]


def _normalise(tree: Path) -> None:
    for p in [tree, *tree.rglob("*")]:
        if not p.is_symlink():
            os.chmod(p, 0o755 if p.is_dir() else 0o644)


def _json(data: dict) -> bytes:
    return json.dumps(data, indent=2, sort_keys=True).encode() + b"\n"


def _digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha256_file(p)
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- lock, config, import lookups

def model_config(ctx: Context) -> tuple[str, ModelConfig]:
    name = ctx.profile.model
    return name, ctx.config.models[name]


def model_pin(ctx: Context, name: str) -> ModelPin:
    pin = ctx.lock.models.get(name)
    if pin is None:
        raise BadInput(LOCK_FILE, f"models.{name}: no such entry",
                       f"run `mithril-build lock --model {name}` where the Hugging Face Hub is reachable")
    m = ctx.config.models[name]
    if pin.repo != m.repo:
        raise BadInput(LOCK_FILE, f"models.{name}.repo: {pin.repo} differs from mithril.yaml ({m.repo})",
                       f"run `mithril-build lock --model {name}`")
    return pin


def image_pin(ctx: Context, m: ModelConfig) -> ImagePin:
    pin = ctx.lock.image(m.image, ctx.locked)  # --locked refuses an unresolved digest
    if not pin.digest:
        raise BadInput(LOCK_FILE, f"images.{m.image}.digest: {pin.ref} is not resolved to a digest; "
                       "the engine is only built in an image pinned by digest",
                       "run `mithril-build lock` where the registry is reachable, or import an engine with --engine-dir")
    return pin


def engine_import_dir(ctx: Context, m: ModelConfig) -> Path | None:
    """--engine-dir, or models.<name>.engine_dir (relative to the project)."""
    value = ctx.engine_dir or m.engine_dir
    if not value:
        return None
    path = (ctx.root / value).resolve()
    if not (path / "engine.json").is_file():
        raise BadInput(str(path), "no engine.json here", "--engine-dir takes a folder written by the model stage "
                       "(engine.json next to engine/ or model_repository/engine/)")
    return path


def engine_files_dir(import_dir: Path) -> Path:
    for cand in (import_dir / "engine", import_dir / "model_repository" / "engine"):
        if cand.is_dir():
            return cand
    raise BadInput(str(import_dir), "no engine/ or model_repository/engine/ folder next to engine.json")


def gpu_key() -> list[list[str]] | str:
    """The GPUs an engine would be built for (engines are specific to the compute capability)."""
    try:
        return sorted([g.name, g.compute_capability] for g in container.query_gpus())
    except ToolFailed:
        return "no GPU"


# ---------------------------------------------------------------- the stage

class ModelEngine(Stage):
    name = "model"
    version = 1
    data = (SOURCE,)

    def enabled(self, ctx: Context) -> bool:
        return ctx.profile.model is not None

    def lock_entries(self, ctx: Context) -> list[str]:
        name, m = model_config(ctx)
        return [f"models.{name}"] + ([f"images.{m.image}"] if m.backend == "tensorrt-engine" else [])

    def key_inputs(self, ctx: Context) -> dict:
        name, m = model_config(ctx)
        key: dict = {"model": name, "config": m.model_dump(mode="json", exclude={"engine_dir"}),
                     "app_port": ctx.config.appdisk.app_port}
        if m.backend == "tensorrt-engine":
            imported = engine_import_dir(ctx, m)
            if imported:
                key["import"] = {"engine.json": sha256_file(imported / "engine.json"),
                                 "engine": _digests(engine_files_dir(imported))}
            else:
                key["gpu"] = gpu_key()
        return key

    def build(self, ctx: Context, out: Path, deps: dict[str, StageResult]) -> dict:
        name, m = model_config(ctx)
        pin = model_pin(ctx, name)
        files = hf.selected_files(name, pin, m.allow_patterns)
        imported = engine_import_dir(ctx, m) if m.backend == "tensorrt-engine" else None
        building = m.backend == "tensorrt-engine" and imported is None
        if building:  # fail on a missing image pin, runtime or GPU before downloading gigabytes
            image = image_pin(ctx, m)
            runtime = container.find_runtime()
            gpus = container.query_gpus()
        scratch = ctx.cache_dir / "tmp" / f"model-{name}"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        try:
            weights = scratch / "weights"
            digests = hf.download_model(name, pin, m.allow_patterns, weights,
                                        ctx.cache_dir / "inputs" / "huggingface", hf.hub_token())
            repo = out / "model_repository"
            for rel in tokenizer_files(files):
                _copy(weights / rel, repo / "tokenizer" / rel)
            checkpoint = {"repo": pin.repo, "commit": pin.commit, "files": digests}
            if m.backend == "pytorch":
                for rel in files:
                    _copy(weights / rel, repo / "checkpoint" / rel, link=True)
                record = {"format": ENGINE_JSON_FORMAT, "model": name, "backend": "pytorch", "family": m.family,
                          "checkpoint": checkpoint, "bit_reproducible": True,
                          "note": "no engine build: Triton serves the verified checkpoint with the LLM API"}
                (out / "engine.json").write_bytes(_json(record))
            elif imported:
                record = import_engine(imported, repo / "engine", out, name, m, checkpoint, ctx)
            else:
                record = build_engine(ctx, name, m, image, runtime, gpus, weights, scratch, repo / "engine",
                                      out, checkpoint)
                (out / "engine.json").write_bytes(_json(record))
            with log.step("Rendering the Triton model repository"):
                render_repository(ctx.root / SOURCE / "triton", repo / "triton", m)
            _normalise(repo)
            (out / TritonServing.FILE).write_bytes(_json(triton_serving(ctx).model_dump(mode="json")))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return {"model": name, "backend": m.backend, "tensor_parallel": m.tensor_parallel,
                "engine": {k: record.get(k) for k in ("image", "gpu", "versions", "fingerprint") if k in record},
                "imported": imported is not None}


def _copy(src: Path, dst: Path, link: bool = False) -> None:
    """Copy (or, for multi-GB weights, hard-link the verified blob: it is never modified in place)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if link:
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copyfile(src, dst)


def build_engine(ctx: Context, name: str, m: ModelConfig, image: ImagePin, runtime: str, gpus, weights: Path,
                 scratch: Path, engine_out: Path, out: Path, checkpoint: dict) -> dict:
    """Run model_engine/build_engine.sh in the pinned image; return the engine.json record."""
    build_dir = scratch / "build"
    build_dir.mkdir()
    mounts = [container.Mount(weights, "/weights"),
              container.Mount(ctx.root / SOURCE, "/scripts"),
              container.Mount(build_dir, "/out", readonly=False)]
    command = ["bash", "/scripts/build_engine.sh", m.family, m.dtype, str(m.tensor_parallel), "--",
               *trtllm_build_argv(m)]
    user = f"{os.getuid()}:{os.getgid()}" if runtime == "docker" else None
    argv = container.run_argv(runtime, image.pinned_ref, mounts, command, user=user)
    build_log = scratch / "engine-build.log"
    try:
        with log.step(f"Building the TensorRT-LLM engine for {name} ({runtime}, {gpus[0].name})",
                      f"Built the TensorRT-LLM engine for {name}"), open(build_log, "wb") as logf:
            run(argv, stdout=logf)
        engine_src = build_dir / "engine"
        if not any(engine_src.glob("rank*.engine")) or not (engine_src / "config.json").is_file():
            raise ToolFailed("the engine build finished but wrote no rank*.engine and config.json")
    except ToolFailed as e:  # the scratch folder goes; the log stays where the error says
        kept = ctx.cache_dir / "logs" / f"model-{name}-engine-build.log"
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(build_log, kept)
        tail = " | ".join(build_log.read_text(errors="replace").strip().splitlines()[-3:])
        raise ToolFailed(f"{e}; engine-build log: {kept}" + (f" (ends: {tail})" if tail else "")) from None
    shutil.copyfile(build_log, out / "engine-build.log")  # published with the engine; its digest is in the record
    shutil.copytree(engine_src, engine_out)
    record = {
        "format": ENGINE_JSON_FORMAT, "model": name, "backend": m.backend, "family": m.family,
        "bit_reproducible": False,
        "build_options": build_options(m),
        "image": {"ref": image.ref, "digest": image.digest},
        "versions": _read_json(build_dir / "versions.json"),
        "gpu": {**dataclasses.asdict(gpus[0]), "count": len(gpus)},
        "command": [a.replace(user, "$UID:$GID") if user else a for a in container.symbolic(argv, mounts)],
        "scripts": ctx.checkout_digests(SOURCE),
        "checkpoint": checkpoint,
        "outputs": _digests(engine_out),
        "fingerprint": _read_json(build_dir / "fingerprint.json"),
        "build_log": {"file": "engine-build.log", "sha256": sha256_file(out / "engine-build.log")},
    }
    if (build_dir / "timing.cache").is_file():
        shutil.copyfile(build_dir / "timing.cache", out / "timing.cache")
        record["timing_cache"] = {"sha256": sha256_file(out / "timing.cache")}
    return record


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None


def import_engine(src: Path, engine_out: Path, out: Path, name: str, m: ModelConfig, checkpoint: dict,
                  ctx: Context) -> dict:
    """Copy an engine built elsewhere after checking it against its engine.json and our inputs."""
    where = str(src / "engine.json")
    record = _read_json(src / "engine.json")
    if not isinstance(record, dict) or record.get("format") != ENGINE_JSON_FORMAT:
        raise BadInput(where, f"not an engine.json of format {ENGINE_JSON_FORMAT}")
    files = engine_files_dir(src)
    actual = _digests(files)
    if actual != record.get("outputs"):
        bad = sorted(k for k in set(actual) | set(record.get("outputs") or {})
                     if actual.get(k) != (record.get("outputs") or {}).get(k))
        raise VerificationFailed(f"{where}: outputs: engine files differ from the record: {', '.join(bad[:5])}")
    if record.get("checkpoint") != checkpoint:
        raise VerificationFailed(f"{where}: checkpoint: the engine was built from other weights than "
                                 f"models.{name} in {LOCK_FILE} ({checkpoint['repo']}@{checkpoint['commit'][:12]})")
    if record.get("build_options") != build_options(m):
        raise VerificationFailed(f"{where}: build_options differ from models.{name} in mithril.yaml")
    pin = ctx.lock.images.get(m.image)
    built_with = (record.get("image") or {}).get("digest")
    if pin is None or not pin.digest:
        if ctx.locked:
            raise BadInput(LOCK_FILE, f"images.{m.image}.digest: not resolved (--locked)",
                           "run `mithril-build lock` where the registry is reachable")
        log.warn(f"images.{m.image} is not pinned: cannot check the imported engine's image ({built_with})")
    elif built_with != pin.digest:
        raise VerificationFailed(f"{where}: image.digest {built_with} differs from images.{m.image} in {LOCK_FILE}")
    shutil.copytree(files, engine_out)
    shutil.copyfile(src / "engine.json", out / "engine.json")
    cache = src / "timing.cache"
    if cache.is_file() and (record.get("timing_cache") or {}).get("sha256") == sha256_file(cache):
        shutil.copyfile(cache, out / "timing.cache")
    log.info(f"imported the engine from {src} (verified against its engine.json)")
    return record


# ---------------------------------------------------------------- what the app disk reads (triton.json)

def triton_serving(ctx: Context) -> TritonServing:
    """How the app disk runs Triton for this model (appdisk/manifests/app.yaml.j2): GPU count,
    shared memory, the server's arguments and environment, the model mount point."""
    name, m = model_config(ctx)
    port = ctx.config.appdisk.app_port
    repo = f"{MODEL_ROOT}/triton"
    server = ["tritonserver", f"--model-repository={repo}", "--disable-auto-complete-config",
              "--exit-on-error=true", f"--http-port={port}", "--allow-grpc=false", "--allow-metrics=false"]
    tp = m.tensor_parallel
    if tp == 1:
        args = server
    else:  # one MPI rank per GPU; only rank 0 serves HTTP, the others load tensorrt_llm only
        args = ["mpirun", "--allow-run-as-root", "-n", "1", *server,
                "--backend-config=python,shm-region-prefix-name=prefix0_"]
        for rank in range(1, tp):
            args += [":", "-n", "1", "tritonserver", f"--model-repository={repo}", "--disable-auto-complete-config",
                     "--model-control-mode=explicit", "--load-model=tensorrt_llm", "--allow-http=false",
                     "--allow-grpc=false", "--allow-metrics=false",
                     f"--backend-config=python,shm-region-prefix-name=prefix{rank}_"]
    return TritonServing(
        model=name,
        backend=m.backend,
        gpus=tp,
        shm_size="2Gi",
        model_root=MODEL_ROOT,
        args=args,
        env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": "/tmp/hf", "HOME": "/tmp"},
    )
