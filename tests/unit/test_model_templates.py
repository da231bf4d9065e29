"""Triton model repository rendering for both models and both backends; trtllm-build options."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from pipeline import config
from pipeline.errors import BadInput
from pipeline.stages import model_engine as me
from tests.unit import upstream

REPO = Path(__file__).resolve().parents[2]
TRITON = REPO / "model_engine" / "triton"
CONFIG = config.load(REPO / "mithril.yaml")
MODELS = ["Llama-2-7b-hf", "gpt2-medium"]


def model(name: str, **update) -> config.ModelConfig:
    return CONFIG.models[name].model_copy(update=update)


# ---- a strict parser for the protobuf text format subset config.pbtxt uses

TOKEN = re.compile(r'\s*(?:(#[^\n]*)|("(?:[^"\\\n]|\\.)*")|(-?\d+(?:\.\d+)?)|([A-Za-z_][A-Za-z0-9_]*)|([{}\[\]:,]))')


def tokens(text: str) -> list[str]:
    out, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ValueError(f"bad character at {text[pos:pos + 20]!r}")
        pos = m.end()
        if not m.group(1):
            out.append(next(g for g in m.groups()[1:] if g is not None))
    return out


def parse_pbtxt(text: str) -> dict:
    """field := IDENT (':' scalar | ':'? '{' fields '}' | ':' '[' items ']'); repeated fields become lists."""
    toks = tokens(text)
    pos = 0

    def peek():
        return toks[pos] if pos < len(toks) else None

    def take(expected=None):
        nonlocal pos
        tok = peek()
        if tok is None or (expected and tok != expected):
            raise ValueError(f"expected {expected or 'a token'}, got {tok!r} at token {pos}")
        pos += 1
        return tok

    def scalar():
        tok = take()
        if tok in "{}[]:,":
            raise ValueError(f"expected a value, got {tok!r}")
        return tok

    def message(end):
        fields: dict = {}
        while peek() != end:
            name = take()
            if not re.fullmatch(r"[A-Za-z_]\w*", name):
                raise ValueError(f"expected a field name, got {name!r}")
            if peek() == ":":
                take(":")
            if peek() == "{":
                take("{")
                value = message("}")
                take("}")
            elif peek() == "[":
                take("[")
                value = []
                while peek() != "]":
                    if peek() == "{":
                        take("{")
                        value.append(message("}"))
                        take("}")
                    else:
                        value.append(scalar())
                    if peek() == ",":
                        take(",")
                    elif peek() != "]":
                        raise ValueError(f"expected , or ] in list, got {peek()!r}")
                take("]")
            else:
                value = scalar()
            fields.setdefault(name, []).append(value)
        return fields

    result = message(None)
    if pos != len(toks):
        raise ValueError("trailing tokens")
    return result


def test_line_grammar_rejects_broken_text():
    with pytest.raises(ValueError):
        parse_pbtxt('name: "x"\ninput [ { name: "a" }')
    with pytest.raises(ValueError):
        parse_pbtxt("max_batch_size: ${triton_max_batch_size}")
    assert parse_pbtxt('a: 1\nb { c: "d" }\ne [ 1, 2 ]') == {"a": ["1"], "b": [{"c": ['"d"']}], "e": [["1", "2"]]}


def model_config_proto():
    """Triton's ModelConfig message, from the model_config.proto of the pinned container's Triton
    (vendored: tests/fixtures/upstream/triton/, compiled at test time)."""
    return upstream.triton_model_config()


def render(tmp_path: Path, name: str, **update) -> Path:
    dest = tmp_path / f"{name}-{update.get('backend', 'trt')}"
    me.render_repository(TRITON, dest, model(name, **update))
    return dest


@pytest.mark.parametrize("backend", ["tensorrt-engine", "pytorch"])
@pytest.mark.parametrize("name", MODELS)
def test_render_no_placeholder_left_and_parses(tmp_path, name, backend):
    dest = render(tmp_path, name, backend=backend)
    proto = model_config_proto()
    if backend == "pytorch":  # the llmapi layout: one model, configured by 1/model.yaml
        assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == [
            "tensorrt_llm/1/model.py", "tensorrt_llm/1/model.yaml", "tensorrt_llm/config.pbtxt"]
        text = (dest / "tensorrt_llm" / "config.pbtxt").read_text()
        fields = parse_pbtxt(text)
        assert fields["backend"] == ['"python"'] and "max_batch_size" not in fields  # model.yaml holds it
        names = {i["name"][0].strip('"') for i in fields["input"][0]}
        assert {"text_input", "sampling_param_max_tokens", "sampling_param_seed"} <= names
        from google.protobuf import text_format

        text_format.Parse(text, proto())
        import yaml

        conf = yaml.safe_load((dest / "tensorrt_llm" / "1" / "model.yaml").read_text())
        assert conf["backend"] == "pytorch" and conf["model"] == "/models/checkpoint"
        assert conf["tensor_parallel_size"] == CONFIG.models[name].tensor_parallel
        assert conf["triton_config"] == {"max_batch_size": 0, "decoupled": False}
        return
    assert sorted(p.name for p in dest.iterdir()) == sorted(me.TRITON_MODELS)
    for triton_model in me.TRITON_MODELS:
        text = (dest / triton_model / "config.pbtxt").read_text()
        assert "${" not in text and "$" not in text
        fields = parse_pbtxt(text)
        assert fields["name"] == [f'"{triton_model}"']
        assert fields["max_batch_size"] == [str(CONFIG.models[name].max_batch_size)]
        from google.protobuf import text_format

        msg = text_format.Parse(text, proto())  # unknown fields or bad values raise
        assert msg.name == triton_model and msg.max_batch_size == CONFIG.models[name].max_batch_size
    trt = parse_pbtxt((dest / "tensorrt_llm" / "config.pbtxt").read_text())
    params = {p["key"][0].strip('"'): p["value"][0]["string_value"][0].strip('"') for p in trt["parameters"]}
    assert trt["backend"] == ['"tensorrtllm"']
    assert params["gpt_model_type"] == "inflight_fused_batching" and params["gpt_model_path"] == "/models/engine"
    # only keys the C++ backend of TensorRT-LLM 1.1 reads (its GetParameter calls), "seed" as its input name
    assert "tensor_parallel_size" not in params and "FORCE_CPU_ONLY_INPUT_TENSORS" not in params
    assert set(params) <= BACKEND_PARAMETERS
    inputs = {i["name"][0].strip('"') for i in trt["input"][0]}
    assert "seed" in inputs and "random_seed" not in inputs
    pre = parse_pbtxt((dest / "preprocessing" / "config.pbtxt").read_text())
    assert pre["parameters"][0]["value"][0]["string_value"] == ['"/models/tokenizer"']
    assert not (dest / "tensorrt_llm" / "1" / "model.py").exists()
    for python_model in ("preprocessing", "postprocessing", "tensorrt_llm_bls"):
        assert (dest / python_model / "1" / "model.py").is_file()
    assert (dest / "ensemble" / "1").is_dir()


# The parameter keys the tensorrtllm C++ backend reads (GetParameter in inflight_batcher_llm/src of
# triton-inference-server/tensorrtllm_backend at c2e65b8, May 2025, the last commit before the
# backend moved into TensorRT-LLM's triton_backend/; the same names are in TensorRT-LLM's template).
BACKEND_PARAMETERS = {
    "batch_scheduler_policy", "cancellation_check_period_ms", "cross_kv_cache_fraction", "cuda_graph_cache_size",
    "cuda_graph_mode", "decoding_mode", "eagle_choices", "enable_chunked_context", "enable_kv_cache_reuse",
    "enable_trt_overlap", "encoder_model_path", "exclude_input_in_output", "executor_worker_path", "gpt_model_path",
    "gpt_model_type", "gpu_device_ids", "gpu_weights_percent", "guided_decoding_backend", "iter_stats_max_iterations",
    "kv_cache_free_gpu_mem_fraction", "kv_cache_host_memory_bytes", "kv_cache_onboard_blocks",
    "lookahead_ngram_size", "lookahead_verification_set_size", "lookahead_window_size", "max_beam_width",
    "max_tokens_in_paged_kv_cache", "medusa_choices", "multi_block_mode", "normalize_log_probs", "num_nodes",
    "participant_ids", "recv_poll_period_ms", "request_stats_max_iterations", "sink_token_length",
    "speculative_decoding_fast_logits", "stats_check_period_ms", "tokenizer_dir", "worker_path",
    "xgrammar_tokenizer_info_path", "max_attention_window_size", "lora_cache_gpu_memory_fraction",
    "lora_cache_host_memory_bytes", "lora_cache_max_adapter_size", "lora_cache_optimal_adapter_size",
    "lora_prefetch_dir", "max_queue_size"}


def test_protobuf_parser_is_available():
    """The real parser: Triton's proto compiled with grpcio-tools (a test dependency)."""
    assert model_config_proto()().DESCRIPTOR.full_name == "inference.ModelConfig"


