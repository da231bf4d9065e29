"""mithril-build command line: click commands only — parse, call, print. No build logic here.

Exit codes: 0 ok, 1 verification failed, 2 bad input or usage, 3 external tool failed,
70 internal error (a bug: one line on stderr, the redacted traceback in a file).
"""

from __future__ import annotations

import errno
import functools
import json
import os
import sys
import time
from pathlib import Path

import click

from . import platforms
from .errors import MithrilError, ToolFailed

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
        from . import project as proj

        global _crash_dir
        if locked is None:
            locked = os.environ.get("CI", "").lower() in ("1", "true", "yes")
        warm = None
        if getattr(f, "warm_noop", False):
            from . import noop

            options = {"profile": profile, "model": model, "locked": locked, "inputs": inputs and inputs.resolve(),
                       "engine_dir": engine_dir and engine_dir.resolve(), "verbose": verbose}
            warm = noop.start(project, cache_dir, options, full=any(kwargs.get(k) for k in ("explain", "force", "verify")))
            if isinstance(warm, list):  # nothing it rests on changed: the answer of the last run
                for line in warm:
                    click.echo(line, err=True)
                return None
        from . import run

        run.verbose = verbose
        ctx = proj.context(project, profile, model, cache_dir, locked, inputs, engine_dir,
                           verify=bool(kwargs.get("verify")))
        _crash_dir = ctx.cache_dir
        results = f(ctx, *args, **kwargs)
        if warm is not None:
            from . import log
            from .graph import cached_line, tools_in_keys
            from .orchestrate import headline

            lines = [headline(ctx), *log.warnings, *(cached_line(n, r.record["key"]) for n, r in results.items())]
            noop.remember(warm, results, ctx.out_dir, [inputs, ctx.engine_dir], tools_in_keys, lines)
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
    if _name not in ("provenance", "measurements"):  # a group / own options: see below
        _stage_command(_name)


@cli.command("measurements", help=STAGE_HELP["measurements"] + " Builds what it depends on first; cached "
             "results are reused.")
@click.option("--explain", is_flag=False, flag_value="cache", default=None, metavar="[PCR]",
              help="With a PCR index: print that PCR's predicted events, step by step. "
                   "Alone: say why each stage is not a cache hit.")
@click.option("--force", is_flag=True, help="Rebuild even when a cached result exists.")
@click.option("--json", "as_json", is_flag=True, help="Print measurements.json (with --explain PCR: its events).")
@project_options
def measurements_(ctx, explain, force, as_json):
    from .measure.predict import explain as explain_pcr
    from .measure.predict import pcr_events
    from .orchestrate import build

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
    from .orchestrate import build

    return build(ctx, None, explain=explain, force=force)


