"""The stage cache: keys, hits, --explain, digest re-checks, atomic publishing."""

import json
import shutil
from pathlib import Path

import pytest

from pipeline import config as cfg
from pipeline import inputs, invocation
from pipeline import lock as lk
from pipeline.errors import BadInput
from pipeline.graph import Context, Orchestrator, Stage, _Stages, digest, explain_diff

CONFIG = """
seed: 5c8a2e4f-6d1b-4a7e-9b3c-2f0e1d4c5b6a
source_date_epoch: 1704067200
profiles: {demo: {}}
"""


class Source(Stage):
    name, version = "source", 1
    builds = 0

    def key_inputs(self, ctx):
        return {"files": ctx.checkout_digests("src")}

    def build(self, ctx, out, deps):
        type(self).builds += 1
        (out / "joined.txt").write_text("".join(p.read_text() for p in sorted((ctx.root / "src").iterdir())))
        return {"note": "ok"}


class Upper(Stage):
    name, version, deps = "upper", 1, ("source",)
    builds = 0

    def key_inputs(self, ctx):
        return {}

    def build(self, ctx, out, deps):
        type(self).builds += 1
        (out / "upper.txt").write_text((deps["source"].dir / "joined.txt").read_text().upper())
        return {}


def make_ctx(root: Path) -> Context:
    (root / "mithril.yaml").write_text(CONFIG)
    config = cfg.load(root / "mithril.yaml")
    name, prof = config.profile(None)
    lock = lk.Lock()
    return Context(root, config, name, prof, lock, inputs.InputStore(root / "c/inputs", lock, root),
                   root / "c", root / "out" / name, False)


