"""Runs INSIDE a separate venv holding NVIDIA's nv-local-gpu-verifier 2.7.3 (never in ours: it
pins cryptography 43): times NVIDIA's own code on the same sample evidence as bench_gpu.py and
prints JSON. Only NVIDIA's functions are called; nothing of theirs is copied.

Work timed, per run: parse the report (AttestationReport), verify the device chain and its FWID
(CcAdminUtils.verify_gpu_certificate_chain), check nonce, driver and VBIOS versions and the
report's signature (CcAdminUtils.verify_attestation_report), and for each RIM parse it (RIM),
validate it against the SWID schema and verify its XML signature with its signing certificate
(signxml, as RIM.verify_signature does; the chain check is left out because OpenSSL judges it at
the current time, when every sample RIM's signing certificate has expired), then build the
golden-measurement list and compare it with the report (Verifier). OCSP and the RIM service are
not called (unreachable here)."""

import json
import logging
import re
import statistics
import sys
import time

from OpenSSL import crypto
from signxml import XMLVerifier

from verifier.attestation import AttestationReport
from verifier.cc_admin_utils import CcAdminUtils
from verifier.config import HopperSettings, info_log
from verifier.rim import RIM
from verifier.verifier import Verifier


def main():
    report_path, chain_path, nonce_hex, driver_rim, vbios_rim, runs = sys.argv[1:7]
    data = bytes.fromhex(open(report_path).read().strip())
    pem = open(chain_path).read()
    nonce = bytes.fromhex(nonce_hex)

    def once():
        settings = HopperSettings()
        report = AttestationReport(data, settings)
        parts = pem.split("-----END CERTIFICATE-----")[:-1]
        chain = [crypto.load_certificate(crypto.FILETYPE_PEM, p + "-----END CERTIFICATE-----\n") for p in parts]
        fwid = report.get_response_message().get_opaque_data().get_data("OPAQUE_FIELD_ID_FWID").hex()
        ok_chain = CcAdminUtils.verify_gpu_certificate_chain(chain, settings, fwid)[0]
        ok_report = CcAdminUtils.verify_attestation_report(report, chain[0], nonce, "550.90.07", "96.00.9f.00.01",
                                                           settings)
        rims = []
        for name, path in (("driver", driver_rim), ("vbios", vbios_rim)):
            rim = RIM(name, settings, rim_path=path)
            assert rim.validate_schema()
            signer = rim.extract_certificates()[0]
            XMLVerifier().verify(rim.root, x509_cert=crypto.dump_certificate(crypto.FILETYPE_PEM, signer).decode())
            rims.append(rim)
        matching = Verifier(report, rims[0], rims[1], settings).verify(settings)
        return ok_chain and ok_report, matching

    class Mismatches(logging.Handler):  # the indices NVIDIA's Verifier logs as not matching
        found = []

        def emit(self, record):
            if m := re.match(r"^\s*(\d+) \[(Driver|Firmware)\]\s*$", record.getMessage()):
                self.found.append(int(m.group(1)))

    handler = Mismatches()
    info_log.addHandler(handler)
    result = once()
    info_log.removeHandler(handler)
    logging.disable(logging.CRITICAL)
    times = []
    for _ in range(int(runs)):
        t = time.perf_counter()
        once()
        times.append(time.perf_counter() - t)
    print(json.dumps({"ok": result[0], "golden_match": result[1], "mismatching": sorted(handler.found), "min": min(times),
                      "median": statistics.median(times)}))


if __name__ == "__main__":
    main()
