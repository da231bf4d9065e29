"""Commands that build and inspect a profile: the stages, all, plan, render, status, clean, init,
lock, image, export-inputs."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .base import STAGE_HELP, cli, emit, project_options, stage_command, warm_noop

for _name in STAGE_HELP:
    if _name not in ("provenance", "measurements"):  # a group / own options: see below
        stage_command(_name)


@cli.command("measurements", help=STAGE_HELP["measurements"] + " Builds what it depends on first; cached "
             "results are reused.")
@click.option("--explain", is_flag=False, flag_value="cache", default=None, metavar="[PCR]",
              help="With a PCR index: print that PCR's predicted events, step by step. "
                   "Alone: say why each stage is not a cache hit.")
@click.option("--force", is_flag=True, help="Rebuild even when a cached result exists.")
@click.option("--json", "as_json", is_flag=True, help="Print measurements.json (with --explain PCR: its events).")
@project_options
def measurements_(ctx, explain, force, as_json):
    from ..measure.predict import explain as explain_pcr
    from ..measure.predict import pcr_events
    from ..orchestrate import build

    pcr = None
    if explain not in (None, "cache"):
        if not (explain.isascii() and explain.isdigit() and int(explain) <= 23):
            raise click.BadParameter(f"{explain!r} is not a PCR index 0..23", param_hint="--explain")
        pcr = int(explain)
    build(ctx, ["measurements"], explain=explain == "cache", force=force)
    if pcr is not None:
        emit(pcr_events(pcr, ctx.out_dir), as_json, explain_pcr(pcr, ctx.out_dir))
    elif as_json:
        click.echo((ctx.out_dir / "measurements.json").read_text(), nl=False)


@cli.command("all")
@click.option("--explain", is_flag=True, help="Say why each stage is not a cache hit.")
@click.option("--force", is_flag=True, help="Rebuild even when a cached result exists.")
@click.option("--verify", is_flag=True, help="Re-hash every input and output, trusting no remembered file "
              "identity (without it, a run with nothing to do checks identities and answers at once).")
@project_options
@warm_noop
def all_(ctx, explain, force, verify):
    """Build every stage of the profile: model, appdisk, os, measurements, provenance."""
    from ..orchestrate import build

    return build(ctx, None, explain=explain, force=force)


@cli.command()
@click.argument("stages", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@project_options
def plan(ctx, stages, as_json):
    """Show the profile's resolved settings (top-level defaults, the profile's overrides, what its app
    implies), the stage graph, what would run and why (without building)."""
    from ..orchestrate import plan as make_plan

    from ..orchestrate import settings

    rows = make_plan(ctx, list(stages) or None)
    resolved = settings(ctx)
    head = [f"profile {ctx.profile_name}: " + ", ".join(f"{k} {v}" for k, v in resolved.items()
                                                        if not isinstance(v, dict) and v is not None)]
    head += [f"  {section}: " + ", ".join(f"{k}={v}" for k, v in values.items())
             for section, values in resolved.items() if isinstance(values, dict)]
    emit({"profile": resolved, "stages": rows}, as_json, "\n".join(head + [
        f"{r['stage']:<13} {'hit ' if r['cached'] else 'RUN '} deps: {', '.join(r['deps']) or '-':<20} {r['reason']}"
        for r in rows]))


@cli.command("render")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the index (files, digests, what is unresolved) as JSON.")
@project_options
def render_(ctx, directory, as_json):
    """Write every file the build generates for the profile into DIRECTORY (new or empty): mkosi
    configuration (firewall rules, units, k3s config), manifests, NetworkPolicies, Caddyfile,
    setup.d/run.d, the Triton model repository. Needs no image, weights or GPU; what the lock does
    not pin yet is marked UNRESOLVED and listed in DIRECTORY/RENDERED.json."""
    from ..render import render

    index = render(ctx, directory)
    lines = [f"wrote {len(index['files'])} files for profile {ctx.profile_name} to {directory}"]
    lines += [f"  unresolved: {u}" for u in index["unresolved"]]
    emit(index, as_json, "\n".join(lines))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@project_options
def status(ctx, as_json):
    """Show the published outputs of the profile and whether the cache still holds them."""
    from ..orchestrate import status as get_status

    data = get_status(ctx)
    lines = [f"profile {data['profile']}  out: {data['out_dir']}  cache: {data['cache_dir']} ({data['cache_bytes']} bytes)"]
    for s in data["stages"]:
        lines.append(f"  {s['stage']:<13} {s['state']:<10} {s.get('key', '')[:12]}")
    emit(data, as_json, "\n".join(lines))


@cli.command()
@click.option("--all-profiles", is_flag=True, help="Remove every profile's cached stage results, not only this one's.")
@click.option("--all", "everything", is_flag=True,
              help="Remove the whole cache: every profile's results, the input store (downloaded pinned files) "
                   "and the Debian index cache.")
@click.option("--outputs", is_flag=True, help="Also remove out/<profile>.")
@project_options
def clean(ctx, all_profiles, everything, outputs):
    """Remove this profile's cached stage results (and optionally more). Waits for a running build."""
    from ..orchestrate import clean as do_clean

    for line in do_clean(ctx, everything, outputs, all_profiles):
        click.echo(line)