def tree_bytes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix() + f":{p.stat().st_mode:o}": hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", MODELS)
def test_render_is_byte_identical(tmp_path, name):
    a = render(tmp_path / "a", name)
    b = render(tmp_path / "b", name)
    assert tree_bytes(a) == tree_bytes(b) and tree_bytes(a)


def test_models_differ_where_config_differs(tmp_path):
    llama = (render(tmp_path, "Llama-2-7b-hf") / "tensorrt_llm" / "config.pbtxt").read_text()
    gpt = (render(tmp_path, "gpt2-medium") / "tensorrt_llm" / "config.pbtxt").read_text()
    assert llama == gpt  # same batch size: same config (the engine folder holds the difference)
    bls = (render(tmp_path / "x", "gpt2-medium") / "tensorrt_llm_bls" / "config.pbtxt").read_text()
    assert 'string_value: "512"' in bls  # max_output_len = 1024 - 512


def test_unknown_placeholder_fails_clearly():
    with pytest.raises(BadInput, match=r"x\.pbtxt: placeholder \$\{nope\} has no value"):
        me.substitute("a: ${nope}", {}, "x.pbtxt")
    with pytest.raises(BadInput, match="line 2: malformed placeholder"):
        me.substitute("a: 1\nb: ${not closed", {}, "x.pbtxt")


