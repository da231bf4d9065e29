"""Finding the project, building the Context, and `init`'s starter project."""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path

from typing import TYPE_CHECKING

from . import CONFIG_FILE, starter
from .errors import BadInput

if TYPE_CHECKING:
    from .graph import Context

# Light on purpose: `all` finds the project (and answers a warm no-op) before the build is loaded.

# What `init` copies: the project's declarative inputs (stage folders hold data, not code).
STARTER = ("mithril.yaml", "mithril.lock", "appdisk", "mkosi", "measurements", "model_engine")
REPO = Path(__file__).resolve().parent.parent


def find_root(start: Path | None) -> Path:
    if start is not None:
        if not (start / CONFIG_FILE).is_file():
            raise BadInput(str(start / CONFIG_FILE), "not found", "pass the folder that holds mithril.yaml")
        return start.resolve()
    here = Path.cwd().resolve()
    for d in (here, *here.parents):
        if (d / CONFIG_FILE).is_file():
            return d
    raise BadInput(str(here / CONFIG_FILE), "not found in this folder or above",
                   "run `mithril-build init` or pass --project DIR")


def cache_path(root: Path, cache_dir: Path | None) -> Path:
    return (cache_dir or root / ".mithril" / "cache").resolve()


def context(project: Path | None, profile: str | None, model: str | None, cache_dir: Path | None,
            locked: bool, inputs: Path | None = None, engine_dir: Path | None = None,
            verify: bool = False) -> Context:
    """The Context of a command: the project, its resolved profile and lock, and the overrides."""
    from . import config as cfg
    from . import lock as lk
    from .graph import Context
    from .inputs import InputStore, check_folder

    root = find_root(project)
    config = cfg.load(root / CONFIG_FILE)
    name, prof = config.profile(profile, model, str(root / CONFIG_FILE))
    lock = lk.load(root / lk.LOCK_FILE)
    cache = cache_path(root, cache_dir)
    check_folder_path(cache, "--cache-dir" if cache_dir else "cache folder")
    return Context(root=root, config=config, profile_name=name, profile=prof, lock=lock,
                   store=InputStore(cache / "inputs", lock, root, offline=check_folder(inputs) if inputs else None,
                                    trust_identity=not verify),
                   cache_dir=cache,
                   out_dir=root / "out" / name, locked=locked,
                   engine_dir=engine_dir.resolve() if engine_dir else None)


def check_folder_path(path: Path, what: str) -> None:
    """A folder we may have to create: neither it nor a parent may be something else than a folder."""
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                where = "it" if p == path else f"its parent {p}"
                raise BadInput(str(path), f"{what}: {where} is not a folder", "pass another --cache-dir")
            return


def project_name(directory: Path) -> str:
    """mithril.yaml's `project` from a folder name: lower case, [-a-z0-9], never empty."""
    name = re.sub(r"[^a-z0-9]+", "-", directory.name.lower()).strip("-")
    return name or "mithril"


def init(directory: Path, force: bool, image: Path | None = None, port: int | None = None,
         seed: uuid.UUID | None = None) -> list[str]:
    """Copy the starter files into directory; refuse to overwrite unless forced. The project gets
    its own name (from the folder) and a fresh random seed, so no two projects share disk UUIDs or
    verity salts. With `image`, the app is that container image archive (pinned in the lock)."""
    import yaml

    from . import config as cfg
    from . import lock as lk
    from .files import sha256_file

    directory = directory.resolve()
    if directory == REPO:
        raise BadInput(str(directory), "this is mithril-build's own checkout", "choose another folder")
    source = starter()
    missing = [n for n in STARTER if not (source / n).exists()]
    if missing:
        raise BadInput(str(source), f"starter files missing: {', '.join(missing)}", "reinstall mithril-build")
    clash = [n for n in STARTER if (directory / n).exists()]
    if clash and not force:
        raise BadInput(str(directory), f"already has {', '.join(clash)}", "use --force to overwrite")
    app = _app_image(image, port) if image is not None else None  # checked before anything is written
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for n in STARTER:
        src, dst = source / n, directory / n
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)
        written.append(str(dst))
    config = yaml.safe_load((source / CONFIG_FILE).read_text())
    config.update(project=project_name(directory), seed=str(seed or uuid.uuid4()))
    if app is not None:
        archive, ref, app_port = app
        dest = directory / "images" / "app.tar"
        dest.parent.mkdir(exist_ok=True)
        shutil.copyfile(archive, dest)
        written.append(str(dest))
        config["default_profile"] = "app"
        config["profiles"] = {"app": {"platform": "qemu", "mode": "production", "app": "image"},
                              "app-debug": {"platform": "qemu", "mode": "debug", "app": "image"}}
        config["appdisk"].update(app_image="app", app_port=app_port)
        lock = lk.load(directory / lk.LOCK_FILE)
        pin = lk.ImagePin(ref=ref, archive=lk.FilePin(path="images/app.tar", sha256=sha256_file(dest),
                                                      size=dest.stat().st_size))
        lk.dump(lock.model_copy(update={"images": {**lock.images, "app": pin}}), directory / lk.LOCK_FILE)
    cfg.Config.model_validate(config)  # what we write must load
    header = ("# mithril-build project (written by `mithril-build init`). `mithril-build --help` explains the\n"
              "# commands. seed: disk and partition UUIDs and dm-verity salts derive from it (keep it fixed).\n")
    (directory / CONFIG_FILE).write_text(header + yaml.safe_dump(config, sort_keys=False, width=110))
    gi = directory / ".gitignore"
    if not gi.exists():
        gi.write_text("/.mithril/\n/out/\n")
        written.append(str(gi))
    return written


def _app_image(image: Path, port: int | None) -> tuple[Path, str, int]:
    """(archive, ref, port) of the user's image, checked as an image archive first."""
    from .oci_read import check_archive

    if not Path(image).is_file():
        raise BadInput(str(image), "not found (given as --image)", "pass a docker-archive or OCI archive (.tar)")
    img = check_archive(Path(image), f"{image} (--image)")[0]
    if port is None:
        if len(img.config.exposed_ports) != 1:
            raise BadInput(str(image), f"the image exposes {len(img.config.exposed_ports) or 'no'} ports",
                           "pass --port: the port your app listens on")
        port = img.config.exposed_ports[0]
    if not img.config.argv:
        raise BadInput(str(image), "the image has no Entrypoint or Cmd", "rebuild it with an ENTRYPOINT")
    from .sandbox import issues, warn

    warn(issues(img.config, str(image), port))  # what of its config the runtime does not honour
    ref = img.ref if img.ref and ":latest" not in img.ref else "localhost/app:1"
    return Path(image), ref, port
