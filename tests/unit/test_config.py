from pathlib import Path

import pytest

from pipeline import config as cfg
from pipeline.errors import BadInput

REPO = Path(__file__).resolve().parents[2]


def test_repository_config_loads():
    c = cfg.load(REPO / "mithril.yaml")
    name, p = c.profile(None)
    assert name == c.default_profile == "demo" and p.platform == "qemu" and p.app == "demo"
    name, p = c.profile(None, "Llama-2-7b-hf")
    assert p.model == "Llama-2-7b-hf" and p.app == "llm"


BASE = {"seed": "5c8a2e4f-6d1b-4a7e-9b3c-2f0e1d4c5b6a", "source_date_epoch": 1,
        "profiles": {"a": {}}, "default_profile": "a"}


@pytest.mark.parametrize("change,msg", [
    ({"seed": "x"}, r"seed: Input should be a valid UUID"),
    ({"colour": "red"}, r"colour: unknown key"),
    ({"profiles": {"a": {"platform": "mars"}}}, r"profiles.a.platform: Input should be"),
    ({"appdisk": {"ingress_port": 99999}}, r"appdisk.ingress_port: Input should be less than or equal to 65535"),
    ({"profiles": {"a": {"app": "llm"}}}, r"profiles.a: app 'llm' needs a model"),
    ({"default_profile": "nope"}, r"default_profile 'nope' is not one of profiles"),
    ({"profiles": {"a": {"model": "nope"}}}, r"profiles.a.model 'nope' is not defined under models"),
    ({"source_date_epoch": None}, r"source_date_epoch: required key is missing"),
    ({"os": {"k3s": "maybe"}}, r"os.k3s: Input should be a valid boolean"),
    ("seed: [\n", r"not valid YAML"),
    ("- a\n", r"must be a YAML mapping"),
])
def test_bad_config_names_field(tmp_path, change, msg):
    import yaml

    if isinstance(change, str):
        text = change
    else:
        body = {**BASE, **change}
        text = yaml.safe_dump({k: v for k, v in body.items() if v is not None})
    (tmp_path / "mithril.yaml").write_text(text)
    with pytest.raises(BadInput, match=msg) as e:
        cfg.load(tmp_path / "mithril.yaml")
    assert str(e.value).startswith(str(tmp_path / "mithril.yaml"))
    assert "\n" not in str(e.value)


def test_unknown_profile_and_model():
    c = cfg.load(REPO / "mithril.yaml")
    with pytest.raises(BadInput, match="unknown profile 'x'"):
        c.profile("x")
    with pytest.raises(BadInput, match="--model 'gpt5' is not defined"):
        c.profile(None, "gpt5")
