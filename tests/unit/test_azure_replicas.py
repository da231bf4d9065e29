"""`azure.replicas: 2` against the mocked management plane (`responses`, FakeArm of
test_azure_deploy): one upload and one gallery image version feed both VMs, a Standard Load
Balancer with an HTTPS probe on /attestation fronts them, `--dry-run` shows every request body,
re-deploy is idempotent and `destroy` removes everything deploy made. The golden plan
(tests/fixtures/azure/plan_replicas.json) is our own output: a change detector only."""

from __future__ import annotations

import json
import re

import pytest

pytest.importorskip("azure.mgmt.compute")
pytest.importorskip("responses")

from pydantic import ValidationError

from pipeline.platforms.azure import deploy as azure
from pipeline.platforms.azure import replicas as rep
from tests.unit.test_azure_deploy import FakeCredential, FakeUpload, check_golden, make_config, target
from tests.unit.test_azure_deploy import arm, out_dir  # noqa: F401 (fixtures)


def test_plan_for_two_replicas(out_dir):  # noqa: F811
    t = target(out_dir, "azure-cvm", replicas=2)
    p = azure.plan(t)
    n, i = p["names"], p["ids"]
    check_golden("plan_replicas", {k: p[k] for k in ("names", "network", "image", "vms")})
    assert "vm" not in p and "vm" not in n and sorted(p["vms"]) == [n["vm_1"], n["vm_2"]]
    # one image version from the two uploaded disks; both VMs are created from it
    version = p["image"]["image_version"]["properties"]["storageProfile"]
    assert version == {"osDiskImage": {"source": {"id": i["os_disk"]}},
                       "dataDiskImages": [{"lun": 0, "source": {"id": i["app_disk"]}}]}
    assert p["image"]["image"]["properties"]["features"] == [{"name": "SecurityType", "value": "ConfidentialVmSupported"}]
    assert re.fullmatch(r"[A-Za-z0-9]+(?:[._][A-Za-z0-9]+)*", n["gallery"])  # Azure's rule for gallery names
    for vm in p["vms"].values():
        storage = vm["properties"]["storageProfile"]
        assert storage["imageReference"] == {"id": i["image_version"]}
        assert storage["osDisk"]["createOption"] == "FromImage"
        assert storage["osDisk"]["managedDisk"]["securityProfile"] == {"securityEncryptionType": "VMGuestStateOnly"}
        assert vm["properties"]["securityProfile"]["securityType"] == "ConfidentialVM"
    # the LB forwards TCP on the ingress port (TLS ends in the VMs) and probes HTTPS /attestation
    lb = p["network"]["lb"]
    assert lb["sku"]["name"] == "Standard"
    rule = lb["properties"]["loadBalancingRules"][0]["properties"]
    assert (rule["protocol"], rule["frontendPort"], rule["backendPort"]) == ("Tcp", 443, 443)
    probe = lb["properties"]["probes"][0]["properties"]
    assert (probe["protocol"], probe["port"], probe["requestPath"]) == ("Https", 443, "/attestation?nonce=" + "00" * 16)
    assert rule["probe"]["id"] == i["lb_probe"] and rule["backendAddressPool"]["id"] == i["lb_pool"]
    for k in (1, 2):
        ipconf = p["network"][n[f"nic_{k}"]]["properties"]["ipConfigurations"][0]["properties"]
        assert ipconf["loadBalancerBackendAddressPools"] == [{"id": i["lb_pool"]}] and "publicIPAddress" not in ipconf
    # every id a body refers to is a resource the plan creates
    referenced = set(re.findall(r'"id": "([^"]+)"', json.dumps(p)))
    assert referenced <= set(i.values()), referenced - set(i.values())


def test_one_replica_keeps_the_single_vm_plan(out_dir):  # noqa: F811
    assert azure.plan(target(out_dir, "azure-cvm")) == azure.plan(target(out_dir, "azure-cvm", replicas=1))


@pytest.mark.parametrize("bad", [0, 33, "two"])
def test_replicas_out_of_range_is_refused(bad):
    with pytest.raises(ValidationError):
        make_config("azure-cvm", replicas=bad)


def test_deploy_two_replicas_then_destroy_everything(arm, out_dir):  # noqa: F811
    fake, _ = arm
    t = target(out_dir, "azure-cvm", replicas=2)
    up = FakeUpload()
    record = azure.deploy(t, credential=FakeCredential(), upload=up, polling_interval=0)
    n = t.names
    assert len(up.calls) == 2  # the two disks once: one image for both VMs, not N uploads
    puts = [path for method, path, _ in fake.calls if method == "PUT"]
    kinds = [p.split("/providers/")[-1].split("/")[1] if "/providers/" in p else "resourcegroup" for p in puts]
    order = [k for k in kinds if k in ("loadBalancers", "galleries", "networkInterfaces", "virtualMachines")]
    assert order.index("loadBalancers") < order.index("networkInterfaces") < order.index("virtualMachines")
    assert len(fake.requests("PUT", "/versions/")) == 1 and len(fake.requests("PUT", "/virtualMachines/")) == 2
    sent = {path: body for method, path, body in fake.calls if method == "PUT"}
    plan = azure.plan(t)
    assert sent[plan["ids"]["lb"]] == plan["network"]["lb"]  # the dry run shows what is sent
    for name, body in plan["vms"].items():
        assert sent[[p for p in sent if p.endswith(f"/virtualMachines/{name}")][0]] == body
    assert record["public_ip"] == "20.30.40.50" and record["replicas"] == 2
    saved = json.loads((out_dir / "deployment.json").read_text())
    assert saved["names"] == n
    # re-deploy: no upload, no second image version
    fake.calls.clear()
    azure.deploy(target(out_dir, "azure-cvm", replicas=2), credential=FakeCredential(), upload=up, polling_interval=0)
    assert len(up.calls) == 2 and not fake.requests("PUT", "/versions/")

    deleted = azure.destroy(make_config("azure-cvm", replicas=2), "llama", out_dir, credential=FakeCredential(),
                            polling_interval=0)
    assert fake.resources == {}, sorted(fake.resources)  # nothing left behind
    assert deleted[:2] == [n["vm_1"], n["vm_2"]]  # users before what they use
    assert deleted.index(n["lb"]) < deleted.index(n["public_ip"])
    assert deleted.index(f"{n['gallery']}/{n['image']}/{n['image_version']}") < \
        deleted.index(f"{n['gallery']}/{n['image']}") < deleted.index(n["gallery"])
    assert not (out_dir / "deployment.json").exists()


def test_destroy_keeps_a_gallery_that_holds_other_builds(arm, out_dir):  # noqa: F811
    fake, _ = arm
    t = target(out_dir, "azure-cvm", replicas=2)
    azure.deploy(t, credential=FakeCredential(), upload=FakeUpload(), polling_interval=0)
    gallery = azure.plan(t)["ids"]["gallery"]
    other = f"{gallery}/images/older-build"
    fake.resources[other] = {"id": other, "name": "older-build", "properties": {}}
    deleted = azure.destroy(make_config("azure-cvm", replicas=2), "llama", out_dir, credential=FakeCredential(),
                            polling_interval=0)
    assert t.names["gallery"] not in deleted and set(fake.resources) == {gallery, other}


def test_probe_path_is_a_valid_evidence_request():
    """The probe's nonce must be one the attestation server accepts (200, not 400)."""
    from urllib.parse import parse_qs, urlsplit

    from mithril_client.evidence import parse_nonce

    url = urlsplit(rep.PROBE_PATH)
    assert url.path == "/attestation" and parse_nonce(parse_qs(url.query)["nonce"][0])