@cli.command()
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False), default=".")
@click.option("--force", is_flag=True, help="Overwrite files that already exist.")
@click.option("--image", type=click.Path(path_type=Path, dir_okay=False),
              help="Wrap your own app: a container image archive (docker-archive or OCI, e.g. `podman save`). "
                   "It is copied into the project and pinned in mithril.lock.")
@click.option("--port", type=click.IntRange(1, 65535),
              help="With --image: the port the app listens on (default: the image's one exposed port).")
@click.option("--seed", type=click.UUID, help="The project's seed (default: a fresh random one). Keep it fixed.")
def init(directory, force, image, port, seed):
    """Write a working starter project into DIRECTORY (default: here).

    The project is named after DIRECTORY and gets a fresh random seed. With --image the app is
    your image, served behind the attested TLS ingress (Caddy) beside the attestation server."""
    from ..errors import BadInput
    from ..project import init as do_init

    if port is not None and image is None:
        raise BadInput("--port", "only with --image")
    for path in do_init(directory, force, image, port, seed):
        click.echo(f"wrote {path}")


@cli.command("lock")
@click.option("--check", is_flag=True, help="Only report what is not pinned; exit 1 if anything is not.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--update-debs", is_flag=True, help="Re-resolve every .deb against the archive as it is now (to take "
              "security updates): the images' from the signed indices, the OS image's by building it online.")
@project_options
def lock_(ctx, check, as_json, update_debs):
    """Write/refresh mithril.lock for the profile: pin what can be resolved from here, report the rest.

    With --model, (re)resolve that model's revision to a commit and record every file's digest."""
    model_given = ctx.profile.model != ctx.config.profiles[ctx.profile_name].model
    from ..orchestrate import refresh_lock

    report = refresh_lock(ctx, check=check, force_models=model_given, update_debs=update_debs)
    emit(report, as_json, "\n".join(f"{r['entry']:<40} {r['state']}" for r in report["entries"]))
    if check and report["unpinned"]:
        sys.exit(1)


@cli.command("image")
@click.argument("name")
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="The OCI archive to write (it is also a docker-archive).")
@click.option("--json", "as_json", is_flag=True, help="Print name, ref, digests as JSON.")
@project_options
def image_(ctx, name, output, as_json):
    """Build one image the app disk carries (caddy, attestation-server) from its pinned .debs."""
    from ..images import write

    info = write(ctx, name, output)
    emit(info, as_json, f"{output}: {info['ref']} {info['manifest_digest']} ({info['size']} bytes)")


@cli.command("export-inputs")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@project_options
def export_inputs(ctx, directory, as_json):
    """Write every external input of the profile's build (every .deb, pinned file and archive,
    checked against mithril.lock) into DIRECTORY, with an index.

    `mithril-build all --inputs DIRECTORY` and `audit --inputs DIRECTORY` then build with no
    network at all, byte for byte the same."""
    from ..orchestrate import export_inputs

    summary = export_inputs(ctx, directory)
    emit(summary, as_json, f"wrote {summary['inputs']} inputs ({summary['bytes']} bytes) to {summary['folder']}")
