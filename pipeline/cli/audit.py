"""Commands that compare builds: compare, audit."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .base import cli, emit

@cli.command()
@click.argument("a", type=click.Path(path_type=Path))
@click.argument("b", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
def compare(a, b, as_json):
    """Compare two output folders (e.g. out/demo of two builds) artifact by artifact.

    Also compares measurements.json PCR by PCR and names the files that differ inside the disks.
    Exit 0 when all match, 1 on differences, 2 on bad input."""
    from ..audit import compare as do_compare
    from ..audit import format_report

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
    from ..audit import audit as do_audit
    from ..audit import format_report

    if inputs is not None:
        from ..inputs import check_folder

        check_folder(inputs)
    report = do_audit(against, repo, cache_dir, keep, inputs)
    emit(report, as_json, format_report(report, "expected", "rebuilt")
         + (f"\nkept: {report['work_dir']}" if report["work_dir"] else ""))
    if not report["match"]:
        sys.exit(1)
