"""Azure: upload out/<profile>/ disks as managed disks and launch a Trusted Launch / Confidential VM.

Not a cached stage: a command group (`mithril-build azure vhd|deploy|destroy`) working on the
published outputs. Request bodies are plain dicts (the REST shapes), built by small pure
functions so tests can compare them with golden files. Names derive from the project, the
profile and the disk digests, so `deploy` is idempotent and `destroy` finds what it made.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ... import log, platforms
from ... import CONFIG_FILE
from ...config import Config, Profile
from ...errors import BadInput, ToolFailed
from ...files import atomic_write, sha256_file
from . import AzurePlatform
from . import replicas as rep
from .vhd import FOOTER_SIZE, MIN_DATA_SIZE, disk_footer

DISKS = {"os": "os_disk.raw", "app": "application_disk.raw"}
MEASUREMENTS = "measurements.json"
DEPLOYMENT = "deployment.json"
GRANT_SECONDS = 24 * 3600
# The disk security type an uploaded OS disk needs for each VM security type.
DISK_SECURITY = {"TrustedLaunch": "TrustedLaunch",
                 "ConfidentialVM": "ConfidentialVM_VMGuestStateOnlyEncryptedWithPlatformKey"}
UPLOAD_STATES = {"ReadyToUpload", "ActiveUpload"}
DONE_TAG = "mithril-upload"


@dataclass(frozen=True)
class Disk:
    role: str          # "os" or "app"
    path: Path
    sha256: str
    size: int          # padded to 1 MiB; the VHD data part
    footer: bytes

    @property
    def upload_size(self) -> int:
        """uploadSizeBytes: the VHD size (whole MiB, at least 20 MiB, plus the footer), as Azure requires."""
        assert self.size % (1 << 20) == 0 and self.size >= MIN_DATA_SIZE
        return self.size + FOOTER_SIZE


@dataclass(frozen=True)
class Target:
    """Everything a deployment is derived from: config, profile and the built outputs."""

    config: Config
    profile: str
    out_dir: Path
    disks: tuple[Disk, ...]
    measurements_sha256: str
    settings: Profile  # the resolved profile (its `azure` section is what deploys)

    @property
    def az(self):
        return self.settings.azure

    @property
    def names(self) -> dict[str, str]:
        prefix = f"{self.config.project}-{self.profile}"
        d = {x.role: x.sha256 for x in self.disks}
        vm = f"{prefix}-{hashlib.sha256((d['os'] + d['app']).encode()).hexdigest()[:10]}"
        names = {"os_disk": f"{prefix}-os-{d['os'][:12]}", "app_disk": f"{prefix}-app-{d['app'][:12]}",
                 "vnet": f"{prefix}-vnet", "subnet": "default", "nsg": f"{prefix}-nsg",
                 "public_ip": f"{vm}-ip", "nic": f"{vm}-nic", "vm": vm}
        if self.az.replicas > 1:
            return rep.names(names, self.config.project, self.profile, self.az.replicas)
        return names

    @property
    def tags(self) -> dict[str, str]:
        return {**self.az.tags, "mithril-project": self.config.project, "mithril-profile": self.profile}


def azure_profile(config: Config, profile: str) -> Profile:
    """The resolved profile; bad input unless it targets Azure."""
    _, settings = config.profile(profile)
    if not isinstance(platforms.get(settings.platform), AzurePlatform):
        raise BadInput(CONFIG_FILE, f"profiles.{profile}.platform is {settings.platform}: `azure` commands need "
                       "platform azure-cvm or azure-trusted-launch", "choose an Azure profile with --profile")
    return settings


def load_target(config: Config, profile: str, out_dir: Path) -> Target:
    """Read the built outputs (bad input if missing); digests are computed from the files."""
    settings = azure_profile(config, profile)
    missing = [n for n in (*DISKS.values(), MEASUREMENTS) if not (out_dir / n).is_file()]
    if missing:
        raise BadInput(str(out_dir / missing[0]), "not found",
                       f"build the profile first: mithril-build all --profile {profile}")
    disks = []
    for role, name in DISKS.items():
        path = out_dir / name
        sha = sha256_file(path, progress=True)
        size, footer = disk_footer(path, sha, config.source_date_epoch)
        disks.append(Disk(role, path, sha, size, footer))
    built_for = _measured_platform(out_dir / MEASUREMENTS)
    if built_for != settings.platform:
        raise BadInput(str(out_dir / MEASUREMENTS), f"platform: built for {built_for}, the profile is "
                       f"{settings.platform}", f"rebuild: mithril-build all --profile {profile}")
    return Target(config, profile, out_dir, tuple(disks), sha256_file(out_dir / MEASUREMENTS), settings)


def _measured_platform(path: Path) -> str | None:
    try:
        return json.loads(path.read_text()).get("platform")
    except (OSError, ValueError, AttributeError):
        raise BadInput(str(path), "not a measurements.json", "rebuild the profile") from None


# ---- resource ids and request bodies (pure) ---------------------------------------------------

def resource_id(sub: str, rg: str, provider: str, kind: str, name: str) -> str:
    return f"/subscriptions/{sub}/resourceGroups/{rg}/providers/{provider}/{kind}/{name}"


def ids(t: Target, sub: str) -> dict[str, str]:
    n, rg = t.names, t.az.resource_group
    c = lambda kind, name: resource_id(sub, rg, "Microsoft.Compute", kind, name)
    net = lambda kind, name: resource_id(sub, rg, "Microsoft.Network", kind, name)
    out = {"os_disk": c("disks", n["os_disk"]), "app_disk": c("disks", n["app_disk"]),
           "vnet": net("virtualNetworks", n["vnet"]),
           "subnet": net("virtualNetworks", n["vnet"]) + f"/subnets/{n['subnet']}",
           "nsg": net("networkSecurityGroups", n["nsg"]), "public_ip": net("publicIPAddresses", n["public_ip"])}
    if "vm" in n:
        return {**out, "vm": c("virtualMachines", n["vm"]), "nic": net("networkInterfaces", n["nic"])}
    return {**out, **rep.ids(n, c, net)}


def disk_body(t: Target, disk: Disk) -> dict:
    props: dict = {"creationData": {"createOption": "Upload", "uploadSizeBytes": disk.upload_size}}
    if disk.role == "os":
        props.update({"osType": "Linux", "hyperVGeneration": "V2",
                      "securityProfile": {"securityType": DISK_SECURITY[t.az.security_type]}})
    return {"location": t.az.location, "tags": {**t.tags, "mithril-sha256": disk.sha256},
            "sku": {"name": t.az.disk_sku}, "properties": props}


def grant_body() -> dict:
    return {"access": "Write", "durationInSeconds": GRANT_SECONDS}


def _rule(name, priority, access, protocol, port) -> dict:
    return {"name": name, "properties": {
        "priority": priority, "direction": "Inbound", "access": access, "protocol": protocol,
        "sourceAddressPrefix": "*", "sourcePortRange": "*",
        "destinationAddressPrefix": "*", "destinationPortRange": port}}


def nsg_body(t: Target) -> dict:
    # Azure's default rules also allow VNet and load-balancer traffic in; the explicit deny at
    # the lowest priority overrides them, so the ingress port is the only way in.
    port = str(t.config.appdisk.ingress_port)
    return {"location": t.az.location, "tags": t.tags, "properties": {"securityRules": [
        _rule("allow-ingress-in", 100, "Allow", "Tcp", port),
        _rule("deny-all-in", 4096, "Deny", "*", "*")]}}


def vnet_body(t: Target, i: dict) -> dict:
    return {"location": t.az.location, "tags": t.tags, "properties": {
        "addressSpace": {"addressPrefixes": [t.az.vnet_prefix]},
        "subnets": [{"name": t.names["subnet"], "properties": {
            "addressPrefix": t.az.subnet_prefix, "networkSecurityGroup": {"id": i["nsg"]}}}]}}


def public_ip_body(t: Target) -> dict:
    return {"location": t.az.location, "tags": t.tags, "sku": {"name": "Standard"},
            "properties": {"publicIPAllocationMethod": "Static", "publicIPAddressVersion": "IPv4"}}


def nic_body(t: Target, i: dict) -> dict:
    return {"location": t.az.location, "tags": t.tags, "properties": {
        "ipConfigurations": [{"name": "ipconfig1", "properties": {
            "subnet": {"id": i["subnet"]}, "privateIPAllocationMethod": "Dynamic",
            "publicIPAddress": {"id": i["public_ip"]}}}],
        "networkSecurityGroup": {"id": i["nsg"]}}}


def vm_body(t: Target, i: dict) -> dict:
    os_disk: dict = {"id": i["os_disk"]}
    if t.az.security_type == "ConfidentialVM":
        os_disk["securityProfile"] = {"securityEncryptionType": "VMGuestStateOnly"}
    return {"location": t.az.location, "tags": t.tags, "properties": {
        "hardwareProfile": {"vmSize": t.az.vm_size},
        "storageProfile": {
            "osDisk": {"osType": "Linux", "createOption": "Attach", "managedDisk": os_disk},
            "dataDisks": [{"lun": 0, "createOption": "Attach", "managedDisk": {"id": i["app_disk"]}}]},
        "securityProfile": {"securityType": t.az.security_type,
                            "uefiSettings": {"secureBootEnabled": t.az.secure_boot, "vTpmEnabled": t.az.vtpm}},
        "networkProfile": {"networkInterfaces": [{"id": i["nic"], "properties": {"primary": True}}]},
        "diagnosticsProfile": {"bootDiagnostics": {"enabled": True}}}}


def plan(t: Target) -> dict:
    """What deploy would create, without touching Azure (`azure deploy --dry-run`)."""
    sub = t.az.subscription_id or "<subscription_id>"
    i = ids(t, sub)
    disks = {d.role: {"name": t.names[f"{d.role}_disk"], "file": d.path.name, "sha256": d.sha256,
                      "raw_size": d.path.stat().st_size, "upload_size": d.upload_size,
                      "body": disk_body(t, d)} for d in t.disks}
    common = {"profile": t.profile, "subscription_id": sub, "resource_group": t.az.resource_group,
              "location": t.az.location, "names": t.names, "ids": i, "disks": disks,
              "measurements_sha256": t.measurements_sha256}
    network = {"nsg": nsg_body(t), "vnet": vnet_body(t, i), "public_ip": public_ip_body(t)}
    if t.az.replicas == 1:
        return {**common, "network": {**network, "nic": nic_body(t, i)}, "vm": vm_body(t, i)}
    n = t.names
    return {**common, "replicas": t.az.replicas,
            "network": {**network, "lb": rep.lb_body(t, i),
                        **{n[f"nic_{k}"]: rep.nic_body(t, i) for k in rep.replica_keys(n)}},
            "image": {"gallery": rep.gallery_body(t), "image": rep.image_body(t),
                      "image_version": rep.image_version_body(t, i)},
            "vms": {n[f"vm_{k}"]: rep.vm_body(t, i, k) for k in rep.replica_keys(n)}}


# ---- talking to Azure ---------------------------------------------------------------------------

@dataclass
class Clients:
    compute: object
    network: object
    resources: object


def clients(t: Target, credential=None, **kwargs) -> Clients:
    """SDK clients; credentials come only from azure-identity's default chain."""
    if not t.az.subscription_id:
        raise BadInput(CONFIG_FILE, "azure.subscription_id is not set", "add it under `azure:` in mithril.yaml")
    try:
        from azure.mgmt.compute import ComputeManagementClient
        from azure.mgmt.network import NetworkManagementClient
        from azure.mgmt.resource.resources import ResourceManagementClient
    except ImportError:
        raise ToolFailed("the Azure SDK is not installed: pip install 'mithril-build[azure]'") from None
    if credential is None:
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential()
    sub = t.az.subscription_id
    return Clients(ComputeManagementClient(credential, sub, **kwargs), NetworkManagementClient(credential, sub, **kwargs),
                   ResourceManagementClient(credential, sub, **kwargs))


