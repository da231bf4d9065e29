"""`azure.replicas: N` (N > 1): N confidential VMs from one uploaded image behind a Standard Load
Balancer on the ingress port. Request bodies only (pure); deploy.py sends them.

One image, not N uploads: the two uploaded managed disks become one Azure Compute Gallery image
version (OS disk image + the app disk as the data disk image at LUN 0), and every VM is created
from it (`createOption: FromImage`), so each gets its own copies. Shared disks are not an option:
an OS disk cannot be shared, and a shared data disk is one writable block device that N kernels
would mount at once. The image is specialized (no provisioning agent, no login) and declares the
security type the VMs use.

The load balancer forwards TCP on the ingress port unchanged, so TLS ends in each VM and every
client connection is attested by the VM that answers it. Its health probe is an HTTPS GET of
`/attestation?nonce=` + 16 zero bytes: an Azure probe counts only HTTP 200 as healthy (the 400 that a request
without a nonce gets would mark every VM down), and answering it proves that Caddy, the
attestation server and the vTPM all work. It cannot attest (it checks nothing); each probe costs
one vTPM quote, every PROBE_INTERVAL seconds per VM.

API versions: those of azure-mgmt-compute 39 (galleries 2026-03-03, virtual machines
2026-04-01) and azure-mgmt-network 33.1 (load balancers, NICs 2026-03-01).
"""

from __future__ import annotations

import re

IMAGE_VERSION = "1.0.0"  # the image definition's name carries the disk digests: one version each
PROBE_PATH = "/attestation?nonce=" + "00" * 16  # the shortest nonce the server takes: 200 with evidence
PROBE_INTERVAL = 15
PROBE_THRESHOLD = 2
IDLE_TIMEOUT_MINUTES = 30  # Standard LB: 4..100; keep-alive clients reuse an attested connection
# Gallery image features: the security type the VMs created from the image may use.
IMAGE_SECURITY = {"ConfidentialVM": "ConfidentialVmSupported", "TrustedLaunch": "TrustedLaunchSupported"}


def names(base: dict[str, str], project: str, profile: str, replicas: int) -> dict[str, str]:
    """The resources of a replicated deployment, from the single-VM names (`vm` is the stem)."""
    vm = base["vm"]
    gallery = re.sub(r"[^A-Za-z0-9]+", "_", f"{project}_{profile}").strip("_")  # galleries: no hyphens
    out = {k: v for k, v in base.items() if k not in ("vm", "nic")}
    out.update({"lb": f"{vm}-lb", "gallery": gallery, "image": vm, "image_version": IMAGE_VERSION})
    for i in range(1, replicas + 1):
        out[f"vm_{i}"] = f"{vm}-{i}"
        out[f"nic_{i}"] = f"{vm}-{i}-nic"
    return out


def ids(n: dict[str, str], c, net) -> dict[str, str]:
    """Resource ids; `c(kind, name)` / `net(kind, name)` make Compute / Network ids."""
    image = c("galleries", n["gallery"]) + f"/images/{n['image']}"
    lb = net("loadBalancers", n["lb"])
    out = {"lb": lb, "lb_frontend": f"{lb}/frontendIPConfigurations/frontend",
           "lb_pool": f"{lb}/backendAddressPools/replicas", "lb_probe": f"{lb}/probes/attestation",
           "gallery": c("galleries", n["gallery"]), "image": image,
           "image_version": f"{image}/versions/{n['image_version']}"}
    for key in n:
        if key.startswith(("vm_", "nic_")):
            kind = "virtualMachines" if key.startswith("vm_") else "networkInterfaces"
            out[key] = (c if kind == "virtualMachines" else net)(kind, n[key])
    return out


def replica_keys(n: dict[str, str]) -> list[int]:
    return sorted(int(k[3:]) for k in n if k.startswith("vm_"))


def gallery_body(t) -> dict:
    return {"location": t.az.location, "tags": t.tags,
            "properties": {"description": f"Mithril images of {t.config.project}"}}


