"""The request bodies `azure deploy --dry-run` emits (every Azure profile) validate against the
request schemas of the API versions the SDK calls: disks 2026-03-02, VMs 2026-04-01, network
2026-03-01 (tests/fixtures/upstream/azure/schemas.json, derived from Microsoft's generated models;
SOURCES.md). Objects are closed: a property the API does not define, or one that is read-only,
is refused; enum values must be known; types must match.

The validator is generic over the emitted requests: every body of the plan is checked, and a body
of a kind with no schema fails, so new resources (load balancers, …) must be added to derive.py."""

from __future__ import annotations

import copy
import json
import shutil

import jsonschema
import yaml
import pytest

from pipeline import config
from tests.conftest import REPO, mb
from tests.unit.upstream import UPSTREAM

pytest.importorskip("azure.mgmt.compute")

SCHEMAS = json.loads((UPSTREAM / "azure" / "schemas.json").read_text())
# Enums the API declares extensible (x-ms-enum modelAsString) whose known-value list is not the
# set Azure accepts: the VM size enum is deprecated and lists no size newer than 2023 (its doc).
OPEN_ENUMS = {("HardwareProfile", "vmSize")}
AZURE_PROFILES = ("azure-cvm-demo", "llama", "llama-a100", "gpt2")
REPLICAS = "llama-replicas"  # llama with azure.replicas: 2, added to the test project's mithril.yaml


def _schema() -> dict:
    defs = copy.deepcopy(SCHEMAS["definitions"])
    for model, prop in OPEN_ENUMS:
        defs[model]["properties"][prop].pop("enum")
    return defs


DEFINITIONS = _schema()


def requests(plan: dict) -> list[tuple[str, str, dict]]:
    """(where, kind, body) of every request body in a dry-run plan."""
    out = [(f"disks.{role}.body", "disk", d["body"]) for role, d in sorted(plan["disks"].items())]
    if "replicas" not in plan:
        out += [(f"network.{kind}", kind, body) for kind, body in sorted(plan["network"].items())]
        out.append(("vm", "vm", plan["vm"]))
        return out
    # azure.replicas > 1: network holds the NICs by name; a gallery image; the VMs by name
    out += [(f"network.{key}", key if key in SCHEMAS["roots"] else "nic", body)
            for key, body in sorted(plan["network"].items())]
    kinds = {"gallery": "gallery", "image": "gallery_image", "image_version": "gallery_image_version"}
    out += [(f"image.{key}", kinds[key], body) for key, body in sorted(plan["image"].items())]
    out += [(f"vms.{name}", "vm", body) for name, body in sorted(plan["vms"].items())]
    return out


def errors(kind: str, body: dict) -> list[str]:
    root = SCHEMAS["roots"].get(kind)
    if root is None:
        return [f"no schema for request kind {kind!r}: add it to tests/fixtures/upstream/azure/derive.py ROOTS"]
    schema = {"definitions": DEFINITIONS, "$ref": f"#/definitions/{root['definition']}"}
    validator = jsonschema.Draft4Validator(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(body)]