def _azure_error(what: str, e: Exception) -> ToolFailed:
    err = getattr(e, "error", None)
    code = getattr(err, "code", None) or getattr(e, "status_code", None) or type(e).__name__
    message = getattr(err, "message", None) or (str(e).splitlines() or [""])[0]
    return ToolFailed(f"{what} failed: {code}: {message}")


@contextlib.contextmanager
def _azure(what: str, hint: str = ""):
    """Turn an Azure SDK error into ToolFailed (exit 3) naming what we were doing."""
    from azure.core.exceptions import AzureError

    try:
        yield
    except AzureError as e:
        err = _azure_error(what, e)
        raise ToolFailed(f"{err}{hint}") from None


def _get(op, *args):
    from azure.core.exceptions import ResourceNotFoundError

    try:
        return op(*args)
    except ResourceNotFoundError:
        return None


def _disk_state(disk) -> str | None:
    state = getattr(disk, "disk_state", None) if disk is not None else None
    return getattr(state, "value", state)  # the SDK's str enum prints as "DiskState.X"


def _ensure_disk(t: Target, c: Clients, disk: Disk, upload, workers: int) -> dict:
    from ...run import add_secret

    rg, name = t.az.resource_group, t.names[f"{disk.role}_disk"]
    with _azure(f"reading disk {name}"):
        existing = _get(c.compute.disks.get, rg, name)
    state = _disk_state(existing)
    tags = dict(existing.tags or {}) if existing is not None else {}
    if existing is not None and state not in UPLOAD_STATES:
        if tags.get(DONE_TAG) == "complete" and tags.get("mithril-sha256") == disk.sha256:
            log.info(f"{disk.role} disk {name}: already uploaded")
            return {"name": name, "uploaded": False}
        # A revoked, unfinished upload cannot take writes again: start over.
        log.warn(f"{disk.role} disk {name} holds an unfinished upload ({state}); recreating it")
        with _azure(f"deleting disk {name}"):
            c.compute.disks.begin_delete(rg, name).result()
        existing = None
    if existing is None:
        with log.step(f"Creating {disk.role} disk {name} ({disk.upload_size} bytes)"), _azure(f"creating disk {name}"):
            c.compute.disks.begin_create_or_update(rg, name, disk_body(t, disk)).result()
    with _azure(f"granting write access to disk {name}"):
        sas = c.compute.disks.begin_grant_access(rg, name, grant_body()).result().access_sas
    add_secret(sas)
    try:
        with log.step(f"Uploading {disk.path.name} to {name}"), _azure(f"uploading to disk {name}"):
            stats = upload(sas, disk.path, disk.size, disk.footer, name=f"{disk.role} disk", workers=workers)
    finally:
        # Always revoke: a write SAS must not outlive the upload, whatever happened.
        try:
            with _azure(f"revoking access to disk {name}"):
                c.compute.disks.begin_revoke_access(rg, name).result()
        except ToolFailed as e:
            log.warn(f"{e} (revoke it in the portal or run `azure destroy`)")
    with _azure(f"tagging disk {name}"):
        c.compute.disks.begin_update(rg, name, {"tags": {**disk_body(t, disk)["tags"], DONE_TAG: "complete"}}).result()
    return {"name": name, "uploaded": True, "stats": stats.as_dict()}


