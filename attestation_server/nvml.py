"""GPU evidence through NVML (libnvidia-ml, from the driver libraries in the measured root),
loaded with ctypes: no Python package, nothing outside the image's dm-verity root.

Calls and structures as NVIDIA's nvml.h (R535 and later) declares them:
    nvmlReturn_t nvmlInit_v2(void);
    nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *deviceCount);
    nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device);
    nvmlReturn_t nvmlDeviceGetConfComputeGpuAttestationReport(nvmlDevice_t, nvmlConfComputeGpuAttestationReport_t *);
        (the nonce is an input field of the structure)
    nvmlReturn_t nvmlDeviceGetConfComputeGpuCertificate(nvmlDevice_t, nvmlConfComputeGpuCertificate_t *);
    const char *nvmlErrorString(nvmlReturn_t);
    nvmlReturn_t nvmlShutdown(void);
The attestation certificate chain is PEM text, leaf first (NVIDIA's local verifier reads it so).
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass

NONCE_SIZE = 0x20  # NVML_CC_GPU_CEC_NONCE_SIZE
REPORT_SIZE = 0x2000  # NVML_CC_GPU_ATTESTATION_REPORT_SIZE
CEC_REPORT_SIZE = 0x1000  # NVML_CC_GPU_CEC_ATTESTATION_REPORT_SIZE
CERT_CHAIN_SIZE = 0x1000  # NVML_GPU_CERT_CHAIN_SIZE
ATTESTATION_CERT_CHAIN_SIZE = 0x1400  # NVML_GPU_ATTESTATION_CERT_CHAIN_SIZE
MAX_GPUS = 8  # the evidence format's limit


class AttestationReport(ctypes.Structure):
    _fields_ = [("isCecAttestationReportPresent", ctypes.c_uint), ("attestationReportSize", ctypes.c_uint),
                ("cecAttestationReportSize", ctypes.c_uint), ("nonce", ctypes.c_ubyte * NONCE_SIZE),
                ("attestationReport", ctypes.c_ubyte * REPORT_SIZE),
                ("cecAttestationReport", ctypes.c_ubyte * CEC_REPORT_SIZE)]


class Certificate(ctypes.Structure):
    _fields_ = [("certChainSize", ctypes.c_uint), ("attestationCertChainSize", ctypes.c_uint),
                ("certChain", ctypes.c_ubyte * CERT_CHAIN_SIZE),
                ("attestationCertChain", ctypes.c_ubyte * ATTESTATION_CERT_CHAIN_SIZE)]


class GpuError(Exception):
    """GPU evidence could not be collected: the server answers 503 and serves nothing."""


@dataclass(frozen=True)
class Collected:
    report: bytes
    cert_chain: bytes  # PEM


class Nvml:
    """One loaded libnvidia-ml; `collect(nonce)` asks every GPU for a report on `nonce`."""

    def __init__(self, library: str):
        try:
            self.lib = ctypes.CDLL(library)
        except OSError as e:
            raise GpuError(f"cannot load NVML from {library}: {e}") from None
        self.lib.nvmlErrorString.restype = ctypes.c_char_p
        self._lock = threading.Lock()  # NVML calls one at a time: each GPU answers one SPDM exchange at a time
        self._call("nvmlInit_v2")

    def _call(self, name: str, *args) -> None:
        try:
            fn = getattr(self.lib, name)
        except AttributeError:
            raise GpuError(f"NVML has no {name} (driver too old for confidential computing?)") from None
        rc = fn(*args)
        if rc != 0:
            text = (self.lib.nvmlErrorString(rc) or b"?").decode(errors="replace")
            raise GpuError(f"{name} failed: NVML error {rc} ({text})")

    def collect(self, nonce: bytes) -> list[Collected]:
        if len(nonce) != NONCE_SIZE:
            raise GpuError(f"a GPU nonce has {NONCE_SIZE} bytes, not {len(nonce)}")
        with self._lock:
            count = ctypes.c_uint()
            self._call("nvmlDeviceGetCount_v2", ctypes.byref(count))
            if not 1 <= count.value <= MAX_GPUS:
                raise GpuError(f"NVML sees {count.value} GPUs; a GPU profile needs 1 to {MAX_GPUS}")
            out = []
            for index in range(count.value):
                handle = ctypes.c_void_p()
                self._call("nvmlDeviceGetHandleByIndex_v2", ctypes.c_uint(index), ctypes.byref(handle))
                report = AttestationReport()
                ctypes.memmove(report.nonce, nonce, NONCE_SIZE)
                self._call("nvmlDeviceGetConfComputeGpuAttestationReport", handle, ctypes.byref(report))
                cert = Certificate()
                self._call("nvmlDeviceGetConfComputeGpuCertificate", handle, ctypes.byref(cert))
                if not 0 < report.attestationReportSize <= REPORT_SIZE:
                    raise GpuError(f"GPU {index}: attestation report size {report.attestationReportSize}")
                if not 0 < cert.attestationCertChainSize <= ATTESTATION_CERT_CHAIN_SIZE:
                    raise GpuError(f"GPU {index}: attestation certificate chain size {cert.attestationCertChainSize}")
                chain = bytes(cert.attestationCertChain[:cert.attestationCertChainSize]).rstrip(b"\0")
                if not chain.lstrip().startswith(b"-----BEGIN CERTIFICATE-----") or not chain.isascii():
                    raise GpuError(f"GPU {index}: the attestation certificate chain is not PEM")
                out.append(Collected(bytes(report.attestationReport[:report.attestationReportSize]), chain))
            return out
