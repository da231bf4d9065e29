"""MakeCredential math checked by a real TPM: swtpm's TPM2_ActivateCredential (via tpm2-tools)
must recover the secret from our blob, and must refuse it for another AK's name."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from mithril_client import tpm2
from mithril_client.credential import make_credential
from mithril_client.errors import BadInput
from pipeline.errors import ToolFailed
from pipeline.run import run
from pipeline.swtpm import Swtpm
from tests.conftest import need

SECRET = b"mithril credential check 0123456"


def tools_file(blob: bytes, secret: bytes) -> bytes:
    """tpm2-tools' credential file (what tpm2_makecredential -o writes): magic, version, blob, secret."""
    return struct.pack(">II", 0xBADCC0DE, 1) + blob + secret


@pytest.fixture(scope="module")
def tpm(tmp_path_factory):
    need("swtpm", "tpm2_createek", "tpm2_createak", "tpm2_activatecredential")
    d = tmp_path_factory.mktemp("cred")
    t = Swtpm(d / "state", for_qemu=False).start()
    t.tool(["tpm2_startup", "-c"])
    t.tool(["tpm2_createek", "-c", d / "ek.ctx", "-G", "rsa", "-u", d / "ek.pub"])
    for name, alg in (("ak", "ecc"), ("other", "rsa")):
        t.tool(["tpm2_createak", "-C", d / "ek.ctx", "-c", d / f"{name}.ctx", "-G", alg, "-n", d / f"{name}.name",
                "-u", d / f"{name}.pub"])
    yield t, d
    t.stop()


def activate(t: Swtpm, d: Path, blob: bytes, secret: bytes, ak: str = "ak") -> bytes:
    """tpm2_activatecredential with the EK authorised by a PolicySecret(endorsement) session; the
    three tools run back to back (Swtpm.tool would flush the session in between)."""
    (d / "cred.in").write_bytes(tools_file(blob, secret))
    env = {"TPM2TOOLS_TCTI": t.tcti}
    session = d / "session.ctx"
    try:
        run(["tpm2_startauthsession", "--policy-session", "-S", session], extra_env=env)
        run(["tpm2_policysecret", "-S", session, "-c", "e"], extra_env=env)
        run(["tpm2_activatecredential", "-c", d / f"{ak}.ctx", "-C", d / "ek.ctx", "-i", d / "cred.in",
             "-o", d / "cred.out", "-P", f"session:{session}"], extra_env=env)
    finally:
        t.tool(["tpm2_flushcontext", "-t"])
        run(["tpm2_flushcontext", "-s"], extra_env=env)
    return (d / "cred.out").read_bytes()


def test_tpm_recovers_the_secret(tpm):
    t, d = tpm
    ek = tpm2.parse_public((d / "ek.pub").read_bytes()).key
    ak = tpm2.parse_public((d / "ak.pub").read_bytes())
    assert ak.name == (d / "ak.name").read_bytes()  # our name computation agrees with tpm2_createak -n
    assert isinstance(ak.key, ec.EllipticCurvePublicKey)
    assert ak.attributes & tpm2.RESTRICTED and ak.attributes & tpm2.SIGN and ak.attributes & tpm2.FIXED_TPM
    blob, secret = make_credential(ek, ak.name, SECRET)
    assert activate(t, d, blob, secret) == SECRET


def test_tpm_refuses_a_blob_for_another_name(tpm):
    t, d = tpm
    ek = tpm2.parse_public((d / "ek.pub").read_bytes()).key
    other = tpm2.parse_public((d / "other.pub").read_bytes())
    blob, secret = make_credential(ek, other.name, SECRET)
    with pytest.raises(ToolFailed, match="activatecredential"):
        activate(t, d, blob, secret, ak="ak")  # bound to `other`, activated with `ak`
    assert activate(t, d, blob, secret, ak="other") == SECRET


def test_non_rsa_ek_is_bad_input():
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(BadInput, match="not an RSA key"):
        make_credential(key, b"\0\x0b" + bytes(32), SECRET)


