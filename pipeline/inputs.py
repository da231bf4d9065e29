"""Offline rebuilds: `export-inputs DIR` writes every external input of a profile's build (the
.debs of the OS image and of the images built here, pinned files and archives) into DIR, named by
sha256, with an index; `--inputs DIR` then builds from DIR alone (InputStore's offline mode),
never touching the network.

DIR/index.json: {"version": 1, "profile", "inputs": {lock entry: {"sha256", "size", "url"}}};
DIR/sha256/<hex>: the files.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from . import log
from .errors import BadInput
from .graph import Context
from .lock import FilePin, atomic_write, sha256_file

INDEX = "index.json"
VERSION = 1


def profile_pins(ctx: Context) -> dict[str, FilePin]:
    """{lock entry: pin} of every file the profile's enabled stages fetch."""
    from .orchestrate import stages_of

    pins: dict[str, FilePin] = {}
    for stage in stages_of(ctx):
        pins.update(stage.pins(ctx))
    return dict(sorted(pins.items()))


def export(ctx: Context, dest: Path) -> dict:
    """Fetch (or take from the input store) every input, checked against its pin, into dest."""
    pins = profile_pins(ctx)
    files = dest / "sha256"
    files.mkdir(parents=True, exist_ok=True)
    bar = log.progress(len(pins), "export inputs", unit="file")
    for name, pin in pins.items():
        src = ctx.store.pinned(pin, name)
        target = files / pin.sha256
        if not (target.is_file() and sha256_file(target) == pin.sha256):
            tmp = target.with_name(f".{target.name}.part")
            shutil.copyfile(src, tmp)
            os.replace(tmp, target)
        bar.update(1)
    bar.close()
    index = {"version": VERSION, "profile": ctx.profile_name,
             "inputs": {n: {"sha256": p.sha256, "size": p.size, "url": p.url or p.path} for n, p in pins.items()}}
    atomic_write(dest / INDEX, json.dumps(index, indent=1, sort_keys=True).encode() + b"\n")  # last: marks it whole
    return {"folder": str(dest), "inputs": len(pins),
            "bytes": sum(p.size or 0 for p in pins.values())}


def check_folder(folder: Path) -> Path:
    """An inputs folder as `--inputs` takes it: one that export-inputs finished writing."""
    from .readers import load_json

    index = folder / INDEX
    doc = load_json(index, fix="not a finished `mithril-build export-inputs` folder")
    if not isinstance(doc, dict) or type(doc.get("version")) is not int or doc["version"] != VERSION \
            or not isinstance(doc.get("inputs"), dict):
        raise BadInput(str(index), f"version: expected {VERSION} with an `inputs` object")
    return folder.resolve()


def verify_folder(ctx: Context) -> None:
    """Before an offline build: every input the profile needs is in the folder and is what its
    name says, so that a bad folder fails before anything is built (one line naming the file)."""
    folder = ctx.store.offline
    pins = profile_pins(ctx)
    bar = log.progress(len(pins), "check inputs", unit="file")
    for name, pin in pins.items():
        path = folder / "sha256" / pin.sha256
        if not path.is_file():
            raise BadInput(str(path), f"missing from the inputs folder ({name})",
                           "export it again with `mithril-build export-inputs` (same lock)")
        if sha256_file(path) != pin.sha256:
            raise BadInput(str(path), f"content does not match its name ({name})", "the inputs folder is corrupt")
        bar.update(1)
    bar.close()
