"""Generated bad inputs (issue 14): every kind of file the CLI reads — mithril.yaml, mithril.lock,
templates, image archives, disks, VHD inputs, evidence, quotes, measurements.json, SNP policies,
provenance, serial logs, inputs folders — mutated by Hypothesis (truncation, random bytes, wrong
encodings, wrong types, out-of-range numbers, hostile archive members, huge fields).

The contract is the expectation, not our own output: a command exits with one of the codes its
help names for that input (never 70, an internal error, never a traceback); exit 2 is exactly one
line `mithril-build: error: …`, and out/ and the cache are unchanged. Each case runs the CLI in
this process (`tests.conftest.cli`). Deterministic (derandomized, no example database); set
MITHRIL_FUZZ_EXAMPLES=N to run N random examples per test instead.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.archive import Entry
from pipeline.platforms.azure.vhd import VHD_EPOCH
from pipeline.measure import verity
from pipeline.oci import image_archive
from pipeline.run import run
from tests.conftest import SEED, cli, need

pytestmark = pytest.mark.filterwarnings("ignore:Parsed a serial number")  # the real VCEK capture's
EXAMPLES = int(os.environ.get("MITHRIL_FUZZ_EXAMPLES", "0"))
settings.register_profile("robustness", derandomize=not EXAMPLES, database=None, deadline=None,
                          suppress_health_check=list(HealthCheck), print_blob=True)
settings.load_profile("robustness")
# Downloads and registry calls fail at once instead of reaching out (nothing here should try).
OFFLINE = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "1"}
TALLY: collections.Counter = collections.Counter()  # per input kind: cases tried, held
LOG_LINE = re.compile(r"^\s*(▶|✓|✗|profile |waiting for |warning: )")


def examples(n: int):
    return settings(max_examples=EXAMPLES or n)


# ---------------------------------------------------------------- the contract

def snapshot(*folders: Path) -> dict:
    """Every file under the folders: path -> (size, sha256), symlinks by target."""
    state = {}
    for folder in folders:
        if not folder.exists():
            state[str(folder)] = None
            continue
        for p in sorted(folder.rglob("*")):
            if p.is_symlink():
                state[str(p)] = ("->", os.readlink(p))
            elif p.is_file():
                state[str(p)] = (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
            else:
                state[str(p)] = "dir"
    return state


def check(kind: str, args, allowed: tuple[int, ...], watch: tuple[Path, ...] = (), cwd: Path | None = None):
    """Run the CLI on one generated case and assert the contract; returns the result."""
    TALLY[kind, "tried"] += 1
    before = snapshot(*watch)
    res = cli(*args, cwd=cwd, env=OFFLINE)
    err = res.stderr
    context = f"args {args!r}\nexit {res.returncode}\nstderr:\n{err}"
    assert res.returncode in allowed, context
    assert "Traceback" not in err and "\r" not in err, context
    if res.returncode == 2:
        lines = [ln for ln in err.splitlines() if not LOG_LINE.match(ln)]
        assert len(lines) == 1 and lines[0].startswith("mithril-build: error: "), context
        assert snapshot(*watch) == before, "exit 2 but files changed\n" + context
    TALLY[kind, "held"] += 1
    return res


@pytest.fixture(scope="module", autouse=True)
def report():
    start = time.monotonic()
    yield
    kinds = sorted({k for k, _ in TALLY})
    lines = [f"{k:<44} tried {TALLY[k, 'tried']:>5}  held {TALLY[k, 'held']:>5}" for k in kinds]
    total = sum(TALLY[k, "tried"] for k in kinds), sum(TALLY[k, "held"] for k in kinds)
    summary = "\n".join(lines + [f"{'total':<44} tried {total[0]:>5}  held {total[1]:>5}  "
                                 f"in {time.monotonic() - start:.1f} s"])
    print("\nrobustness cases:\n" + summary)
    if out := os.environ.get("MITHRIL_FUZZ_REPORT"):
        Path(out).write_text(summary + "\n")


# ---------------------------------------------------------------- mutations

def byte_mutations(original: bytes) -> st.SearchStrategy[bytes]:
    """Truncation, inserted or overwritten random bytes, random bytes alone, wrong encodings."""
    at = st.integers(0, max(len(original) - 1, 0))
    junk = st.binary(min_size=1, max_size=64)
    text = original.decode("utf-8", errors="ignore")
    return st.one_of(
        at.map(lambda i: original[:i]),
        st.tuples(at, junk).map(lambda t: original[:t[0]] + t[1] + original[t[0]:]),
        st.tuples(at, junk).map(lambda t: original[:t[0]] + t[1] + original[t[0] + len(t[1]):]),
        st.binary(max_size=512),
        st.tuples(at, st.sampled_from([b"\xff", b"\xe9", b"\xc3\x28", b"\xed\xa0\x80", b"\x00"]))
        .map(lambda t: original[:t[0]] + t[1] + original[t[0]:]),
        st.sampled_from(["utf-16", "utf-32", "latin-1"]).map(lambda enc: (text + "é").encode(enc, errors="replace")),
    )


HUGE = "x" * 200_000
HOSTILE = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False), st.just(float("inf")),
    st.text(max_size=20), st.just(HUGE), st.just("../../../../etc/passwd"), st.just("a\nb\x1b[31m"),
    st.just([]), st.just({}), st.just([[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]), st.just({"nested": {"x": [1, None]}}),
)


def leaves(doc, path=()) -> list[tuple]:
    out = [path] if path else []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += leaves(v, (*path, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:20]):
            out += leaves(v, (*path, i))
    return out


def _set(doc, path, value):
    import copy

    doc = copy.deepcopy(doc)
    target = doc
    for k in path[:-1]:
        target = target[k]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


_DELETE = object()


def doc_mutations(doc, dump) -> st.SearchStrategy[bytes]:
    """A structured document with one field replaced by a hostile value, deleted, or an extra key;
    plus raw tokens JSON/YAML dumpers cannot write (a 5000-digit number, deep nesting)."""
    paths = leaves(doc) or [()]
    changed = st.tuples(st.sampled_from(paths), st.one_of(HOSTILE, st.just(_DELETE))).map(
        lambda t: dump(_set(doc, t[0], t[1])) if t[0] else dump(t[1] if t[1] is not _DELETE else None))
    extra = st.text(min_size=1, max_size=8).map(
        lambda k: dump({**doc, f"x-{k}": 1}) if isinstance(doc, dict) else dump(doc))
    raw = st.sampled_from([b"9" * 5000, b"[" * 50_000, b"-1e999999", b'"\\ud800"', b"\xef\xbb\xbf{}"]).map(
        lambda tok: dump(doc).replace(b"1", tok, 1))
    return st.one_of(changed, changed, extra, raw)


def json_dump(doc) -> bytes:
    return json.dumps(doc).encode()


def yaml_dump(doc) -> bytes:
    return yaml.safe_dump(doc, sort_keys=False).encode()


def mutations(original: bytes, doc=None, dump=None) -> st.SearchStrategy[bytes]:
    base = byte_mutations(original)
    return base if doc is None else st.one_of(base, doc_mutations(doc, dump))


# ---------------------------------------------------------------- a project, its cache and out/

@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A starter project with a warm-looking cache and a published out/ (what must stay untouched)."""
    root = tmp_path_factory.mktemp("robust") / "p"
    assert cli("init", root, "--seed", SEED).returncode == 0
    key = "ab" * 32
    result = root / ".mithril/cache/stages/appdisk" / key
    result.mkdir(parents=True)
    (result / "application_disk.raw").write_bytes(b"disk")
    (result / "_record.json").write_text(json.dumps({"key": key, "outputs": {}}))
    (root / ".mithril/cache/tmp").mkdir()
    (root / ".mithril/cache/tmp/leftover").write_text("a killed run's")
    (root / "out/demo/records").mkdir(parents=True)
    (root / "out/demo/measurements.json").write_text("{}")
    assert cli("plan", "--unlocked", cwd=root).returncode == 0
    return root