@pytest.fixture
def project(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src/a.txt").write_text("hello ")
    (tmp_path / "src/b.txt").write_text("world")
    Source.builds = Upper.builds = 0
    return make_ctx(tmp_path)


def orch(ctx):
    return Orchestrator(ctx, {"source": Source, "upper": Upper})


def test_build_then_hit(project):
    res = orch(project).run(["upper"])
    assert (project.out_dir / "upper.txt").read_text() == "HELLO WORLD"
    assert Source.builds == Upper.builds == 1
    rec = json.loads((project.out_dir / "records/source.json").read_text())
    assert rec["note"] == "ok" and rec["outputs"]["joined.txt"] == res["source"].outputs["joined.txt"]
    orch(project).run(["upper"])
    assert Source.builds == Upper.builds == 1
    assert "upper.txt" in (project.out_dir / "SHA256SUMS").read_text()


def test_change_rebuilds_and_explain_names_the_file(project):
    orch(project).run(["upper"])
    (project.root / "src/b.txt").write_text("there")
    plans = orch(project).plan(["upper"])
    assert "files.src/b.txt: changed" in plans[0].reason
    orch(project).run(["upper"])
    assert Source.builds == 2 and Upper.builds == 2


def test_same_output_downstream_is_a_hit(project):
    orch(project).run(["upper"])
    (project.root / "src/c.txt").write_text("")  # new input, same joined output
    orch(project).run(["upper"])
    assert Source.builds == 2 and Upper.builds == 1


def test_tampered_cache_is_detected_and_rebuilt(project, capsys):
    res = orch(project).run(["source"])
    (res["source"].dir / "joined.txt").write_text("evil")
    orch(project).run(["source"])
    assert Source.builds == 2
    assert "outputs changed since they were stored: joined.txt" in capsys.readouterr().err
    assert (project.out_dir / "joined.txt").read_text() == "hello world"


def test_failed_build_leaves_nothing(project):
    class Broken(Source):
        def build(self, ctx, out, deps):
            (out / "half.txt").write_text("partial")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        Orchestrator(project, {"source": Broken}).run(["source"])
    assert not project.out_dir.exists()
    assert not list((project.cache_dir / "stages").glob("source/*/half.txt"))
    assert not list((project.cache_dir / "tmp").glob("*"))


def test_stale_tmp_of_a_killed_run_is_removed(project):
    stale = project.cache_dir / "tmp" / "source-dead"
    stale.mkdir(parents=True)
    orch(project).run(["source"])
    assert not stale.exists()


def test_key_is_canonical():
    assert digest({"b": 1, "a": [1, 2]}) == digest({"a": [1, 2], "b": 1})
    assert explain_diff({"a": {"x": 1, "y": 2}}, {"a": {"x": 1, "z": 2}}) == ["a.y: removed", "a.z: added"]


# ---------------------------------------------------------------- state: publishing, pins, locks, clean

def test_cache_hits_leave_no_temporary_file_in_out(project):
    orch(project).run(["upper"])
    orch(project).run(["upper"])  # every output is already the cached file: rename would be a no-op
    names = sorted(p.relative_to(project.out_dir).as_posix() for p in project.out_dir.rglob("*") if p.is_file())
    assert names == ["SHA256SUMS", "joined.txt", "records/source.json", "records/upper.json", "upper.txt"]


def test_leftover_of_a_killed_publish_is_removed(project):
    orch(project).run(["source"])
    leftover = project.out_dir / ".mithril-tmp-joined.txt.dead0000"
    leftover.write_text("half")
    orch(project).run(["source"])
    assert not leftover.exists()


def test_nothing_is_published_when_a_later_stage_fails(project):
    class Broken(Upper):
        def build(self, ctx, out, deps):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        Orchestrator(project, {"source": Source, "upper": Broken}).run(["upper"])
    assert Source.builds == 1 and not project.out_dir.exists()


class Pinned(Source):
    """A stage whose input is a checkout file named only by its pin (as `init --image` pins an archive)."""
    name, builds = "pinned", 0

    def key_inputs(self, ctx):
        return {"pin": ctx.lock.entry("files", "tool")}

    def pins(self, ctx):
        return {"files.tool": ctx.lock.file("tool")}


def _pinned_ctx(project, data: bytes):
    import dataclasses
    import hashlib

    (project.root / "tool.bin").write_bytes(data)
    lock = lk.Lock(files={"tool": lk.FilePin(path="tool.bin", sha256=hashlib.sha256(data).hexdigest())})
    store = inputs.InputStore(project.cache_dir / "inputs", lock, project.root)
    return dataclasses.replace(project, lock=lock, store=store)


def test_pinned_checkout_file_edited_after_a_build_is_refused_on_a_cache_hit(project, monkeypatch):
    from pipeline.errors import BadInput

    ctx = _pinned_ctx(project, b"v1")
    Orchestrator(ctx, {"pinned": Pinned}).run(["pinned"])
    (ctx.root / "tool.bin").write_bytes(b"v2")  # the lock still says v1: the cache key is unchanged
    with pytest.raises(BadInput, match="files.tool.sha256: expected .* but tool.bin has"):
        Orchestrator(ctx, {"pinned": Pinned}).run(["pinned"])
    (ctx.root / "tool.bin").write_bytes(b"v1")
    hashed = []
    monkeypatch.setattr(inputs, "sha256_file", lambda p, **kw: hashed.append(p) or __import__("hashlib").sha256(
        p.read_bytes()).hexdigest())
    Orchestrator(ctx, {"pinned": Pinned}).run(["pinned"])  # changed identity: hashed again, then a hit
    Orchestrator(ctx, {"pinned": Pinned}).run(["pinned"])  # same identity: not hashed again
    assert [p.name for p in hashed if p.name == "tool.bin"] == ["tool.bin"]
    assert Pinned.builds == 1


class Declared(Source):
    """A stage that only declares its lock entry: its pins and its cache key follow from it."""
    name = "declared"

    def lock_entries(self, ctx):
        return ["files.tool"]


def test_lock_entries_make_the_pins_and_the_key(project):
    ctx = _pinned_ctx(project, b"v1")
    assert Declared().pins(ctx) == {"files.tool": ctx.lock.file("tool")}
    Orchestrator(ctx, {"declared": Declared}).run(["declared"])
    plan = Orchestrator(_pinned_ctx(project, b"v2"), {"declared": Declared}).plan(["declared"])[0]
    assert plan.hit is None and plan.reason == "changed: lock.files.tool.sha256: changed"


def test_plan_waits_for_a_running_build_and_reads_its_result(project, monkeypatch):
    """status/plan take the shared lock: they never read a result while a build replaces it."""
    import threading

    from pipeline import log

    orch(project).run(["source"])
    held, waiting, done = threading.Event(), threading.Event(), threading.Event()
    real_info = log.info
    monkeypatch.setattr(log, "info", lambda msg: (waiting.set() if msg.startswith("waiting for") else None,
                                                  real_info(msg)))

    def build():
        with orch(project).cache.exclusive():
            held.set()
            if waiting.wait(60):  # plan is blocked on the lock: replace the results under it
                (project.root / "src/a.txt").write_text("HELLO ")
                shutil.rmtree(project.cache_dir / "stages")  # what a build replacing results looks like
                done.set()
    t = threading.Thread(target=build)
    t.start()
    assert held.wait(60)  # the build holds the lock before plan asks for it
    plans = orch(project).plan(["source"])
    t.join()
    assert waiting.is_set() and done.is_set() and plans[0].hit is None


def test_clean_removes_only_this_profiles_results(tmp_path):
    import dataclasses

    from pipeline import orchestrate

    class PerProfile(Source):
        def key_inputs(self, ctx):
            return {"profile": ctx.profile_name}

    (tmp_path / "src").mkdir()
    (tmp_path / "src/a.txt").write_text("x")
    demo = make_ctx(tmp_path)
    (tmp_path / "mithril.yaml").write_text(CONFIG.replace("profiles: {demo: {}}", "profiles: {demo: {}, other: {}}"))
    config = cfg.load(tmp_path / "mithril.yaml")
    other = dataclasses.replace(demo, config=config, profile_name="other", profile=config.profile("other")[1],
                                out_dir=tmp_path / "out/other")
    mine = Orchestrator(demo, {"source": PerProfile}).run(["source"])["source"].dir
    theirs = Orchestrator(other, {"source": PerProfile}).run(["source"])["source"].dir
    assert mine != theirs
    lines = orchestrate.clean(dataclasses.replace(demo, config=config), everything=False, outputs=False)
    assert lines == [f"removed {mine}"] and theirs.is_dir() and not mine.exists()
    orchestrate.clean(demo, everything=False, outputs=False, all_profiles=True)
    assert not theirs.exists()


# ---------------------------------------------------------------- derived code fingerprints

def _copy_packages(dest: Path) -> Path:
    from pipeline.modules import OURS, ROOTS

    for package in OURS:
        shutil.copytree(ROOTS[package] / package, dest / package, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def _roots(root: Path) -> dict[str, Path]:
    """modules.closure's {package: folder} for copies of all three packages under root."""
    from pipeline.modules import OURS

    return {package: root for package in OURS}


def _fingerprint(module: str, root: Path) -> str:
    """graph.code_digest of `module`'s stage, with the packages at root (a comment appended to a
    file leaves its imports as they were, so the cached closure still holds)."""
    from pipeline.files import sha256_file
    from pipeline.modules import closure

    return digest({n: sha256_file(p) for n, p in closure(module, _roots(root)).items()})


def test_a_stage_fingerprint_covers_every_module_python_loads_for_it():
    """Python's own import system is the reference: every module of ours that importing a stage
    loads is in its closure (the closure may hold more: imports inside functions)."""
    import subprocess
    import sys

    from pipeline.modules import OURS, ROOTS, closure

    for stage in ("appdisk", "os_image", "measurements", "model_engine", "provenance"):
        name = f"pipeline.stages.{stage}"
        loaded = subprocess.run(
            [sys.executable, "-c", f"import sys, {name}; print(*sorted(sys.modules))"],
            capture_output=True, text=True, check=True).stdout.split()
        ours = {m for m in loaded if m.split(".")[0] in OURS}
        assert ours <= set(closure(name, ROOTS)), (stage, sorted(ours - set(closure(name, ROOTS))))


def test_editing_a_module_a_stage_imports_changes_its_key_and_others_do_not(tmp_path):
    from pipeline.modules import closure

    root = _copy_packages(tmp_path)
    stage = "pipeline.stages.appdisk"
    used = closure(stage, _roots(root))
    # imported only inside functions, or only transitively: the cases a hand list forgot
    assert {"pipeline.templates", "pipeline.run", "pipeline.debian", "pipeline.gpu",
            "pipeline.platforms.qemu"} <= set(used)
    before = _fingerprint(stage, root)
    for name, path in used.items():
        original = path.read_bytes()
        path.write_bytes(original + b"\n# edited\n")
        assert _fingerprint(stage, root) != before, name
        path.write_bytes(original)
    assert _fingerprint(stage, root) == before
    for name in ("pipeline.noop", "pipeline.cli.build", "pipeline.stages.model_engine", "pipeline.stages.os_image"):
        assert name not in used
        path = root.joinpath(*name.split(".")).with_suffix(".py")
        path.write_bytes(path.read_bytes() + b"\n# edited\n")
        assert _fingerprint(stage, root) == before, name
    # a new module under a package whose __init__ imports by name (the platform chooser) counts
    (root / "pipeline/platforms/newplatform").mkdir()
    (root / "pipeline/platforms/newplatform/__init__.py").write_text("X = 1\n")
    invocation.begin()  # closure is computed once per command
    assert _fingerprint(stage, root) != before


def test_editing_an_imported_module_changes_the_stage_code_digest(monkeypatch, tmp_path):
    """End to end through the orchestrator: the key of a real stage class moves with its code."""
    from pipeline import graph, modules

    root = _copy_packages(tmp_path / "pkgs")
    monkeypatch.setattr(modules, "ROOTS", _roots(root))

    def key(cls):
        invocation.begin()  # a new command: code digests computed afresh
        return graph.code_digest(cls)

    from pipeline.stages.provenance import Provenance

    before = key(Provenance)
    f = root / "pipeline/run.py"
    f.write_text(f.read_text() + "\n# edited\n")
    assert key(Provenance) != before
    invocation.begin()  # none of this copy's digests for later tests


def test_a_client_installed_apart_from_the_build_tool_is_still_covered(monkeypatch, tmp_path):
    """Three wheels may land in three folders: the fingerprint follows each package to its own
    folder, so an edit to the client installed elsewhere still changes the stage's key."""
    from pipeline import graph, modules
    from pipeline.stages.appdisk import AppDisk

    folders = {package: tmp_path / package for package in modules.OURS}
    for package, folder in folders.items():
        shutil.copytree(modules.ROOTS[package] / package, folder / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(modules, "ROOTS", folders)
    invocation.begin()
    before = graph.code_digest(AppDisk)
    assert any(str(p).startswith(str(folders["mithril_client"])) for p in
               modules.closure("pipeline.stages.appdisk", folders).values())
    f = folders["mithril_client"] / "mithril_client/tpm2.py"
    f.write_text(f.read_text() + "\n# edited\n")
    invocation.begin()
    assert graph.code_digest(AppDisk) != before
    invocation.begin()


# ---------------------------------------------------------------- build order and dependencies

class Model(Stage):
    name = "model"
    on = True

    def enabled(self, ctx):
        return type(self).on

    def key_inputs(self, ctx):
        return {}

    def build(self, ctx, out, deps):
        (out / "model.txt").write_text("m")
        return {}


class Disk(Stage):
    name, deps, after = "disk", ("source",), ("model",)
    seen: list = []

    def key_inputs(self, ctx):
        return {}

    def build(self, ctx, out, deps):
        type(self).seen.append(sorted(deps))
        (out / "disk.txt").write_text("d")
        return {}


def test_order_comes_from_the_dependencies_not_the_registry(project):
    # registry order is the reverse of what the dependencies need
    o = Orchestrator(project, {"disk": Disk, "upper": Upper, "model": Model, "source": Source})
    Model.on = True
    assert [s.name for s in o.selected(["disk", "upper"])] == ["model", "source", "disk", "upper"]
    Disk.seen = []
    o.run(["disk", "upper"])
    assert Disk.seen == [["model", "source"]] and (project.out_dir / "upper.txt").read_text() == "HELLO WORLD"
    # an optional (`after`) stage the profile disables is left out, not an error
    Model.on = False
    assert [s.name for s in o.selected(["disk"])] == ["source", "disk"]
    Disk.seen = []
    o.run(["disk"])
    assert Disk.seen == [["source"]]
    Model.on = True


def test_a_needed_stage_that_is_disabled_is_bad_config_naming_both(project):
    class NeedsModel(Upper):
        name, deps = "upper", ("model",)

    Model.on = False
    o = Orchestrator(project, {"model": Model, "upper": NeedsModel})
    for call in (lambda: o.selected(["upper"]), lambda: o.plan(["upper"]), lambda: o.run(["upper"])):
        with pytest.raises(BadInput) as e:
            call()
        assert e.value.exit_code == 2
        assert "'upper' needs stage 'model', which this profile disables" in str(e.value)
        assert "profiles.demo" in str(e.value)
    assert not project.out_dir.exists()
    Model.on = True


def test_a_dependency_that_is_no_stage_or_a_cycle_is_bad_config(project):
    class Orphan(Upper):
        name, deps = "upper", ("nosuch",)

    with pytest.raises(BadInput, match="stage 'upper' depends on 'nosuch', which is no stage"):
        Orchestrator(project, {"source": Source, "upper": Orphan}).selected(["upper"])

    class A(Upper):
        name, deps = "a", ("b",)

    class B(Upper):
        name, deps = "b", ("a",)

    with pytest.raises(BadInput, match="cycle"):
        Orchestrator(project, {"a": A, "b": B}).selected(["a"])


def test_the_real_registry_orders_and_checks_every_stage():
    from pipeline.stages import STAGES

    class Ctx:
        profile_name = "x"

    o = Orchestrator.__new__(Orchestrator)
    o.ctx, o.stages = Ctx(), _Stages(STAGES)
    for stage in o.stages.values():  # every stage enabled (a profile with a model)
        stage.enabled = lambda ctx: True
    names = [s.name for s in o.selected(list(STAGES))]
    for i, name in enumerate(names):
        stage = o.stages[name]
        assert set((*stage.deps, *stage.after)) <= set(names[:i]), name
