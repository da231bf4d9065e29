"""Commands that verify a server: attest verify, attest gpu, connect."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .base import emit, cli

@cli.group("attest")
def attest_group():
    """Verify TPM quotes and GPU evidence against measurements.json and NVIDIA's references."""


@attest_group.command("verify")
@click.option("--evidence", type=click.Path(path_type=Path, dir_okay=False),
              help="An evidence document (the JSON of GET /attestation?nonce=…); replaces the four files below.")
@click.option("--quote", type=click.Path(path_type=Path, dir_okay=False),
              help="The quoted TPMS_ATTEST (tpm2_quote -m).")
@click.option("--signature", type=click.Path(path_type=Path, dir_okay=False),
              help="The TPMT_SIGNATURE (tpm2_quote -s): RSASSA, RSAPSS or ECDSA.")
@click.option("--pcrs", type=click.Path(path_type=Path, dir_okay=False),
              help="PCR values: tpm2_quote -o, or JSON/YAML {sha256: {index: hex}}.")
@click.option("--ak-pub", type=click.Path(path_type=Path, dir_okay=False),
              help="The AK public key: PEM, or TPM2B_PUBLIC as tpm2_createak -u writes it.")
@click.option("--nonce", required=True, metavar="HEX", help="The nonce the verifier sent (hex).")
@click.option("--measurements", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="measurements.json of the expected image.")
@click.option("--ca-pem", type=click.Path(path_type=Path, dir_okay=False),
              help="With the files: the attestation server's TLS root CA (PEM) that it extended into PCR 15.")
@click.option("--ek-ca", type=click.Path(path_type=Path, dir_okay=False),
              help="With --evidence on qemu: the swtpm EK CA (PEM bundle) the EK certificate must chain to.")
@click.option("--snp-policy", type=click.Path(path_type=Path, dir_okay=False),
              help="Azure CVM: JSON {allow_debug, vmpl, min_tcb_milan, min_tcb_genoa, id_key_digests, "
                   "extra_id_key_digests, id_key_policy, author_key_digests, measurements, allow_smt, "
                   "allow_migration_agent} (default: debug off, VMPL 0, the built-in minimum TCBs and Azure "
                   "paravisor ID keys; docs/attestation.md).")
@click.option("--allow-debug", is_flag=True, help="Accept a debug-mode measurements file.")
@click.option("--gpu-rims", type=click.Path(path_type=Path, file_okay=False),
              help="GPU profiles: a folder of NVIDIA RIMs (the GPUs' VBIOS RIMs) besides the release's gpu-rims/.")
@click.option("--online", is_flag=True, help="GPU: fetch missing RIMs from NVIDIA's RIM service and check revocation (OCSP).")
@click.option("--rim-service", metavar="URL", help="With --online: the RIM service (default NVIDIA's; a mirror with its API).")
@click.option("--ocsp-url", metavar="URL", help="With --online: the OCSP responder (default NVIDIA's).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def attest_verify(evidence, quote, signature, pcrs, ak_pub, nonce, measurements, ca_pem, ek_ca, snp_policy,
                  allow_debug, gpu_rims, online, rim_service, ocsp_url, as_json):
    """Check a quote (signature, nonce, PCR digest), compare its PCRs with measurements.json, and
    check what ties the AK to a genuine TPM (the `ak` row).

    Give --evidence, or the four files --quote --signature --pcrs --ak-pub. A bare AK key ties the
    quote to no TPM, so the files alone never verify; nor does qemu evidence offline (credential
    activation needs the live server: use `connect`).

    Exit 0 when every enforced check passes, 1 when one fails, 2 on bad input."""
    from mithril_client.commands import verify

    from ..attest import online_arg

    verdict = verify(evidence, nonce, measurements, quote=quote, signature=signature, pcrs=pcrs, ak_pub=ak_pub,
                     ca_pem=ca_pem, ek_ca=ek_ca, snp_policy=snp_policy, allow_debug=allow_debug, gpu_rims=gpu_rims,
                     online=online_arg(online, rim_service, ocsp_url))
    emit(verdict.data, as_json, verdict.text)
    if not verdict.ok:
        sys.exit(1)


@attest_group.command("gpu")
@click.option("--report", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="The GPU attestation report (SPDM GET_MEASUREMENTS request + response): hex text or binary.")
@click.option("--cert-chain", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="The GPU's certificate chain (PEM, leaf first), as NVML returns it.")
@click.option("--nonce", required=True, metavar="HEX", help="The 32-byte nonce the GPU was asked to sign (hex).")
@click.option("--rims", type=click.Path(path_type=Path, file_okay=False),
              help="Folder of NVIDIA RIMs (*.swidtag): the driver RIM and the VBIOS RIM for this GPU.")
