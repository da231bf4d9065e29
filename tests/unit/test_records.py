"""Records stages hand each other, read through their models (pipeline/records.py)."""

import json

import pytest

from pipeline.errors import BadInput
from pipeline.records import AppDiskRecord, OsRecord, read


def test_a_record_is_read_through_its_model(tmp_path):
    (tmp_path / "appdisk.json").write_text(json.dumps({"roothash": "ab" * 32, "files": []}))
    assert read(tmp_path, AppDiskRecord).roothash == "ab" * 32  # what the reader does not use is left alone
    (tmp_path / "appdisk.json").write_text(json.dumps({"roothash": "AB" * 32}))
    with pytest.raises(BadInput, match=r"appdisk\.json: roothash: String should match pattern"):
        read(tmp_path, AppDiskRecord)
    (tmp_path / "os.json").write_text(json.dumps({"mode": "prod"}))
    with pytest.raises(BadInput, match=r"os\.json: mode: Input should be 'production' or 'debug'"):
        read(tmp_path, OsRecord)
    (tmp_path / "os.json").write_text("[]")
    with pytest.raises(BadInput, match=r"os\.json: must be a JSON object"):
        read(tmp_path, OsRecord)
