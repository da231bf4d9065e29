"""Commands that boot the built disks here (QEMU + OVMF + swtpm): boot, run, record-platform."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from .. import platforms
from ..errors import ToolFailed
from .base import cli, emit, project_options

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
    from ..platforms.qemu.boot import boot
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
    from .. import log
    from ..attest import evidence_endpoint_answers, port_free, silent_apps, write_run_record
    from ..platforms.qemu.boot import running
    from ..errors import BadInput

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
            for line in silent_apps(ctx, vm.url):
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
    from .. import record_platform as rp
    from ..platforms.qemu.boot import read_serial_log
    from ..errors import BadInput

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
