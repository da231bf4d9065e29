"""Replica identity and the local load balancer's configuration, checked by outside tools:
`openssl x509 -fingerprint -sha256` for the replica id, `haproxy -c` for the config."""

from __future__ import annotations

import datetime as dt
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mithril_client.errors import BadInput
from mithril_client.session import replica_id
from pipeline.platforms.qemu.balancer import haproxy_config
from tests.conftest import need


def ca_pem(name: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def test_replica_id_is_the_openssl_sha256_fingerprint_of_the_attested_ca(tmp_path):
    need("openssl")
    pems = [ca_pem("replica a"), ca_pem("replica b")]
    ids = []
    for i, pem in enumerate(pems):
        (tmp_path / f"{i}.pem").write_bytes(pem)
        out = subprocess.run(["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", tmp_path / f"{i}.pem"],
                             capture_output=True, text=True, check=True).stdout
        expected = "sha256:" + out.strip().split("=", 1)[1].replace(":", "").lower()
        assert replica_id(pem) == expected
        ids.append(expected)
    assert ids[0] != ids[1]
    assert replica_id(pems[0] + pems[1]) == ids[0]  # the CA is the first certificate of tls_ca


def test_replica_id_of_garbage_is_bad_input():
    with pytest.raises(BadInput):
        replica_id(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")


@pytest.mark.parametrize("backends", [[20001], [20001, 20002], [20001, 20002, 20003, 20004]])
def test_haproxy_accepts_the_config(tmp_path, backends):
    need("haproxy")
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(haproxy_config(20000, backends))
    res = subprocess.run(["haproxy", "-c", "-f", cfg], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    text = cfg.read_text()
    assert "mode tcp" in text and "balance roundrobin" in text  # TLS passes through to the guests
    assert [line.split()[2] for line in text.splitlines() if line.strip().startswith("server ")] == \
        [f"127.0.0.1:{p}" for p in backends]


def test_haproxy_refuses_a_broken_config(tmp_path):
    """The check above can fail: haproxy -c refuses a config with a bad line."""
    need("haproxy")
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(haproxy_config(20000, [20001]).replace("balance roundrobin", "balance sideways"))
    assert subprocess.run(["haproxy", "-c", "-f", cfg], capture_output=True).returncode != 0


def test_the_run_record_of_replicas_gives_connect_every_ek_ca(tmp_path):
    """`run --replicas 2` writes one record; `connect` to the balancer's URL trusts both guests'
    EK CAs (the bundle), and the format only adds to the single-guest one."""
    from pipeline.attest import resolve_target, write_run_record
    from pipeline.platforms.qemu.boot import Guest

    (tmp_path / "mithril.yaml").write_text("")
    cas = [ca_pem("ek ca 1"), ca_pem("ek ca 2")]
    guests = [Guest(f"https://127.0.0.1:{9000 + n}", ca, 100 + n, lambda: True) for n, ca in enumerate(cas)]
    path = write_run_record(tmp_path, "demo", "https://127.0.0.1:8443", b"".join(cas), guests)
    record = __import__("json").loads(path.read_text())
    assert {"url", "profile", "ek_ca", "pid"} <= set(record)  # what single-guest readers know
    assert [g["pid"] for g in record["guests"]] == [100, 101]
    target = resolve_target("https://127.0.0.1:8443/", None, None, tmp_path)
    assert target.ek_ca == cas[0] + cas[1]
    assert target.measurements == tmp_path / "out/demo/measurements.json"
