"""The stage cache: keys, hits, --explain, digest re-checks, atomic publishing."""

import json
from pathlib import Path

import pytest

from pipeline import config as cfg
from pipeline import lock as lk
from pipeline.graph import Context, Orchestrator, Stage, digest, explain_diff

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
    return Context(root, config, name, prof, lock, lk.InputStore(root / "c/inputs", lock, root),
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
