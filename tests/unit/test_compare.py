"""compare on synthetic output folders: digests, measurements PCR by PCR, files named from manifests."""

import hashlib
import json
import sys
from pathlib import Path

import pytest

from pipeline import audit
from pipeline.errors import BadInput
from pipeline.run import run


def make_out(folder: Path, app_file: bytes = b"hello", pcr15: str = "15" * 32) -> Path:
    folder.mkdir(parents=True)
    files = [{"path": "run.d/10-app", "mode": "0755", "size": 5,
              "sha256": hashlib.sha256(app_file).hexdigest()},
             {"path": "manifests/app.yaml", "mode": "0644", "size": 3, "sha256": "ab" * 32}]
    content = {
        "os_disk.raw": b"os disk",
        "uki.efi": b"uki",
        "application_disk.raw": b"app disk " + app_file,
        "appdisk.json": json.dumps({"roothash": pcr15, "files": files}).encode(),
        "measurements.json": json.dumps({"version": 1, "platform": "qemu", "mode": "production",
                                         "pcrs": {"4": {"expected": ["04" * 32], "policy": "enforce"},
                                                  "15": {"expected": [pcr15], "policy": "enforce"}},
                                         "application_disk": {"roothash": pcr15}}).encode(),
    }
    sums = ""
    for name, data in sorted(content.items()):
        (folder / name).write_bytes(data)
        sums += f"{hashlib.sha256(data).hexdigest()}  {name}\n"
    (folder / "SHA256SUMS").write_text(sums)
    (folder / "records").mkdir()
    (folder / "records" / "appdisk.json").write_text(json.dumps({"build_seconds": str(folder)}))
    return folder


def test_identical_folders_match(tmp_path):
    a, b = make_out(tmp_path / "a"), make_out(tmp_path / "b")
    report = audit.compare(a, b)
    assert report["match"]
    assert {r["status"] for r in report["artifacts"]} == {"MATCH"}
    assert "records/appdisk.json" not in {r["artifact"] for r in report["artifacts"]}
    assert all(m["match"] for m in report["measurements"])


def test_one_changed_file_is_named(tmp_path):
    a = make_out(tmp_path / "a")
    b = make_out(tmp_path / "b", app_file=b"hello, changed", pcr15="99" * 32)
    report = audit.compare(a, b)
    assert not report["match"]
    status = {r["artifact"]: r["status"] for r in report["artifacts"]}
    assert status["application_disk.raw"] == "DIFFER" and status["os_disk.raw"] == "MATCH"
    assert [f["path"] for f in report["disk_files"]["application_disk.raw"]] == ["run.d/10-app"]
    differing = {m["item"] for m in report["measurements"] if not m["match"]}
    assert differing == {"PCR 15", "roothash"}
    text = audit.format_report(report)
    assert "run.d/10-app" in text and "DIFFERENCES FOUND" in text


def test_folder_disagreeing_with_its_sums_is_not_a_match(tmp_path):
    a, b = make_out(tmp_path / "a"), make_out(tmp_path / "b")
    for folder in (a, b):
        (folder / "uki.efi").write_bytes(b"swapped")
    report = audit.compare(a, b)
    assert not report["match"] and len(report["corrupt"]) == 2


def test_not_an_output_folder_is_bad_input(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInput, match="SHA256SUMS"):
        audit.compare(make_out(tmp_path / "a"), tmp_path / "empty")


def test_cli_exit_codes(tmp_path):
    a, b = make_out(tmp_path / "a"), make_out(tmp_path / "b")
    c = make_out(tmp_path / "c", app_file=b"other")

    def compare(*args):
        return run([sys.executable, "-m", "pipeline", "compare", *map(str, args)], ok=range(256))

    assert compare(a, b).returncode == 0
    result = compare("--json", a, c)
    assert result.returncode == 1
    assert json.loads(result.stdout)["disk_files"]["application_disk.raw"][0]["path"] == "run.d/10-app"
    bad = compare(a, tmp_path / "missing")
    assert bad.returncode == 2 and b"missing" in bad.stderr


def test_fetch_release_verifies_sums(tmp_path, monkeypatch):
    src = make_out(tmp_path / "src")
    monkeypatch.setattr(audit, "download", lambda url, dest, what: (
        dest.parent.mkdir(parents=True, exist_ok=True),
        dest.write_bytes((src / url.removeprefix("https://example.org/r/")).read_bytes())))
    got = audit.fetch_release("https://example.org/r", tmp_path / "got")
    assert audit.compare(src, got)["match"]
    (src / "uki.efi").write_bytes(b"tampered")
    with pytest.raises(audit.VerificationFailed):
        audit.fetch_release("https://example.org/r", tmp_path / "got2")
    with pytest.raises(BadInput):
        audit.fetch_release("http://example.org/r", tmp_path / "got3")
