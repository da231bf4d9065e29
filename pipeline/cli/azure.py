"""`azure`: fixed VHDs, deployment and removal of the profile's VMs."""

from __future__ import annotations

from pathlib import Path

import click

from .base import cli, emit, project_options

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
    from ..errors import BadInput
    from ..files import sha256_file
    from ..platforms.azure.vhd import check_paths, check_timestamp, write_vhd

    check_paths(disk, output)
    if source_date_epoch is None:
        from ..config import load
        from ..project import find_root

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
    from ..platforms.azure import deploy as azure

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
    from ..platforms.azure import deploy as azure

    if dry_run:
        _, names = azure.destroy_names(ctx.config, ctx.profile_name, ctx.out_dir)
        names = ["/".join(parts) for _, _, parts in azure.destroy_steps(names)]
        emit(names, as_json, "\n".join(f"would delete {n}" for n in names))
        return
    deleted = azure.destroy(ctx.config, ctx.profile_name, ctx.out_dir)
    emit(deleted, as_json, "\n".join(f"deleted {n}" for n in deleted) or "nothing to delete")
