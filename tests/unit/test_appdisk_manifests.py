"""The Kubernetes manifests and NetworkPolicies of the app disk, rendered for both apps."""

from pathlib import Path

import pytest
import yaml

from pipeline.stages.appdisk import _env, render_manifests

SRC = Path(__file__).resolve().parents[2] / "appdisk"
BASE = {"namespace": "mithril", "ingress_port": 443, "app_port": 8000, "attestation_port": 8400,
        "model": None, "triton": None, "model_host_path": "/run/mithril/model", "platform": "azure-trusted-launch",
        "k3s": True, "tls_dir": "/run/mithril/tls", "services": {},
        "upstreams": {"app": "app.mithril.svc:8000", "attestation": "attestation-server.mithril.svc:8400"}}
TRITON = {"gpus": 1, "runtime_class": "nvidia", "shm_size": "2Gi", "model_root": "/models",
          "args": ["tritonserver", "--model-repository=/models/triton"], "env": {"HOME": "/tmp"}}


def render(app: str) -> dict[str, list[dict]]:
    values = {**BASE, "app": app,
              "components": ["app", "caddy", "attestation-server"],
              "images": {"app": "localhost/app@sha256:" + "a" * 64, "caddy": "caddy@sha256:" + "b" * 64,
                         "attestation-server": "att@sha256:" + "c" * 64},
              "triton": TRITON if app == "llm" else None}
    return {k: list(yaml.safe_load_all(v)) for k, v in render_manifests(_env(SRC), SRC, values).items()}


def policies(docs: dict) -> dict[str, dict]:
    return {d["metadata"]["name"]: d["spec"] for k, v in docs.items() if "networkpolicies" in k for d in v}


def allowed_flows(docs) -> set[tuple[str, str, int]]:
    """(from, to, port) pairs that the ingress rules allow; 'outside' = any source."""
    flows = set()
    for spec in policies(docs).values():
        target = spec["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name")
        for rule in spec.get("ingress", []):
            sources = [f["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for f in rule.get("from", [])] or ["outside"]
            for src in sources:
                for port in rule["ports"]:
                    flows.add((src, target, port["port"]))
    return flows


@pytest.mark.parametrize("app", ["demo", "llm"])
def test_flows_are_exactly_ingress_caddy_app_attestation(app):
    docs = render(app)
    assert policies(docs)["default-deny"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    assert allowed_flows(docs) == {("outside", "caddy", 443), ("caddy", "app", 8000),
                                   ("caddy", "attestation-server", 8400)}
    egress = policies(docs)["caddy-egress"]["egress"]
    assert [r["ports"][0]["port"] for r in egress] == [8000, 8400, 53]
    assert not any("egress" in s for n, s in policies(docs).items() if n != "caddy-egress")


def test_llm_deployment_runs_triton_by_digest_with_a_gpu():
    app = next(d for d in render("llm")["manifests/app.yaml"] if d["kind"] == "Deployment")
    pod = app["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert "@sha256:" in c["image"] and c["imagePullPolicy"] == "Never"
    assert c["resources"]["limits"] == {"nvidia.com/gpu": 1} and pod["runtimeClassName"] == "nvidia"
    assert {v["name"] for v in pod["volumes"]} == {"model-repository", "dshm", "tmp"}


def test_demo_app_has_no_gpu_and_caddy_routes_attestation():
    docs = render("demo")
    app = next(d for d in docs["manifests/app.yaml"] if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    assert "runtimeClassName" not in app and "resources" not in app["containers"][0]
    caddy = {d["kind"]: d for d in docs["manifests/caddy.yaml"]}
    caddyfile = caddy["ConfigMap"]["data"]["Caddyfile"]
    assert "handle /attestation*" in caddyfile and "attestation-server.mithril.svc:8400" in caddyfile
    assert "tls /run/mithril/tls/server.pem /run/mithril/tls/server.key" in caddyfile
    server = next(d for d in docs["manifests/attestation-server.yaml"] if d["kind"] == "Deployment")
    args = server["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--platform") + 1] == "azure-trusted-launch" and "--tls-owner" in args


@pytest.mark.parametrize("app", ["demo", "llm"])
def test_no_latest_tags_and_rendering_is_stable(app):
    values = render(app)
    assert values == render(app)
    assert ":latest" not in yaml.safe_dump(values)
