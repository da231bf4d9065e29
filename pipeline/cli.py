"""mithril-build command line: click commands only — parse, call, print. No build logic here.

Exit codes: 0 ok, 1 verification failed, 2 bad input or usage, 3 external tool failed.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

import click

from .errors import MithrilError

STAGE_HELP = {
    "model": "Download pinned weights, build the TensorRT-LLM engine, render the Triton repository.",
    "appdisk": "Build the dm-verity application disk (manifests, images, setup.d/run.d, model).",
    "os": "Build the Mithril OS disk image with mkosi (UKI, dm-verity root).",
    "measurements": "Predict every PCR and write measurements.json and eventlog.json.",
    "provenance": "Write SLSA v1 provenance for every output.",
}


def emit(data, as_json: bool, text: str | None = None) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    elif text is not None:
        click.echo(text)


def project_options(f):
    """Options shared by every command that works on a project."""
    @click.option("--project", "project", type=click.Path(path_type=Path, file_okay=False),
                  help="Project folder (with mithril.yaml). Default: the nearest one above the current folder.")
    @click.option("--profile", help="Profile from mithril.yaml. Default: its default_profile.")
    @click.option("--model", help="Override the profile's model (a name under `models`).")
    @click.option("--cache-dir", type=click.Path(path_type=Path, file_okay=False), envvar="MITHRIL_CACHE_DIR",
                  help="Stage cache. Default: .mithril/cache in the project ($MITHRIL_CACHE_DIR).")
    @click.option("--locked/--unlocked", default=None,
                  help="Refuse any input that is not pinned in mithril.lock. Default: on when $CI is set.")
    @click.option("-v", "--verbose", is_flag=True, help="Print every external command.")
    @functools.wraps(f)
    def wrapper(*args, project, profile, model, cache_dir, locked, verbose, **kwargs):
        from . import project as proj
        from . import run

        run.verbose = verbose
        if locked is None:
            locked = os.environ.get("CI", "").lower() in ("1", "true", "yes")
        ctx = proj.context(project, profile, model, cache_dir, locked)
        return f(ctx, *args, **kwargs)
    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="mithril-build")
def cli():
    """Reproducible, measured builds of confidential AI servers.

    \b
    Typical use:
      mithril-build all                      build the default profile (local QEMU demo)
      mithril-build boot                     boot it under QEMU + swtpm and check every PCR
      mithril-build all --model Llama-2-7b-hf --profile llama
    """


def _stage_command(name: str, group=None, command_name: str | None = None):
    @(group or cli).command(command_name or name,
                            help=STAGE_HELP[name] + " Builds what it depends on first; cached results are reused.")
    @click.option("--explain", is_flag=True, help="Say why each stage is not a cache hit.")
    @click.option("--force", is_flag=True, help="Rebuild even when a cached result exists.")
    @project_options
    def command(ctx, explain, force):
        from .orchestrate import build

        build(ctx, [name], explain=explain, force=force)
    return command


for _name in STAGE_HELP:
    if _name != "provenance":  # a group: see below
        _stage_command(_name)


@cli.command("all")
@click.option("--explain", is_flag=True, help="Say why each stage is not a cache hit.")
@click.option("--force", is_flag=True, help="Rebuild even when a cached result exists.")
@project_options
def all_(ctx, explain, force):
    """Build every stage of the profile: model, appdisk, os, measurements, provenance."""
    from .orchestrate import build

    build(ctx, None, explain=explain, force=force)


@cli.command()
@click.argument("stages", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@project_options
def plan(ctx, stages, as_json):
    """Show the stage graph and what would run, and why (without building)."""
    from .orchestrate import plan as make_plan

    rows = make_plan(ctx, list(stages) or None)
    emit(rows, as_json, "\n".join(f"{r['stage']:<13} {'hit ' if r['cached'] else 'RUN '} "
                                  f"deps: {', '.join(r['deps']) or '-':<20} {r['reason']}" for r in rows))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@project_options
def status(ctx, as_json):
    """Show the published outputs of the profile and whether the cache still holds them."""
    from .orchestrate import status as get_status

    data = get_status(ctx)
    lines = [f"profile {data['profile']}  out: {data['out_dir']}  cache: {data['cache_dir']} ({data['cache_bytes']} bytes)"]
    for s in data["stages"]:
        lines.append(f"  {s['stage']:<13} {s['state']:<10} {s.get('key', '')[:12]}")
    emit(data, as_json, "\n".join(lines))


@cli.command()
@click.option("--all", "everything", is_flag=True, help="Also remove the input store (downloaded pinned files).")
@click.option("--outputs", is_flag=True, help="Also remove out/<profile>.")
@project_options
def clean(ctx, everything, outputs):
    """Remove cached stage results (and optionally inputs and published outputs)."""
    from .orchestrate import clean as do_clean

    for line in do_clean(ctx, everything, outputs):
        click.echo(line)


@cli.command()
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False), default=".")
@click.option("--force", is_flag=True, help="Overwrite files that already exist.")
def init(directory, force):
    """Write a working starter project into DIRECTORY (default: here)."""
    from .project import init as do_init

    for path in do_init(directory, force):
        click.echo(f"wrote {path}")


@cli.command("lock")
@click.option("--check", is_flag=True, help="Only report what is not pinned; exit 1 if anything is not.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@project_options
def lock_(ctx, check, as_json):
    """Write/refresh mithril.lock: pin what can be resolved from here, report the rest.

    With --model, (re)resolve that model's revision to a commit and record every file's digest."""
    from .orchestrate import refresh_lock

    report = refresh_lock(ctx, check=check, models=[ctx.profile.model] if ctx.profile.model and
                          ctx.profile.model != ctx.config.profiles[ctx.profile_name].model else None)
    emit(report, as_json, "\n".join(f"{r['entry']:<40} {r['state']}" for r in report["entries"]))
    if check and report["unpinned"]:
        sys.exit(1)


@cli.command("verify-disk")
@click.argument("disk", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--roothash", required=True, help="Expected dm-verity root hash (64 hex digits).")
@click.option("--data-label", default="app", show_default=True, help="GPT label of the data partition.")
@click.option("--hash-label", default="app-verity", show_default=True, help="GPT label of the hash partition.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def verify_disk(disk, roothash, data_label, hash_label, as_json):
    """Recompute a disk's dm-verity hash tree (no root, no loop devices) and compare the root hash.

    Exit 0 on match, 1 on mismatch (the first bad block is reported)."""
    from .verify_disk import verify_disk as check

    result = check(disk, roothash, data_label, hash_label)
    emit(result, as_json, f"{disk}: {'OK' if result['ok'] else 'MISMATCH: ' + result['first_bad']} "
                          f"({result['data_blocks']} data blocks, roothash {roothash[:16]}…)")
    if not result["ok"]:
        sys.exit(1)


@cli.group("provenance", invoke_without_command=True)
@click.pass_context
def provenance_group(cctx):
    """SLSA v1 provenance: build it (no subcommand, or `build`), sign it, verify it."""
    if cctx.invoked_subcommand is None:
        cctx.invoke(provenance_build)


provenance_build = _stage_command("provenance", provenance_group, "build")


@provenance_group.command("sign")
@click.option("--key", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="PEM private key (ed25519, ecdsa or rsa; password from $MITHRIL_SIGNING_KEY_PASSWORD).")
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False),
              help="Where to write the DSSE envelopes. Default: provenance.intoto.dsse.jsonl beside FILE.")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False), required=False)
def provenance_sign(key, output, file):
    """Sign FILE's statements as DSSE envelopes (one a line) with a local key.

    FILE defaults to out/<default profile>/provenance.intoto.jsonl of the project here."""
    from .provenance import FILE, sign_file

    if file is None:
        from .project import context

        file = context(None, None, None, None, False).out_dir / FILE
    click.echo(f"wrote {sign_file(file, key, output)}")


@provenance_group.command("verify")
@click.option("--key", type=click.Path(path_type=Path, dir_okay=False),
              help="PEM public key; without it a signature is not checked.")
@click.option("--dir", "out_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Folder holding the subjects. Default: FILE's folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
def provenance_verify(key, out_dir, as_json, file):
    """Check signature, statement and predicate types, and every subject's sha256. Exit 1 on failure."""
    from .provenance import verify_file

    report = verify_file(file, key, out_dir)
    lines = [f"{'OK' if s['ok'] else 'FAIL'}  {s['name']}" for s in report["subjects"]]
    lines += [f"signature: {report['signature']}"] + [f"problem: {p}" for p in report["problems"]]
    lines.append("VERIFIED" if report["ok"] else "VERIFICATION FAILED")
    emit(report, as_json, "\n".join(lines))
    if not report["ok"]:
        sys.exit(1)


