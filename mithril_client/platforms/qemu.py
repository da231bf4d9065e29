"""AK trust on the local QEMU platform: swtpm's EK certificate, issued by a CA made for that one
boot (`mithril-build run` writes it where `connect` finds it), and credential activation proving
that the AK lives in the TPM holding that EK (a second round trip to the live server)."""

from __future__ import annotations

import datetime as dt
import hmac
import os
from collections.abc import Callable

from ..certs import chain_to_anchor, pem_bundle
from ..credential import make_credential
from ..evidence import Evidence
from ..measurements import Row
from ..tpm2 import FIXED_PARENT, FIXED_TPM, RESTRICTED, SENSITIVE_DATA_ORIGIN, SIGN, TpmPublic

# An AK must be a restricted signing key that never leaves the TPM (TPM 2.0 Part 2, TPMA_OBJECT).
AK_ATTRIBUTES = {"fixedTPM": FIXED_TPM, "fixedParent": FIXED_PARENT,
                 "sensitiveDataOrigin": SENSITIVE_DATA_ORIGIN, "restricted": RESTRICTED, "sign": SIGN}

Activate = Callable[[bytes, bytes], bytes]  # (credential_blob, secret) -> the server's credential


def check_ak(evidence: Evidence, ak: TpmPublic, *, ek_roots: bytes | None, activate: Activate | None,
             now: dt.datetime | None = None) -> list[Row]:
    rows = [attribute_row(ak)]
    if evidence.ek_cert is None:
        rows.append(Row("ek cert chain", "EK certificate from the swtpm CA", "no ek_cert in the evidence",
                        "enforce", "MISMATCH"))
        ek_key = None
    else:
        ek = pem_bundle(evidence.ek_cert, "evidence: ek_cert")[0]
        ek_key = ek.public_key()
        if ek_roots is None:
            rows.append(Row("ek cert chain", "EK certificate from the swtpm CA", "no EK CA given", "enforce",
                            "UNVERIFIED (run `connect` in the project folder of `mithril-build run`, or "
                            "pass --ek-ca)"))
        else:
            anchors = pem_bundle(ek_roots, "EK CA")
            ok, path = chain_to_anchor(ek, anchors, anchors, now)
            rows.append(Row("ek cert chain", "chains to the given EK CA", path, "enforce", "ok" if ok else "MISMATCH"))
    if ek_key is None:
        rows.append(Row("ak activation", "AK in the certified TPM", "no EK", "enforce", "MISMATCH"))
    elif activate is None:
        rows.append(Row("ak activation", "AK in the certified TPM", "not tried: needs the live server",
                        "enforce", "UNVERIFIED (credential activation is a round trip: use `connect`)"))
    else:
        credential = os.urandom(32)
        blob, secret = make_credential(ek_key, ak.name, credential)
        answer = activate(blob, secret)
        ok = hmac.compare_digest(answer, credential)
        rows.append(Row("ak activation", "the TPM recovers our secret", "recovered" if ok else "wrong secret",
                        "enforce", "ok" if ok else "MISMATCH"))
    good = all(r.result == "ok" for r in rows)
    rows.append(Row("ak", "AK in a TPM whose EK the swtpm CA certified",
                    "tied by EK certificate and credential activation" if good else "not tied",
                    "enforce", "ok" if good else "MISMATCH"))
    return rows


def attribute_row(ak: TpmPublic) -> Row:
    missing = [n for n, bit in AK_ATTRIBUTES.items() if not ak.attributes & bit]
    return Row("ak attributes", " ".join(AK_ATTRIBUTES), "missing " + ", ".join(missing) if missing else "all set",
               "enforce", "MISMATCH" if missing else "ok")


def validate(evidence: Evidence, ak: TpmPublic, inputs) -> list[Row]:
    """The registry's entry (choose.check_ak); `inputs` is a choose.AkInputs."""
    return check_ak(evidence, ak, ek_roots=inputs.ek_roots, activate=inputs.activate, now=inputs.now)
