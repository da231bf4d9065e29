"""Commands on disk images: measure-disk, verify-disk."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..errors import MithrilError
from .base import cli, emit

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
    from .. import starter
    from ..project import find_root
    from ..stages.measurements import measure_disk as measure

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
    from ..roothash_check import verify_disk as check

    result = check(disk, roothash, data_label, hash_label)
    emit(result, as_json, f"{disk}: {'OK' if result['ok'] else 'MISMATCH: ' + result['first_bad']} "
                          f"({result['data_blocks']} data blocks, roothash {roothash[:16]}…)")
    if not result["ok"]:
        sys.exit(1)