def watched(root: Path) -> tuple[Path, ...]:
    return root / "out", root / ".mithril"


@contextlib.contextmanager
def restored(*paths: Path):
    """Whatever a case does to these files is undone after it (Hypothesis runs many cases per test)."""
    saved = {p: p.read_bytes() for p in paths}
    try:
        yield
    finally:
        for p, data in saved.items():
            p.write_bytes(data)


PROJECT_FILES = {
    "mithril.yaml": yaml.safe_load,
    "mithril.lock": yaml.safe_load,
    "mkosi/mkosi.conf.j2": None,
    "mkosi/repart.d/10-root.conf.j2": None,
    "appdisk/Caddyfile.j2": None,
    "appdisk/networkpolicies/default-deny.yaml.j2": None,
}
JINJA = st.sampled_from([
    "{{ 1/0 }}", "{% include 'missing.j2' %}", "{% import 'mkosi.conf.j2' as x %}{{ x.y }}",
    "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "{{ nope.x }}", "{{ ''.__class__.__mro__ }}",
    "{{ range(10**9)|list }}", "{% for %}", "{{ 'a' + 1 }}", "{{ os.extra_packages[99] }}", "{#", "{% raw %}",
    "{{ self._TemplateReference__context }}", "{% extends 'missing' %}", "{{ lipsum(10**6) }}",
])


