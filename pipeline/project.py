"""Finding the project, building the Context, and `init`'s starter project."""

from __future__ import annotations

import shutil
from pathlib import Path

from . import config as cfg
from . import lock as lk
from .errors import BadInput
from .graph import Context

# What `init` copies: the project's declarative inputs (stage folders hold data, not code).
STARTER = ("mithril.yaml", "mithril.lock", "appdisk", "mkosi", "measurements", "model_engine")
REPO = Path(__file__).resolve().parent.parent


def find_root(start: Path | None) -> Path:
    if start is not None:
        if not (start / cfg.CONFIG_FILE).is_file():
            raise BadInput(str(start / cfg.CONFIG_FILE), "not found", "pass the folder that holds mithril.yaml")
        return start.resolve()
    here = Path.cwd().resolve()
    for d in (here, *here.parents):
        if (d / cfg.CONFIG_FILE).is_file():
            return d
    raise BadInput(str(here / cfg.CONFIG_FILE), "not found in this folder or above",
                   "run `mithril-build init` or pass --project DIR")


def context(project: Path | None, profile: str | None, model: str | None, cache_dir: Path | None,
            locked: bool) -> Context:
    root = find_root(project)
    config = cfg.load(root / cfg.CONFIG_FILE)
    name, prof = config.profile(profile, model, str(root / cfg.CONFIG_FILE))
    lock = lk.load(root / lk.LOCK_FILE)
    cache = (cache_dir or root / ".mithril" / "cache").resolve()
    return Context(root=root, config=config, profile_name=name, profile=prof, lock=lock,
                   store=lk.InputStore(cache / "inputs", lock, root), cache_dir=cache,
                   out_dir=root / "out" / name, locked=locked)


def init(directory: Path, force: bool) -> list[str]:
    """Copy the starter files into directory; refuse to overwrite unless forced."""
    directory = directory.resolve()
    if directory == REPO:
        raise BadInput(str(directory), "this is mithril-build's own checkout", "choose another folder")
    missing = [n for n in ("mithril.yaml", "mithril.lock", "appdisk") if not (REPO / n).exists()]
    if missing:
        raise BadInput(str(REPO), f"starter files missing: {', '.join(missing)}", "reinstall mithril-build from a checkout")
    clash = [n for n in STARTER if (directory / n).exists()]
    if clash and not force:
        raise BadInput(str(directory), f"already has {', '.join(clash)}", "use --force to overwrite")
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for n in STARTER:
        src, dst = REPO / n, directory / n
        if not src.exists():
            continue
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)
        written.append(str(dst))
    gi = directory / ".gitignore"
    if not gi.exists():
        gi.write_text("/.mithril/\n/out/\n")
        written.append(str(gi))
    return written
