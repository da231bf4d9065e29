"""One list of platform names (mithril_client/platforms/__init__.py, PLATFORMS) and one module or
folder per platform on each side, found through it; nothing else branches on a platform name.
Adding a platform is a registry row plus one module or folder per side (README "A platform")."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from mithril_client import evidence as client_evidence
from mithril_client import platforms as registry
from mithril_client.platforms import choose
from pipeline.project import REPO

# Each side: its platforms package, what a platform's module must define, and the files in that
# package that are not platforms (base classes, shared code, data models).
SIDES = {
    "build": ("pipeline/platforms", "PLATFORM"),
    "server": ("attestation_server/platforms", "ISSUER"),
    "client": ("mithril_client/platforms", "validate"),
}
PACKAGES = ("pipeline", "attestation_server", "mithril_client")
LITERALS = set(registry.PLATFORMS) | set(registry.PLATFORMS.values())


def entries(folder: Path) -> dict[str, Path]:
    """Module name -> file of every module (x.py) and package (x/__init__.py) in a platforms folder."""
    out = {}
    for path in sorted(folder.iterdir()):
        if path.suffix == ".py" and path.name != "__init__.py":
            out[path.stem] = path
        elif (path / "__init__.py").is_file():
            out[path.name] = path / "__init__.py"
    return out


def defines(path: Path, name: str) -> bool:
    """Does the module define `name` at its top level (assignment, def or class)?"""
    for node in ast.parse(path.read_text()).body:
        targets = (node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign)
                   else [])
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return True
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name:
            return True
    return False


def test_rows_are_names_and_module_names():
    assert registry.NAMES == tuple(registry.PLATFORMS)
    for name, module in registry.PLATFORMS.items():
        assert re.fullmatch(r"[a-z0-9][a-z0-9-]*", name), name
        assert module == name.replace("-", "_") and module.isidentifier(), (name, module)


def problems(folder: Path, entry: str, rows: tuple[str, ...] = tuple(registry.PLATFORMS.values())) -> list[str]:
    """What is wrong with one side's platforms folder: a row without its module (or without the
    entry point in it), or a module that is no row but defines the entry point (a platform
    nobody can choose). A module that is no row and defines no entry point is shared code."""
    found = entries(folder)
    out = [f"no module or folder for row {m!r}" for m in rows if m not in found]
    out += [f"{m}: does not define {entry}" for m in rows if m in found and not defines(found[m], entry)]
    out += [f"{m}: defines {entry} but is no row of mithril_client.platforms.PLATFORMS" for m, path in found.items()
            if m not in rows and defines(path, entry)]
    return out


@pytest.mark.parametrize("side", SIDES)
def test_every_row_has_its_module_on_each_side_and_every_platform_module_a_row(side):
    folder, entry = SIDES[side]
    assert problems(REPO / folder, entry) == []


def test_a_missing_or_unlisted_platform_module_is_found(tmp_path):
    for module in registry.PLATFORMS.values():
        (tmp_path / f"{module}.py").write_text("ISSUER = object\n")
    (tmp_path / "base.py").write_text("class Issuer: pass\n")  # shared code: fine
    assert problems(tmp_path, "ISSUER") == []
    (tmp_path / "gcp").mkdir()
    (tmp_path / "gcp" / "__init__.py").write_text("ISSUER = object\n")
    first = next(iter(registry.PLATFORMS.values()))
    (tmp_path / f"{first}.py").write_text("def issuer(): pass\n")
    last = list(registry.PLATFORMS.values())[-1]
    (tmp_path / f"{last}.py").unlink()
    assert problems(tmp_path, "ISSUER") == [f"no module or folder for row {last!r}", f"{first}: does not define ISSUER",
                                            "gcp: defines ISSUER but is no row of mithril_client.platforms.PLATFORMS"]


def test_each_side_finds_its_platform_through_the_registry():
    from attestation_server import platforms as server
    from attestation_server.platforms.base import Issuer
    from pipeline import platforms as build
    from pipeline.platforms import firmware

    assert build.names() == tuple(sorted(registry.NAMES))
    for name in registry.NAMES:
        assert build.get(name).name == name
        assert issubclass(server.issuer(name), Issuer)
        assert callable(choose.validator(name).validate)
        assert firmware.load(REPO, name).name == name  # measurements/platforms/<name>.yaml


def test_the_names_everywhere_are_the_registry():
    from attestation_server.__main__ import main
    from pipeline import config

    assert client_evidence.PLATFORMS == registry.NAMES
    assert config.PlatformName.__args__ == tuple(sorted(registry.NAMES))
    with pytest.raises(SystemExit):  # argparse refuses a name that is no row
        main(["--listen", "127.0.0.1:0", "--platform", "gcp", "--tpm", "x", "--tls-dir", "x", "--state-dir", "x"])
    with pytest.raises(client_evidence.BadInput, match="platform: 'gcp' is not one of qemu, azure-trusted-launch"):
        client_evidence.parse_evidence(b'{"version": 1, "platform": "gcp"}')


def branches(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, literal) of every comparison, match case or dict key against a platform name."""
    def literals(node) -> list[str]:
        if isinstance(node, ast.Constant) and node.value in LITERALS:
            return [node.value]
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return [v for e in node.elts for v in literals(e)]
        return []

    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            out += [(node.lineno, v) for operand in (node.left, *node.comparators) for v in literals(operand)]
        elif isinstance(node, ast.MatchValue):
            out += [(node.lineno, v) for v in literals(node.value)]
        elif isinstance(node, ast.Dict):
            out += [(node.lineno, v) for key in node.keys if key is not None for v in literals(key)]
    return out