def deploy(t: Target, credential=None, upload=None, workers: int = 4, **client_kwargs) -> dict:
    """Upload both disks, create the network and the VM, write deployment.json; return it."""
    from .upload import upload_disk

    c = clients(t, credential, **client_kwargs)
    upload = upload or upload_disk
    i, n, rg, loc = ids(t, t.az.subscription_id), t.names, t.az.resource_group, t.az.location
    with log.step(f"Deploying profile {t.profile} to {rg} ({loc})"):
        with _azure(f"creating resource group {rg}"):
            c.resources.resource_groups.create_or_update(rg, {"location": loc, "tags": t.tags})
        uploads = {d.role: _ensure_disk(t, c, d, upload, workers) for d in t.disks}
        net = c.network
        with log.step("Creating network (NSG: ingress port in only, VNet, public IP)"), _azure("creating the network"):
            net.network_security_groups.begin_create_or_update(rg, n["nsg"], nsg_body(t)).result()
            net.virtual_networks.begin_create_or_update(rg, n["vnet"], vnet_body(t, i)).result()
            net.public_ip_addresses.begin_create_or_update(rg, n["public_ip"], public_ip_body(t)).result()
        after = ("; the disks are uploaded and their access revoked. Fix the cause and run `azure deploy` "
                 "again, or `azure destroy` to remove everything")
        if t.az.replicas == 1:
            with _azure("creating the NIC"):
                net.network_interfaces.begin_create_or_update(rg, n["nic"], nic_body(t, i)).result()
            with log.step(f"Creating VM {n['vm']} ({t.az.vm_size}, {t.az.security_type})"), \
                    _azure(f"creating VM {n['vm']}", after):
                c.compute.virtual_machines.begin_create_or_update(rg, n["vm"], vm_body(t, i)).result()
        else:
            _deploy_replicas(t, c, i, after)
        with _azure("reading the public IP"):
            ip = c.network.public_ip_addresses.get(rg, n["public_ip"]).ip_address
    record = {
        "version": 1, "profile": t.profile, "subscription_id": t.az.subscription_id, "resource_group": rg,
        "location": loc, "vm_size": t.az.vm_size, "security_type": t.az.security_type,
        "secure_boot": t.az.secure_boot, "vtpm": t.az.vtpm, "names": n, "resources": i, "public_ip": ip,
        "disks": {d.role: {"file": d.path.name, "sha256": d.sha256, "upload_size": d.upload_size} for d in t.disks},
        "measurements_sha256": t.measurements_sha256,
    }
    if t.az.replicas > 1:
        record["replicas"] = t.az.replicas
    atomic_write(t.out_dir / DEPLOYMENT, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
    return {**record, "uploads": uploads}


def _deploy_replicas(t: Target, c: Clients, i: dict, after: str) -> None:
    """The load balancer, one gallery image version from the uploaded disks, N NICs and VMs."""
    n, rg = t.names, t.az.resource_group
    with log.step(f"Creating load balancer {n['lb']} (TCP {t.config.appdisk.ingress_port}, probe "
                  f"{rep.PROBE_PATH})"), _azure(f"creating load balancer {n['lb']}"):
        c.network.load_balancers.begin_create_or_update(rg, n["lb"], rep.lb_body(t, i)).result()
    g = c.compute
    with log.step(f"Creating image {n['gallery']}/{n['image']}/{n['image_version']} from the uploaded disks"), \
            _azure(f"creating image {n['image']}", after):
        g.galleries.begin_create_or_update(rg, n["gallery"], rep.gallery_body(t)).result()
        g.gallery_images.begin_create_or_update(rg, n["gallery"], n["image"], rep.image_body(t)).result()
        if _get(g.gallery_image_versions.get, rg, n["gallery"], n["image"], n["image_version"]) is None:
            g.gallery_image_versions.begin_create_or_update(rg, n["gallery"], n["image"], n["image_version"],
                                                            rep.image_version_body(t, i)).result()
    for k in rep.replica_keys(n):
        with _azure(f"creating NIC {n[f'nic_{k}']}"):
            c.network.network_interfaces.begin_create_or_update(rg, n[f"nic_{k}"], rep.nic_body(t, i)).result()
    pollers = []
    with log.step(f"Creating {t.az.replicas} VMs ({t.az.vm_size}, {t.az.security_type})"), \
            _azure(f"creating the VMs {n['vm_1']}…", after):
        for k in rep.replica_keys(n):  # started together, waited for together
            pollers.append(g.virtual_machines.begin_create_or_update(rg, n[f"vm_{k}"], rep.vm_body(t, i, k)))
        for poller in pollers:
            poller.result()


def destroy_names(config: Config, profile: str, out_dir: Path) -> tuple[Target, dict[str, str]]:
    """The names destroy works on: from deployment.json, else derived from the current disks."""
    record_path = out_dir / DEPLOYMENT
    if record_path.is_file():
        try:
            names = json.loads(record_path.read_text())["names"]
        except (ValueError, KeyError, TypeError):
            raise BadInput(str(record_path), "not a deployment record (no `names`)", "delete it and retry") from None
        return Target(config, profile, out_dir, (), "", azure_profile(config, profile)), names
    t = load_target(config, profile, out_dir)
    return t, t.names


def destroy_steps(names: dict[str, str]) -> list[tuple[str, str, tuple[str, ...]]]:
    """(key, SDK operations group, name parts) in deletion order: users before what they use. A
    replica's OS and app disk copies go with its VM (deleteOption: Delete); the gallery goes once
    it holds no other image."""
    k = rep.replica_keys(names)
    vms = [(f"vm_{i}", names[f"vm_{i}"]) for i in k] if k else [("vm", names["vm"])]
    nics = [(f"nic_{i}", names[f"nic_{i}"]) for i in k] if k else [("nic", names["nic"])]
    steps = [(key, "compute.virtual_machines", (name,)) for key, name in vms]
    steps += [(key, "network.network_interfaces", (name,)) for key, name in nics]
    if k:
        gallery, image = names["gallery"], names["image"]
        steps += [("lb", "network.load_balancers", (names["lb"],)),
                  ("image_version", "compute.gallery_image_versions", (gallery, image, names["image_version"])),
                  ("image", "compute.gallery_images", (gallery, image)),
                  ("gallery", "compute.galleries", (gallery,))]
    return steps + [("public_ip", "network.public_ip_addresses", (names["public_ip"],)),
                    ("vnet", "network.virtual_networks", (names["vnet"],)),
                    ("nsg", "network.network_security_groups", (names["nsg"],)),
                    ("os_disk", "compute.disks", (names["os_disk"],)),
                    ("app_disk", "compute.disks", (names["app_disk"],))]


def destroy(config: Config, profile: str, out_dir: Path, credential=None, **client_kwargs) -> list[str]:
    """Delete what deploy made (names from deployment.json, else derived from the current disks).

    The resource group stays: it may hold other things. Missing resources are skipped."""
    t, names = destroy_names(config, profile, out_dir)
    record_path = out_dir / DEPLOYMENT
    c = clients(t, credential, **client_kwargs)
    rg = t.az.resource_group
    deleted = []
    with log.step(f"Removing the {profile} deployment from {rg}"):
        for key, group, args in destroy_steps(names):
            client, attr = group.split(".")
            ops, name = getattr(getattr(c, client), attr), "/".join(args)
            with _azure(f"deleting {name}"):
                found = _get(ops.get, rg, *args)
                if found is None:
                    continue
                if key == "gallery" and any(True for _ in c.compute.gallery_images.list_by_gallery(rg, *args)):
                    log.info(f"kept gallery {name}: it holds images of other builds")
                    continue
                if key.endswith("_disk") and _disk_state(found) in ("ActiveUpload", "ActiveSAS"):
                    ops.begin_revoke_access(rg, *args).result()  # a disk with a live SAS cannot be deleted
                ops.begin_delete(rg, *args).result()
            log.info(f"deleted {name}")
            deleted.append(name)
    record_path.unlink(missing_ok=True)
    return deleted