def image_body(t) -> dict:
    n = t.names
    return {"location": t.az.location, "tags": t.tags, "properties": {
        "osType": "Linux", "osState": "Specialized", "hyperVGeneration": "V2", "architecture": "x64",
        # publisher/offer/sku must be unique in the gallery: the sku is the digest-named image
        "identifier": {"publisher": "mithril", "offer": t.config.project, "sku": n["image"]},
        "features": [{"name": "SecurityType", "value": IMAGE_SECURITY[t.az.security_type]}]}}


def image_version_body(t, i: dict) -> dict:
    return {"location": t.az.location, "tags": t.tags, "properties": {
        "publishingProfile": {"targetRegions": [{"name": t.az.location, "regionalReplicaCount": 1}],
                              "excludeFromLatest": False},
        "storageProfile": {"osDiskImage": {"source": {"id": i["os_disk"]}},
                           "dataDiskImages": [{"lun": 0, "source": {"id": i["app_disk"]}}]}}}


def lb_body(t, i: dict) -> dict:
    port = t.config.appdisk.ingress_port
    return {"location": t.az.location, "tags": t.tags, "sku": {"name": "Standard", "tier": "Regional"},
            "properties": {
                "frontendIPConfigurations": [{"name": "frontend", "properties": {
                    "publicIPAddress": {"id": i["public_ip"]}}}],
                "backendAddressPools": [{"name": "replicas"}],
                "probes": [{"name": "attestation", "properties": {
                    "protocol": "Https", "port": port, "requestPath": PROBE_PATH,
                    "intervalInSeconds": PROBE_INTERVAL, "probeThreshold": PROBE_THRESHOLD}}],
                "loadBalancingRules": [{"name": "ingress", "properties": {
                    "frontendIPConfiguration": {"id": i["lb_frontend"]},
                    "backendAddressPool": {"id": i["lb_pool"]}, "probe": {"id": i["lb_probe"]},
                    "protocol": "Tcp", "frontendPort": port, "backendPort": port,
                    "enableFloatingIP": False, "enableTcpReset": True, "disableOutboundSnat": True,
                    "idleTimeoutInMinutes": IDLE_TIMEOUT_MINUTES, "loadDistribution": "Default"}}]}}


def nic_body(t, i: dict) -> dict:
    """A replica's NIC: no public IP; in the load balancer's backend pool."""
    return {"location": t.az.location, "tags": t.tags, "properties": {
        "ipConfigurations": [{"name": "ipconfig1", "properties": {
            "subnet": {"id": i["subnet"]}, "privateIPAllocationMethod": "Dynamic",
            "loadBalancerBackendAddressPools": [{"id": i["lb_pool"]}]}}],
        "networkSecurityGroup": {"id": i["nsg"]}}}


def vm_body(t, i: dict, n: int) -> dict:
    """Replica n from the image version; its OS and app disks are copies that go with the VM."""
    managed: dict = {"storageAccountType": t.az.disk_sku}
    if t.az.security_type == "ConfidentialVM":
        managed["securityProfile"] = {"securityEncryptionType": "VMGuestStateOnly"}
    return {"location": t.az.location, "tags": {**t.tags, "mithril-replica": str(n)}, "properties": {
        "hardwareProfile": {"vmSize": t.az.vm_size},
        "storageProfile": {
            "imageReference": {"id": i["image_version"]},
            "osDisk": {"osType": "Linux", "createOption": "FromImage", "deleteOption": "Delete",
                       "managedDisk": managed},
            "dataDisks": [{"lun": 0, "createOption": "FromImage", "deleteOption": "Delete",
                           "managedDisk": {"storageAccountType": t.az.disk_sku}}]},
        "securityProfile": {"securityType": t.az.security_type,
                            "uefiSettings": {"secureBootEnabled": t.az.secure_boot, "vTpmEnabled": t.az.vtpm}},
        "networkProfile": {"networkInterfaces": [{"id": i[f"nic_{n}"], "properties": {"primary": True}}]},
        "diagnosticsProfile": {"bootDiagnostics": {"enabled": True}}}}