@given(data=st.data())
@examples(60)
def test_project_files(project, data):
    """mithril.yaml, mithril.lock and templates: `plan` reads them all (and `appdisk` must refuse
    them the same way before anything is built, published or cached)."""
    rel = data.draw(st.sampled_from(sorted(PROJECT_FILES)))
    path = project / rel
    with restored(path):
        _project_file_case(project, rel, path, data)


def _project_file_case(project, rel, path, data):
    original = path.read_bytes()
    parse = PROJECT_FILES[rel]
    if parse is None:  # a template: hostile Jinja somewhere, or byte damage
        at = data.draw(st.integers(0, len(original)))
        text = original.decode()
        new = data.draw(st.one_of(JINJA.map(lambda j: (text[:at] + j + text[at:]).encode()), byte_mutations(original)))
    else:
        new = data.draw(mutations(original, parse(original), yaml_dump))
    path.write_bytes(new)
    res = check(rel, ["plan", "--unlocked"], (0, 2), watched(project), cwd=project)
    if res.returncode == 2:
        check(rel, ["all", "--unlocked"], (2,), watched(project), cwd=project)


def test_unknown_lock_version_is_refused(project):
    lock = project / "mithril.lock"
    with restored(lock):
        lock.write_text(lock.read_text() + "\nversion: 2\n")
        res = check("mithril.lock", ["plan"], (2,), watched(project), cwd=project)
    assert "unknown lock version 2" in res.stderr


# ---------------------------------------------------------------- image archives

def _image(tag: str = "1") -> bytes:
    data, _ = image_archive("localhost/app", tag, [Entry("bin", 0o755), Entry("bin/app", 0o755, b"#!/bin/sh\n")],
                            mtime=1704067200, exposed_ports=[8000], entrypoint=["/bin/app"])
    return data


def _members(archive: bytes) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tf:
        return [(m, tf.extractfile(m).read() if m.isfile() else None) for m in tf.getmembers()]