def test_nothing_outside_the_registries_branches_on_a_platform_name():
    inside = tuple(REPO / folder for folder, _ in SIDES.values())
    found = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            if path.is_relative_to(inside[0]) or path.is_relative_to(inside[1]) or path.is_relative_to(inside[2]):
                continue
            found += [f"{path.relative_to(REPO)}:{line}: {value!r}" for line, value in
                      branches(ast.parse(path.read_text(), str(path)))]
    assert not found, "branches on a platform name outside the platform folders:\n" + "\n".join(found)


def test_the_scan_finds_every_kind_of_branch():
    code = '''
if cfg.platform == "qemu": pass
if "azure-cvm" != p: pass
if p in ("azure-trusted-launch", "other"): pass
x = {"azure_cvm": 1}.get(p)
match p:
    case "qemu": pass
if p == "qemux" or p == other: pass
'''
    assert sorted(branches(ast.parse(code))) == [(2, "qemu"), (3, "azure-cvm"), (4, "azure-trusted-launch"),
                                                 (5, "azure_cvm"), (7, "qemu")]


def test_adding_a_platform_is_a_row_and_one_module_per_side(tmp_path):
    """A copy of the three packages gets a row "lab-cloud" and one module or folder per side, and
    nothing else: every side then knows it (mithril.yaml, the evidence parser, the server's
    --platform and issuer, the client's AK check, `boot`'s choices stay as they were)."""
    import shutil
    import subprocess
    import sys

    for package in PACKAGES:
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    registry_file = tmp_path / "mithril_client/platforms/__init__.py"
    text = registry_file.read_text()
    registry_file.write_text(text.replace('    "azure-cvm": "azure_cvm",\n',
                                          '    "azure-cvm": "azure_cvm",\n    "lab-cloud": "lab_cloud",\n'))
    (tmp_path / "pipeline/platforms/lab_cloud").mkdir()
    (tmp_path / "pipeline/platforms/lab_cloud/__init__.py").write_text(
        "from ..base import Platform\n\nPLATFORM = Platform(__name__)\n")
    (tmp_path / "attestation_server/platforms/lab_cloud.py").write_text(
        "from .azure_trusted_launch import AzureTrustedLaunch\n\nISSUER = AzureTrustedLaunch\n")
    (tmp_path / "mithril_client/platforms/lab_cloud.py").write_text(
        "from ..measurements import Row\n\n\ndef validate(evidence, ak, inputs):\n"
        "    return [Row('ak', 'lab', 'lab-cloud validator', 'enforce', 'MISMATCH')]\n")
    for folder, entry in SIDES.values():
        assert problems(tmp_path / folder, entry, (*registry.PLATFORMS.values(), "lab_cloud")) == [], folder
    probe = r'''
import json
from attestation_server import platforms as server
from attestation_server.__main__ import main
from mithril_client import evidence
from mithril_client.platforms import choose
from pipeline import config, platforms as build
doc = {"version": 1, "platform": "lab-cloud"}
try:
    evidence.parse_evidence(json.dumps(doc).encode())
except evidence.BadInput as e:
    parsed = str(e)
rows = choose.check_ak(evidence.Evidence("lab-cloud", b"", b"", b"", {}, b"", b"", b""), ak=None)
print(json.dumps({"build": build.names(), "config": list(config.PlatformName.__args__), "bootable": build.bootable(),
                  "server": server.issuer("lab-cloud").__name__, "client": rows[0].actual, "parsed": parsed,
                  "template": build.get("lab-cloud").template_vars()}))
'''
    import json

    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)},
                         capture_output=True, text=True, check=True).stdout
    seen = json.loads(out)
    assert seen["build"] == seen["config"] == ["azure-cvm", "azure-trusted-launch", "lab-cloud", "qemu"]
    assert seen["bootable"] == ["qemu"]
    assert seen["server"] == "AzureTrustedLaunch" and seen["client"] == "lab-cloud validator"
    assert "platform" not in seen["parsed"]  # accepted as a platform; the parser stops at the next field
    assert seen["template"] == {"platform": "lab-cloud", "azure": False}
