"""Reading the files users hand us (mithril.yaml, mithril.lock, records, documents): every way
they can be unreadable — missing, a folder, not UTF-8, not YAML/JSON, nested too deep, a number
too long to convert — is one BadInput line naming the file (exit 2), never another exception."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from .errors import BadInput

MAX_TEXT = 64 << 20  # config, lock, records and documents are KiB to a few MiB


def read_bytes(path: Path, where: str | None = None, limit: int | None = MAX_TEXT, fix: str = "") -> bytes:
    where = where or str(path)
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1) if limit is not None else f.read()
    except FileNotFoundError:
        raise BadInput(where, "not found", fix) from None
    except IsADirectoryError:
        raise BadInput(where, "is a folder, not a file") from None
    except OSError as e:
        raise BadInput(where, f"cannot read: {e.strerror or e}") from None
    if limit is not None and len(data) > limit:
        raise BadInput(where, f"more than {limit} bytes; not a file of this kind")
    return data


def decode(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadInput(where, f"not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})",
                       "save it as UTF-8") from None


def read_text(path: Path, where: str | None = None, limit: int | None = MAX_TEXT, fix: str = "") -> str:
    where = where or str(path)
    return decode(read_bytes(path, where, limit, fix), where)


def parse_yaml(text: str, where: str):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        what = str(getattr(e, "problem", None) or e).splitlines()[0]
        raise BadInput(where, f"not valid YAML{at}: {what}") from None
    except RecursionError:
        raise BadInput(where, "not usable YAML: nested too deeply") from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise BadInput(where, f"not usable YAML: {str(e).splitlines()[0][:120]}") from None


def parse_json(text: str | bytes, where: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise BadInput(where, f"not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except UnicodeDecodeError:
        raise BadInput(where, "not UTF-8 text") from None
    except RecursionError:
        raise BadInput(where, "not usable JSON: nested too deeply") from None
    except ValueError as e:  # an integer of more than 4300 digits
        raise BadInput(where, f"not usable JSON: {str(e).splitlines()[0][:120]}") from None


def load_yaml(path: Path, where: str | None = None, fix: str = ""):
    where = where or str(path)
    return parse_yaml(read_text(path, where, fix=fix), where)


def load_json(path: Path, where: str | None = None, fix: str = ""):
    where = where or str(path)
    return parse_json(read_text(path, where, fix=fix), where)