def test_template_folder_missing_model_fails(tmp_path):
    (tmp_path / "src").mkdir()
    with pytest.raises(BadInput, match="template missing"):
        me.render_repository(tmp_path / "src", tmp_path / "dest", model("gpt2-medium"))


def test_every_template_value_is_used():
    used = set()
    for p in TRITON.rglob("config.pbtxt"):
        used |= set(me.PLACEHOLDER.findall(p.read_text()))
    assert used == set(me.template_values(model("gpt2-medium")))


@pytest.mark.parametrize("name", MODELS)
def test_trtllm_build_options_follow_config(name):
    m = model(name, tensor_parallel=2)
    argv = me.trtllm_build_argv(m)
    opts = dict(zip(argv[1::2], argv[2::2]))
    assert argv[0] == "trtllm-build"
    assert opts["--max_batch_size"] == str(m.max_batch_size)
    assert opts["--max_input_len"] == str(m.max_input_len)
    assert opts["--max_seq_len"] == str(m.max_seq_len)
    assert opts["--workers"] == "2"
    assert opts["--kv_cache_type"] == "paged" and opts["--remove_input_padding"] == "enable"
    assert opts["--gpt_attention_plugin"] == "auto" and opts["--output_timing_cache"] == "/out/timing.cache"


def test_config_rejects_inconsistent_lengths():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="max_input_len"):
        config.ModelConfig(repo="a/b", family="gpt", max_input_len=1024, max_seq_len=1024)
    with pytest.raises(ValidationError, match="inflight_batching needs paged_kv_cache"):
        config.ModelConfig(repo="a/b", family="gpt", paged_kv_cache=False)


def test_container_scripts_are_well_formed():
    """The scripts only run inside the NVIDIA image; here they are at least syntax-checked."""
    from pipeline.run import run

    src = REPO / "model_engine"
    run(["bash", "-n", src / "build_engine.sh"])
    assert (src / "build_engine.sh").stat().st_mode & 0o111
    for path in [*src.glob("*.py"), *src.glob("triton/*/1/model.py"), *src.glob("triton/llmapi/*/1/model.py")]:
        compile(path.read_text(), str(path), "exec")
    text = (src / "build_engine.sh").read_text()
    assert "convert_checkpoint.py" in text and '"$@"' in text and "fingerprint.py" in text
