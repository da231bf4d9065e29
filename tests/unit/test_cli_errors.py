"""How the CLI fails (issue 14): an internal error is exit 70 with one line and a redacted
traceback file, never 0-3; a usage error is one line; secrets never reach stderr or the file;
no progress-bar residue precedes the error line when stderr is not a terminal."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline import cli as entry
from tests.conftest import SEED, cli, mb

SAS = ("https://acct.blob.core.windows.net/disks/os.vhd?sv=2024-01-01&se=2030-01-01&sr=b&sp=rw"
       "&sig=c2VjcmV0c2lnbmF0dXJlb2Zh%2BdGVzdA%3D%3D")
SIGNATURE = "c2VjcmV0c2lnbmF0dXJlb2Zh"


@pytest.fixture
def project(tmp_path) -> Path:
    assert cli("init", tmp_path / "p", "--seed", SEED).returncode == 0
    return tmp_path / "p"


def test_internal_error_is_exit_70_one_line_and_a_redacted_traceback_under_the_cache(project, monkeypatch):
    from pipeline import orchestrate

    def bug(*args, **kwargs):
        raise KeyError(f"a bug that quotes {SAS}")
    monkeypatch.setattr(orchestrate, "plan", bug)
    res = cli("plan", "--cache-dir", project / "cache", cwd=project)
    assert res.returncode == entry.INTERNAL_ERROR == 70
    assert len(res.stderr.splitlines()) == 1 and res.stderr.startswith("mithril-build: internal error: KeyError: ")
    report = Path(re.search(r"details in (\S+)$", res.stderr.strip()).group(1))
    assert report.parent == project / "cache" / "crash"
    text = report.read_text()
    assert "Traceback" in text and "in bug" in text
    assert SIGNATURE not in text + res.stderr and "sig=REDACTED" in text


def test_internal_error_without_a_project_goes_to_a_temp_folder(tmp_path, monkeypatch):
    from pipeline.platforms.azure import vhd as azure_vhd

    monkeypatch.setattr(azure_vhd, "check_paths", lambda *a: 1 / 0)
    res = cli("azure", "vhd", tmp_path / "d.raw", "-o", tmp_path / "d.vhd", "--source-date-epoch", "1704067200")
    assert res.returncode == 70 and "ZeroDivisionError" in res.stderr
    assert Path(re.search(r"details in (\S+)$", res.stderr.strip()).group(1)).is_file()


def test_usage_errors_are_one_line_and_redacted(tmp_path):
    for args in (["attest", "verify", "--evidence", SAS], ["plan", "--inputs", SAS], ["no-such-command", SAS],
                 ["init", "--port", SAS]):
        res = cli(*args, cwd=tmp_path)
        assert res.returncode == 2, (args, res.stderr)
        assert len(res.stderr.splitlines()) == 1 and res.stderr.startswith("mithril-build: error: "), res.stderr
        assert SIGNATURE not in res.stderr


def test_bad_input_names_a_secret_only_redacted(tmp_path):
    res = cli("azure", "vhd", SAS, "-o", tmp_path / "x.vhd", "--source-date-epoch", "1704067200")
    assert res.returncode == 2 and SIGNATURE not in res.stderr and "sig=REDACTED" in res.stderr


def test_cache_folder_below_a_regular_file_is_bad_input(project):
    (project / "file").write_text("")
    res = cli("plan", "--cache-dir", project / "file/cache", cwd=project)
    assert res.returncode == 2 and "is not a folder" in res.stderr and len(res.stderr.splitlines()) == 1


def test_a_path_error_nothing_checked_for_is_exit_2_not_a_crash(project, monkeypatch):
    import errno

    from pipeline import orchestrate

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(project / "out"))
    monkeypatch.setattr(orchestrate, "status", denied)
    res = cli("status", cwd=project)
    assert res.returncode == 2 and res.stderr.strip() == f"mithril-build: error: {project / 'out'}: Permission denied"


def test_control_characters_cannot_break_the_error_line(tmp_path):
    res = cli("verify-disk", tmp_path / "a\nb\x1b[2J", "--roothash", "00" * 32)
    assert res.returncode == 2 and len(res.stderr.splitlines()) == 1 and "\x1b" not in res.stderr


def test_no_progress_bar_residue_off_a_terminal(tmp_path):
    """A real subprocess (stderr is a pipe): the error is the only thing on stderr."""
    disk = tmp_path / "d.raw"
    disk.write_bytes(b"\1" * (3 << 20))
    res = mb("azure", "vhd", disk, "-o", tmp_path / "nope" / "d.vhd", "--source-date-epoch", "1704067200")
    assert res.returncode == 2 and "\r" not in res.stderr and len(res.stderr.splitlines()) == 1
    res = mb("azure", "vhd", disk, "-o", tmp_path / "d.vhd", "--source-date-epoch", "1704067200")
    assert res.returncode == 0 and res.stderr == ""


def test_help_names_the_exit_codes():
    res = cli("--help")
    assert res.returncode == 0 and "70 internal error" in " ".join(res.stdout.split())


@pytest.mark.parametrize("args", [["connect", "https://[::1/"], ["connect", "https://h:99999/"],
                                  ["audit", "--against", "https://[::1/"]])
def test_malformed_urls_and_names_are_bad_input(tmp_path, args):
    res = cli(*args, cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.splitlines()[-1].startswith("mithril-build: error: "), res.stderr


def test_platform_name_cannot_leave_the_platforms_folder(project, tmp_path):
    from tests.unit.test_record_platform import V, serial_log

    log = serial_log(tmp_path / "s.log", V)
    res = cli("record-platform", "--platform", "../../../evil", "--from-serial", log, "--project", project)
    assert res.returncode == 2 and "is not a platform name" in res.stderr


def test_plan_still_shows_the_plan_when_an_entry_is_not_pinned_yet(project):
    """Preflight checks pinned checkout files; an unresolved entry (the Triton image here) is the
    build's error, so `plan --locked` of an llm profile still answers."""
    res = cli("plan", "--profile", "llama", "--locked", "--json", cwd=project)
    assert res.returncode == 0, res.stderr


def test_a_bare_command_or_group_prints_its_help(tmp_path):
    """`mithril-build` or `mithril-build azure` alone: click's help, readable (not one escaped line)."""
    for args in ((), ("azure",)):
        res = cli(*args, cwd=tmp_path)
        assert res.returncode == 2 and res.stderr.startswith("Usage: mithril-build"), res.stderr
        assert "\nCommands:\n" in res.stderr
