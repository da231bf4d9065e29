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

from . import log
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


def _stage_command(name: str):
    @cli.command(name, help=STAGE_HELP[name] + " Builds what it depends on first; cached results are reused.")
    @click.option("--explain", is_flag=True, help="Say why each stage is not a cache hit.")
    @click.option("--force", is_flag=True, help="Rebuild even when a cached result exists.")
    @project_options
    def command(ctx, explain, force):
        from .orchestrate import build

        build(ctx, [name], explain=explain, force=force)
    return command


for _name in STAGE_HELP:
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
    """Write/refresh mithril.lock: pin what can be resolved from here, report the rest."""
    from .orchestrate import refresh_lock

    report = refresh_lock(ctx, check=check)
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
