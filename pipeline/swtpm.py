"""Start and stop a software TPM 2.0 (swtpm) with fresh state; used by the boot check and tests.

Two ways to talk to it:
* `for_qemu=True`: only the control socket (QEMU's tpm-emulator passes the data channel over
  it); `--terminate` makes swtpm exit when QEMU disconnects.
* `for_qemu=False`: a data socket plus `<socket>.ctrl` (the layout tpm2-tss's swtpm TCTI
  expects), so tpm2-tools reach it with TPM2TOOLS_TCTI=swtpm:path=<socket>.

`manufacture()` gives the TPM an EK certificate first, issued by a CA made for this TPM alone
(swtpm_setup + swtpm_localca): the trust anchor a client needs to tie an AK to this TPM.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Self

from . import run as runner
from .errors import ToolFailed

EK_HANDLE, EK_CERT_INDEX = 0x81010001, 0x01C00002  # where swtpm_setup puts the RSA 2048 EK and its certificate


def manufacture(state_dir: Path, ca_dir: Path) -> bytes:
    """Make a fresh TPM state with an RSA (and ECC) EK and EK certificates issued by a new local CA
    in ca_dir; return the CA's PEM bundle (root, then the issuing certificate)."""
    state_dir, ca_dir = Path(state_dir).resolve(), Path(ca_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    ca_dir.mkdir(parents=True, exist_ok=True)
    (ca_dir / "localca.conf").write_text(
        f"statedir = {ca_dir}\nsigningkey = {ca_dir}/signkey.pem\nissuercert = {ca_dir}/issuercert.pem\n"
        f"certserial = {ca_dir}/certserial\n")
    (ca_dir / "swtpm_setup.conf").write_text(
        f"create_certs_tool = /usr/bin/swtpm_localca\ncreate_certs_tool_config = {ca_dir}/localca.conf\n"
        "create_certs_tool_options = /etc/swtpm-localca.options\nactive_pcr_banks = sha256\n")
    runner.run(["swtpm_setup", "--tpm2", "--tpmstate", state_dir, "--create-ek-cert", "--create-platform-cert",
                "--config", ca_dir / "swtpm_setup.conf", "--overwrite"], timeout=120)
    root, issuer = ca_dir / "swtpm-localca-rootca-cert.pem", ca_dir / "issuercert.pem"
    if not (root.is_file() and issuer.is_file()):
        raise ToolFailed(f"swtpm_setup made no local CA in {ca_dir}")
    return root.read_bytes() + issuer.read_bytes()


class Swtpm:
    def __init__(self, state_dir: Path, *, for_qemu: bool):
        # swtpm resolves relative paths against / once it is running: use absolute ones.
        self.dir = Path(state_dir).resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.for_qemu = for_qemu
        self.socket = self.dir / ("swtpm-ctrl.sock" if for_qemu else "tpm.sock")
        self.log = self.dir / "swtpm.log"
        self._proc: runner.Background | None = None

    @property
    def tcti(self) -> str:
        return f"swtpm:path={self.socket}"

    def start(self, timeout: float = 10.0) -> Self:
        argv = ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={self.dir}"]
        if self.for_qemu:
            argv += ["--ctrl", f"type=unixio,path={self.socket}", "--terminate"]
        else:
            argv += ["--server", f"type=unixio,path={self.socket}",
                     "--ctrl", f"type=unixio,path={self.socket}.ctrl", "--flags", "not-need-init"]
        self._proc = runner.Background(argv, self.dir / "swtpm.out")
        deadline = time.monotonic() + timeout
        while not self.socket.exists():
            if not self._proc.alive():
                out = (self.dir / "swtpm.out").read_text(errors="replace").strip()
                self.stop()
                raise ToolFailed(f"swtpm exited at start: {out[-500:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise ToolFailed(f"swtpm did not create {self.socket} within {timeout:.0f} s")
            time.sleep(0.05)
        return self

    def alive(self) -> bool:
        return self._proc is not None and self._proc.alive()

    def tool(self, argv: Sequence[str], timeout: float = 60.0) -> runner.Completed:
        """Run a tpm2-tools program against this TPM, then flush transient objects and sessions:
        without a resource manager the TPM runs out of object slots after a few commands."""
        env = {"TPM2TOOLS_TCTI": self.tcti}
        done = runner.run(list(argv), extra_env=env, timeout=timeout)
        for kind in ("-t", "-s"):
            runner.run(["tpm2_flushcontext", kind], extra_env=env, timeout=timeout)
        return done

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stop()
            self._proc = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
