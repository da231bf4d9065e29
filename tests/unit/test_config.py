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


# ---- profiles are whole: resolved settings and incoherent combinations

def load_text(tmp_path, body: dict):
    import yaml

    (tmp_path / "mithril.yaml").write_text(yaml.safe_dump(body))
    return cfg.load(tmp_path / "mithril.yaml")


MODEL = {"m": {"repo": "org/m", "family": "llama"}}


def test_profiles_inherit_and_llm_implies_k3s_and_nvidia(tmp_path):
    c = load_text(tmp_path, {**BASE, "models": MODEL, "os": {"tpm2_tools": True}, "profiles": {
        "a": {}, "gpu": {"platform": "azure-cvm", "app": "llm", "model": "m",
                         "azure": {"vm_size": "Standard_NCC40ads_H100_v5"}, "os": {"extra_packages": ["jq"]}}}})
    _, a = c.profile("a")
    assert (a.os.k3s, a.os.nvidia, a.os.tpm2_tools) == (False, False, True)
    _, gpu = c.profile("gpu")
    assert (gpu.os.k3s, gpu.os.nvidia, gpu.os.tpm2_tools, gpu.os.extra_packages) == (True, True, True, ("jq",))
    assert gpu.azure.security_type == "ConfidentialVM" and gpu.azure.location == "eastus"
    _, a_llm = c.profile("a", "m")  # --model makes the demo profile an llm profile: k3s and NVIDIA too
    assert a_llm.app == "llm" and a_llm.os.k3s and a_llm.os.nvidia


def test_repository_profiles_resolve():
    c = cfg.load(REPO / "mithril.yaml")
    resolved = {n: c.profile(n)[1] for n in c.profiles}
    assert resolved["azure-cvm-demo"].azure.vm_size.startswith("Standard_DC") and not resolved["azure-cvm-demo"].os.k3s
    assert resolved["llama"].azure.vm_size == "Standard_NCC40ads_H100_v5"
    assert resolved["llama"].azure.security_type == "ConfidentialVM"
    assert resolved["llama-a100"].azure.security_type == "TrustedLaunch"
    assert all(p.os.k3s and p.os.nvidia for p in resolved.values() if p.app == "llm")


CVM = {"platform": "azure-cvm", "azure": {"vm_size": "Standard_DC2as_v5"}}


@pytest.mark.parametrize("change,msg", [
    ({"profiles": {"a": {"app": "llm", "model": "m", "os": {"k3s": False}}}},
     r"profiles.a.os.k3s: false, but app 'llm' needs it"),
    ({"profiles": {"a": {"app": "llm", "model": "m", "os": {"nvidia": False}}}},
     r"profiles.a.os.nvidia: false, but app 'llm' needs it"),
    ({"os": {"nvidia": True}}, r": os.nvidia: the GPU reaches the app only as a k3s pod"),
    ({"profiles": {"a": {**CVM, "azure": {"vm_size": "Standard_DC2as_v5", "secure_boot": True}}}},
     r"profiles.a.azure.secure_boot: the UKI is not signed"),
    ({"profiles": {"a": CVM}, "azure": {"vtpm": False}}, r": azure.vtpm: without the vTPM"),
    ({"profiles": {"a": {"platform": "azure-cvm"}}, "azure": {"vm_size": "Standard_NC24ads_A100_v4"}},
     r": azure.vm_size: Standard_NC24ads_A100_v4 is not a confidential"),
    ({"profiles": {"a": {"platform": "azure-trusted-launch", "azure": {"vm_size": "Standard_DC4as_v5"}}}},
     r"profiles.a.azure.vm_size: Standard_DC4as_v5 is a confidential VM size"),
    ({"profiles": {"a": {**CVM, "azure": {"vm_size": "Standard_DC2as_v5", "security_type": "TrustedLaunch"}}}},
     r"profiles.a.azure.security_type: TrustedLaunch, but platform azure-cvm is ConfidentialVM"),
    ({"profiles": {"a": {**CVM, "app": "llm", "model": "m"}}},
     r"profiles.a.azure.vm_size: Standard_DC2as_v5 has no GPU"),
    ({"profiles": {"a": {"platform": "azure-trusted-launch", "app": "llm", "model": "m"}},
      "azure": {"vm_size": "Standard_NC24ads_A100_v4"}, "models": {"m": {**MODEL["m"], "tensor_parallel": 2}}},
     r"models.m.tensor_parallel: 2, but Standard_NC24ads_A100_v4 has 1 GPU"),
    ({"profiles": {"a": CVM}, "azure": {"vnet_prefix": "10.42.0.0/16", "subnet_prefix": "10.42.0.0/24"},
      "os": {"k3s": True}},
     r": os.cluster_cidr: 10.42.0.0/16 overlaps azure.vnet_prefix"),
    ({"profiles": {"a": CVM}, "azure": {"subnet_prefix": "10.11.0.0/24"}},
     r": azure.subnet_prefix: 10.11.0.0/24 is not inside vnet_prefix"),
    ({"os": {"k3s": True, "service_cidr": "10.42.128.0/17"}}, r": os.service_cidr: 10.42.128.0/17 overlaps os.cluster_cidr"),
    ({"os": {"k3s": True, "cluster_cidr": "10.0.0.0/16"}}, r": os.cluster_cidr: 10.0.0.0/16 overlaps QEMU's user network"),
    ({"os": {"cluster_cidr": "10.42.0.0/33"}}, r"os.cluster_cidr: not an IPv4 network"),
    ({"os": {"k3s": True}, "appdisk": {"app_port": 10250}}, r"appdisk.app_port: 10250 is the port of the kubelet"),
    ({"appdisk": {"app_port": 443}}, r"appdisk.app_port: 443 is also appdisk.ingress_port"),
    ({"profiles": {"a": {"os": {"sshd": True}}}}, r"profiles.a.os.sshd: unknown key"),
])
def test_incoherent_profiles_are_refused_naming_the_field(tmp_path, change, msg):
    body = {**BASE, "models": MODEL, **change}
    with pytest.raises(BadInput, match=msg) as e:
        load_text(tmp_path, body)
    assert "\n" not in str(e.value)


def test_model_override_is_checked_too(tmp_path):
    c = load_text(tmp_path, {**BASE, "models": MODEL, "profiles": {"a": CVM}})
    with pytest.raises(BadInput, match=r"has no GPU.*\(with --model m\)"):
        c.profile("a", "m")


def test_plan_shows_resolved_settings(tmp_path):
    import json

    from tests.conftest import mb, new_project

    project = new_project(tmp_path / "p")
    res = mb("plan", "--project", project, "--profile", "azure-cvm-demo", "--json")
    assert res.returncode == 0, res.stderr
    profile = json.loads(res.stdout)["profile"]
    assert profile["azure"]["security_type"] == "ConfidentialVM" and profile["os"]["k3s"] is False
    text = mb("plan", "--project", project, "--profile", "azure-cvm-demo").stdout
    assert "profile azure-cvm-demo: platform azure-cvm" in text and "security_type=ConfidentialVM" in text
