"""`compare` two output folders and `audit` a release by rebuilding it from its recorded commit.

compare: a digest table per artifact, a PCR-by-PCR comparison of measurements.json, and for a
differing disk the files that differ inside it (from the per-file manifests). audit: fetch or
read the release, clone the recorded commit into a temporary folder (the caller's working tree is
never touched), build it with --locked, and compare.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import urllib.parse
from pathlib import Path

from . import log
from . import provenance as prov
from .errors import BadInput, MithrilError, ToolFailed, VerificationFailed
from .files import sha256_file
from .inputs import download
from .run import run, which


def _digits(key) -> bool:
    return str(key).isascii() and str(key).isdigit()  # "²".isdigit() is True, int("²") raises


SUMS = "SHA256SUMS"
# Not artifacts: stage records (timings), logs, the deployment record, the sums file itself.
NOT_ARTIFACTS = {SUMS, "boot-serial.log", "deployment.json", prov.SIGNED_FILE}


class CouldNotBuild(MithrilError):
    """audit could not rebuild the release: exit 2."""

    exit_code = 2


def read_sums(path: Path) -> dict[str, str]:
    from .readers import read_text

    sums = {}
    for n, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        hexdigest, _, rel = line.partition("  ")
        rel = rel.lstrip("*")
        if len(hexdigest) != 64 or not prov._safe_relpath(rel):
            raise BadInput(str(path), f"line {n}: expected '<sha256>  <relative path>'")
        sums[rel] = hexdigest
    return sums


def artifacts(folder: Path) -> dict[str, str]:
    """{relpath: sha256} of every artifact in an output folder."""
    if not folder.is_dir():
        raise BadInput(str(folder), "not a folder", "pass an output folder such as out/demo")
    if not (folder / SUMS).is_file():
        raise BadInput(str(folder / SUMS), "not found: not a mithril-build output folder",
                       "pass out/<profile> of a finished build")
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if (p.is_file() and not p.is_symlink() and rel not in NOT_ARTIFACTS and not p.name.startswith(".")
                and not rel.startswith("records/")):
            out[rel] = sha256_file(p, progress=p.stat().st_size > (64 << 20))
    return out


def _load_json(path: Path) -> dict | None:
    from .readers import load_json

    if not path.exists():
        return None
    data = load_json(path)
    return data if isinstance(data, dict) else None


def compare_measurements(a: dict | None, b: dict | None) -> list[dict]:
    """PCR by PCR (expected values and policy), then roothash, platform and mode."""
    if a is None or b is None:
        return []
    rows = []
    pa, pb = (m.get("pcrs") if isinstance(m.get("pcrs"), dict) else {} for m in (a, b))
    for pcr in sorted(set(pa) | set(pb), key=lambda k: (not _digits(k), int(k) if _digits(k) else 0, str(k))):
        va, vb = pa.get(pcr), pb.get(pcr)
        rows.append({"item": f"PCR {pcr}", "a": va, "b": vb, "match": va == vb})
    for item, path in (("roothash", ("application_disk", "roothash")), ("platform", ("platform",)),
                       ("mode", ("mode",))):
        va, vb = a, b
        for k in path:
            va = va.get(k) if isinstance(va, dict) else None
            vb = vb.get(k) if isinstance(vb, dict) else None
        rows.append({"item": item, "a": va, "b": vb, "match": va == vb})
    return rows


def _manifest(record: dict, folder: Path) -> bool:
    """Whether appdisk.json has a per-file manifest; BadInput when it has a broken one."""
    files = record.get("files")
    if files is None:
        return False
    if not isinstance(files, list) or not all(isinstance(f, dict) and isinstance(f.get("path"), str) for f in files):
        raise BadInput(str(folder / "appdisk.json"), "files: expected a list of {path, mode, size, sha256|target}")
    return True


def compare_manifests(a: list[dict], b: list[dict]) -> list[dict]:
    """Files added, removed or changed between two per-file manifests ({path, mode, size, sha256|target})."""
    ma, mb = {f["path"]: f for f in a}, {f["path"]: f for f in b}
    rows = []
    for path in sorted(set(ma) | set(mb)):
        fa, fb = ma.get(path), mb.get(path)
        if fa == fb:
            continue
        change = "added in B" if fa is None else "removed in B" if fb is None else "changed"
        what = [k for k in ("sha256", "target", "size", "mode") if fa and fb and fa.get(k) != fb.get(k)]
        rows.append({"path": path, "change": change + (f" ({', '.join(what)})" if what else "")})
    return rows


def os_differences(a: Path, b: Path) -> list[str]:
    """What differs inside two OS disks / UKIs (GPT, ESP, squashfs root, UKI sections)."""
    from .diff import diff_disks, diff_ukis

    lines = []
    if (a / "os_disk.raw").is_file() and (b / "os_disk.raw").is_file():
        lines += diff_disks(a / "os_disk.raw", b / "os_disk.raw")
    if (a / "uki.efi").is_file() and (b / "uki.efi").is_file():
        lines += diff_ukis(a / "uki.efi", b / "uki.efi")
    return lines


def compare(a: Path, b: Path) -> dict:
    """Compare two output folders. `match` is True when every artifact is byte-identical."""
    da, db = artifacts(a), artifacts(b)
    rows = []
    for rel in sorted(set(da) | set(db)):
        ha, hb = da.get(rel), db.get(rel)
        status = "MATCH" if ha == hb else "ONLY A" if hb is None else "ONLY B" if ha is None else "DIFFER"
        rows.append({"artifact": rel, "a": ha, "b": hb, "status": status})
    differ = {r["artifact"] for r in rows if r["status"] != "MATCH"}
    report: dict = {"a": str(a), "b": str(b), "artifacts": rows,
                    "measurements": compare_measurements(_load_json(a / "measurements.json"),
                                                         _load_json(b / "measurements.json")),
                    "disk_files": {}, "os_differences": [], "corrupt": [], "notes": []}
    # Each folder should agree with its own SHA256SUMS; a folder that does not is corrupt.
    for side, folder, digests in (("A", a, da), ("B", b, db)):
        for rel, want in read_sums(folder / SUMS).items():
            if rel in digests and digests[rel] != want:
                report["corrupt"].append(f"{side}: {rel} does not match its {SUMS} entry")
    if differ & {"application_disk.raw", "appdisk.json"}:
        ja, jb = _load_json(a / "appdisk.json") or {}, _load_json(b / "appdisk.json") or {}
        if _manifest(ja, a) and _manifest(jb, b):
            report["disk_files"]["application_disk.raw"] = compare_manifests(ja["files"], jb["files"])
        else:
            report["notes"].append("appdisk.json has no per-file manifest on one side")
    if differ & {"os_disk.raw", "uki.efi"}:
        try:
            report["os_differences"] = os_differences(a, b)
        except (MithrilError, ValueError, OSError) as e:  # a diagnosis, not the verdict
            report["notes"].append(f"could not look inside the OS disks: {e}")
    both = sorted(d for d in differ if d in da and d in db)
    if both:
        if which("diffoscope"):
            report["notes"] += [f"for a byte-level explanation: diffoscope {a / d} {b / d}" for d in both[:3]]
        else:
            report["notes"].append("install diffoscope (apt-get install diffoscope) for a byte-level explanation")
    report["match"] = not differ and not report["corrupt"] and all(m["match"] for m in report["measurements"])
    return report


def format_report(report: dict, label_a: str = "A", label_b: str = "B") -> str:
    def short(h: str | None) -> str:
        return (h or "-")[:16]

    width = max([len(r["artifact"]) for r in report["artifacts"]] + [8])
    lines = [f"{'artifact':<{width}}  {label_a:<16}  {label_b:<16}  result"]
    for r in report["artifacts"]:
        lines.append(f"{r['artifact']:<{width}}  {short(r['a']):<16}  {short(r['b']):<16}  {r['status']}")
    if report["measurements"]:
        lines.append("")
        lines.append("measurements.json:")
        for m in report["measurements"]:
            lines.append(f"  {m['item']:<10} {'MATCH' if m['match'] else 'DIFFER'}")
            if not m["match"]:
                lines.append(f"    {label_a}: {json.dumps(m['a'], sort_keys=True)}")
                lines.append(f"    {label_b}: {json.dumps(m['b'], sort_keys=True)}")
    for disk, files in report["disk_files"].items():
        lines.append("")
        lines.append(f"files that differ inside {disk}: {len(files) or 'none (layout or metadata only)'}")
        lines.extend(f"  {f['change']:<24} {f['path']}" for f in files[:50])
        if len(files) > 50:
            lines.append(f"  … and {len(files) - 50} more (--json lists all)")
    if report["os_differences"]:
        lines.append("")
        lines.append("what differs inside the OS disk / UKI:")
        lines.extend(f"  {line}" for line in report["os_differences"][:60])
    if report["corrupt"] or report["notes"]:
        lines.append("")
        lines.extend(f"CORRUPT: {n}" for n in report["corrupt"])
        lines.extend(f"note: {n}" for n in report["notes"])
    lines.append("")
    lines.append("ALL MATCH" if report["match"] else "DIFFERENCES FOUND")
    return "\n".join(lines)


# --- audit ----------------------------------------------------------------------------------------

def fetch_release(url: str, dest: Path) -> Path:
    """Download SHA256SUMS and every file it lists from an HTTPS release URL, verifying each."""
    try:
        https = urllib.parse.urlsplit(url).scheme == "https"
    except ValueError:  # an unclosed [IPv6 literal
        https = False
    if not https:
        raise BadInput("--against", f"{url!r} is neither a folder nor an https:// URL")
    base = url.rstrip("/") + "/"
    download(base + SUMS, dest / SUMS, SUMS)
    for rel, want in read_sums(dest / SUMS).items():
        target = dest / rel
        download(base + urllib.parse.quote(rel), target, rel)
        if sha256_file(target) != want:
            raise VerificationFailed(f"{base}{rel}: sha256 does not match the release's {SUMS}")
    return dest


def _recorded_source(stmt: dict) -> tuple[str, str, dict]:
    bd = stmt["predicate"]["buildDefinition"]
    source = next((d for d in bd.get("resolvedDependencies", []) if d.get("name") == "source"), None)
    commit = (source or {}).get("digest", {}).get("gitCommit")
    if not commit:
        raise CouldNotBuild("the provenance records no git commit of the source: cannot rebuild it")
    if (source.get("annotations") or {}).get("dirty"):
        log.warn("the release was built from a tree with uncommitted changes: differences are expected")
    return commit, (source.get("annotations") or {}).get("subdir", ""), bd.get("externalParameters", {})


def audit(against: str, repo: Path, cache_dir: Path | None = None, keep: bool = False,
          inputs: Path | None = None) -> dict:
    """Rebuild the release `against` (folder or https URL) from `repo` and compare; with `inputs`
    (an export-inputs folder) every external input comes from there, offline."""
    work = Path(tempfile.mkdtemp(prefix="mithril-audit-"))
    try:
        if Path(against).is_dir():
            release = Path(against).resolve()
        else:
            with log.step("Fetching the release", "Fetched the release"):
                release = fetch_release(against, work / "release")
        prov_file = release / prov.FILE
        if not prov_file.is_file():
            raise BadInput(str(prov_file), "not found", "the release must include its provenance")
        commit, subdir, params = _recorded_source(prov.read_statement(prov_file))
        clone = work / "src"
        with log.step(f"Cloning commit {commit[:12]}", "Cloned the source"):
            try:
                top = run(["git", "-C", repo, "rev-parse", "--show-toplevel"]).text.strip()
                run(["git", "clone", "--quiet", "--no-checkout", top, clone])
                run(["git", "-C", clone, "checkout", "--quiet", "--detach", commit])
            except ToolFailed as e:
                raise CouldNotBuild(f"cannot check out {commit} from {repo}: {e}") from None
        project = clone / subdir if subdir else clone
        argv = [sys.executable, "-m", "pipeline", "all", "--project", project, "--locked",
                "--profile", params.get("profile", "")]
        if params.get("model"):
            argv += ["--model", params["model"]]
        argv += ["--cache-dir", cache_dir or work / "cache"]
        if inputs is not None:
            argv += ["--inputs", Path(inputs).resolve()]
        # Build with the recorded commit's own pipeline code when it has one.
        env = {"PYTHONPATH": str(clone)} if (clone / "pipeline").is_dir() else {}
        with log.step("Rebuilding from the lock (--locked)", "Rebuilt"):
            try:
                run(argv, cwd=clone, extra_env=env)
            except ToolFailed as e:
                raise CouldNotBuild(f"the rebuild failed: {e}") from None
        rebuilt = project / "out" / params.get("profile", "")
        report = compare(release, rebuilt)
        report["commit"] = commit
        report["work_dir"] = str(work) if keep else None
        return report
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
