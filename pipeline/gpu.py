"""The GPU path without the NVIDIA container toolkit (docs/gpu.md): one place for the facts the OS
image, the manifests and the checks share.

The OS image holds the driver (Debian's NVIDIA packages, open kernel modules) and, at LIB_DIR,
hard links of the user-space libraries a CUDA process opens by soname (Debian installs them
behind /etc/alternatives, whose absolute links do not resolve inside a container). At boot,
mithril-nvidia.service loads the modules and makes the device nodes. In k3s, NVIDIA's device
plugin (pinned by digest) advertises `nvidia.com/gpu` and, on allocation, hands the kubelet the
device nodes (PASS_DEVICE_SPECS); the pod mounts LIB_DIR's files read-only where the loader
looks. No runtime hook, no generated spec: every file a pod gets is in the measured root.
"""

from __future__ import annotations

LIB_DIR = "/usr/lib/mithril/nvidia"
# Sonames a CUDA/NVML process opens (Debian 535 packages: libcuda1, libnvidia-ml1,
# libnvidia-ptxjitcompiler1, libnvidia-nvvm4), mounted at CONTAINER_LIB_DIR in the pod.
LIBS = ("libcuda.so.1", "libnvidia-ml.so.1", "libnvidia-ptxjitcompiler.so.1", "libnvidia-nvvm.so.4")
CONTAINER_LIB_DIR = "/usr/lib/x86_64-linux-gnu"  # the loader's default path in Ubuntu-based images
DEVICE_PLUGIN = "nvidia-device-plugin"  # its name under `images` in mithril.lock
RESOURCE = "nvidia.com/gpu"
# Debian bookworm packages of the driver (non-free, contrib, non-free-firmware): the open kernel
# modules (needed for confidential computing on H100, supported from Turing on) and their GSP firmware.
PACKAGES = ("nvidia-open-kernel-dkms", "firmware-nvidia-gsp", "libcuda1", "libnvidia-ml1",
            "libnvidia-ptxjitcompiler1", "libnvidia-nvvm4", "nvidia-smi")
# The NVIDIA driver RIM (docs/gpu.md, "Reference values ship with the release"): pinned under
# files.<DRIVER_RIM_PIN> in mithril.lock (path in the checkout, sha256, checked_at); the
# measurements stage names it in measurements.json and ships it as out/<profile>/<RIMS_DIR>/<id>.swidtag.
DRIVER_RIM_PIN = "nvidia-driver-rim"
RIMS_DIR = "gpu-rims"
RIM_SERVICE = "https://rim.attestation.nvidia.com/v1/rim/"  # NVIDIA's RIM service (answers {"rim": base64, …})
DRIVER_DEBS = ("nvidia-open-kernel-dkms", "nvidia-kernel-dkms", "libnvidia-ml1")  # carry the driver version


def driver_rim_id(version: str) -> str:
    """NVIDIA's RIM identifier of a Hopper driver RIM (what its RIM service is asked for)."""
    return f"NV_GPU_DRIVER_GH100_{version}"
