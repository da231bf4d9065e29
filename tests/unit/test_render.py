"""`mithril-build render`: every generated file of a profile, without images, weights or a GPU; the
Kubernetes documents validated against the schemas of the Kubernetes that the pinned k3s runs
(kubernetes-validate, offline, --strict)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from pipeline import lock as lk
from pipeline.run import run
from tests.conftest import REPO, mb, new_project


def k8s_version() -> str:
    """x.y.0 of the Kubernetes inside the k3s release pinned in mithril.lock (kubernetes-validate
    bundles schemas per minor version)."""
    url = lk.load(REPO / "mithril.lock").files["k3s"].url
    m = re.search(r"/v(\d+)\.(\d+)\.\d+(?:\+|%2B)k3s\d+/", url)
    assert m, url
    return f"{m.group(1)}.{m.group(2)}.0"


def render(project: Path, profile: str, dest: Path) -> dict:
    res = mb("render", "--project", project, "--profile", profile, dest, "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return new_project(tmp_path_factory.mktemp("render") / "p")


@pytest.mark.parametrize("profile", ["llama", "gpt2"])
def test_llm_manifests_validate_against_the_pinned_kubernetes(project, tmp_path, profile):
    shutil.which("kubernetes-validate") or pytest.skip("needs kubernetes-validate (pip install -e '.[test]')")
    index = render(project, profile, tmp_path / "r")
    docs = sorted((tmp_path / "r" / "appdisk" / "manifests").rglob("*.yaml"))
    kinds = {d["kind"] for p in docs for d in yaml.safe_load_all(p.read_text()) if d}
    assert {"Deployment", "DaemonSet", "Service", "NetworkPolicy", "Namespace", "ConfigMap"} <= kinds
    res = run(["kubernetes-validate", "--strict", "-k", k8s_version(), *docs])
    assert res.text.count("passed") >= len(docs), res.text
    # what the lock does not pin is marked, never made up
    assert index["unresolved"] == ["images.nvidia-device-plugin.digest", "images.triton.digest"]
    app = (tmp_path / "r" / "appdisk" / "manifests" / "app.yaml").read_text()
    assert "nvcr.io/nvidia/tritonserver:26.02-trtllm-python-py3@sha256:UNRESOLVED" in app


def test_render_writes_every_generated_file_reproducibly(project, tmp_path):
    a, b = render(project, "llama", tmp_path / "a"), render(project, "llama", tmp_path / "b")
    assert a == b
    for rel in ("mkosi/mkosi.conf", "mkosi/mkosi.extra/usr/lib/mithril/firewall/rules.v4",
                "mkosi/mkosi.extra/usr/lib/mithril/k3s/config.yaml", "appdisk/caddy/Caddyfile",
                "appdisk/manifests/networkpolicies/default-deny.yaml", "appdisk/run.d/main",
                "model/triton/tensorrt_llm/config.pbtxt"):
        path = tmp_path / "a" / rel
        assert hashlib.sha256(path.read_bytes()).hexdigest() == a["files"][rel], rel
    assert a["settings"]["os"]["k3s"] and a["settings"]["azure"]["security_type"] == "ConfidentialVM"
    # the pod range the firewall allows is the one k3s is configured with
    k3s = yaml.safe_load((tmp_path / "a/mkosi/mkosi.extra/usr/lib/mithril/k3s/config.yaml").read_text())
    assert f"-s {k3s['cluster-cidr']}" in (tmp_path / "a/mkosi/mkosi.extra/usr/lib/mithril/firewall/rules.v4").read_text()


def test_render_demo_without_k3s_has_run_d_services(project, tmp_path):
    index = render(project, "demo", tmp_path / "r")
    assert index["unresolved"] == []
    main = (tmp_path / "r/appdisk/run.d/main").read_text()
    assert "--property=User=65534" in main and "attestation_server" in main and "/.mithril/gosu 65534:65534" in main
    assert not (tmp_path / "r/appdisk/manifests/nvidia-device-plugin.yaml").exists()


def test_render_refuses_a_folder_with_files(project, tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "keep").write_text("x")
    res = mb("render", "--project", project, "--profile", "demo", tmp_path / "r")
    assert res.returncode == 2 and "not an empty folder" in res.stderr
    assert (tmp_path / "r" / "keep").read_text() == "x"
