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
TRITON = {"gpus": 1, "shm_size": "2Gi", "model_root": "/models",
          "args": ["tritonserver", "--model-repository=/models/triton"], "env": {"HOME": "/tmp"}}


GPU = {"resource": "nvidia.com/gpu", "lib_dir": "/usr/lib/mithril/nvidia", "libs": ["libcuda.so.1", "libnvidia-ml.so.1"],
       "container_lib_dir": "/usr/lib/x86_64-linux-gnu"}


def render(app: str) -> dict[str, list[dict]]:
    values = {**BASE, "app": app,
              "components": ["app", "caddy", "attestation-server"],
              "images": {"app": "localhost/app@sha256:" + "a" * 64, "caddy": "caddy@sha256:" + "b" * 64,
                         "attestation-server": "att@sha256:" + "c" * 64,
                         "nvidia-device-plugin": "nvcr.io/nvidia/k8s-device-plugin@sha256:" + "d" * 64},
              "triton": TRITON if app == "llm" else None,
              "gpu": GPU if app == "llm" else None}
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
    assert not any("egress" in s for n, s in policies(docs).items() if n not in ("caddy-egress",
                                                                                 "attestation-server-egress"))
    # on Azure the attestation server reaches IMDS (THIM) and nothing else
    assert policies(docs)["attestation-server-egress"]["egress"] == [
        {"to": [{"ipBlock": {"cidr": "169.254.169.254/32"}}], "ports": [{"protocol": "TCP", "port": 80}]}]


def test_llm_deployment_runs_triton_by_digest_with_a_gpu():
    app = next(d for d in render("llm")["manifests/app.yaml"] if d["kind"] == "Deployment")
    pod = app["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert "@sha256:" in c["image"] and c["imagePullPolicy"] == "Never"
    # no runtime class (there is no NVIDIA runtime): the device plugin passes the device nodes, the
    # driver's libraries come read-only from the measured OS root
    assert c["resources"]["limits"] == {"nvidia.com/gpu": 1} and "runtimeClassName" not in pod
    libs = {v["name"]: v["hostPath"] for v in pod["volumes"] if "hostPath" in v and v["name"].startswith("nvidia")}
    assert sorted(h["path"] for h in libs.values()) == ["/usr/lib/mithril/nvidia/libcuda.so.1",
                                                        "/usr/lib/mithril/nvidia/libnvidia-ml.so.1"]
    mounts = {m["mountPath"] for m in c["volumeMounts"] if m["name"] in libs and m["readOnly"]}
    assert mounts == {"/usr/lib/x86_64-linux-gnu/libcuda.so.1", "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1"}
    plugin = render("llm")["manifests/nvidia-device-plugin.yaml"][0]
    env = {e["name"]: e["value"] for e in plugin["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["PASS_DEVICE_SPECS"] == "true" and env["DEVICE_LIST_STRATEGY"] == "envvar"
    assert "manifests/nvidia-device-plugin.yaml" not in render("demo")


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
