"""The trtllm-build command line we compose is checked against trtllm-build's own options in the
pinned TensorRT-LLM (its argparse parser transcribed as data with its source file and commit:
tests/fixtures/upstream/tensorrt_llm/, SOURCES.md): every option must exist, take a value or not
as upstream says, and every value be one upstream accepts."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from pipeline import config
from pipeline.stages import model_engine as me
from tests.unit.upstream import UPSTREAM

REPO = Path(__file__).resolve().parents[2]
CONFIG = config.load(REPO / "mithril.yaml")
OPTIONS = json.loads((UPSTREAM / "tensorrt_llm" / "trtllm_build_options.json").read_text())["trtllm-build"]


def check_argv(argv: list[str], table: dict) -> list[str]:
    """What upstream's parser would refuse in argv[1:] (an empty list: all accepted)."""
    errors, i = [], 1
    while i < len(argv):
        opt = argv[i]
        spec = table.get(opt)
        if spec is None:
            errors.append(f"{opt}: no such option")
            i += 1
            continue
        if spec.get("flag"):
            i += 1
            continue
        if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
            errors.append(f"{opt}: needs a value")
            i += 1
            continue
        value = argv[i + 1]
        if "choices" in spec and value not in spec["choices"]:
            errors.append(f"{opt} {value}: not one of {spec['choices']}")
        if spec.get("type") == "int" and not re.fullmatch(r"-?\d+", value):
            errors.append(f"{opt} {value}: not an integer")
        i += 2
    return errors


def variants():
    """Every model, with every gemm_plugin value mithril.yaml allows and both KV cache layouts."""
    gemm = config.ModelConfig.model_fields["gemm_plugin"].annotation.__args__
    for name, m in CONFIG.models.items():
        for g in gemm:
            yield f"{name}-{g}", m.model_copy(update={"gemm_plugin": g})
        yield f"{name}-continuous", m.model_copy(update={"paged_kv_cache": False, "inflight_batching": False})


@pytest.mark.parametrize("label,m", list(variants()), ids=lambda v: v if isinstance(v, str) else "")
def test_trtllm_build_argv_exists_upstream(label, m):
    argv = me.trtllm_build_argv(m)
    assert argv[0] == "trtllm-build"
    assert check_argv(argv, OPTIONS) == []


@pytest.mark.parametrize("mutation,expected", [
    (lambda a: a + ["--paged_kv_cache_type", "paged"], "no such option"),           # an option upstream lacks
    (lambda a: [v if v != "paged" else "pagd" for v in a], "not one of"),            # a value it refuses
    (lambda a: [v if v != "enable" else "true" for v in a], "not one of"),           # enable/disable, not true
    (lambda a: a[:-1], "needs a value"),                                             # a value missing
])
def test_mutated_argv_is_refused(mutation, expected):
    argv = mutation(me.trtllm_build_argv(CONFIG.models["Llama-2-7b-hf"]))
    errors = check_argv(argv, OPTIONS)
    assert errors and expected in errors[0]


def test_convert_checkpoint_argv_matches_our_script():
    """build_engine.sh calls our model_engine/convert_checkpoint.py (TensorRT-LLM's loaders inside);
    its argv must parse with that script's own parser, for every model."""
    spec = importlib.util.spec_from_file_location("convert_checkpoint", REPO / "model_engine" / "convert_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = (REPO / "model_engine" / "build_engine.sh").read_text()
    call = re.search(r"convert_checkpoint\.py (.*?)\n(?!\s)", text.replace("\\\n", " "), re.S).group(1)
    for m in CONFIG.models.values():
        values = {'"$family"': m.family, '"$dtype"': m.dtype, '"$tp"': str(m.tensor_parallel),
                  '"$checkpoint"': "/tmp/trtllm-checkpoint"}
        argv = [values.get(w, w) for w in call.split()]
        args = module.parser().parse_args(argv)
        assert (args.family, args.dtype, args.tp_size) == (m.family, m.dtype, m.tensor_parallel)
