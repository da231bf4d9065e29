"""The boot check: boot the built disks under QEMU + OVMF + swtpm, read the PCRs the guest prints
on its serial console, and compare them with measurements.json.

Serial contract (the image's mithril-pcr-print.service writes it to /dev/ttyS0):
    MITHRIL-PCRS-BEGIN
    MITHRIL-PCR sha256 <index> <64 hex>      (PCR 0..15)
    MITHRIL-APP-ROOTHASH <64 hex | none>
    MITHRIL-SETUP <ok | failed: reason>
    MITHRIL-PCRS-END
Everything else on the console is ignored.

KVM is tried first when /dev/kvm is usable; a failed KVM start (QEMU's "KVM internal error",
an early exit, or no serial output within KVM_WINDOW seconds) falls back to TCG with fresh TPM
and firmware state, so the firmware PCRs are those of a single clean boot.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mithril_client.measurements import Measurements, Row, compare_pcrs, load_measurements

from ... import log
from ...errors import BadInput, ToolFailed
from ...run import Background
from ...swtpm import Swtpm, manufacture

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
KVM_WINDOW = 20.0  # OVMF writes to the serial console after ~4 s even under TCG
KVM_ERRORS = ("KVM internal error", "failed to set MSR", "kvm run failed", "failed to initialize kvm",
              "Could not access KVM kernel module")
POLL = 0.5

_PCR = re.compile(r"MITHRIL-PCR sha256 ([0-9]{1,2}) ([0-9a-fA-F]{64})\b")  # [0-9], not \d: int("²") raises
_ROOTHASH = re.compile(r"MITHRIL-APP-ROOTHASH (none|[0-9a-fA-F]{64})\b")
_SETUP = re.compile(r"MITHRIL-SETUP (ok|failed.*)$")


# ---------------------------------------------------------------------------- serial parsing

@dataclass(frozen=True)
class SerialReport:
    pcrs: dict[int, str]  # index -> lower-case hex (sha256 bank)
    app_roothash: str | None  # None when the guest printed "none" or nothing
    setup: str  # "ok", "failed: …", or "" when not printed


def parse_serial(text: str) -> SerialReport | None:
    """The last complete BEGIN…END block of the serial log, or None if there is none yet."""
    end = text.rfind("MITHRIL-PCRS-END")
    begin = text.rfind("MITHRIL-PCRS-BEGIN", 0, end) if end >= 0 else -1
    if begin < 0:
        return None
    pcrs: dict[int, str] = {}
    roothash, setup = None, ""
    for line in text[begin:end].splitlines():
        line = line.strip("\r\n\t \0")
        if m := _PCR.search(line):
            pcrs[int(m.group(1))] = m.group(2).lower()
        elif m := _ROOTHASH.search(line):
            roothash = None if m.group(1) == "none" else m.group(1).lower()
        elif m := _SETUP.search(line):
            setup = m.group(1).strip()
    return SerialReport(pcrs, roothash, setup)


def read_serial_log(path: Path) -> SerialReport:
    """For `record-platform --from-serial`: BadInput when the log has no complete PCR block."""
    try:
        text = Path(path).read_bytes().decode("utf-8", errors="replace")
    except OSError as e:
        raise BadInput(str(path), f"cannot read serial log: {e.strerror}") from None
    report = parse_serial(text)
    if report is None or not report.pcrs:
        raise BadInput(str(path), "no complete MITHRIL-PCRS-BEGIN … MITHRIL-PCRS-END block with PCR lines",
                       "pass the serial console log of a Mithril OS boot")
    return report


# ---------------------------------------------------------------------------- comparison

@dataclass
class BootResult:
    accel: str  # kvm | tcg
    fallback: str | None  # why KVM was not used, if it was tried
    seconds: float  # QEMU start of the successful attempt until the PCR print
    serial_log: Path
    report: SerialReport
    rows: list[Row] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(r.failed for r in self.rows)

    def as_json(self) -> dict:
        return {"ok": self.ok, "accel": self.accel, "kvm_fallback": self.fallback,
                "seconds": round(self.seconds, 1), "serial_log": str(self.serial_log),
                "setup": self.report.setup, "rows": [r.as_json() for r in self.rows]}


def compare_boot(m: Measurements, report: SerialReport) -> list[Row]:
    rows = compare_pcrs(m, report.pcrs)
    if m.app_roothash:
        got = report.app_roothash or "none"
        rows.append(Row("app roothash", m.app_roothash, got, "enforce",
                        "ok" if got == m.app_roothash else "MISMATCH"))
    setup = report.setup or "not printed"
    rows.append(Row("app setup", "ok", setup, "enforce", "ok" if setup == "ok" else "MISMATCH"))
    return rows


# ---------------------------------------------------------------------------- QEMU

class _KvmFailed(Exception):
    pass


def kvm_usable() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def _q(path: Path) -> str:
    return str(path).replace(",", ",,")  # QEMU option values escape commas by doubling


def qemu_argv(accel: str, vars_fd: Path, tpm_socket: Path, serial: Path, os_disk: Path,
              app_disk: Path | None, memory_mb: int = 2048, cpus: int = 2, forward: int | None = None) -> list[str]:
    """The command line that booted Mithril OS here (KVM fails for UEFI guests on our machines, hence
    the TCG fallback); disks are opened with
    snapshot=on so the guest never writes to the built images. `forward`: a virtio NIC (user-mode
    networking) with 127.0.0.1:forward -> the guest's ingress port 443; no option ROM, so the
    firmware measures the same as without a NIC."""
    argv = [
        "qemu-system-x86_64", "-accel", accel, "-machine", "q35,smm=off", "-m", str(memory_mb),
        "-smp", str(cpus), "-display", "none", "-monitor", "none", "-no-reboot",
        "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={_q(OVMF_CODE)}",
        "-drive", f"if=pflash,format=raw,unit=1,file={_q(vars_fd)}",
        "-chardev", f"socket,id=chrtpm,path={_q(tpm_socket)}",
        "-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-tis,tpmdev=tpm0",
        "-drive", f"if=none,id=osdisk,format=raw,snapshot=on,file={_q(os_disk)}",
        "-device", "virtio-blk-pci,drive=osdisk,bootindex=1",
    ]
    if forward is None:
        argv += ["-nic", "none"]
    else:
        argv += ["-netdev", f"user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{forward}-:443",
                 "-device", "virtio-net-pci,netdev=net0,romfile="]
    if app_disk is not None:
        argv += ["-drive", f"if=none,id=appdisk,format=raw,snapshot=on,file={_q(app_disk)}",
                 "-device", "virtio-blk-pci,drive=appdisk"]
    return argv + ["-serial", f"file:{_q(serial)}"]


def _tail(path: Path, lines: int = 8) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


class _Vm:
    """One QEMU + swtpm with fresh TPM and VARS in `work`; always stop() it."""

    def __init__(self, accel: str, work: Path, os_disk: Path, app_disk: Path | None,
                 forward: int | None = None, ek_ca: bool = False):
        self.accel, self.work = accel, work
        work.mkdir()
        vars_fd = work / "vars.fd"
        shutil.copyfile(OVMF_VARS, vars_fd)
        self.serial, self.qemu_out = work / "serial.log", work / "qemu.out"
        self.tpm = self.qemu = None
        try:
            self.ek_ca = manufacture(work / "tpm", work / "ek-ca") if ek_ca else None
            self.tpm = Swtpm(work / "tpm", for_qemu=True).start()
            self.started = time.monotonic()
            self.qemu = Background(qemu_argv(accel, vars_fd, self.tpm.socket, self.serial, os_disk, app_disk,
                                             forward=forward), self.qemu_out)
        except BaseException:
            self.stop()
            raise

    def serial_text(self) -> str:
        return self.serial.read_bytes().decode("utf-8", "replace") if self.serial.exists() else ""

    def alive(self) -> bool:
        return self.qemu.alive()

    def check(self, deadline: float, timeout: float, goal: str) -> None:
        """Raise when the VM cannot get there: a failed KVM start (_KvmFailed), an exit, the deadline."""
        running = self.alive()
        if self.accel == "kvm":
            err = self.qemu_out.read_text(errors="replace") if self.qemu_out.exists() else ""
            if bad := next((e for e in KVM_ERRORS if e in err), None):
                raise _KvmFailed(f"QEMU reported {bad!r}")
            if not running:
                raise _KvmFailed(f"QEMU exited at start: {_tail(self.qemu_out, 2)}")
            if not self.serial_text().strip() and time.monotonic() - self.started > KVM_WINDOW:
                raise _KvmFailed(f"no serial output within {KVM_WINDOW:.0f} s")
        if not running:
            raise ToolFailed(f"QEMU exited (status {self.qemu.returncode()}) before the guest could {goal}; "
                             f"see the serial log\n{_tail(self.qemu_out)}")
        if time.monotonic() > deadline:
            raise ToolFailed(f"the guest did not {goal} within {timeout:.0f} s ({self.accel}); see the serial log")

    def stop(self) -> None:
        if self.qemu is not None:
            self.qemu.stop()
        if self.tpm is not None:
            self.tpm.stop()


def _attempt(accel: str, work: Path, os_disk: Path, app_disk: Path | None, deadline: float,
             timeout: float) -> tuple[SerialReport, float]:
    """One boot with fresh swtpm and VARS; returns the report and seconds until it was printed."""
    vm = None
    try:
        vm = _Vm(accel, work, os_disk, app_disk)
        while True:
            text = vm.serial_text()
            if "MITHRIL-PCRS-END" in text and (report := parse_serial(text)) is not None:
                return report, time.monotonic() - vm.started
            if not vm.alive():  # the guest may have powered off right after printing
                if (report := parse_serial(vm.serial_text())) is not None:
                    return report, time.monotonic() - vm.started
            vm.check(deadline, timeout, "print its PCRs")
            time.sleep(POLL)
    finally:
        if vm is not None:
            vm.stop()


@contextlib.contextmanager
def _signals_interrupt():
    """SIGINT, SIGTERM and SIGHUP raise KeyboardInterrupt so `finally` blocks clean up."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    # SIGINT too: a command started in the background by a shell inherits it ignored
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _accel_order(accel: str) -> tuple[list[str], str | None]:
    if accel == "auto":
        order = ["kvm", "tcg"] if kvm_usable() else ["tcg"]
    else:
        order = [accel]
    return order, (None if "kvm" in order or accel != "auto" else "/dev/kvm is not usable")


