"""Azure management calls against mocked HTTP (`responses`): golden request bodies, idempotent
re-deploy, and the failure paths (quota, access revoked mid-upload, VM creation failure)."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest

pytest.importorskip("azure.mgmt.compute")
responses = pytest.importorskip("responses")

from azure.core.credentials import AccessToken

from pipeline.config import Config
from pipeline.errors import BadInput, ToolFailed
from pipeline.platforms.azure import deploy as azure
from pipeline.platforms.azure import upload as azure_upload

GOLDEN = Path(__file__).resolve().parent.parent / "fixtures" / "azure"
SUB = "00000000-1111-2222-3333-444444444444"
MGMT = "https://management.azure.com"
SAS = "https://md-abc.z1.blob.storage.azure.net/xyz/abcd?sv=2018-03-28&sr=b&si=1&sig=SECRETSIGNATURE%3D"
MiB = 1 << 20


class FakeCredential:
    def get_token(self, *scopes, **kwargs):
        return AccessToken("fake-token", int(time.time()) + 3600)


class FakeArm:
    """A tiny in-memory Azure Resource Manager: PUT stores, GET reads, DELETE removes, and the
    disk access actions move the disk state. `fail[(method, name)] = (status, code, message)`."""

    def __init__(self, rsps):
        self.resources: dict[str, dict] = {}
        self.calls: list[tuple[str, str, dict | None]] = []
        self.fail: dict[tuple[str, str], tuple[int, str, str]] = {}
        for method in ("GET", "PUT", "PATCH", "DELETE", "POST"):
            rsps.add_callback(method, re.compile(re.escape(MGMT) + r"/.*"), callback=self.handle)

    def handle(self, request):
        path = request.path_url.split("?")[0]
        body = json.loads(request.body) if request.body else None
        self.calls.append((request.method, path, body))
        name = path.rsplit("/", 1)[-1]
        if (request.method, name) in self.fail:
            status, code, message = self.fail[(request.method, name)]
            return status, {}, json.dumps({"error": {"code": code, "message": message}})
        if path.endswith(("/beginGetAccess", "/endGetAccess")):
            disk = self.resources[path.rsplit("/", 1)[0]]
            granting = path.endswith("/beginGetAccess")
            disk["properties"]["diskState"] = "ActiveUpload" if granting else "Unattached"
            return 200, {}, json.dumps({"accessSAS": SAS} if granting else {})
        if request.method == "GET":
            if path.endswith("/images") and path not in self.resources:  # a gallery's image list
                return 200, {}, json.dumps({"value": [r for p, r in self.resources.items()
                                                      if p.rsplit("/", 1)[0] == path]})
            if path not in self.resources:
                return 404, {}, json.dumps({"error": {"code": "ResourceNotFound", "message": "not found"}})
            return 200, {}, json.dumps(self.resources[path])
        if request.method == "DELETE":
            self.resources.pop(path, None)
            return 200, {}, ""
        if request.method == "PATCH":
            self.resources[path].update(body)
            return 200, {}, json.dumps(self.resources[path])
        res = {**json.loads(json.dumps(body)), "id": path, "name": name}
        props = res.setdefault("properties", {})
        props["provisioningState"] = "Succeeded"
        if "/disks/" in path:
            props["diskState"] = "ReadyToUpload"
        if "/publicIPAddresses/" in path:
            props["ipAddress"] = "20.30.40.50"
        if "/resourcegroups/" not in path.lower() or "/providers/" in path:
            self.resources[path] = res
        return 200, {}, json.dumps(res)

    def requests(self, method=None, contains=""):
        return [(m, p, b) for m, p, b in self.calls if (method is None or m == method) and contains in p]


@pytest.fixture
def arm():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield FakeArm(rsps), rsps


def make_config(platform="azure-trusted-launch", **azure_kw) -> Config:
    azure_kw.setdefault("vm_size", "Standard_NC24ads_A100_v4" if platform == "azure-trusted-launch"
                        else "Standard_DC2as_v5")
    return Config.model_validate({
        "seed": "5c8a2e4f-6d1b-4a7e-9b3c-2f0e1d4c5b6a", "source_date_epoch": 1704067200,
        "profiles": {"llama": {"platform": platform}}, "default_profile": "llama",
        "azure": {"subscription_id": SUB, "tags": {"owner": "ci"}, **azure_kw}})


@pytest.fixture
def out_dir(tmp_path):
    out = tmp_path / "out" / "llama"
    out.mkdir(parents=True)
    for name, size, data in (("os_disk.raw", 2 * MiB + 100, b"OS"), ("application_disk.raw", MiB, b"APP")):
        with open(out / name, "wb") as f:
            f.truncate(size)
            f.write(data)
    (out / "measurements.json").write_text('{"version": 1, "platform": "azure-trusted-launch"}\n')
    return out


def target(out_dir, platform="azure-trusted-launch", **azure_kw):
    (out_dir / "measurements.json").write_text(json.dumps({"version": 1, "platform": platform}) + "\n")
    return azure.load_target(make_config(platform, **azure_kw), "llama", out_dir)


class FakeUpload:
    def __init__(self):
        self.calls = []

    def __call__(self, sas, path, size, footer, *, name, workers):
        self.calls.append((sas, path.name, size, len(footer)))
        return azure_upload.UploadStats(data_bytes=512)


def check_golden(name: str, data) -> None:
    path = GOLDEN / f"{name}.json"
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    if os.environ.get("MITHRIL_REGEN_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"request body differs from {path}"


def bodies(fake: FakeArm) -> dict:
    """The request bodies that matter, keyed by a stable label."""
    out = {}
    for method, path, body in fake.calls:
        if method in ("PUT", "POST", "PATCH") and body is not None:
            kind, name = path.split("/")[-2:]
            if name in ("beginGetAccess", "endGetAccess"):
                kind = "disk-action"
            out.setdefault(f"{method} {kind}/{name}", body)
    return out


def test_deploy_sends_golden_requests_and_is_idempotent(arm, out_dir, capsys):
    fake, _ = arm
    t = target(out_dir)
    up = FakeUpload()
    record = azure.deploy(t, credential=FakeCredential(), upload=up, polling_interval=0)
    sent = bodies(fake)
    check_golden("deploy_requests", sent)
    # Azure's floor: uploadSizeBytes >= 20 MiB + 512, whole MiB + the footer
    assert [c[1:] for c in up.calls] == [("os_disk.raw", 20 * MiB, 512), ("application_disk.raw", 20 * MiB, 512)]
    assert all(b["properties"]["creationData"]["uploadSizeBytes"] == 20972032
               for k, b in sent.items() if k.startswith("PUT disks/"))
    assert len(fake.requests("POST", "/endGetAccess")) == 2  # both disks revoked after upload
    vm = sent[f"PUT virtualMachines/{t.names['vm']}"]["properties"]
    assert vm["securityProfile"] == {"securityType": "TrustedLaunch",
                                     "uefiSettings": {"secureBootEnabled": False, "vTpmEnabled": True}}
    nsg = sent[f"PUT networkSecurityGroups/{t.names['nsg']}"]["properties"]["securityRules"]
    assert [(r["properties"]["access"], r["properties"]["destinationPortRange"]) for r in nsg] == \
        [("Allow", "443"), ("Deny", "*")]
    text = (out_dir / "deployment.json").read_text()
    assert record["public_ip"] == "20.30.40.50" and json.loads(text)["public_ip"] == "20.30.40.50"
    assert str(out_dir.parent) not in text
    assert all(v.startswith("/subscriptions/") for v in re.findall(r'"(/[^"]*)"', text))  # no host paths
    assert "SECRETSIGNATURE" not in capsys.readouterr().err
    # Re-deploy: nothing is uploaded again, same VM body, same record.
    fake.calls.clear()
    azure.deploy(target(out_dir), credential=FakeCredential(), upload=up, polling_interval=0)
    assert len(up.calls) == 2
    assert not fake.requests("PUT", "/disks/") and not fake.requests("POST", "GetAccess")
    assert bodies(fake)[f"PUT virtualMachines/{t.names['vm']}"] == sent[f"PUT virtualMachines/{t.names['vm']}"]
    assert (out_dir / "deployment.json").read_text() == text


def test_confidential_vm_bodies(out_dir):
    p = azure.plan(target(out_dir, "azure-cvm", vm_size="Standard_NCC40ads_H100_v5"))
    assert p["vm"]["properties"]["securityProfile"] == {
        "securityType": "ConfidentialVM", "uefiSettings": {"secureBootEnabled": False, "vTpmEnabled": True}}
    check_golden("plan_confidential_vm", {"os_disk": p["disks"]["os"]["body"], "vm": p["vm"]})
    assert p["vm"]["properties"]["storageProfile"]["osDisk"]["managedDisk"]["securityProfile"] == \
        {"securityEncryptionType": "VMGuestStateOnly"}


def test_quota_error_on_vm_leaves_disks_revoked_and_destroy_cleans_up(arm, out_dir):
    fake, _ = arm
    t = target(out_dir)
    quota = "Operation could not be completed as it results in exceeding approved standardNCADSA100v4Family Cores quota."
    fake.fail[("PUT", t.names["vm"])] = (409, "OperationNotAllowed", quota)
    with pytest.raises(ToolFailed, match=r"creating VM .*OperationNotAllowed.*quota.*revoked.*azure destroy") as e:
        azure.deploy(t, credential=FakeCredential(), upload=FakeUpload(), polling_interval=0)
    assert e.value.exit_code == 3
    disks = [r for p, r in fake.resources.items() if "/disks/" in p]
    assert len(disks) == 2 and all(d["properties"]["diskState"] == "Unattached" for d in disks)
    assert not (out_dir / "deployment.json").exists()
    deleted = azure.destroy(make_config(), "llama", out_dir, credential=FakeCredential(), polling_interval=0)
    assert set(deleted) == set(t.names.values()) - {t.names["vm"], t.names["subnet"]}
    assert fake.resources == {}


def test_quota_error_on_disk_creation_is_clear(arm, out_dir):
    fake, _ = arm
    t = target(out_dir)
    fake.fail[("PUT", t.names["os_disk"])] = (409, "OperationNotAllowed",
                                              "The maximum number of disks in this region (50) has been reached.")
    with pytest.raises(ToolFailed, match=f"creating disk {t.names['os_disk']} failed: OperationNotAllowed: "):
        azure.deploy(t, credential=FakeCredential(), upload=FakeUpload(), polling_interval=0)
    assert not fake.requests("POST")  # no access granted, nothing to revoke


def test_vm_creation_failure_in_long_running_operation(arm, out_dir):
    """The VM PUT is accepted, then the operation fails (as Azure reports e.g. a bad image)."""
    fake, rsps = arm
    t = target(out_dir)
    op = f"{MGMT}/subscriptions/{SUB}/providers/Microsoft.Compute/locations/eastus/operations/op1"
    vm_path = azure.ids(t, SUB)["vm"]
    rsps.add(responses.PUT, MGMT + vm_path, status=201, headers={"Azure-AsyncOperation": op},
             json={"id": vm_path, "properties": {"provisioningState": "Creating"}})
    rsps.add(responses.GET, op, json={"status": "Failed", "error": {
        "code": "OSProvisioningInternalError", "message": "OS provisioning failed for VM"}})
    responses_order = rsps.registered()
    responses_order.insert(0, responses_order.pop())  # the specific routes before FakeArm's catch-all
    responses_order.insert(0, responses_order.pop())
    with pytest.raises(ToolFailed, match="OSProvisioningInternalError.*revoked"):
        azure.deploy(t, credential=FakeCredential(), upload=FakeUpload(), polling_interval=0)
    assert len(fake.requests("POST", "/endGetAccess")) == 2
    assert azure.destroy(make_config(), "llama", out_dir, credential=FakeCredential(), polling_interval=0)
    assert fake.resources == {}


def test_access_revoked_mid_upload(arm, out_dir, capsys):
    """The real uploader over HTTP: the SAS stops working after one page; access is revoked,
    the error is clear, the SAS appears nowhere, and no VM is created."""
    fake, rsps = arm
    pages = []

    def put_page(request):
        pages.append(request.headers["x-ms-range"])
        if len(pages) > 1:
            return 403, {"x-ms-error-code": "AuthenticationFailed"}, (
                '<?xml version="1.0" encoding="utf-8"?><Error><Code>AuthenticationFailed</Code>'
                "<Message>Server failed to authenticate the request.</Message></Error>")
        return 201, {"ETag": '"1"'}, ""

    blob = re.compile(re.escape(SAS.split("?")[0]) + r".*")
    rsps.add_callback(responses.PUT, blob, callback=put_page)
    rsps.add(responses.GET, blob, status=200, content_type="application/xml",
             body='<?xml version="1.0" encoding="utf-8"?><PageList></PageList>')
    os_disk = out_dir / "os_disk.raw"
    with open(os_disk, "r+b") as f:  # data in two places: two pages to send
        f.seek(MiB)
        f.write(b"more")
    with pytest.raises(ToolFailed, match="HTTP 403 AuthenticationFailed.*revoked") as e:
        azure.deploy(target(out_dir), credential=FakeCredential(), polling_interval=0)
    assert "SECRET" not in str(e.value) and "SECRET" not in capsys.readouterr().err
    assert len(pages) == 2
    assert len(fake.requests("POST", "/endGetAccess")) == 1
    assert not fake.requests("PUT", "/virtualMachines/") and not (out_dir / "deployment.json").exists()


def test_redeploy_resumes_an_open_upload_and_redoes_a_revoked_unfinished_one(arm, out_dir):
    fake, _ = arm
    t = target(out_dir)
    i = azure.ids(t, SUB)
    os_disk, app_disk = (next(d for d in t.disks if d.role == r) for r in ("os", "app"))
    # The OS disk was left in ActiveUpload (process killed); the app disk was revoked half-way.
    fake.resources[i["os_disk"]] = {**azure.disk_body(t, os_disk), "properties": {"diskState": "ActiveUpload"}}
    fake.resources[i["app_disk"]] = {**azure.disk_body(t, app_disk), "properties": {"diskState": "Unattached"}}
    up = FakeUpload()
    azure.deploy(t, credential=FakeCredential(), upload=up, polling_interval=0)
    assert [c[1] for c in up.calls] == ["os_disk.raw", "application_disk.raw"]
    assert [p for m, p, _ in fake.calls if m in ("PUT", "DELETE") and "/disks/" in p] == \
        [i["app_disk"], i["app_disk"]]  # only the unfinished, revoked disk is deleted and created again
    assert all(r["tags"]["mithril-upload"] == "complete" for p, r in fake.resources.items() if "/disks/" in p)


def test_dry_run_touches_nothing_and_bad_input_is_clear(out_dir):
    with responses.RequestsMock():  # any HTTP request would fail this test
        p = azure.plan(target(out_dir))
    assert p["disks"]["os"]["upload_size"] == 20 * MiB + 512
    assert p["names"]["os_disk"].startswith("mithril-llama-os-")
    with pytest.raises(BadInput, match="subscription_id"):
        azure.clients(azure.load_target(Config.model_validate({
            **make_config().model_dump(mode="json"), "azure": {"vm_size": "Standard_NC24ads_A100_v4"}}), "llama",
        out_dir))
    (out_dir / "measurements.json").unlink()
    with pytest.raises(BadInput, match=r"measurements.json: not found"):
        azure.load_target(make_config(), "llama", out_dir)


def test_cli_commands(tmp_path):
    from tests.conftest import mb, new_project

    project = new_project(tmp_path / "p")
    out = project / "out" / "demo"
    out.mkdir(parents=True)
    for name in ("os_disk.raw", "application_disk.raw"):
        with open(out / name, "wb") as f:
            f.truncate(MiB + 512)
            f.write(name.encode())
    (out / "measurements.json").write_text('{"platform": "qemu"}')
    for cmd in (["azure", "--help"], ["azure", "vhd", "--help"], ["azure", "deploy", "--help"],
                ["azure", "destroy", "--help"]):
        assert mb(*cmd).returncode == 0
    res = mb("azure", "deploy", "--dry-run", cwd=project)  # the default profile runs under QEMU
    assert res.returncode == 2 and "profiles.demo.platform is qemu" in res.stderr, res.stderr
    cvm = project / "out" / "azure-cvm-demo"
    shutil.copytree(out, cvm)
    res = mb("azure", "deploy", "--profile", "azure-cvm-demo", "--dry-run", cwd=project)
    assert res.returncode == 2 and "built for qemu, the profile is azure-cvm" in res.stderr, res.stderr
    (cvm / "measurements.json").write_text('{"platform": "azure-cvm"}')
    res = mb("azure", "deploy", "--profile", "azure-cvm-demo", "--dry-run", "--json", cwd=project)
    assert res.returncode == 0, res.stderr
    plan = json.loads(res.stdout)
    assert plan["disks"]["os"]["upload_size"] == 20 * MiB + 512
    assert plan["vm"]["properties"]["securityProfile"]["securityType"] == "ConfidentialVM"
    assert plan["vm"]["properties"]["hardwareProfile"]["vmSize"].startswith("Standard_DC")
    out = cvm
    res = mb("azure", "deploy", "--profile", "azure-cvm-demo", cwd=project)  # no subscription
    assert res.returncode == 2 and "azure.subscription_id" in res.stderr and "Traceback" not in res.stderr
    assert not (out / "deployment.json").exists()
    for name in ("a.vhd", "b.vhd"):
        res = mb("azure", "vhd", out / "os_disk.raw", "-o", tmp_path / name, cwd=project)
        assert res.returncode == 0, res.stderr
    assert (tmp_path / "a.vhd").read_bytes() == (tmp_path / "b.vhd").read_bytes()
    res = mb("azure", "vhd", tmp_path / "missing.raw", "-o", tmp_path / "c.vhd", cwd=project)
    assert res.returncode == 2 and "missing.raw" in res.stderr and not (tmp_path / "c.vhd").exists()
