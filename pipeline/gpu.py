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
COMPONENTS = ("main", "contrib", "non-free", "non-free-firmware")  # where Debian keeps the driver
# One driver version for the kernel module, the GSP firmware and every library (the open module
# refuses GSP firmware and user space of another version). Bookworm's open module is 535.261.03
# (contrib, no security update), so the whole set is taken at that version, not at the 535.309.01
# of bookworm-security (proprietary module and user space only): docs/gpu.md, "One driver version".
DRIVER_VERSION = "535.261.03-1"
# Debian source packages built from NVIDIA's driver release: every binary of these in the image
# must be of DRIVER_VERSION (the pool path of a .deb names its source package).
DRIVER_SOURCES = ("nvidia-graphics-drivers", "nvidia-open-gpu-kernel-modules")
# Every binary of DRIVER_SOURCES the image takes (PACKAGES and what they pull in), each installed
# at DRIVER_VERSION: apt would otherwise take bookworm-security's newer user space.
DRIVER_PACKAGES = PACKAGES + ("libnvidia-pkcs11-openssl3", "nvidia-alternative", "nvidia-legacy-check",
                              "nvidia-open-kernel-support")
# The GPU image holds its kernel at bookworm's point release 6.1.176-1 (linux-image-6.1.0-50-cloud-amd64),
# the newest bookworm kernel the pinned open module compiles against: bookworm-security's 6.1.192
# backported a fourth argument of pci_resize_resource() (`exclude_bars`), which 535.261.03's
# nv-pci.c does not pass, so its DKMS build fails there (docs/gpu.md, "One driver version"). The
# image, its headers and the kbuild tools are installed at this version (the headers would take
# bookworm-security's kbuild otherwise); the non-GPU images keep the current kernel. Their
# .debs are pinned apart, under debs.os-nvidia (pipeline/stages/os_image.py, debs_key).
KERNEL_VERSION = "6.1.176-1"
KERNEL_PACKAGES = ("linux-headers-cloud-amd64", "linux-kbuild-6.1", "linux-compiler-gcc-12-x86")  # + os.kernel_package
KERNEL_SOURCES = ("linux", "linux-signed-amd64")  # Debian source packages of the kernel's binaries


def upstream_version(version: str) -> str:
    """535.261.03 of 535.261.03-1 or 535.309.01-0+deb12u1 (no epoch, no Debian revision)."""
    return version.split(":", 1)[-1].rsplit("-", 1)[0]


def source_of(url: str) -> str:
    """The source package a .deb was built from: the folder above it in Debian's pool."""
    return url.rstrip("/").split("/")[-2]


def check_driver(pins: dict, where: str) -> str | None:
    """Refuse a package set whose NVIDIA driver packages (binaries of DRIVER_SOURCES) are not all
    of one upstream version, naming them; return that version (None: no driver packages).
    `pins` maps package names to objects with `.version` and `.url` (lock DebPins)."""
    from .errors import BadInput

    driver = {n: p for n, p in sorted(pins.items()) if source_of(p.url) in DRIVER_SOURCES}
    versions: dict[str, list[str]] = {}
    for name, pin in driver.items():
        versions.setdefault(upstream_version(pin.version), []).append(f"{name} {pin.version}")
    if len(versions) > 1:
        listing = "; ".join(f"{v}: {', '.join(names)}" for v, names in sorted(versions.items()))
        raise BadInput(where, f"NVIDIA driver packages of different versions ({listing})",
                       f"the kernel module, GSP firmware and libraries must be one driver version "
                       f"({upstream_version(DRIVER_VERSION)}, pipeline/gpu.py): re-run `mithril-build lock --update-debs`")
    return next(iter(versions), None)


def check_kernel(pins: dict, where: str) -> None:
    """Refuse a GPU image's package set whose kernel packages (binaries of KERNEL_SOURCES) are not
    all at KERNEL_VERSION, naming them: the open module is known to build against that one only."""
    from .errors import BadInput

    other = [f"{n} {p.version}" for n, p in sorted(pins.items())
             if source_of(p.url) in KERNEL_SOURCES and p.version != KERNEL_VERSION]
    if other:
        raise BadInput(where, f"kernel packages not at {KERNEL_VERSION}: {', '.join(other)}",
                       f"the GPU image holds its kernel at {KERNEL_VERSION} (pipeline/gpu.py KERNEL_VERSION): "
                       "re-run `mithril-build lock --update-debs` for a GPU profile")
