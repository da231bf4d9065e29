"""Which of our modules a module uses: what a stage's code fingerprint covers (graph.code_digest).

Read from the source with `ast`, never by importing: every import counts, at the top of a module
or inside a function (and under TYPE_CHECKING), relative or absolute, transitively; an imported
module brings the `__init__.py` of each package above it, which Python runs first. A package
whose `__init__.py` imports by name at run time (`import_module`: the platform chooser, the
client's lazy exports) brings its whole folder. (graph.py loads the stages by name too; that does
not count: each stage's fingerprint is its own closure.)
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path

from . import invocation

OURS = ("pipeline", "mithril_client", "attestation_server")  # the packages of this repository's three distributions


def package_dir(name: str) -> Path | None:
    """The folder Python imports our package `name` from (found without importing it): the
    checkout (editable installs), or the site-packages its wheel went to; None if not installed."""
    spec = importlib.util.find_spec(name)
    return Path(next(iter(spec.submodule_search_locations))) if spec and spec.submodule_search_locations else None


def _folders() -> dict[str, Path]:
    """The folder holding each package: one checkout, or wherever each wheel was installed."""
    out = {}
    for package in OURS:
        if (folder := package_dir(package)) is None:
            raise ImportError(f"{package} is not installed (pip install mithril-client mithril-attestation-server)")
        out[package] = folder.resolve().parent
    return out


ROOTS: Mapping[str, Path] = _folders()


def path_of(name: str, roots: Mapping[str, Path]) -> Path | None:
    """The file of module `name`, or None if it is not one of ours."""
    top = name.split(".")[0]
    if top not in roots:
        return None
    base = roots[top].joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imported(name: str, path: Path, roots: Mapping[str, Path]) -> set[str]:
    """The modules of ours `name` (at path) imports directly, with their parent packages."""
    import ast  # here: the warm no-op imports this module for OURS only

    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_bytes(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}  # kept below only if it is a module
        elif path.name == "__init__.py" and (isinstance(node, ast.Attribute) and node.attr == "import_module"
                                             or isinstance(node, ast.Name) and node.id == "import_module"):
            found |= {m.relative_to(roots[name.split(".")[0]]).with_suffix("").as_posix().replace("/", ".")
                      for m in path.parent.rglob("*.py") if "__pycache__" not in m.parts}
    out = set()
    for module in found:
        parts = module.removesuffix(".__init__").split(".")
        if parts[0] in OURS and path_of(module, roots):
            out |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return {m for m in out if path_of(m, roots)}


def closure(name: str, roots: Mapping[str, Path]) -> dict[str, Path]:
    """{module: file} of `name` and every module of ours it imports, transitively, sorted."""
    return _closure(name, tuple(sorted(roots.items())))


@invocation.once
def _closure(name: str, folders: tuple[tuple[str, Path], ...]) -> dict[str, Path]:
    roots = dict(folders)
    seen: dict[str, Path] = {}
    parts = name.split(".")
    todo = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]  # with the packages above it
    while todo:
        module = todo.pop()
        path = path_of(module, roots)
        if module in seen or path is None:
            continue
        seen[module] = path
        todo.extend(_imported(module, path, roots) - seen.keys())
    return dict(sorted(seen.items()))