def _check_inputs(os_disk: Path, app_disk: Path | None) -> None:
    for f in (os_disk, app_disk):
        if f is not None and not Path(f).is_file():
            raise BadInput(str(f), "disk image not found", "build it first: mithril-build all")
    for f in (OVMF_CODE, OVMF_VARS):
        if not f.is_file():
            raise ToolFailed(f"{f}: OVMF firmware not found (apt-get install ovmf; scripts/setup.sh)")


def boot_disks(os_disk: Path, app_disk: Path | None, timeout: float, log_path: Path,
               accel: str = "auto") -> tuple[SerialReport, str, str | None, float]:
    """Boot and return (report, accel used, why KVM fell back, seconds). The serial log of the
    last attempt is kept at log_path, also when the boot fails."""
    _check_inputs(os_disk, app_disk)
    order, fallback = _accel_order(accel)
    deadline = time.monotonic() + timeout
    base = Path(tempfile.mkdtemp(prefix="mithril-boot-"))
    last_serial = None
    try:
        with _signals_interrupt():
            for i, acc in enumerate(order):
                last_serial = base / acc / "serial.log"
                try:
                    with log.step(f"Booting under QEMU ({acc})", f"Guest printed its PCRs ({acc})"):
                        report, seconds = _attempt(acc, base / acc, Path(os_disk).resolve(),
                                                   Path(app_disk).resolve() if app_disk else None,
                                                   deadline, timeout)
                    return report, acc, fallback, seconds
                except _KvmFailed as e:
                    fallback = f"KVM start failed: {e}"
                    if i + 1 == len(order):
                        raise ToolFailed(f"{fallback} (retry with --accel tcg)") from None
                    log.warn(f"{fallback}; falling back to TCG")
        raise AssertionError("unreachable")
    finally:
        if last_serial is not None and last_serial.exists():
            Path(log_path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(last_serial, log_path)
        shutil.rmtree(base, ignore_errors=True)


@dataclass(frozen=True)
class Guest:
    url: str  # its own forwarded ingress (behind the balancer when there are several)
    ek_ca: bytes  # PEM bundle of its per-boot swtpm EK CA
    pid: int  # QEMU's
    alive: Callable[[], bool]


@dataclass(frozen=True)
class Running:
    url: str
    ek_ca: bytes  # PEM bundle of every guest's per-boot swtpm EK CA
    accel: str
    fallback: str | None
    seconds: float  # QEMU start until every guest's attestation endpoint answered
    guests: tuple[Guest, ...]

    def alive(self) -> bool:
        """True while at least one guest serves: the balancer routes around the others."""
        return any(g.alive() for g in self.guests)


@contextlib.contextmanager
def running(os_disk: Path, app_disk: Path | None, port: int, timeout: float, log_path: Path,
            ready: Callable[[str], bool], accel: str = "auto", replicas: int = 1) -> Iterator[Running]:
    """Boot `replicas` guests, each with a TPM whose EK is certified by a CA made for that boot,
    with the ingress on 127.0.0.1:port: forwarded to the one guest, or HAProxy (balancer.py)
    round-robin over guests forwarded to ports of their own. The guests boot at the same time.
    Yield once `ready(url)` holds for every guest; stop and remove everything on exit (also on
    Ctrl-C and SIGTERM). The serial logs are kept at log_path (guest 1) and log_path with .2, .3…"""
    from .balancer import Balancer

    _check_inputs(os_disk, app_disk)
    order, fallback = _accel_order(accel)
    deadline = time.monotonic() + timeout
    base = Path(tempfile.mkdtemp(prefix="mithril-run-"))
    ports = [port] if replicas == 1 else [_free_port() for _ in range(replicas)]
    vms: list[_Vm] = []
    balancer = None
    disks = Path(os_disk).resolve(), Path(app_disk).resolve() if app_disk else None
    try:
        with _signals_interrupt():
            for i, acc in enumerate(order):
                what = f"{replicas} guests" if replicas > 1 else "a guest"
                try:
                    with log.step(f"Booting {what} under QEMU ({acc}), ingress on https://127.0.0.1:{port}",
                                  f"{what} answer ({acc})"):
                        for n, p in enumerate(ports, 1):
                            vms.append(_Vm(acc, base / f"{acc}-{n}", *disks, forward=p, ek_ca=True))
                        waiting = list(zip(vms, ports))
                        while waiting:
                            waiting = [(vm, p) for vm, p in waiting if not ready(f"https://127.0.0.1:{p}")]
                            for vm, _ in waiting:
                                vm.check(deadline, timeout, "answer on the attestation endpoint")
                            time.sleep(2 * POLL)
                    break
                except _KvmFailed as e:
                    for vm in vms:
                        vm.stop()
                    vms = []
                    fallback = f"KVM start failed: {e}"
                    if i + 1 == len(order):
                        raise ToolFailed(f"{fallback} (retry with --accel tcg)") from None
                    log.warn(f"{fallback}; falling back to TCG")
            if replicas > 1:
                balancer = Balancer(port, ports, base / "balancer")
            guests = tuple(Guest(f"https://127.0.0.1:{p}", vm.ek_ca, vm.qemu.pid, vm.alive)
                           for vm, p in zip(vms, ports))
            yield Running(f"https://127.0.0.1:{port}", b"".join(g.ek_ca for g in guests), vms[0].accel, fallback,
                          time.monotonic() - vms[0].started, guests)
    finally:
        if balancer is not None:
            balancer.stop()
        for n, vm in enumerate(vms, 1):
            vm.stop()
            if vm.serial.exists():
                target = Path(log_path) if n == 1 else Path(log_path).with_suffix(f".{n}.log")
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(vm.serial, target)
        shutil.rmtree(base, ignore_errors=True)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def boot(os_disk: Path, app_disk: Path | None, measurements: Path | Measurements, timeout: float,
         log_path: Path, accel: str = "auto") -> BootResult:
    """Boot the disks and compare every PCR of measurements.json with what the guest printed."""
    m = measurements if isinstance(measurements, Measurements) else load_measurements(measurements)
    report, used, fallback, seconds = boot_disks(os_disk, app_disk, timeout, log_path, accel)
    return BootResult(used, fallback, seconds, Path(log_path), report, compare_boot(m, report))
