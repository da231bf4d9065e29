"""The image's tpm-transact must hand the kernel a TPM command in ONE write(): /dev/tpmrm0
refuses a partial command (EINVAL). Checked with strace (the reference for what reaches the
kernel) on a command whose digest holds newline bytes: bash's own printf, which measured-setup
used before, flushes at each 0x0a, and one roothash in eight holds one."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.conftest import REPO, need

SCRIPT = REPO / "mkosi/mkosi.extra/usr/lib/mithril/tpm-transact"
# TPM2_PCR_Extend of PCR 15 (as measured-setup builds it), one sha256 digest full of 0x0a bytes
COMMAND = "".join(["8002", "00000041", "00000182", "0000000f", "00000009", "40000009", "0000", "00", "0000",
                   "00000001", "000b", "0a" * 32])


def device_writes(trace: Path, device: Path) -> list[int]:
    """The sizes of the write() calls to `device` in an `strace -f -y` log (-y names each fd's file)."""
    return [int(m.group(2)) for m in re.finditer(r"write\(\d+<([^>]*)>, .*\) = (\d+)", trace.read_text())
            if m.group(1) == str(device)]


def test_one_write_of_the_whole_command(tmp_path):
    need("strace", "bash", "dd")
    device = tmp_path / "device"  # a regular file stands in for the device: only the writes matter here
    device.touch()
    trace = tmp_path / "trace"
    subprocess.run(["strace", "-f", "-y", "-e", "trace=write", "-o", trace, "bash", SCRIPT, device],
                   input=COMMAND + "\n", text=True, capture_output=True, check=True)
    assert device.read_bytes() == bytes.fromhex(COMMAND)
    assert device_writes(trace, device) == [65]


def test_plain_printf_would_split_it(tmp_path):
    """The check above can fail: bash's printf to the same device splits this command."""
    need("strace", "bash")
    device = tmp_path / "device"
    trace = tmp_path / "trace"
    script = f'exec 3<>"{device}"; printf "$(sed \'s/../\\\\x&/g\' <<< "{COMMAND}")" >&3'
    subprocess.run(["strace", "-f", "-y", "-e", "trace=write", "-o", trace, "bash", "-c", script], check=True,
                   capture_output=True)
    assert device.read_bytes() == bytes.fromhex(COMMAND)
    assert len(device_writes(trace, device)) > 1