@click.option("--driver-version", help="Require this driver version (the one the image installs).")
@click.option("--at", "at", metavar="TIME", help="Judge certificate validity at this ISO 8601 time (default: now).")
@click.option("--online", is_flag=True, help="GPU: fetch missing RIMs from NVIDIA's RIM service and check revocation (OCSP).")
@click.option("--rim-service", metavar="URL", help="With --online: the RIM service (default NVIDIA's; a mirror with its API).")
@click.option("--ocsp-url", metavar="URL", help="With --online: the OCSP responder (default NVIDIA's).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def attest_gpu(report, cert_chain, nonce, rims, driver_version, at, online, rim_service, ocsp_url, as_json):
    """Check one NVIDIA H100 GPU's confidential-computing evidence offline: the certificate chain to
    NVIDIA's device root (leaf FWID = report's), the report's signature, the nonce, every golden
    value of the driver and VBIOS RIMs (each RIM's XML signature to NVIDIA's RIM root), the mode.

    Exit 0 verified, 1 refused, 2 bad input."""
    from mithril_client.measurements import format_table

    from ..attest import online_arg, rows_json, verify_gpu_files

    rows = verify_gpu_files(report, cert_chain, nonce, rims, at, driver_version, online_arg(online, rim_service, ocsp_url))
    ok = not any(r.failed for r in rows)
    emit(rows_json(rows, ok), as_json, format_table(rows) + "\n" + ("GPU VERIFIED" if ok else "GPU VERIFICATION FAILED"))
    if not ok:
        sys.exit(1)


@cli.command("connect")
@click.argument("url")
@click.option("--measurements", type=click.Path(path_type=Path, dir_okay=False),
              help="measurements.json of the build you trust. Default: the running `mithril-build run`'s "
                   "profile, else out/<default profile>/measurements.json of the project here.")
@click.option("--ek-ca", type=click.Path(path_type=Path, dir_okay=False),
              help="qemu: the swtpm EK CA. Default: from the run record of `mithril-build run` in this project.")
@click.option("-X", "--request", "method", default=None, metavar="METHOD", help="HTTP method (default GET, POST with --data).")
@click.option("-d", "--data", help="Request body; @FILE reads a file, @- standard input.")
@click.option("-H", "--header", "headers", multiple=True, metavar="NAME: VALUE", help="Extra request header (repeat).")
@click.option("--snp-policy", type=click.Path(path_type=Path, dir_okay=False),
              help="Azure CVM: JSON policy file, as for `attest verify` (docs/attestation.md).")
@click.option("--allow-debug", is_flag=True, help="Accept a debug-mode measurements file.")
@click.option("--gpu-rims", type=click.Path(path_type=Path, file_okay=False),
              help="GPU profiles: a folder of NVIDIA RIMs (the GPUs' VBIOS RIMs) besides the release's gpu-rims/.")
@click.option("--online", is_flag=True, help="GPU: fetch missing RIMs from NVIDIA's RIM service and check revocation (OCSP).")
@click.option("--rim-service", metavar="URL", help="With --online: the RIM service (default NVIDIA's; a mirror with its API).")
@click.option("--ocsp-url", metavar="URL", help="With --online: the OCSP responder (default NVIDIA's).")
@click.option("--project", type=click.Path(path_type=Path, file_okay=False), help="Project folder (default: here or above).")
@click.option("--json", "as_json", is_flag=True,
              help="Print {attested, rows, status, body} as JSON on stdout instead of the table and the body.")
def connect(url, measurements, ek_ca, method, data, headers, snp_policy, allow_debug, gpu_rims, online, rim_service,
            ocsp_url, project, as_json):
    """Attest the server at URL, then send the request over the attested TLS channel.

    The verification table goes to stderr, the response body to stdout. The server must prove,
    with a fresh nonce over this very connection, that it runs the measured image; the TLS
    certificate it presents must be the attested CA or issued by it. Behind a load balancer, the
    `replica` row names the replica that answered (the sha256 fingerprint of its attested CA).

    Exit 0 attested and HTTP status below 400, 22 attested but the server answered with an HTTP
    error (400 or above; the rows and the body are still printed; curl --fail's code), 1
    verification failed, 2 bad input, 3 unreachable."""
    from mithril_client.commands import connect as attested_request
    from mithril_client.commands import parse_headers, request_body
    from mithril_client.verify import Trust

    from ..attest import gpu_rims_for, load_snp_policy, online_arg, resolve_target

    target = resolve_target(url, measurements, ek_ca, project)
    trust = Trust(ek_roots=target.ek_ca, allow_debug=allow_debug, snp_policy=load_snp_policy(snp_policy),
                  gpu_rims=gpu_rims_for(target.measurements, gpu_rims),
                  gpu_online=online_arg(online, rim_service, ocsp_url))
    out = attested_request(target.base_url, target.path, target.measurements, trust, method, request_body(data),
                           parse_headers(headers))
    if as_json:
        emit(out.data, True)
    else:
        click.echo(out.table, err=True)
        sys.stdout.buffer.write(out.body)
        sys.stdout.flush()
    if out.exit_code:
        sys.exit(out.exit_code)