def _tar(members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for info, data in members:
            info = tarfile.TarInfo(info.name) if isinstance(info, str) else info
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _hostile_member(kind: str, name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = {"symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE, "device": tarfile.CHRTYPE,
                 "fifo": tarfile.FIFOTYPE, "dir": tarfile.DIRTYPE, "file": tarfile.REGTYPE}[kind]
    info.linkname = {"symlink": "/etc/passwd", "hardlink": "../../outside"}.get(kind, "")
    return info


def archive_mutations(archive: bytes) -> st.SearchStrategy[bytes]:
    members = _members(archive)
    names = [m.name for m, _ in members]
    json_members = [i for i, (m, d) in enumerate(members) if d is not None and d[:1] in (b"{", b"[")]
    hostile = st.tuples(st.sampled_from(["symlink", "hardlink", "device", "fifo", "dir", "file"]),
                        st.sampled_from(["/abs", "../up", "a/../../b", "blobs/sha256/" + "0" * 64, "x" * 300,
                                         *names])).map(
        lambda t: _tar([*members, (_hostile_member(*t), b"x" if t[0] == "file" else None)]))

    def doc_changed(i_doc):
        i, new = i_doc
        return _tar([(m, new if j == i else d) for j, (m, d) in enumerate(members)])
    docs = st.sampled_from(json_members).flatmap(
        lambda i: doc_mutations(json.loads(members[i][1]), json_dump).map(lambda new: (i, new))).map(doc_changed)
    dropped = st.integers(0, len(members) - 1).map(lambda i: _tar([m for j, m in enumerate(members) if j != i]))
    with_data = [i for i, (_, d) in enumerate(members) if d]
    flipped = st.tuples(st.sampled_from(with_data), st.binary(min_size=1, max_size=8)).map(
        lambda t: _tar([(m, (t[1] + d[len(t[1]):]) if j == t[0] else d) for j, (m, d) in enumerate(members)]))
    return st.one_of(byte_mutations(archive), hostile, docs, dropped, flipped)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cases")


@given(archive=archive_mutations(_image()))
@examples(40)
def test_image_archives_init(workdir, archive):
    """`init --image`: the archive is checked as an image before anything is written."""
    src = workdir / "app.tar"
    src.write_bytes(archive)
    dest = Path(tempfile.mkdtemp(dir=workdir)) / "p"
    res = check("image archive", ["init", dest, "--image", src, "--seed", SEED], (0, 2), (dest,))
    if res.returncode == 2:
        assert not dest.exists()
    shutil.rmtree(dest.parent)


@pytest.fixture(scope="module")
def image_project(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("img") / "app.tar"
    src.write_bytes(_image())
    root = src.parent / "p"
    assert cli("init", root, "--image", src, "--seed", SEED).returncode == 0
    return root


@given(archive=archive_mutations(_image()), repin=st.booleans())
@examples(25)
def test_image_archive_pinned_in_a_project(image_project, archive, repin):
    """An archive in the checkout that changed after it was pinned is refused, and one re-pinned
    (its new sha256 in the lock) must still be an image: both before anything is built."""
    root = image_project
    app, lock = root / "images/app.tar", root / "mithril.lock"
    saved = app.read_bytes(), lock.read_bytes()
    try:
        app.write_bytes(archive)
        if repin:
            old = hashlib.sha256(saved[0]).hexdigest()
            lock.write_text(lock.read_text().replace(old, hashlib.sha256(archive).hexdigest()))
        res = check("image archive", ["plan", "--unlocked"], (0, 2) if repin else (2,), watched(root), cwd=root)
        if res.returncode == 2:
            check("image archive", ["all", "--unlocked"], (2,), watched(root), cwd=root)
    finally:
        app.write_bytes(saved[0])
        lock.write_bytes(saved[1])


# ---------------------------------------------------------------- disks and VHDs

@pytest.fixture(scope="module")
def app_disk(tmp_path_factory) -> tuple[Path, str]:
    """A small GPT disk (sfdisk on a file) with a data partition and its dm-verity hash partition."""
    need("sfdisk")
    d = tmp_path_factory.mktemp("disk")
    blocks = 64
    data = bytes(range(256)) * 16 * blocks
    salt, vuuid = verity.salt_and_uuid(__import__("uuid").UUID(SEED))
    params = verity.Params(blocks, salt, vuuid, 4096, 4096)
    root, tree = verity.build_tree(io.BytesIO(data), 0, params)
    disk = d / "app.raw"
    disk.write_bytes(bytes(4 << 20))
    run(["sfdisk", "--no-reread", "--no-tell-kernel", "-q", disk],
        input=b"label: gpt\nstart=2048, size=1024, name=app\nstart=4096, size=1024, name=app-verity\n")
    with open(disk, "r+b") as f:
        f.seek(2048 * 512)
        f.write(data)
        f.seek(4096 * 512)
        f.write(tree)
    assert cli("verify-disk", disk, "--roothash", root.hex()).returncode == 0
    return disk, root.hex()


@given(data=st.data())
@examples(25)
def test_disks_verify(app_disk, workdir, data):
    disk, roothash = app_disk
    original = disk.read_bytes()
    at = data.draw(st.one_of(st.integers(0, 34 * 512), st.integers(4096 * 512, 4096 * 512 + 8192)))
    junk = data.draw(st.binary(min_size=1, max_size=32))
    new = data.draw(st.one_of(st.just(original[:at] + junk + original[at + len(junk):]),
                              st.integers(0, len(original)).map(lambda n: original[:n]), st.binary(max_size=4096)))
    case = workdir / "disk.raw"
    case.write_bytes(new)
    check("disk", ["verify-disk", case, "--roothash", roothash], (0, 1, 2))


@given(size=st.sampled_from([0, 1, 511, 4096]), epoch=st.one_of(st.integers(-(2**40), 2**40), st.just(VHD_EPOCH - 1),
                                                                 st.just(VHD_EPOCH + 2**32)),
       output=st.sampled_from(["ok", "same", "missing folder", "a folder", "below a file"]))
@examples(30)
def test_vhd_inputs(workdir, size, epoch, output):
    """`azure vhd`: the exit code follows from the inputs alone (an independent statement of the
    rules: a non-empty disk, a footer timestamp VHD can hold, an output that is not the input)."""
    case = Path(tempfile.mkdtemp(dir=workdir))
    disk = case / "d.raw"
    disk.write_bytes(b"\1" * size)
    (case / "folder").mkdir()
    (case / "file").write_text("")
    out = {"ok": case / "d.vhd", "same": disk, "missing folder": case / "nope/d.vhd", "a folder": case / "folder",
           "below a file": case / "file/d.vhd"}[output]
    valid = size > 0 and VHD_EPOCH <= epoch < VHD_EPOCH + 2**32 and output == "ok"
    res = check("vhd", ["azure", "vhd", disk, "-o", out, "--source-date-epoch", epoch], (0 if valid else 2,), (case,))
    if res.returncode == 0:
        assert (case / "d.vhd").stat().st_size == 1024 * 1024 + 512
    shutil.rmtree(case)


# ---------------------------------------------------------------- evidence, quotes, measurements, policies

@pytest.fixture(scope="module")
def attest_files(tmp_path_factory) -> dict:
    """Real evidence captured on an Azure CVM (tests/fixtures/azure/SOURCES.md) in our format,
    its quote files, and measurements.json listing its PCRs (the same as test_attest_azure_capture)."""
    from mithril_client import tpm2
    from tests.unit.test_attest_azure_capture import CA, tpm2b_public_rsa
    from tests.unit.test_azure_cvm import CAPTURES, FIXTURES, Capture

    cap = Capture("milan")
    raw = json.loads((FIXTURES / CAPTURES["milan"]).read_text())["tpm_quote"]["pcrs"]
    nonce = tpm2.parse_quote(cap.quote).extra_data.hex()
    pcrs = {str(i): v.lower() for i, v in enumerate(raw)}
    ak_pem = cap.ak.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    d = tmp_path_factory.mktemp("attest")
    files = {
        "evidence": json.dumps({
            "version": 1, "platform": "azure-cvm", "nonce": nonce, "quote": base64.b64encode(cap.quote).decode(),
            "signature": base64.b64encode(cap.signature).decode(), "pcrs": {"sha256": pcrs}, "ak_pub": ak_pem.decode(),
            "ak_public": base64.b64encode(tpm2b_public_rsa(cap.ak)).decode(), "tls_ca": CA,
            "hcl_report": base64.b64encode(cap.hcl).decode(), "vcek_chain": cap.chain().decode()}).encode(),
        "measurements": json.dumps({
            "version": 1, "platform": "azure-cvm", "mode": "production",
            "pcrs": {str(i): {"expected": [pcrs[str(i)]], "policy": "enforce"} for i in range(15)}}).encode(),
        "policy": json.dumps({"allow_debug": False, "vmpl": 0}).encode(),
        "quote": cap.quote, "signature": cap.signature, "ak": ak_pem,
        "pcrs": json.dumps({"sha256": pcrs}).encode(),
    }
    paths = {}
    for name, data in files.items():
        paths[name] = d / name
        paths[name].write_bytes(data)
    # every row verifies but `tls binding`: the capture's PCR 15 has no CA step (not a Mithril image)
    res = cli("attest", "verify", "--evidence", paths["evidence"], "--nonce", nonce, "--measurements",
              paths["measurements"], "--json")
    assert res.returncode == 1
    assert [r["check"] for r in json.loads(res.stdout)["rows"] if r["result"] != "ok"] == ["tls binding"]
    return Bundle(dir=d, nonce=nonce, paths=paths, data=files)


class Bundle(dict):
    def __repr__(self) -> str:  # keeps Hypothesis' reports short
        return f"<{', '.join(self)}>"


def _attest_args(p: dict, nonce: str, which: str) -> list:
    if which == "files":
        return ["attest", "verify", "--quote", p["quote"], "--signature", p["signature"], "--pcrs", p["pcrs"],
                "--ak-pub", p["ak"], "--nonce", nonce, "--measurements", p["measurements"]]
    return ["attest", "verify", "--evidence", p["evidence"], "--nonce", nonce, "--measurements", p["measurements"],
            "--snp-policy", p["policy"]]


@given(data=st.data())
@examples(60)
def test_attestation_inputs(attest_files, data):
    """Evidence documents, quote files, measurements.json and SNP policies: verified (0), refused
    (1) or bad input (2); a crash never reads as either verdict."""
    name = data.draw(st.sampled_from(["evidence", "measurements", "policy", "quote", "signature", "ak", "pcrs"]))
    original = attest_files["data"][name]
    structured = name in ("evidence", "measurements", "policy", "pcrs")
    new = data.draw(mutations(original, json.loads(original) if structured else None, json_dump))
    path = attest_files["paths"][name]
    path.write_bytes(new)
    try:
        which = "files" if name in ("quote", "signature", "ak", "pcrs") else "evidence"
        check(name, _attest_args(attest_files["paths"], attest_files["nonce"], which), (0, 1, 2))
    finally:
        path.write_bytes(original)


@given(nonce=st.one_of(st.text(max_size=80), st.binary(max_size=70).map(bytes.hex)))
@examples(15)
def test_nonces(attest_files, nonce):
    allowed = (1, 2) if nonce != attest_files["nonce"] else (1,)  # 1: the tls binding (see attest_files)
    check("nonce", _attest_args(attest_files["paths"], nonce, "evidence"), allowed)


# ---------------------------------------------------------------- GPU evidence (attest gpu)

GPU_FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "nvidia"


@pytest.fixture(scope="module")
def gpu_files(tmp_path_factory) -> dict:
    """NVIDIA's sample report (hex and binary), chain and two RIMs, in a folder of their own."""
    work = tmp_path_factory.mktemp("gpu")
    (work / "rims").mkdir()
    for name in ("Driver_RIM_test_no_gpu.swidtag", "1010_0200_882_96005E0001_PROD.swidtag"):
        (work / "rims" / name).write_bytes((GPU_FIXTURES / name).read_bytes())
    (work / "report.txt").write_bytes((GPU_FIXTURES / "hopperAttestationReport.txt").read_bytes())
    (work / "report.bin").write_bytes(bytes.fromhex((work / "report.txt").read_text().strip()))
    (work / "chain.pem").write_bytes((GPU_FIXTURES / "hopperCertChain.txt").read_bytes())
    paths = {"report-hex": work / "report.txt", "report-bin": work / "report.bin", "gpu-chain": work / "chain.pem",
             "rim": work / "rims" / "1010_0200_882_96005E0001_PROD.swidtag"}
    return {"work": work, "paths": paths, "data": {k: p.read_bytes() for k, p in paths.items()}}


@given(data=st.data())
@examples(40)
def test_gpu_evidence_inputs(gpu_files, data):
    """`attest gpu` on mutated reports (hex and binary), chains and RIMs: refused (1) or bad
    input (2); the sample never verifies fully (no RIM for its driver), and a crash never reads
    as a verdict."""
    name = data.draw(st.sampled_from(sorted(gpu_files["paths"])))
    path, original = gpu_files["paths"][name], gpu_files["data"][name]
    path.write_bytes(data.draw(mutations(original)))
    report = gpu_files["paths"]["report-bin" if name == "report-bin" else "report-hex"]
    try:
        check(name, ["attest", "gpu", "--report", report, "--cert-chain", gpu_files["paths"]["gpu-chain"],
                     "--nonce", "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb",
                     "--rims", gpu_files["work"] / "rims", "--at", "2024-06-01"], (1, 2))
    finally:
        path.write_bytes(original)


# ---------------------------------------------------------------- provenance, serial logs, inputs folders, compare

@pytest.fixture(scope="module")
def provenance_dir(tmp_path_factory) -> Path:
    from pipeline import provenance as prov

    d = tmp_path_factory.mktemp("prov")
    (d / "measurements.json").write_text("{}")
    subjects = [{"name": "measurements.json", "digest": {"sha256": hashlib.sha256(b"{}").hexdigest()}}]
    stmt = prov.statement(subjects, {"profile": "demo"}, {}, [{"name": "source", "digest": {"gitCommit": "a" * 40}}],
                          {"mithril-build": "0"})
    (d / prov.FILE).write_bytes(prov.canonical_line(stmt))
    return d


@given(data=st.data())
@examples(25)
def test_provenance(provenance_dir, data):
    from pipeline import provenance as prov

    path = provenance_dir / prov.FILE
    original = path.read_bytes()
    new = data.draw(mutations(original, json.loads(original), lambda d: json_dump(d) + b"\n"))
    path.write_bytes(new)
    try:
        check("provenance", ["provenance", "verify", path, "--allow-unsigned"], (0, 1, 2))
    finally:
        path.write_bytes(original)


def _serial() -> bytes:
    from tests.unit.test_record_platform import V, serial_log

    with tempfile.TemporaryDirectory() as d:
        return serial_log(Path(d) / "s.log", V).read_bytes()


@given(log=byte_mutations(_serial()))
@examples(15)
def test_serial_logs(project, workdir, log):
    case = workdir / "serial.log"
    case.write_bytes(log)
    with restored(project / "measurements/platforms/qemu.yaml"):
        check("serial log", ["record-platform", "--platform", "qemu", "--from-serial", case, "--project", project],
              (0, 2), watched(project))


@given(data=st.data())
@examples(10)
def test_quotes_for_record_platform(project, attest_files, data):
    """record-platform --from-quote: a quote and its PCR file (the values must match its digest)."""
    name = data.draw(st.sampled_from(["quote", "pcrs"]))
    original = attest_files["data"][name]
    path = attest_files["paths"][name]
    path.write_bytes(data.draw(mutations(original, json.loads(original) if name == "pcrs" else None, json_dump)))
    try:
        with restored(project / "measurements/platforms/qemu.yaml"):
            paths = attest_files["paths"]
            check("record quote", ["record-platform", "--platform", "qemu", "--from-quote", paths["quote"],
                                   "--pcrs", paths["pcrs"], "--project", project], (0, 2), watched(project))
    finally:
        path.write_bytes(original)


def _signing_key() -> bytes:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.from_private_bytes(bytes(range(32))).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


@given(key=byte_mutations(_signing_key()))
@examples(10)
def test_signing_keys(provenance_dir, workdir, key):
    from pipeline import provenance as prov

    pytest.importorskip("securesystemslib")
    case = Path(tempfile.mkdtemp(dir=workdir))
    (case / "key.pem").write_bytes(key)
    res = check("signing key", ["provenance", "sign", "--key", case / "key.pem", provenance_dir / prov.FILE,
                                "-o", case / "signed.jsonl"], (0, 2), (case,))
    assert "PRIVATE KEY" not in res.stderr and "BEGIN" not in res.stderr


@pytest.fixture(scope="module")
def os_disk(os_disk252, tmp_path_factory) -> tuple[Path, list[int]]:
    """A copy of the unit tests' OS disk (GPT, FAT ESP holding a UKI) and offsets worth damaging:
    GPT header and entries, the ESP's boot sector, the UKI's PE headers."""
    from pipeline.measure import gpt

    disk = tmp_path_factory.mktemp("osdisk") / "os_disk.raw"
    shutil.copyfile(os_disk252, disk)
    esp = gpt.read_table(disk).by_type(gpt.ESP_TYPE)[0].offset
    with open(disk, "rb") as f:
        f.seek(esp)
        uki = esp + f.read(8 << 20).find(b"MZ\x90\x00")
    return disk, [512, 1024, esp, uki, uki + 0x80]


@given(data=st.data())
@examples(10)
def test_os_disks_measure(os_disk, workdir, data):
    disk, spots = os_disk
    at = data.draw(st.sampled_from(spots)) + data.draw(st.integers(0, 511))
    junk = data.draw(st.binary(min_size=1, max_size=16))
    out = Path(tempfile.mkdtemp(dir=workdir))
    with open(disk, "r+b") as f:
        f.seek(at)
        saved = f.read(len(junk))
        f.seek(at)
        f.write(junk)
    try:
        check("os disk", ["measure-disk", disk, "--roothash", "ab" * 32, "-o", out], (0, 2), (out,))
    finally:
        with open(disk, "r+b") as f:
            f.seek(at)
            f.write(saved)
        shutil.rmtree(out)


@given(data=st.data())
@examples(15)
def test_inputs_folder_index(project, workdir, data):
    folder = workdir / "inputs"
    folder.mkdir(exist_ok=True)
    doc = {"version": 1, "profile": "demo", "inputs": {}}
    (folder / "index.json").write_bytes(data.draw(mutations(json_dump(doc), doc, json_dump)))
    check("inputs index", ["plan", "--inputs", folder], (0, 2), watched(project), cwd=project)


@given(data=st.data())
@examples(15)
def test_compare_output_folders(attest_files, workdir, data):
    a, b = workdir / "a", workdir / "b"
    for d in (a, b):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
        (d / "measurements.json").write_bytes(attest_files["data"]["measurements"])
        (d / "SHA256SUMS").write_text(f"{hashlib.sha256(attest_files['data']['measurements']).hexdigest()}  "
                                      "measurements.json\n")
    name = data.draw(st.sampled_from(["measurements.json", "SHA256SUMS"]))
    original = (b / name).read_bytes()
    doc = json.loads(original) if name.endswith(".json") else None
    (b / name).write_bytes(data.draw(mutations(original, doc, json_dump)))
    check("compare", ["compare", a, b], (0, 1, 2), (a,))


# ---------------------------------------------------------------- arguments and secrets

SECRET = "sv=2024-01-01&sp=rw&sig=Zm9vYmFyc2VjcmV0c2lnbmF0dXJlMTIzNDU2Nzg5MA%3D"


@given(command=st.sampled_from([
    ["azure", "vhd", "{p}", "-o", "x.vhd", "--source-date-epoch", "1704067200"],
    ["verify-disk", "{p}", "--roothash", "00"],
    ["attest", "verify", "--evidence", "{p}", "--nonce", "00" * 16, "--measurements", "{p}"],
    ["plan", "--project", "{p}"],
    ["plan", "--inputs", "{p}"],
    ["azure", "vhd", "{p}", "-o", "x.vhd", "--source-date-epoch", "{p}"],
    ["init", "--image", "{p}", "--port", "{p}"],
    ["measure-disk", "{p}", "--roothash", "{p}"],
]), where=st.sampled_from(["https://acct.blob.core.windows.net/c/d.vhd?{s}", "/nope/d.vhd?{s}", "{s}"]))
@examples(20)
def test_secrets_in_arguments_never_printed(workdir, command, where):
    """A SAS URL pasted where a path goes: usage errors, bad-input lines and crash reports carry
    no signature."""
    arg = where.format(s=SECRET)
    args = [a.format(p=arg) for a in command]
    res = check("secret argument", args, (1, 2), cwd=workdir)
    assert "Zm9vYmFyc2VjcmV0" not in res.stderr + res.stdout

