"""What every command shares: the `cli` group, `--json` printing, the project options."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import click

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
    @click.option("--inputs", type=click.Path(path_type=Path, file_okay=False, exists=True),
                  help="Take every external input from this `export-inputs` folder, never from the network.")
    @click.option("--engine-dir", type=click.Path(path_type=Path, file_okay=False, exists=True),
                  envvar="MITHRIL_ENGINE_DIR",
                  help="Import an engine built elsewhere (a folder with engine.json and engine/), verified against "
                       "its engine.json and mithril.lock, instead of building one here ($MITHRIL_ENGINE_DIR).")
    @click.option("-v", "--verbose", is_flag=True, help="Print every external command.")
    @functools.wraps(f)
    def wrapper(*args, project, profile, model, cache_dir, locked, inputs, engine_dir, verbose, **kwargs):
        from .. import invocation
        from .. import project as proj

        if locked is None:
            locked = os.environ.get("CI", "").lower() in ("1", "true", "yes")
        warm = None
        if getattr(f, "warm_noop", False):
            from .. import noop

            options = {"profile": profile, "model": model, "locked": locked, "inputs": inputs and inputs.resolve(),
                       "engine_dir": engine_dir and engine_dir.resolve(), "verbose": verbose}
            warm = noop.start(project, cache_dir, options, full=any(kwargs.get(k) for k in ("explain", "force", "verify")))
            if isinstance(warm, list):  # nothing it rests on changed: the answer of the last run
                for line in warm:
                    click.echo(line, err=True)
                return None
        inv = invocation.current()
        inv.verbose = verbose
        ctx = proj.context(project, profile, model, cache_dir, locked, inputs, engine_dir,
                           verify=bool(kwargs.get("verify")))
        inv.crash_dir = ctx.cache_dir
        results = f(ctx, *args, **kwargs)
        if warm is not None:
            noop.finish(warm, ctx, results, inv)
        return results
    return wrapper


def warm_noop(f):
    """The command answers a run with nothing to do from file identities (noop.py)."""
    f.warm_noop = True
    return f


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="mithril-build")
def cli():
    """Reproducible, measured builds of confidential AI servers.

    \b
    Typical use:
      mithril-build all                      build the default profile (local QEMU demo)
      mithril-build boot                     boot it under QEMU + swtpm and check every PCR
      mithril-build all --model Llama-2-7b-hf --profile llama

    \b
    Exit codes: 0 ok, 1 verification failed, 2 bad input or usage, 3 an external tool failed,
    70 internal error (a bug; the traceback is written to a file named on stderr).
    """


def stage_command(name: str, group=None, command_name: str | None = None):
    @(group or cli).command(command_name or name,
                            help=STAGE_HELP[name] + " Builds what it depends on first; cached results are reused.")
    @click.option("--explain", is_flag=True, help="Say why each stage is not a cache hit.")
    @click.option("--force", is_flag=True, help="Rebuild even when a cached result exists.")
    @project_options
    def command(ctx, explain, force):
        from ..orchestrate import build

        build(ctx, [name], explain=explain, force=force)
    return command
