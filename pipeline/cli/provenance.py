"""`provenance`: build, sign, verify SLSA provenance."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .base import cli, emit, stage_command

@cli.group("provenance", invoke_without_command=True)
@click.pass_context
def provenance_group(cctx):
    """SLSA v1 provenance: build it (no subcommand, or `build`), sign it, verify it."""
    if cctx.invoked_subcommand is None:
        cctx.invoke(provenance_build)


provenance_build = stage_command("provenance", provenance_group, "build")


@provenance_group.command("sign")
@click.option("--key", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="PEM private key (ed25519, ecdsa or rsa; password from $MITHRIL_SIGNING_KEY_PASSWORD).")
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False),
              help="Where to write the DSSE envelopes. Default: provenance.intoto.dsse.jsonl beside FILE.")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False), required=False)
def provenance_sign(key, output, file):
    """Sign FILE's statements as DSSE envelopes (one a line) with a local key.

    FILE defaults to out/<default profile>/provenance.intoto.jsonl of the project here."""
    from ..provenance import FILE, sign_file

    if file is None:
        from ..project import context

        file = context(None, None, None, None, False).out_dir / FILE
    click.echo(f"wrote {sign_file(file, key, output)}")


@provenance_group.command("verify")
@click.option("--key", type=click.Path(path_type=Path, dir_okay=False),
              help="PEM public key; without it a signature is not checked.")
@click.option("--dir", "out_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Folder holding the subjects. Default: FILE's folder.")
@click.option("--allow-unsigned", is_flag=True,
              help="Without --key: check statements and digests only, and say loudly that no signature was checked.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
def provenance_verify(key, out_dir, allow_unsigned, as_json, file):
    """Check the signature, statement and predicate types, and every subject's sha256 (measurements.json
    must be one). Without --key this fails unless --allow-unsigned. Exit 1 on failure."""
    from ..provenance import verify_file

    report = verify_file(file, key, out_dir, allow_unsigned)
    if allow_unsigned and key is None:
        click.echo("WARNING: --allow-unsigned: NO SIGNATURE IS CHECKED; this only shows the files match the "
                   "provenance, not who made it", err=True)
    lines = [f"{'OK' if s['ok'] else 'FAIL'}  {s['name']}" for s in report["subjects"]]
    lines += [f"signature: {report['signature']}"] + [f"problem: {p}" for p in report["problems"]]
    lines.append("VERIFIED" if report["ok"] else "VERIFICATION FAILED")
    emit(report, as_json, "\n".join(lines))
    if not report["ok"]:
        sys.exit(1)
