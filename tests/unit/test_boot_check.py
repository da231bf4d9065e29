"""Boot check without a real guest: serial parsing, the comparison table, and process/temp cleanup
with a fake QEMU (a Python process that writes the serial log) and a fake swtpm."""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import ClassVar

import pytest

from pipeline.platforms.qemu import boot as bootmod
from pipeline.errors import BadInput, ToolFailed
from mithril_client.measurements import format_table, parse_measurements
from pipeline.run import Background

A, B, Z = "a" * 64, "b" * 64, "0" * 64


def serial_block(pcrs: dict[int, str], roothash: str = A, setup: str = "ok") -> str:
    lines = ["MITHRIL-PCRS-BEGIN"] + [f"MITHRIL-PCR sha256 {i} {v}" for i, v in sorted(pcrs.items())]
    return "\r\n".join(lines + [f"MITHRIL-APP-ROOTHASH {roothash}", f"MITHRIL-SETUP {setup}", "MITHRIL-PCRS-END"]) + "\r\n"


def measurements(**pcrs) -> object:
    raw = {"version": 1, "platform": "qemu", "mode": "production",
           "pcrs": {k.removeprefix("p"): v for k, v in pcrs.items()}, "application_disk": {"roothash": A}}
    return parse_measurements(raw, "measurements.json")


# ---------------------------------------------------------------- serial parser

def test_parse_ignores_noise_and_takes_the_last_block():
    noise = "\x1b[2J\x1b[01;01HBdsDxe: loading Boot0001\r\n[   29.1] systemd[1]: Started x\r\n"
    old = serial_block({4: B})
    new = serial_block({i: (A if i == 4 else Z) for i in range(16)}, roothash="none", setup="failed: verity")
    r = bootmod.parse_serial(noise + old + "garbage MITHRIL-PCR sha256 4 " + B + "\n" + new + "[ 30.0] reboot\n")
    assert r.pcrs[4] == A and len(r.pcrs) == 16
    assert r.app_roothash is None
    assert r.setup == "failed: verity"


def test_parse_incomplete_block_is_none():
    text = serial_block({4: A})
    assert bootmod.parse_serial(text[: text.index("MITHRIL-PCRS-END")]) is None
    assert bootmod.parse_serial("") is None


def test_parse_tolerates_a_kernel_message_prefix_and_upper_case():
    text = "MITHRIL-PCRS-BEGIN\n[ 12.3] random: crng init done MITHRIL-PCR sha256 11 " + A.upper() + "\nMITHRIL-PCRS-END\n"
    assert bootmod.parse_serial(text).pcrs == {11: A}


def test_read_serial_log_bad_input(tmp_path):
    log = tmp_path / "serial.log"
    log.write_text("no block here\n")
    with pytest.raises(BadInput, match="serial.log"):
        bootmod.read_serial_log(log)
    with pytest.raises(BadInput, match="cannot read"):
        bootmod.read_serial_log(tmp_path / "missing.log")


# ---------------------------------------------------------------- comparison table

def test_compare_table_enforce_warn_missing():
    m = measurements(p0={"expected": [B, Z], "policy": "warn"}, p4={"expected": [A], "policy": "enforce"},
                     p11={"expected": [A], "policy": "enforce"}, p12={"expected": [Z], "policy": "enforce"})
    report = bootmod.parse_serial(serial_block({0: A, 4: A, 11: B}))
    rows = {r.check: r for r in bootmod.compare_boot(m, report)}
    assert rows["PCR 0"].result == "warn" and not rows["PCR 0"].failed
    assert rows["PCR 4"].result == "ok"
    assert rows["PCR 11"].result == "MISMATCH" and rows["PCR 11"].failed
    assert rows["PCR 12"].result == "missing" and rows["PCR 12"].failed
    assert rows["app roothash"].result == "ok" and rows["app setup"].result == "ok"
    table = format_table(list(rows.values()))
    assert table.splitlines()[0].split() == ["CHECK", "EXPECTED", "ACTUAL", "POLICY", "RESULT"]
    assert "MISMATCH" in table


def test_compare_failed_setup_and_wrong_roothash_fail():
    m = measurements(p4={"expected": [A], "policy": "enforce"})
    rows = {r.check: r for r in bootmod.compare_boot(m, bootmod.parse_serial(
        serial_block({4: A}, roothash=B, setup="failed: verity open")))}
    assert rows["PCR 4"].result == "ok"
    assert rows["app roothash"].failed and rows["app setup"].failed


# ---------------------------------------------------------------- harness and cleanup

FAKE_QEMU = r"""
import os, sys, time
accel, serial, pidfile, mode = sys.argv[1:5]
open(pidfile, "a").write(f"{os.getpid()}\n")
if accel == "kvm" and mode not in ("kvm-ok", "print-exit"):
    print("KVM internal error. Suberror: 1", file=sys.stderr, flush=True)
    time.sleep(1000)
with open(serial, "w") as f:
    f.write("BdsDxe: loading Boot0001\n"); f.flush()
    if mode == "hang":
        time.sleep(1000)
    if mode == "exit":
        sys.exit(1)
    time.sleep(0.3)
    f.write(sys.argv[5]); f.flush()
if mode == "print-exit":  # the guest powers itself off after printing
    sys.exit(0)
time.sleep(1000)  # like QEMU: keeps running until the boot check stops it
"""


