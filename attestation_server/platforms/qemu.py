"""QEMU + swtpm: the AK is made from the TCG template under the endorsement hierarchy; the
evidence carries the EK certificate (when the TPM has one), and credential activation proves
the AK lives in the TPM holding that EK."""

from __future__ import annotations

from ..tpm import AK_TEMPLATE, EK_TEMPLATE, RC_HANDLE, RH_ENDORSEMENT, Key, Tpm, TpmError
from .base import Issuer, nv_cert_pem

EK_HANDLE = 0x81010001  # TCG: the RSA 2048 EK's persistent handle (swtpm_setup puts it there)
NV_EK_CERT = 0x01C00002  # TCG EK Credential Profile: RSA 2048 EK certificate


class Qemu(Issuer):
    activation = True

    def ak(self, tpm: Tpm) -> Key:
        return tpm.create_primary(RH_ENDORSEMENT, AK_TEMPLATE)

    def read(self, tpm: Tpm) -> dict[str, str]:
        try:
            return {"ek_cert": nv_cert_pem(tpm, NV_EK_CERT)}
        except TpmError as e:
            if e.base != RC_HANDLE:  # a TPM without an EK certificate: the client decides
                raise
            return {}

    def activate(self, tpm: Tpm, ak: Key, credential_blob: bytes, secret: bytes) -> bytes:
        """TPM2_ActivateCredential: the AK (password) certified by the EK (PolicySecret(endorsement))."""
        try:
            ek = tpm.read_public(EK_HANDLE)
        except TpmError as e:
            if e.base != RC_HANDLE:
                raise
            ek = tpm.create_primary(RH_ENDORSEMENT, EK_TEMPLATE)  # the same key, made again
        session = tpm.start_policy_session()
        tpm.policy_secret(RH_ENDORSEMENT, session)
        return tpm.activate_credential(ak.handle, ek.handle, session, credential_blob, secret)


ISSUER = Qemu