@cli.command()
@click.argument("stages", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@project_options
def plan(ctx, stages, as_json):
    """Show the profile's resolved settings (top-level defaults, the profile's overrides, what its app
    implies), the stage graph, what would run and why (without building)."""
    from .orchestrate import plan as make_plan

    from .orchestrate import settings

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
    from .render import render

    index = render(ctx, directory)
    lines = [f"wrote {len(index['files'])} files for profile {ctx.profile_name} to {directory}"]
    lines += [f"  unresolved: {u}" for u in index["unresolved"]]
    emit(index, as_json, "\n".join(lines))


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
@click.option("--all-profiles", is_flag=True, help="Remove every profile's cached stage results, not only this one's.")
@click.option("--all", "everything", is_flag=True,
              help="Remove the whole cache: every profile's results, the input store (downloaded pinned files) "
                   "and the Debian index cache.")
@click.option("--outputs", is_flag=True, help="Also remove out/<profile>.")
@project_options
def clean(ctx, all_profiles, everything, outputs):
    """Remove this profile's cached stage results (and optionally more). Waits for a running build."""
    from .orchestrate import clean as do_clean

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
    from .errors import BadInput
    from .project import init as do_init

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
    from .orchestrate import refresh_lock

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
    from .images import write

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
    from .orchestrate import export_inputs

    summary = export_inputs(ctx, directory)
    emit(summary, as_json, f"wrote {summary['inputs']} inputs ({summary['bytes']} bytes) to {summary['folder']}")


@cli.command("measure-disk")
@click.argument("os_disk", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--roothash", required=True, help="The application disk's dm-verity root hash (64 hex digits).")
@click.option("--platform", "platform_name", default="qemu", show_default=True,
              help="A platform file under measurements/platforms/ of the project (or of mithril-build).")
@click.option("--mode", type=click.Choice(["production", "debug"]), default="production", show_default=True)
@click.option("--phase", "phases", multiple=True, help="A systemd-pcrphase word the image extends into PCR 11 "
              "(repeat, in order); none when the image masks systemd-pcrphase.")
@click.option("--project", type=click.Path(path_type=Path, file_okay=False), help="Project with the platform files.")
@click.option("-o", "--output", type=click.Path(path_type=Path, file_okay=False), default=".", show_default=True,
              help="Folder for measurements.json and eventlog.json.")
@click.option("--json", "as_json", is_flag=True, help="Print measurements.json.")
def measure_disk(os_disk, roothash, platform_name, mode, phases, project, output, as_json):
    """Predict the PCRs of an OS disk image (no root): measurements.json and eventlog.json."""
    from . import starter
    from .project import find_root
    from .stages.measurements import measure_disk as measure

    try:
        root = find_root(project)
    except MithrilError:
        if project is not None:
            raise
        root = starter()  # mithril-build's own platform files
    data = measure(os_disk, roothash, platform_name, mode, root, output, tuple(phases))
    emit(data, as_json, "\n".join(f"PCR {k:>2}  {v['policy']:<7} {' | '.join(v['expected'])}"
                                    for k, v in sorted(data["pcrs"].items(), key=lambda kv: int(kv[0]))))


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
@click.option("--allow-unsigned", is_flag=True,
              help="Without --key: check statements and digests only, and say loudly that no signature was checked.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
def provenance_verify(key, out_dir, allow_unsigned, as_json, file):
    """Check the signature, statement and predicate types, and every subject's sha256 (measurements.json
    must be one). Without --key this fails unless --allow-unsigned. Exit 1 on failure."""
    from .provenance import verify_file

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
@click.option("--inputs", type=click.Path(path_type=Path, file_okay=False, exists=True),
              help="Rebuild from this `export-inputs` folder alone (no network).")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
def audit(against, repo, cache_dir, keep, inputs, as_json):
    """Rebuild a release from its recorded commit and lock (--locked) and compare with it.

    Exit 0 when everything matches, 1 on differences, 2 when it could not be rebuilt."""
    from .audit import audit as do_audit
    from .audit import format_report

    if inputs is not None:
        from .inputs import check_folder

        check_folder(inputs)
    report = do_audit(against, repo, cache_dir, keep, inputs)
    emit(report, as_json, format_report(report, "expected", "rebuilt")
         + (f"\nkept: {report['work_dir']}" if report["work_dir"] else ""))
    if not report["match"]:
        sys.exit(1)


@cli.command("boot")
@click.option("--platform", type=click.Choice(platforms.bootable()), default="qemu", show_default=True,
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
    from .platforms.qemu.boot import boot
    from mithril_client.measurements import format_table

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


@cli.command("run")
@click.option("--port", type=click.IntRange(1, 65535), default=8443, show_default=True,
              help="Local port forwarded to the guest's ingress (443).")
@click.option("--timeout", type=click.FloatRange(min=1), default=1200, show_default=True,
              help="Seconds to wait for the attestation endpoint to answer.")
@click.option("--accel", type=click.Choice(["auto", "kvm", "tcg"]), default="auto", show_default=True,
              help="auto: KVM when /dev/kvm works, falling back to TCG when KVM fails to start.")
@click.option("--replicas", type=click.IntRange(1, 8), default=1, show_default=True,
              help="Boot N guests behind 127.0.0.1:PORT (HAProxy, TCP round-robin; TLS ends in each guest).")
@click.option("--json", "as_json", is_flag=True, help="Print {url, accel, seconds, run_record} as one JSON line once it answers.")
@project_options
def run_(ctx, port, timeout, accel, replicas, as_json):
    """Boot out/<profile>'s disks under QEMU + OVMF + swtpm with the ingress on 127.0.0.1:PORT and
    serve until Ctrl-C or SIGTERM, then remove everything.

    Each guest's swtpm gets an EK certificate from a CA made for that boot; the CAs are written to
    .mithril/run/<profile>.json, where `mithril-build connect` run in this project finds them.
    With --replicas N, HAProxy spreads connections over N guests and routes around one that
    stops; serving goes on while one is left. Prints https://127.0.0.1:PORT once every guest's
    attestation endpoint answers."""
    from . import log
    from .attest import evidence_endpoint_answers, port_free, write_run_record
    from .platforms.qemu.boot import running
    from .errors import BadInput

    if not port_free(port):
        raise BadInput("--port", f"127.0.0.1:{port} is in use", "choose another port with --port")
    out = ctx.out_dir
    app = out / "application_disk.raw"
    record = None
    try:
        with running(out / "os_disk.raw", app if app.exists() else None, port, timeout, out / "run-serial.log",
                     evidence_endpoint_answers, accel, replicas) as vm:
            record = write_run_record(ctx.root, ctx.profile_name, vm.url, vm.ek_ca, vm.guests)
            info = {"url": vm.url, "accel": vm.accel, "seconds": round(vm.seconds, 1), "run_record": str(record)}
            click.echo(json.dumps(info, sort_keys=True) if as_json else vm.url)  # one line: scripts read it
            sys.stdout.flush()
            what = f"{replicas} replicas of {ctx.profile_name}" if replicas > 1 else ctx.profile_name
            click.echo(f"serving {what} ({vm.accel}, up after {vm.seconds:.0f} s); "
                       f"try: mithril-build connect {vm.url}/   Ctrl-C stops it", err=True)
            for line in _probe_apps(ctx, vm.url, out):
                click.echo(f"warning: {line}", err=True)
            stopped: set[int] = set()
            while vm.alive():
                for n, guest in enumerate(vm.guests, 1):
                    if n not in stopped and not guest.alive():
                        stopped.add(n)
                        log.warn(f"guest {n} (QEMU pid {guest.pid}) stopped; serving with the others")
                time.sleep(1)
            raise ToolFailed(f"QEMU stopped; see {out / 'run-serial.log'}")
    except KeyboardInterrupt:
        click.echo("stopped", err=True)
    finally:
        if record is not None:
            record.unlink(missing_ok=True)
        if (out / "run-serial.log").exists():
            click.echo(f"serial log of this run: {out / 'run-serial.log'}", err=True)


def _probe_apps(ctx, url: str, out: Path) -> list[str]:
    """What `run` says about apps that do not answer through the ingress (appdisk.json's apps)."""
    from .attest import app_diagnosis, probe_apps

    try:
        apps = json.loads((out / "appdisk.json").read_text()).get("apps") or {"app": ctx.config.appdisk.app_port}
    except (OSError, ValueError):
        apps = {"app": ctx.config.appdisk.app_port}
    targets = {name: ("/" if name == "app" else f"/{name}/", port) for name, port in apps.items()}
    status = probe_apps(url, targets, wait=APP_WAIT)
    lines = [app_diagnosis(name, targets[name][0], targets[name][1], status[name], out / "run-serial.log",
                           ctx.profile_name.removesuffix("-debug"), ctx.profile.mode) for name in targets]
    return [x for x in lines if x]


APP_WAIT = 90  # seconds `run` gives the apps to answer once the attestation server does


@cli.command("record-platform")
@click.option("--platform", "platform_name", required=True,
              help="Platform file to write: measurements/platforms/<PLATFORM>.yaml.")
@click.option("--from-serial", type=click.Path(path_type=Path, dir_okay=False),
              help="Read the PCRs from a serial console log of a Mithril OS boot.")
@click.option("--from-quote", type=click.Path(path_type=Path, dir_okay=False),
              help="Read the PCRs from a quote (tpm2_quote -m) together with --pcrs.")
@click.option("--from-evidence", type=click.Path(path_type=Path, dir_okay=False),
              help="Read the PCRs from an evidence document (GET /attestation of a real VM); on azure-cvm "
                   "also the SNP report's ID key digest.")
@click.option("--pcrs", type=click.Path(path_type=Path, dir_okay=False),
              help="With --from-quote: the PCR values (tpm2_quote -o, or JSON/YAML).")
@click.option("--signature", type=click.Path(path_type=Path, dir_okay=False),
              help="With --from-quote: check the quote's signature (needs --ak-pub).")
@click.option("--ak-pub", type=click.Path(path_type=Path, dir_okay=False),
              help="With --signature: the AK public key (PEM or TPM2B_PUBLIC).")
@click.option("--source", help="Where the values were observed (stored with them). Default: from the input.")
@click.option("--timeout", type=click.FloatRange(min=1), default=600, show_default=True,
              help="Seconds to wait for the guest when booting.")
@click.option("--accel", type=click.Choice(["auto", "kvm", "tcg"]), default="auto", show_default=True,
              help="When booting: auto tries KVM and falls back to TCG.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@project_options
def record_platform(ctx, platform_name, from_serial, from_quote, from_evidence, pcrs, signature, ak_pub, source,
                    timeout, accel, as_json):
    """Add the firmware PCR 0-3 values observed on a platform to its known-good lists.

    Without --from-serial/--from-quote, boots out/<profile>'s disks under QEMU + OVMF + swtpm
    (platform qemu only). Values already listed are not repeated; policies are left as they are."""
    from . import record_platform as rp
    from .platforms.qemu.boot import read_serial_log
    from .errors import BadInput

    if sum(x is not None for x in (from_serial, from_quote, from_evidence)) > 1:
        raise BadInput("--from-serial/--from-quote/--from-evidence", "give at most one of them")
    if from_quote and not pcrs:
        raise BadInput("--from-quote", "needs --pcrs (the PCR values tpm2_quote wrote with -o)")
    id_key = None
    if from_evidence:
        observed, id_key = rp.from_evidence(from_evidence, platform_name)
        default_source = f"evidence {Path(from_evidence).name} (quote and SNP report checked)"
    elif from_serial:
        observed, default_source = read_serial_log(from_serial).pcrs, f"serial log {Path(from_serial).name}"
    elif from_quote:
        observed = rp.from_quote(from_quote, pcrs, signature, ak_pub)
        default_source = f"quote {Path(from_quote).name}" + (" (signature checked)" if signature else "")
    else:
        if platform_name not in platforms.bootable():
            bootable = ", ".join(repr(n) for n in platforms.bootable())
            raise BadInput("--platform", f"only {bootable} can be booted here, not {platform_name!r}",
                           "pass --from-serial or --from-quote with values from that platform")
        observed, default_source = rp.from_boot(ctx.out_dir, timeout, accel)
    result = rp.record(ctx.root, platform_name, observed, source or default_source, id_key_digest=id_key)
    lines = [f"{result['file']} ({result['source']}, {result['date']}):"]
    lines += [f"  PCR {r['pcr']} {r['value']} {r['state']} (policy {r['policy']})" for r in result["pcrs"]]
    if key := result.get("snp_id_key_digest"):
        lines.append(f"  SNP ID key {key['value']} {key['state']}")
        if not key["shipped"]:
            lines.append(f"  (not shipped with mithril_client: clients accept it with a --snp-policy file "
                         f"holding {{\"extra_id_key_digests\": [\"{key['value']}\"]}})")
    emit(result, as_json, "\n".join(lines))


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

    from .attest import online_arg

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

    from .attest import online_arg, rows_json, verify_gpu_files

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

    from .attest import gpu_rims_for, load_snp_policy, online_arg, resolve_target

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


@cli.group("azure")
def azure_group():
    """Azure: fixed VHDs, page-blob upload of the built disks, the vTPM GPU VM (see docs/azure.md).

    Credentials come from azure-identity's default chain (environment, managed identity, az login)."""


@azure_group.command("vhd")
@click.argument("disk", type=click.Path(path_type=Path, dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="The VHD file to write (sparse: holes stay holes).")
@click.option("--source-date-epoch", type=int, envvar="SOURCE_DATE_EPOCH",
              help="Footer timestamp ($SOURCE_DATE_EPOCH). Default: source_date_epoch of the project's mithril.yaml.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def azure_vhd(disk, output, source_date_epoch, as_json):
    """Write DISK as a fixed VHD (padded to 1 MiB, reproducible footer) for other upload tools."""
    from .errors import BadInput
    from .files import sha256_file
    from .platforms.azure.vhd import check_paths, check_timestamp, write_vhd

    check_paths(disk, output)
    if source_date_epoch is None:
        from .config import load
        from .project import find_root

        try:
            root = find_root(None)
        except BadInput:
            raise BadInput("--source-date-epoch", "not given and no mithril.yaml here or above",
                           "pass --source-date-epoch or set $SOURCE_DATE_EPOCH") from None
        source_date_epoch = load(root / "mithril.yaml").source_date_epoch
        check_timestamp(source_date_epoch, f"{root / 'mithril.yaml'}: source_date_epoch")
    check_timestamp(source_date_epoch, "--source-date-epoch")
    result = write_vhd(disk, output, sha256_file(disk, progress=True), source_date_epoch)
    emit(result, as_json, f"wrote {output} ({result['vhd_size']} bytes, data {result['data_size']})")


@azure_group.command("deploy")
@click.option("--dry-run", is_flag=True, help="Print the plan (names, sizes, request bodies); touch nothing.")
@click.option("--workers", type=click.IntRange(1, 32), default=4, show_default=True, help="Pages in flight.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan or deployment record as JSON.")
@project_options
def azure_deploy(ctx, dry_run, workers, as_json):
    """Upload out/<profile>/ disks as managed disks and start the VM; writes deployment.json.

    Re-running is idempotent: uploaded disks are reused, an interrupted upload resumes."""
    from .platforms.azure import deploy as azure

    t = azure.load_target(ctx.config, ctx.profile_name, ctx.out_dir)
    if dry_run:
        p = azure.plan(t)
        lines = [f"subscription {p['subscription_id']}, resource group {p['resource_group']}, {p['location']}"]
        lines += [f"  disk {d['name']}: {d['file']} -> upload {d['upload_size']} bytes" for d in p["disks"].values()]
        lines += [f"  {k:<13} {v}" for k, v in p["names"].items() if not k.endswith("_disk")]
        if t.az.replicas > 1:
            lines.append(f"  {t.az.replicas} VMs from one gallery image behind a Standard Load Balancer "
                         f"(TCP {ctx.config.appdisk.ingress_port}, HTTPS probe {p['network']['lb']['properties']['probes'][0]['properties']['requestPath']})")
        lines.append(f"  VM {t.az.vm_size}, {t.az.security_type}, vTPM {'on' if t.az.vtpm else 'off'}, "
                     f"secure boot {'on' if t.az.secure_boot else 'off'}; inbound: TCP "
                     f"{ctx.config.appdisk.ingress_port} only")
        lines.append("  every request body: --json")
        emit(p, as_json, "\n".join(lines))
        return
    record = azure.deploy(t, workers=workers)
    emit(record, as_json, f"VM {record['names']['vm']} at {record['public_ip']} "
                          f"(record: {ctx.out_dir / azure.DEPLOYMENT})")


@azure_group.command("destroy")
@click.option("--dry-run", is_flag=True, help="Print what would be deleted; touch nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the deleted resource names as JSON.")
@project_options
def azure_destroy(ctx, dry_run, as_json):
    """Delete the VM, network, public IP and disks of the profile's deployment (not the resource group)."""
    from .platforms.azure import deploy as azure

    if dry_run:
        _, names = azure.destroy_names(ctx.config, ctx.profile_name, ctx.out_dir)
        names = ["/".join(parts) for _, _, parts in azure.destroy_steps(names)]
        emit(names, as_json, "\n".join(f"would delete {n}" for n in names))
        return
    deleted = azure.destroy(ctx.config, ctx.profile_name, ctx.out_dir)
    emit(deleted, as_json, "\n".join(f"deleted {n}" for n in deleted) or "nothing to delete")


INTERNAL_ERROR = 70  # sysexits EX_SOFTWARE: never 0-3, so a crash never reads as a verdict
# OSErrors about a path the user named or controls (a missing folder, a file where a folder must
# be, no permission): bad input, exit 2. Any other exception is a bug: exit INTERNAL_ERROR.
_PATH_ERRNOS = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR, errno.EEXIST,
                errno.EROFS, errno.ENAMETOOLONG, errno.ELOOP, errno.EXDEV}
_crash_dir: Path | None = None  # the cache of the command's project, once known


def one_line(text: str) -> str:
    """Control characters (newlines, escape sequences) escaped: an error stays one line."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _fail(message: str, code: int) -> None:
    from .run import redact

    click.echo(f"mithril-build: error: {one_line(redact(message))}", err=True)
    sys.exit(code)


def _crash_report(exc: BaseException) -> str:
    """Write the redacted traceback under the cache (else a temp folder); return the file's path."""
    import datetime
    import tempfile
    import traceback

    from .run import redact

    text = redact("".join(traceback.format_exception(exc)))
    text = f"mithril-build {_version()} {' '.join(sys.argv[1:])}\n{text}"
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    for folder in ([_crash_dir / "crash"] if _crash_dir else []) + [Path(tempfile.gettempdir())]:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, path = tempfile.mkstemp(dir=folder, prefix=f"mithril-build-crash-{stamp}-", suffix=".txt")
            with os.fdopen(fd, "w") as f:
                f.write(redact(text))
            return path
        except OSError:
            continue
    return "(nowhere: no writable folder)"


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("mithril-build")
    except metadata.PackageNotFoundError:
        return "unknown"


def main(argv: list[str] | None = None) -> None:
    """The console script. `argv` (default sys.argv[1:]) lets tests run it in-process."""
    # Outputs must not depend on the caller's umask: files and folders we and our tools create
    # get the usual 0644/0755 (an auditor with umask 077 rebuilds the same bytes).
    os.umask(0o022)
    global _crash_dir
    _crash_dir = None
    from .run import add_env_secrets

    add_env_secrets()
    try:
        cli.main(args=argv, prog_name="mithril-build", standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("mithril-build: interrupted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.exceptions.NoArgsIsHelpError as e:  # a bare `mithril-build`: the help, as asked
        click.echo(e.ctx.get_help() if e.ctx else e.format_message(), err=True)
        sys.exit(2)
    except click.UsageError as e:
        where = e.ctx.command_path if e.ctx else "mithril-build"
        _fail(f"{e.format_message()} (see `{where} --help`)", 2)
    except click.ClickException as e:
        _fail(e.format_message(), 2)
    except MithrilError as e:
        from .run import redact

        if e.exit_code == 2:
            _fail(str(e), 2)
        click.echo(f"mithril-build: error: {redact(str(e))}", err=True)
        sys.exit(e.exit_code)
    except OSError as e:
        if e.errno in _PATH_ERRNOS:
            where = f"{e.filename}: " if e.filename is not None else ""
            _fail(f"{where}{e.strerror or e}", 2)
        _internal(e)
    except Exception as e:  # noqa: BLE001 -- the last resort: a bug must not look like a verdict
        _internal(e)


def _internal(e: Exception) -> None:
    from .run import redact

    where = _crash_report(e)
    first = (str(e).splitlines() or [""])[0][:200]
    click.echo(one_line(redact(f"mithril-build: internal error: {type(e).__name__}: {first}, details in {where}")),
               err=True)
    sys.exit(INTERNAL_ERROR)