class FakeSwtpm:
    """Stands in for swtpm: a long-running process whose pid is recorded."""

    instances: ClassVar[list] = []

    def __init__(self, state_dir: Path, *, for_qemu: bool):
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True)
        self.socket = self.dir / "sock"
        self.proc = None
        FakeSwtpm.instances.append(self)

    def start(self):
        self.proc = Background([sys.executable, "-c", "import time; time.sleep(1000)"], self.dir / "out")
        return self

    def stop(self):
        self.proc.stop()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is gone for our purposes
        return f.read().split(")")[-1].split()[0] != "Z"


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """Patch QEMU, swtpm and OVMF; returns a function that sets the fake QEMU's behaviour."""
    pidfile = tmp_path / "pids"
    code = tmp_path / "code.fd"
    code.write_bytes(b"code")
    monkeypatch.setattr(bootmod, "OVMF_CODE", code)
    monkeypatch.setattr(bootmod, "OVMF_VARS", code)
    monkeypatch.setattr(bootmod, "Swtpm", FakeSwtpm)
    monkeypatch.setattr(bootmod, "KVM_WINDOW", 2.0)
    monkeypatch.setattr(bootmod, "POLL", 0.05)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    FakeSwtpm.instances = []
    disk = tmp_path / "os.raw"
    disk.write_bytes(b"disk")
    state = {"mode": "ok", "kvm": False}
    monkeypatch.setattr(bootmod, "kvm_usable", lambda: state["kvm"])

    def argv(accel, vars_fd, tpm_socket, serial, os_disk, app_disk, **kw):
        return [sys.executable, "-c", FAKE_QEMU, accel, str(serial), str(pidfile), state["mode"],
                serial_block({i: A for i in range(16)})]

    monkeypatch.setattr(bootmod, "qemu_argv", argv)

    class Fake:
        def __init__(self):
            self.state, self.disk, self.tmp, self.log = state, disk, tmp, tmp_path / "boot-serial.log"

        def pids(self) -> list[int]:
            qemu = [int(p) for p in pidfile.read_text().split()] if pidfile.exists() else []
            return qemu + [t.proc.pid for t in FakeSwtpm.instances if t.proc]

        def assert_clean(self):
            assert self.pids(), "the fake processes never started"
            assert not [p for p in self.pids() if alive(p)], "a process was left running"
            assert list(self.tmp.iterdir()) == [], "temporary state was left behind"

    return Fake()


def test_boot_returns_report_and_cleans_up(fake):
    report, accel, fallback, _ = bootmod.boot_disks(fake.disk, None, 30, fake.log)
    assert accel == "tcg" and fallback == "/dev/kvm is not usable"
    assert report.pcrs[4] == A and report.setup == "ok"
    assert "MITHRIL-PCRS-END" in fake.log.read_text()
    fake.assert_clean()


def test_kvm_failure_falls_back_to_tcg(fake):
    fake.state["kvm"] = True
    _, accel, fallback, _ = bootmod.boot_disks(fake.disk, None, 30, fake.log)
    assert accel == "tcg"
    assert "KVM internal error" in fallback
    assert len(FakeSwtpm.instances) == 2  # fresh TPM state for the TCG boot
    fake.assert_clean()


def test_kvm_that_works_is_used(fake):
    fake.state.update(kvm=True, mode="kvm-ok")
    _, accel, fallback, _ = bootmod.boot_disks(fake.disk, None, 30, fake.log)
    assert (accel, fallback) == ("kvm", None)
    fake.assert_clean()


@pytest.mark.parametrize("kvm", [False, True])
def test_guest_power_off_after_print_is_success(fake, kvm):
    fake.state.update(kvm=kvm, mode="print-exit")
    report, accel, _, _ = bootmod.boot_disks(fake.disk, None, 30, fake.log)
    assert report.pcrs[4] == A and accel == ("kvm" if kvm else "tcg")
    fake.assert_clean()


def test_timeout_is_a_tool_failure_and_cleans_up(fake):
    fake.state["mode"] = "hang"
    with pytest.raises(ToolFailed, match="did not print its PCRs within 1 s"):
        bootmod.boot_disks(fake.disk, None, 1, fake.log)
    assert "BdsDxe" in fake.log.read_text()  # the log is kept for diagnosis
    fake.assert_clean()


def test_qemu_exit_before_print_is_a_tool_failure(fake):
    fake.state["mode"] = "exit"
    with pytest.raises(ToolFailed, match="exited"):
        bootmod.boot_disks(fake.disk, None, 30, fake.log)
    fake.assert_clean()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_cleans_up(fake, signum):
    fake.state["mode"] = "hang"
    before = signal.getsignal(signal.SIGTERM)
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signum))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            bootmod.boot_disks(fake.disk, None, 60, fake.log)
    finally:
        timer.cancel()
    fake.assert_clean()
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is restored


def test_missing_disk_is_bad_input(fake, tmp_path):
    with pytest.raises(BadInput, match="disk image not found"):
        bootmod.boot_disks(tmp_path / "nope.raw", None, 5, fake.log)


def test_qemu_argv_matches_the_known_good_command_line(tmp_path):
    argv = bootmod.qemu_argv("tcg", tmp_path / "vars.fd", tmp_path / "tpm.sock", tmp_path / "serial.log",
                             tmp_path / "os,disk.raw", tmp_path / "app.raw")
    joined = " ".join(argv)
    assert "-accel tcg" in joined and "q35,smm=off" in joined
    assert "bootindex=1" in joined and "file=" + str(tmp_path / "os,,disk.raw") in joined
    assert "tpm-tis,tpmdev=tpm0" in joined and "readonly=on" in joined
    assert joined.count("virtio-blk-pci") == 2 and joined.count("snapshot=on") == 2
