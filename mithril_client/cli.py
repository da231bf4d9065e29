"""`mithril-client`: verify a Mithril server before sending it anything (argparse only: this
package depends on cryptography alone). The work is in commands.py, shared with mithril-build's
`connect` and `attest verify`, which print the same rows.

Exit codes: 0 ok, 1 verification failed, 2 bad input or usage, 3 server unreachable,
22 (`connect`) attested but the server answered an HTTP error, 70 internal error (a bug).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import MithrilError

INTERNAL_ERROR = 70
EPILOG = ("exit codes: 0 ok, 1 verification failed, 2 bad input or usage, 3 server unreachable, "
          "70 internal error")


def _gpu_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--snp-policy", type=Path, metavar="FILE",
                   help="Azure CVM: JSON policy file (allow_debug, vmpl, min_tcb_milan, min_tcb_genoa, "
                        "id_key_digests, extra_id_key_digests, ...; docs/attestation.md).")
    p.add_argument("--allow-debug", action="store_true", help="Accept a debug-mode measurements file.")
    p.add_argument("--gpu-rims", type=Path, metavar="DIR",
                   help="GPU profiles: a folder of NVIDIA RIMs (the GPUs' VBIOS RIMs) besides the release's gpu-rims/.")
    p.add_argument("--online", action="store_true",
                   help="GPU: fetch missing RIMs from NVIDIA's RIM service and check revocation (OCSP).")
    p.add_argument("--rim-service", metavar="URL", help="With --online: the RIM service (default NVIDIA's).")
    p.add_argument("--ocsp-url", metavar="URL", help="With --online: the OCSP responder (default NVIDIA's).")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="mithril-client", epilog=EPILOG,
        description="Verify a Mithril server's TPM evidence against the measurements.json of the build you "
                    "trust, and talk to it over the TLS channel that evidence is bound to.")
    top.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = top.add_subparsers(dest="command", metavar="COMMAND", required=True)

    c = sub.add_parser(
        "connect", epilog=EPILOG.replace("70", "22 attested but HTTP status >= 400, 70"),
        help="attest the server at URL, then send the request over the attested TLS channel",
        description="Attest the server at URL (a fresh nonce over this very connection), then send the request "
                    "over it. The verification table goes to stderr, the response body to stdout. The TLS "
                    "certificate must be the attested CA or issued by it; the `replica` row names the replica "
                    "that answered.")
    c.add_argument("url", metavar="URL", help="https://host[:port]/path")
    c.add_argument("--measurements", type=Path, required=True, metavar="FILE",
                   help="measurements.json of the build you trust.")
    c.add_argument("--ek-ca", type=Path, metavar="FILE",
                   help="qemu: the swtpm EK CA (PEM bundle) of a local `mithril-build run`.")
    c.add_argument("-X", "--request", dest="method", metavar="METHOD", help="HTTP method (default GET, POST with --data).")
    c.add_argument("-d", "--data", help="Request body; @FILE reads a file, @- standard input.")
    c.add_argument("-H", "--header", dest="headers", action="append", default=[], metavar="NAME: VALUE",
                   help="Extra request header (repeat).")
    _gpu_options(c)
    c.add_argument("--json", dest="as_json", action="store_true",
                   help="Print {attested, rows, status, body} as JSON on stdout instead of the table and the body.")

    v = sub.add_parser(
        "verify", epilog=EPILOG.replace(", 3 server unreachable", ""),
        help="verify a saved evidence document (or a quote's files) against measurements.json",
        description="Check a quote (signature, nonce, PCR digest), compare its PCRs with measurements.json and "
                    "check what ties the AK to a genuine TPM (the `ak` row). Give --evidence, or the four files "
                    "--quote --signature --pcrs --ak-pub. A bare AK key ties the quote to no TPM, so the files "
                    "alone never verify; nor does qemu evidence offline (credential activation needs the live "
                    "server: use `connect`).")
    v.add_argument("--evidence", type=Path, metavar="FILE",
                   help="An evidence document (the JSON of GET /attestation?nonce=...).")
    v.add_argument("--nonce", required=True, metavar="HEX", help="The nonce the verifier sent (hex).")
    v.add_argument("--measurements", type=Path, required=True, metavar="FILE",
                   help="measurements.json of the expected image.")
    v.add_argument("--quote", type=Path, metavar="FILE", help="The quoted TPMS_ATTEST (tpm2_quote -m).")
    v.add_argument("--signature", type=Path, metavar="FILE", help="The TPMT_SIGNATURE (tpm2_quote -s).")
    v.add_argument("--pcrs", type=Path, metavar="FILE", help="PCR values: tpm2_quote -o, or JSON {sha256: {index: hex}}.")
    v.add_argument("--ak-pub", type=Path, metavar="FILE", help="The AK public key: PEM, or TPM2B_PUBLIC.")
    v.add_argument("--ca-pem", type=Path, metavar="FILE",
                   help="With the files: the attestation server's TLS root CA (PEM) it extended into PCR 15.")
    v.add_argument("--ek-ca", type=Path, metavar="FILE",
                   help="With --evidence on qemu: the swtpm EK CA (PEM bundle) the EK certificate must chain to.")
    _gpu_options(v)
    v.add_argument("--json", dest="as_json", action="store_true", help="Print the result as JSON.")
    return top


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mithril-client")
    except PackageNotFoundError:  # run from a checkout without an install
        return "(not installed)"


def _json(data) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def run(args: argparse.Namespace) -> int:
    from . import commands as cmd
    from .verify import Trust

    online = cmd.online_arg(args.online, args.rim_service, args.ocsp_url)
    if args.command == "verify":
        verdict = cmd.verify(args.evidence, args.nonce, args.measurements, quote=args.quote, signature=args.signature,
                             pcrs=args.pcrs, ak_pub=args.ak_pub, ca_pem=args.ca_pem, ek_ca=args.ek_ca,
                             snp_policy=args.snp_policy, allow_debug=args.allow_debug, gpu_rims=args.gpu_rims,
                             online=online)
        _json(verdict.data) if args.as_json else print(verdict.text)
        return 0 if verdict.ok else 1
    base, path, _, _ = cmd.split_url(args.url)
    trust = Trust(ek_roots=cmd.read_file(args.ek_ca, "--ek-ca") if args.ek_ca else None, allow_debug=args.allow_debug,
                  snp_policy=cmd.load_snp_policy(args.snp_policy),
                  gpu_rims=cmd.gpu_rims_for(args.measurements, args.gpu_rims), gpu_online=online)
    out = cmd.connect(base, path, args.measurements, trust, args.method, cmd.request_body(args.data),
                      cmd.parse_headers(args.headers))
    if args.as_json:
        _json(out.data)
    else:
        print(out.table, file=sys.stderr)
        sys.stdout.buffer.write(out.body)
        sys.stdout.flush()
    return out.exit_code


def main(argv: list[str] | None = None) -> None:
    """The console script. `argv` (default sys.argv[1:]) lets tests run it in-process."""
    args = parser().parse_args(argv)  # usage errors: argparse's message and exit 2
    try:
        code = run(args)
    except KeyboardInterrupt:
        print("mithril-client: interrupted", file=sys.stderr)
        code = 130
    except MithrilError as e:  # BadInput 2, VerificationFailed 1, Unreachable 3: one line
        print(f"mithril-client: error: {' '.join(str(e).split())}", file=sys.stderr)
        code = e.exit_code
    except Exception as e:  # noqa: BLE001 -- a bug must not look like a verdict (exit 1)
        print(f"mithril-client: internal error: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}",
              file=sys.stderr)
        code = INTERNAL_ERROR
    sys.exit(code)
