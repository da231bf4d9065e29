"""PCR 9 (the Linux kernel's EFI stub): the kernel measures the command line it was given as
LoadOptions, then the initrd it loaded through LINUX_EFI_INITRD_MEDIA (LoadFile2), each as
sha256(data) in EV_EVENT_TAG events.

systemd-stub 252 passes its .cmdline (up to the first NUL) as UTF-16LE with a terminating NUL,
and serves the .initrd section (VirtualSize bytes) as the initrd when there are no credentials
or system extensions (checked for PCR 12/13). Confirmed on a TCG boot of the Mithril OS image
(Debian 6.1 cloud kernel, stub 252.39, OVMF 2022.11): the predicted value equalled the guest's
PCR 9. Only that combination is predicted; other stub or kernel versions (whose stubs edit the
command line, or kernels that measure nothing) are reported as not predicted.
"""

from __future__ import annotations

from .pcr import Simulator
from .pe import PeImage

PCR = 9
CONFIRMED_STUBS = (252,)
CONFIRMED_KERNELS = ("6.1.",)


def unsupported(uki: PeImage, stub_major: int) -> str | None:
    """Why PCR 9 is not predicted for this UKI, or None when it is."""
    uname = bytes(uki.section_data(".uname") or b"").rstrip(b"\0\n").decode(errors="replace")
    cmdline = bytes(uki.section_data(".cmdline") or b"").split(b"\0", 1)[0]
    if stub_major not in CONFIRMED_STUBS:
        return f"PCR 9 is not predicted: confirmed only with systemd-stub {CONFIRMED_STUBS}, not {stub_major}"
    if not uname.startswith(CONFIRMED_KERNELS):
        return f"PCR 9 is not predicted: confirmed only for kernels {CONFIRMED_KERNELS}, not {uname or 'unknown'!r}"
    if not cmdline or not all(0x20 <= c < 0x7F for c in cmdline):
        return "PCR 9 is not predicted: the command line is empty or has non-printable characters"
    return None


def predict(sim: Simulator, uki: PeImage) -> bytes:
    """Call only when `unsupported` returned None."""
    cmdline = bytes(uki.section_data(".cmdline")).split(b"\0", 1)[0].decode("ascii")
    sim.measure(PCR, (cmdline + "\0").encode("utf-16-le"), "EV_EVENT_TAG",
                "kernel EFI stub: LoadOptions (the UKI's .cmdline, UTF-16LE with NUL)")
    sim.extend(PCR, uki.section_sha256(".initrd"), "EV_EVENT_TAG",
               "kernel EFI stub: initrd via LoadFile2 (the UKI's .initrd section)")
    return sim.value(PCR)