@cli.command()
@click.argument("a", type=click.Path(path_type=Path))
@click.argument("b", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
def compare(a, b, as_json):
    """Compare two output folders (e.g. out/demo of two builds) artifact by artifact.

    Also compares measurements.json PCR by PCR and names the files that differ inside the disks.
    Exit 0 when all match, 1 on differences, 2 on bad input."""
    from .audit import compare as do_compare
    from .audit import format_report

    report = do_compare(a, b)
    emit(report, as_json, format_report(report))
    if not report["match"]:
        sys.exit(1)


@cli.command()
@click.option("--against", required=True, metavar="DIR_OR_URL",
              help="The release: an output folder, or an https:// URL serving SHA256SUMS and the files.")
@click.option("--repo", type=click.Path(path_type=Path, file_okay=False), default=".", show_default=True,
              help="Git repository holding the recorded commit (cloned into a temporary folder).")
@click.option("--cache-dir", type=click.Path(path_type=Path, file_okay=False),
              help="Stage cache for the rebuild. Default: a fresh one (a full, honest rebuild).")
@click.option("--keep", is_flag=True, help="Keep the temporary clone and rebuilt outputs.")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
def audit(against, repo, cache_dir, keep, as_json):
    """Rebuild a release from its recorded commit and lock (--locked) and compare with it.

    Exit 0 when everything matches, 1 on differences, 2 when it could not be rebuilt."""
    from .audit import audit as do_audit
    from .audit import format_report

    report = do_audit(against, repo, cache_dir, keep)
    emit(report, as_json, format_report(report, "expected", "rebuilt")
         + (f"\nkept: {report['work_dir']}" if report["work_dir"] else ""))
    if not report["match"]:
        sys.exit(1)


@cli.command("boot")
@click.option("--platform", type=click.Choice(["qemu"]), default="qemu", show_default=True,
              help="Where to boot (only QEMU + OVMF + swtpm on this machine).")
@click.option("--timeout", type=click.FloatRange(min=1), default=600, show_default=True,
              help="Seconds to wait for the guest's PCR print.")
@click.option("--accel", type=click.Choice(["auto", "kvm", "tcg"]), default="auto", show_default=True,
              help="auto: KVM when /dev/kvm works, falling back to TCG when KVM fails to start.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@project_options
def boot_(ctx, platform, timeout, accel, as_json):
    """Boot out/<profile>'s disks under QEMU + OVMF + swtpm and compare every PCR the guest
    prints with measurements.json. The serial log is kept as out/<profile>/boot-serial.log.

    Exit 0 when every enforced PCR matches, 1 otherwise, 3 when the boot itself failed."""
    from .boot import boot
    from .measure.compare import format_table

    out = ctx.out_dir
    app = out / "application_disk.raw"
    result = boot(out / "os_disk.raw", app if app.exists() else None, out / "measurements.json",
                  timeout, out / "boot-serial.log", accel)
    note = f" (KVM not used: {result.fallback})" if result.fallback else ""
    emit(result.as_json(), as_json,
         f"{format_table(result.rows)}\n\nbooted with {result.accel}{note}; PCRs printed after "
         f"{result.seconds:.0f} s; serial log: {result.serial_log}\n"
         + ("BOOT CHECK PASSED" if result.ok else "BOOT CHECK FAILED"))
    if not result.ok:
        sys.exit(1)


@cli.group("attest")
def attest_group():
    """Verify TPM quotes against measurements.json."""


@attest_group.command("verify")
@click.option("--quote", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="The quoted TPMS_ATTEST (tpm2_quote -m).")
@click.option("--signature", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="The TPMT_SIGNATURE (tpm2_quote -s): RSASSA, RSAPSS or ECDSA.")
@click.option("--pcrs", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="PCR values: tpm2_quote -o, or JSON/YAML {sha256: {index: hex}}.")
@click.option("--ak-pub", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="The AK public key: PEM, or TPM2B_PUBLIC as tpm2_createak -u writes it.")
@click.option("--nonce", required=True, metavar="HEX", help="The nonce the verifier sent (hex).")
@click.option("--measurements", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="measurements.json of the expected image.")
@click.option("--ca-pem", type=click.Path(path_type=Path, dir_okay=False),
              help="The attestation server's TLS root CA (PEM) that it extended into PCR 15.")
@click.option("--allow-debug", is_flag=True, help="Accept a debug-mode measurements file.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def attest_verify(quote, signature, pcrs, ak_pub, nonce, measurements, ca_pem, allow_debug, as_json):
    """Check a quote's signature, nonce and PCR digest, and compare its PCRs with measurements.json.

    Exit 0 when every enforced check passes, 1 when one fails, 2 on bad input."""
    from .attest import report_json, verify_files
    from .measure.compare import format_table

    report = verify_files(quote, signature, pcrs, ak_pub, nonce, measurements, ca_pem, allow_debug)
    emit(report_json(report), as_json,
         format_table(report.rows) + "\n" + ("QUOTE VERIFIED" if report.ok else "QUOTE VERIFICATION FAILED"))
    if not report.ok:
        sys.exit(1)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("mithril-build: interrupted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(2)
    except MithrilError as e:
        from .run import redact

        click.echo(f"mithril-build: error: {redact(str(e))}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("mithril-build: interrupted", err=True)
        sys.exit(130)
