"""Reading the files users hand us (mithril.yaml, mithril.lock, records, documents): every way
they can be unreadable — missing, a folder, not UTF-8, not YAML/JSON, nested too deep, a number
too long to convert, a field pydantic refuses — is one BadInput line naming the file (exit 2),
never another exception."""

from __future__ import annotations

import json
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import BadInput

M = TypeVar("M", bound=BaseModel)

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


class Strict(BaseModel):
    """The base of every model of a file we read: an unknown key is a mistake, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


WORDING = {"extra_forbidden": "unknown key"}  # our words for pydantic's error types, where clearer


def load_model(path: Path, model: type[M], where: str | None = None, fix: str = "",
               wording: Mapping[str, str] | None = None) -> M:
    """A YAML file (JSON for *.json) as `model`. `wording` adds to WORDING."""
    where = where or str(path)
    is_json = path.suffix == ".json"
    raw = (load_json if is_json else load_yaml)(path, where, fix)
    if not isinstance(raw, dict):
        raise BadInput(where, "must be a JSON object" if is_json else "must be a YAML mapping")
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise BadInput(where, error_line(e, model, {**WORDING, **(wording or {})})) from None


def error_line(err: ValidationError, model: type[BaseModel], wording: Mapping[str, str]) -> str:
    """"field.path: reason (+N more)" for the first error. Where a value may be one of several
    models, pydantic puts the model's name into the path: it means nothing in the file, so it goes."""
    first = err.errors()[0]
    names = _model_names(model)
    loc = ".".join(str(x) for x in first["loc"] if x not in names)
    msg = wording.get(first["type"]) or first["msg"].removeprefix("Value error, ")
    more = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{loc}: {msg}{more}" if loc else f"{msg}{more}"


def _model_names(model: type[BaseModel]) -> set[str]:
    """The names of `model` and of every model its fields may hold."""
    names: set[str] = set()
    todo: list = [model]
    while todo:
        t = todo.pop()
        if isinstance(t, type) and issubclass(t, BaseModel):
            if t.__name__ not in names:
                names.add(t.__name__)
                todo += [f.annotation for f in t.model_fields.values()]
        else:
            todo += typing.get_args(t)
    return names
