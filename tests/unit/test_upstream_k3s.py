"""Every key of the rendered k3s config.yaml is a flag of k3s's server command, with a value of
the flag's kind (k3s maps --config keys onto its flags by their long names), and every item of
`disable` is one k3s knows. The flags are recorded as data from k3s's pkg/cli/cmds (SOURCES.md)."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest
import yaml

from pipeline import config
from tests.conftest import mb
from tests.unit.upstream import UPSTREAM

REPO = Path(__file__).resolve().parents[2]
CONFIG = config.load(REPO / "mithril.yaml")
K3S = json.loads((UPSTREAM / "k3s" / "server_flags.json").read_text())
CONFIG_YAML = "mkosi/mkosi.extra/usr/lib/mithril/k3s/config.yaml"


def check_config(doc: dict) -> list[str]:
    """What k3s would refuse or misread in a --config document (empty: nothing)."""
    errors = []
    for key, value in doc.items():
        kind = K3S["server_flags"].get(key)
        if kind is None:
            errors.append(f"{key}: not a k3s server flag")
        elif kind == "bool" and not isinstance(value, bool):
            errors.append(f"{key}: {value!r} is not a boolean")
        elif kind == "int" and not isinstance(value, int):
            errors.append(f"{key}: {value!r} is not an integer")
        elif kind == "string" and not isinstance(value, str):
            errors.append(f"{key}: {value!r} is not a string")
        elif kind == "string-slice" and not (isinstance(value, str) or
                                             (isinstance(value, list) and all(isinstance(v, str) for v in value))):
            errors.append(f"{key}: {value!r} is not a string or a list of strings")
    for item in doc.get("disable", []) if isinstance(doc.get("disable"), list) else []:
        if item not in K3S["disable_items"]:
            errors.append(f"disable: {item!r} is not one of {K3S['disable_items']}")
    return errors


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, dict]:
    """The k3s config.yaml of every k3s profile, as `mithril-build render` writes it."""
    root = tmp_path_factory.mktemp("render")
    out = {}
    for name, profile in CONFIG.profiles.items():
        if profile.app != "llm" and not (profile.os and profile.os.k3s):
            continue
        res = mb("render", "--profile", name, root / name, cwd=REPO)
        assert res.returncode == 0, res.stderr
        out[name] = yaml.safe_load((root / name / CONFIG_YAML).read_text())
    assert {"llama", "gpt2"} <= set(out)
    return out


def test_rendered_k3s_config_uses_only_k3s_flags(rendered):
    for name, doc in rendered.items():
        assert check_config(doc) == [], name
        ipaddress.ip_network(doc["cluster-cidr"]), ipaddress.ip_network(doc["service-cidr"])


@pytest.mark.parametrize("mutation,expected", [
    (lambda d: {**d, "disable-network-policies": False}, "not a k3s server flag"),   # a misspelt flag
    (lambda d: {**d, "disable-cloud-controller": "true"}, "not a boolean"),         # a string for a bool
    (lambda d: {**d, "disable": [*d["disable"], "ingress"]}, "not one of"),         # an unknown component
])
def test_mutated_config_is_refused(rendered, mutation, expected):
    errors = check_config(mutation(rendered["llama"]))
    assert errors and expected in errors[0]