@pytest.fixture(scope="module")
def plans(tmp_path_factory) -> dict[str, dict]:
    """`azure deploy --dry-run --json` of every Azure profile, on stand-in disk files."""
    project = tmp_path_factory.mktemp("p") / "p"
    shutil.copytree(REPO, project, ignore=shutil.ignore_patterns(".git", ".mithril", "out", ".tools", "__pycache__"))
    doc = yaml.safe_load((project / "mithril.yaml").read_text())
    llama = copy.deepcopy(doc["profiles"]["llama"])
    llama.setdefault("azure", {})["replicas"] = 2
    doc["profiles"][REPLICAS] = llama
    (project / "mithril.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    out = {}
    for profile in (*AZURE_PROFILES, REPLICAS):
        platform = config.load(project / "mithril.yaml").profiles[profile].platform
        folder = project / "out" / profile
        folder.mkdir(parents=True)
        for name in ("os_disk.raw", "application_disk.raw"):
            with open(folder / name, "wb") as f:
                f.truncate((1 << 20) + 512)
        (folder / "measurements.json").write_text(json.dumps({"platform": platform}))
        res = mb("azure", "deploy", "--profile", profile, "--dry-run", "--json", cwd=project)
        assert res.returncode == 0, res.stderr
        out[profile] = json.loads(res.stdout)
    return out


def test_schemas_are_for_the_api_versions_the_sdk_calls():
    versions = {k: v["api_version"] for k, v in SCHEMAS["roots"].items()}
    assert versions == {"disk": "2026-03-02", "grant": "2026-03-02", "vm": "2026-04-01", "nsg": "2026-03-01",
                        "vnet": "2026-03-01", "public_ip": "2026-03-01", "nic": "2026-03-01",
                        "lb": "2026-03-01", "gallery": "2026-03-03", "gallery_image": "2026-03-03",
                        "gallery_image_version": "2026-03-03"}


def test_every_dry_run_body_validates(plans):
    seen = set()
    for profile, plan in plans.items():
        for where, kind, body in requests(plan):
            assert errors(kind, body) == [], f"{profile} {where}"
            seen.add(kind)
    assert seen == {"disk", "vm", "nsg", "vnet", "public_ip", "nic", "lb", "gallery", "gallery_image",
                    "gallery_image_version"}
    assert plans[REPLICAS]["replicas"] == 2 and len(plans[REPLICAS]["vms"]) == 2


def test_the_grant_body_validates():
    from pipeline.platforms.azure import deploy as azure

    assert errors("grant", azure.grant_body()) == []


def _set(body: dict, path: str, value) -> dict:
    body = copy.deepcopy(body)
    *parents, last = path.split("/")
    node = body
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    node[last] = value
    return body


@pytest.mark.parametrize("kind,path,value,expected", [
    ("vm", "properties/securityProfile/securityTypes", "ConfidentialVM", "Additional properties"),  # misspelt
    ("vm", "properties/securityProfile/securityType", "ConfidentialVm2", "is not one of"),         # bad enum
    ("vm", "properties/securityProfile/uefiSettings/vTpmEnabled", "true", "is not of type 'boolean'"),
    ("disk", "properties/diskState", "ActiveUpload", "Additional properties"),                     # read-only
    ("nsg", "properties/securityRules/0/properties/priority", "100", "is not of type 'integer'"),
    ("nic", "properties/ipConfigurations/0/properties/privateIPAllocationMethod", "Dhcp", "is not one of"),
])
def test_mutated_body_is_refused(plans, kind, path, value, expected):
    body = next(b for _, k, b in requests(plans["llama"]) if k == kind)
    assert errors(kind, body) == []
    found = errors(kind, _set(body, path, value))
    assert found and expected in found[0], found


@pytest.mark.parametrize("kind,path,value,expected", [
    ("lb", "properties/probes/0/properties/protocol", "Https2", "is not one of"),
    ("lb", "sku/name", "Standard2", "is not one of"),
    ("gallery_image_version", "properties/storageProfile/osDiskImage/hostCaching", "Sometimes", "is not one of"),
])
def test_mutated_replica_body_is_refused(plans, kind, path, value, expected):
    body = next(b for _, k, b in requests(plans[REPLICAS]) if k == kind)
    assert errors(kind, body) == []
    found = errors(kind, _set(body, path, value))
    assert found and expected in found[0], found


def test_a_body_of_an_unknown_kind_fails():
    assert "no schema for request kind 'firewall'" in errors("firewall", {})[0]


def test_schemas_match_the_installed_sdk():
    """Change detector: schemas.json is what derive.py yields from the pinned SDK versions."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("derive", UPSTREAM / "azure" / "derive.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.derive() == SCHEMAS
