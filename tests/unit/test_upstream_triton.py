"""Every config.pbtxt we render is parsed as Triton parses it: protobuf text format into the
ModelConfig of Triton's own model_config.proto at the version in the pinned container
(triton-inference-server/common r26.02, vendored in tests/fixtures/upstream/triton/, source in
SOURCES.md). A field that does not exist or an enum value that is not defined is refused."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from google.protobuf import text_format

from pipeline import config
from pipeline.stages import model_engine as me
from tests.conftest import mb
from tests.unit import upstream

REPO = Path(__file__).resolve().parents[2]
CONFIG = config.load(REPO / "mithril.yaml")
LLM_PROFILES = sorted(n for n, p in CONFIG.profiles.items() if p.app == "llm")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, Path]:
    """`mithril-build render` of every llm profile, plus the pytorch-backend layout of each model."""
    root = tmp_path_factory.mktemp("render")
    out = {}
    for profile in LLM_PROFILES:
        res = mb("render", "--profile", profile, root / profile, cwd=REPO)
        assert res.returncode == 0, res.stderr
        out[profile] = root / profile / "model" / "triton"
    for name, m in CONFIG.models.items():
        dest = root / f"pytorch-{name}"
        me.render_repository(REPO / "model_engine" / "triton", dest, m.model_copy(update={"backend": "pytorch"}))
        out[f"pytorch-{name}"] = dest
    return out


def test_llm_profiles_exist():
    assert {"llama", "gpt2"} <= set(LLM_PROFILES)


def test_every_rendered_config_parses_against_the_pinned_proto(rendered):
    seen = 0
    for label, repo in rendered.items():
        configs = sorted(repo.glob("*/config.pbtxt"))
        assert configs, f"{label}: no config.pbtxt rendered"
        for path in configs:
            msg = upstream.parse_pbtxt(path.read_text())  # unknown field or enum value: ParseError
            assert msg.name == path.parent.name, path
            seen += 1
    assert seen >= len(LLM_PROFILES) * len(me.TRITON_MODELS)


def test_the_proto_is_the_vendored_one():
    """The class really comes from the pinned file: a field added to Triton after r26.02 would
    be known to a newer proto; one of r26.02's fields is known here."""
    fields = upstream.triton_model_config().DESCRIPTOR.fields_by_name
    assert {"name", "backend", "max_batch_size", "input", "output", "parameters", "ensemble_scheduling",
            "dynamic_batching", "model_transaction_policy", "instance_group"} <= set(fields)


@pytest.mark.parametrize("mutation", [
    (r"\bmax_batch_size\b", "max_batch_sizes"),          # a field that does not exist
    (r"\bTYPE_STRING\b", "TYPE_STR"),                    # an enum value that does not exist
    (r"\bKIND_CPU\b", "KIND_TPU"),                       # another enum (instance_group kind)
])
def test_mutated_config_is_refused(rendered, mutation):
    """One mutation per kind of mistake the check exists to catch."""
    pattern, replacement = mutation
    texts = [p.read_text() for repo in rendered.values() for p in repo.glob("*/config.pbtxt")]
    text = next(t for t in texts if re.search(pattern, t))
    upstream.parse_pbtxt(text)
    with pytest.raises(text_format.ParseError):
        upstream.parse_pbtxt(re.sub(pattern, replacement, text, count=1))


def test_vendored_proto_is_upstream_byte_for_byte():
    """The vendored file's git blob id is the one SOURCES.md records for r26.02 (a local edit shows)."""
    import hashlib

    data = (upstream.UPSTREAM / "triton" / "model_config.proto").read_bytes()
    blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    assert f"git blob `{blob}`" in (upstream.UPSTREAM / "SOURCES.md").read_text()
