"""The layers of README "Architecture: where things go", as data: a module imports only modules of
its own layer and of those before it, and there is no import cycle. Every import counts, at the
top of a module or inside a function (and under TYPE_CHECKING), relative or absolute."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "pipeline"
PACKAGES = ("mithril_client", "attestation_server", "pipeline")

# README's table, lowest first. "x.*" is package x and everything below it; other names are one
# module each. A module in no layer fails the test: place it, here and in the README.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("client", ("mithril_client.*",)),
    ("server", ("attestation_server.*",)),
    ("1", ("pipeline", "pipeline.errors", "pipeline.invocation", "pipeline.log", "pipeline.modules")),
    ("2", ("pipeline.files", "pipeline.readers")),
    ("3", ("pipeline.config", "pipeline.lock", "pipeline.run", "pipeline.measure.*", "pipeline.archive",
           "pipeline.oci", "pipeline.oci_read", "pipeline.container", "pipeline.hf", "pipeline.swtpm",
           "pipeline.templates", "pipeline.gpu", "pipeline.records", "pipeline.provenance", "pipeline.diff",
           "pipeline.roothash_check", "pipeline.sandbox", "pipeline.crash", "pipeline.platforms.*")),
    ("4", ("pipeline.inputs", "pipeline.cache", "pipeline.graph")),
    ("5", ("pipeline.stages.*", "pipeline.verity_build", "pipeline.images", "pipeline.debian",
           "pipeline.project", "pipeline.noop")),
    ("6", ("pipeline.orchestrate", "pipeline.render", "pipeline.attest", "pipeline.audit",
           "pipeline.record_platform", "pipeline.cli.*", "pipeline.__main__")),
]

# Imports against the layers that exist today, each with why; the test fails when one is gone
# too, so that this list only shrinks.
KNOWN: dict[tuple[str, str], str] = {}


def modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def layer_of(module: str) -> int | None:
    """The index in LAYERS of the module's layer, or None if the table does not place it."""
    for i, (_, names) in enumerate(LAYERS):
        for name in names:
            if module == name.removesuffix(".*") or name.endswith(".*") and module.startswith(name[:-1]):
                return i
    return None


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The pipeline modules `name` imports. `from X import Y` imports X.Y when that is a module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            found |= {f"{module}.{a.name}" if f"{module}.{a.name}" in known else module for a in node.names}
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None."""
    state: dict[str, str] = {}  # "open" while on the current path, then "done"
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_finds_imports_of_every_kind():
    edges = graph()
    assert "pipeline.files" in edges["pipeline.cache"]  # from .files import ...
    assert "pipeline.log" in edges["pipeline.files"]  # from . import log
    assert "pipeline.stages" in edges["pipeline.orchestrate"]  # inside a function
    assert "pipeline.errors" in edges["pipeline.platforms.firmware"]  # from ..errors import ...
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_every_module_has_a_layer_and_imports_no_higher_layer():
    edges = graph()
    unplaced = sorted(m for m in edges if layer_of(m) is None)
    assert not unplaced, f"place these in a layer (tests/unit/test_imports.py LAYERS and the README): {unplaced}"
    against = {(m, d) for m, deps in edges.items() for d in deps if layer_of(d) > layer_of(m)}
    new = sorted(against - KNOWN.keys())
    assert not new, "imports against the layers: " + "; ".join(
        f"{m} (layer {LAYERS[layer_of(m)][0]}) imports {d} (layer {LAYERS[layer_of(d)][0]})" for m, d in new)
    assert KNOWN.keys() <= against, f"no longer against the layers, remove from KNOWN: {sorted(KNOWN.keys() - against)}"


def test_the_layer_check_refuses_an_upward_import():
    edges = graph()
    assert layer_of("pipeline.files") < layer_of("pipeline.cli")
    edges["pipeline.files"].add("pipeline.cli")
    assert any(layer_of(d) > layer_of(m) for m, deps in edges.items() for d in deps if (m, d) not in KNOWN)


def test_the_readme_lists_the_same_layers():
    """README "Architecture: where things go": layer N names exactly the pipeline modules of LAYERS."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Architecture: where things go"):]
    section = section[:section.index("\n- **")]
    readme = {}
    for number, body in re.findall(r"^(\d)\. (.*?)(?=^\d\. |\Z)", section, re.S | re.M):
        readme[number] = set(re.findall(r"`([a-z_]+/?)`", body))
    for label, names in LAYERS:
        if label.isdigit():
            want = {n.removeprefix("pipeline.").removesuffix(".*") + ("/" if n.endswith(".*") else "")
                    for n in names if n != "pipeline"}
            assert readme.get(label) == want, (label, sorted(readme.get(label, set()) ^ want))
    assert set(readme) == {label for label, _ in LAYERS if label.isdigit()}


def test_no_import_cycle():
    """In every package, the client's included, and counting imports inside functions: a cycle
    broken only by importing late is still a cycle (move the shared piece down instead)."""
    edges = graph()
    assert "mithril_client.gpu.online" in edges["mithril_client.gpu.check"]  # imported inside a function
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_check_sees_a_cycle_through_a_late_import():
    """The cycle issue 23 removed (evidence -> gpu.evidence -> gpu.check -> certs -> evidence),
    put back as a function-level import, is found."""
    edges = graph()
    edges["mithril_client.evidence"].add("mithril_client.gpu.evidence")
    assert find_cycle(edges) is not None
