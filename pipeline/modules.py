"""Which of our modules a module uses: what a stage's code fingerprint covers (graph.code_digest).

Read from the source with `ast`, never by importing: every import counts, at the top of a module
or inside a function (and under TYPE_CHECKING), relative or absolute, transitively; an imported
module brings the `__init__.py` of each package above it, which Python runs first. A package
whose `__init__.py` imports by name at run time (`import_module`: the platform chooser, the
client's lazy exports) brings its whole folder. (graph.py loads the stages by name too; that does
not count: each stage's fingerprint is its own closure.)
"""

from __future__ import annotations

from pathlib import Path

from . import invocation

OURS = ("pipeline", "mithril_client", "attestation_server")  # the packages of this repository
ROOT = Path(__file__).resolve().parent.parent  # the folder that holds them (checkout or site-packages)


def path_of(name: str, root: Path) -> Path | None:
    """The file of module `name` under root, or None if it is not one of ours."""
    base = root.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imported(name: str, path: Path, root: Path) -> set[str]:
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
            found |= {m.relative_to(root).with_suffix("").as_posix().replace("/", ".")
                      for m in path.parent.rglob("*.py") if "__pycache__" not in m.parts}
    out = set()
    for module in found:
        parts = module.removesuffix(".__init__").split(".")
        if parts[0] in OURS and path_of(module, root):
            out |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return {m for m in out if path_of(m, root)}


@invocation.once
def closure(name: str, root: Path) -> dict[str, Path]:
    """{module: file} of `name` and every module of ours it imports, transitively, sorted."""
    seen: dict[str, Path] = {}
    parts = name.split(".")
    todo = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]  # with the packages above it
    while todo:
        module = todo.pop()
        path = path_of(module, root)
        if module in seen or path is None:
            continue
        seen[module] = path
        todo.extend(_imported(module, path, root) - seen.keys())
    return dict(sorted(seen.items()))
