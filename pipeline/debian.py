"""Debian archive access: signed indices, version comparison, dependency resolution.

The amd64 indices (which also list the arch:all packages) of the components a caller names are
read: `main` for the images built here, and for a GPU profile's OS image also `contrib`,
`non-free` and `non-free-firmware` (where Debian keeps NVIDIA's driver). The trust root is `gpgv`
with Debian's archive keyring: InRelease is verified, every Packages index is checked against the
SHA256 list of the verified text, and every .deb against the index (the lock then keeps that
sha256, so builds need neither the index nor the signature).

Why not python-debian (issue 23, checked 2026-12-03 with python-debian 1.1.1, bench/bench_debian.py):
its `version_compare` agrees with ours on every neighbouring pair of bookworm's 21,389 versions
(and dpkg is the reference for both: tests/unit/test_debian.py), but without python3-apt's C
`apt_pkg`, which pip cannot install, its deb822 reader took 4.3x and its comparison 17x our time
on the 50 MB index. What it would replace is about 70 lines here; it would add a dependency to
mithril-build and make `lock` slower. So we keep these, tested against dpkg, apt and
dpkg-scanpackages.
"""

from __future__ import annotations

import email.utils
import functools
import hashlib
import lzma
import os
import re
import shutil
import tempfile
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from . import invocation, log
from .archive import deb_control
from .errors import BadInput
from .files import sha256_file
from .inputs import download
from .lock import LOCK_FILE
from .run import run

KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
ARCH = "amd64"
MAIN = ("main",)


def index_path(component: str) -> str:
    return f"{component}/binary-{ARCH}/Packages.xz"


# ---------------------------------------------------------------------------------------------
# Version comparison (Debian Policy 5.6.12)

_LETTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_DIGITS = frozenset("0123456789")


def _order(c: str) -> int:
    """Sort weight of one non-digit character: '~' before the end of the string, the end before
    letters, letters before everything else."""
    if c == "~":
        return -1
    if c == "":
        return 0
    return ord(c) if c in _LETTERS else ord(c) + 256


def _compare_part(a: str, b: str) -> int:
    """Compare upstream versions or revisions: alternating non-digit and digit runs."""
    i = j = 0
    while i < len(a) or j < len(b):
        while (i < len(a) and a[i] not in _DIGITS) or (j < len(b) and b[j] not in _DIGITS):
            ca = a[i] if i < len(a) and a[i] not in _DIGITS else ""
            cb = b[j] if j < len(b) and b[j] not in _DIGITS else ""
            if _order(ca) != _order(cb):
                return _order(ca) - _order(cb)
            i, j = i + (ca != ""), j + (cb != "")
        ni = i
        while ni < len(a) and a[ni] in _DIGITS:
            ni += 1
        nj = j
        while nj < len(b) and b[nj] in _DIGITS:
            nj += 1
        da, db = int(a[i:ni] or 0), int(b[j:nj] or 0)
        if da != db:
            return -1 if da < db else 1
        i, j = ni, nj
    return 0


def _split(version: str) -> tuple[int, str, str]:
    """(epoch, upstream, revision): the epoch ends at the first colon, the revision starts
    after the last hyphen."""
    epoch, _, rest = version.partition(":") if ":" in version else ("0", "", version)
    if not (epoch.isascii() and epoch.isdigit()):
        raise BadInput("version", f"{version!r}: the epoch is not a number")
    upstream, _, revision = rest.rpartition("-") if "-" in rest else (rest, "", "")
    return int(epoch), upstream, revision


def compare_versions(a: str, b: str) -> int:
    """<0, 0, >0 as version a is older than, equal to, newer than b."""
    ea, ua, ra = _split(a)
    eb, ub, rb = _split(b)
    if ea != eb:
        return -1 if ea < eb else 1
    return _compare_part(ua, ub) or _compare_part(ra, rb)


_OPS = {"<<": lambda c: c < 0, "<=": lambda c: c <= 0, "=": lambda c: c == 0,
        ">=": lambda c: c >= 0, ">>": lambda c: c > 0,
        "<": lambda c: c <= 0, ">": lambda c: c >= 0}  # obsolete forms of <= and >= (Policy 7.1)


# ---------------------------------------------------------------------------------------------
# Relations (Policy 7.1): "name[:arch] [(op version)]", alternatives split by "|"

@dataclass(frozen=True)
class Relation:
    name: str
    op: str | None = None
    version: str | None = None

    def allows(self, version: str | None) -> bool:
        """Whether a package (or a Provides) of `version` meets the constraint; an unversioned
        Provides (None) meets unversioned relations only."""
        if self.op is None:
            return True
        return version is not None and _OPS[self.op](compare_versions(version, self.version))

    def __str__(self) -> str:
        return self.name + (f" ({self.op} {self.version})" if self.op else "")


_RELATION = re.compile(r"^([a-z0-9][a-z0-9+.\-]*)(?::([a-z0-9\-]+))?\s*"
                       r"(?:\(\s*(<<|<=|>=|>>|=|<|>)\s*([0-9][^\s)]*)\s*\))?\s*(?:\[[^\]]*\])?\s*(?:<[^>]*>\s*)*$")


def parse_relations(text: str, where: str) -> list[tuple[Relation, ...]]:
    """A Depends-style field as a list of alternative groups. An architecture qualifier other
    than :any / :native / :amd64 cannot be met by a single-architecture image and is dropped."""
    groups = []
    for group in filter(None, (g.strip() for g in text.split(","))):
        alts = []
        for alt in group.split("|"):
            m = _RELATION.match(alt.strip())
            if not m:
                raise BadInput(where, f"cannot parse the relation {alt.strip()!r}")
            name, arch, op, version = m.groups()
            if arch in (None, "any", "native", ARCH):
                alts.append(Relation(name, op, version))
        if alts:
            groups.append(tuple(alts))
    return groups


# ---------------------------------------------------------------------------------------------
# Index files

def parse_stanzas(text: str) -> Iterator[dict[str, str]]:
    """deb822 paragraphs as {field: value}; continuation lines are joined with newlines."""
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = None
        for line in block.split("\n"):
            if line[:1] in (" ", "\t"):
                if key is not None:
                    fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields:
            yield fields


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    architecture: str
    url: str
    size: int
    sha256: str
    suite: str
    pre_depends: str = ""
    depends: str = ""
    provides: str = ""
    conflicts: str = ""
    breaks: str = ""

    def relations(self, field: str) -> list[tuple[Relation, ...]]:
        return parse_relations(getattr(self, field), f"{self.suite} {self.name} {self.version} {field}")

    def pin(self) -> dict:
        """The lock entry: what a build needs to fetch and check the .deb."""
        return {"version": self.version, "sha256": self.sha256, "size": self.size, "url": self.url}


def packages_from_index(text: str, base_url: str, suite: str) -> Iterator[Package]:
    for s in parse_stanzas(text):
        try:
            yield Package(s["Package"], s["Version"], s["Architecture"], f"{base_url}/{s['Filename']}",
                          int(s["Size"]), s["SHA256"], suite, s.get("Pre-Depends", ""), s.get("Depends", ""),
                          s.get("Provides", ""), s.get("Conflicts", ""), s.get("Breaks", ""))
        except (KeyError, ValueError) as e:
            raise BadInput(f"{suite} Packages", f"stanza {s.get('Package', '?')}: bad or missing field {e}") from None


def verify_release(inrelease: Path, where: str, suite: str, now: datetime | None = None) -> dict[str, str]:
    """gpgv-verify an InRelease file; return the fields of the signed text only (never of the
    text around the signature)."""
    with tempfile.TemporaryDirectory() as tmp:
        signed = Path(tmp) / "Release"
        res = run(["gpgv", "--keyring", KEYRING, "--output", signed, inrelease], ok=range(256))
        if res.returncode != 0:
            raise BadInput(where, f"the signature does not verify with {KEYRING}",
                           "the file was altered on the way or the keyring is outdated (package debian-archive-keyring)")
        release = next(parse_stanzas(signed.read_text()), {})
    if suite not in (release.get("Codename"), release.get("Suite")):
        raise BadInput(where, f"signed for suite {release.get('Codename')!r}, not {suite!r}")
    if "Valid-Until" in release:  # an expired Release is a replay of old (vulnerable) metadata
        until = email.utils.parsedate_to_datetime(release["Valid-Until"])
        if until < (now or datetime.now(timezone.utc)):
            raise BadInput(where, f"expired on {release['Valid-Until']} (Valid-Until)", "the mirror is stale")
    return release


def release_files(release: Mapping[str, str]) -> dict[str, tuple[str, int]]:
    """{path: (sha256, size)} from a Release's SHA256 field."""
    files = {}
    for line in release.get("SHA256", "").splitlines():
        parts = line.split()
        if len(parts) == 3:
            files[parts[2]] = (parts[0], int(parts[1]))
    return files


def suite_url(debian: Mapping, suite: str) -> str:
    """The archive a suite lives in: -security suites on `security`, the others on `mirror`."""
    key = "security" if suite.endswith("-security") else "mirror"
    url = debian.get(key)
    if not isinstance(url, str) or not url:
        raise BadInput(LOCK_FILE, f"debian.{key}: missing (needed for suite {suite})")
    return url.rstrip("/")


def fetch_index(base: str, suite: str, cache: Path, components: Iterable[str] = MAIN) -> str:
    """The verified Packages text of one suite's components (joined); each .xz is kept under
    cache, keyed by its sha256. InRelease is fetched and verified once for all of them."""
    dists = f"{base}/dists/{suite}"
    with tempfile.TemporaryDirectory() as tmp:
        inrelease = Path(tmp) / "InRelease"
        download(f"{dists}/InRelease", inrelease, f"{suite} InRelease")
        release = verify_release(inrelease, f"{dists}/InRelease", suite)
    files = release_files(release)
    texts = []
    for component in components:
        index = index_path(component)
        if index not in files:
            raise BadInput(f"{dists}/InRelease", f"lists no {index}")
        sha, size = files[index]
        path = cache / f"{sha}.Packages.xz"
        if not path.exists() or sha256_file(path) != sha:  # re-hashed on every use
            # by-hash names never change meaning, so a mirror update between the two fetches is harmless.
            by_hash = release.get("Acquire-By-Hash") == "yes"
            url = f"{dists}/{component}/binary-{ARCH}/by-hash/SHA256/{sha}" if by_hash else f"{dists}/{index}"
            part = cache / f".{sha}.part"
            download(url, part, f"{suite} {component} Packages.xz")
            if part.stat().st_size != size or sha256_file(part) != sha:
                part.unlink()
                raise BadInput(url, f"size or sha256 differs from the signed InRelease ({size} bytes, {sha})",
                               "the mirror is mid-update or altered the file; retry later or use another mirror")
            os.replace(part, path)
        texts.append(lzma.decompress(path.read_bytes()).decode().rstrip("\n"))
    return "\n\n".join(texts) + "\n"


# ---------------------------------------------------------------------------------------------
# The merged index and the resolver

class Archive:
    """The packages of several suites: newest-first candidates per name, providers per name."""

    def __init__(self, packages: Iterable[Package]):
        seen: dict[tuple[str, str], Package] = {}
        for p in packages:
            seen.setdefault((p.name, p.version), p)  # same version in two suites: the first one listed
        key = functools.cmp_to_key(lambda a, b: compare_versions(b.version, a.version))
        self.by_name: dict[str, list[Package]] = {}
        self.providers: dict[str, list[tuple[Package, str | None]]] = {}
        for p in seen.values():
            self.by_name.setdefault(p.name, []).append(p)
            for (rel,) in (g for g in p.relations("provides") if len(g) == 1):
                self.providers.setdefault(rel.name, []).append((p, rel.version))
        for cands in self.by_name.values():
            cands.sort(key=key)
        for provs in self.providers.values():  # by provider name, then newest first
            provs.sort(key=lambda pv: (pv[0].name, key(pv[0])))

    def candidates(self, rel: Relation) -> list[Package]:
        """Real packages called rel.name that meet it (newest first), else the providers that do."""
        real = [p for p in self.by_name.get(rel.name, []) if rel.allows(p.version)]
        return real or [p for p, v in self.providers.get(rel.name, []) if rel.allows(v)]


@invocation.once
def _archive(debian: tuple, cache: Path, components: tuple[str, ...]) -> Archive:
    cfg = dict(debian)
    cache.mkdir(parents=True, exist_ok=True)
    packages: list[Package] = []
    with log.step(f"Reading the Debian indices ({', '.join(cfg['suites'])}: {', '.join(components)})",
                  "Read the Debian indices"):
        for suite in cfg["suites"]:
            base = suite_url(cfg, suite)
            packages.extend(packages_from_index(fetch_index(base, suite, cache, components), base, suite))
    return Archive(packages)


def archive(debian: Mapping, cache: Path, components: Iterable[str] = MAIN) -> Archive:
    """The verified, merged index of the lock's `debian:` suites, the given components of each
    (once per command)."""
    suites = debian.get("suites")
    if not isinstance(suites, list) or not suites:
        raise BadInput(LOCK_FILE, "debian.suites: missing", "list the suites, e.g. [bookworm, bookworm-security]")
    return _archive(tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in debian.items())), cache,
                    tuple(components))


@dataclass(frozen=True)
class Resolution:
    packages: dict[str, Package]  # name -> the chosen version
    excluded: dict[str, list[str]]  # excluded name -> the packages whose dependencies named it


def resolve(arch: Archive, roots: Iterable[str], excludes: Iterable[str], where: str) -> Resolution:
    """The closure of Pre-Depends + Depends of `roots`, newest versions first. A dependency
    group that one chosen package already meets is met; one that names an excluded package is
    dropped; otherwise its first alternative that some package meets is chosen (a virtual name
    with several providers must be decided by the recipe). Breadth-first in the given order, so
    the result is deterministic."""
    excludes = set(excludes)
    chosen: dict[str, Package] = {}
    provided: dict[str, list[str | None]] = {}
    excluded: dict[str, list[str]] = {}
    queue: deque[Package] = deque()

    def add(p: Package) -> None:
        chosen[p.name] = p
        provided.setdefault(p.name, []).append(p.version)
        for (rel,) in (g for g in p.relations("provides") if len(g) == 1):
            provided.setdefault(rel.name, []).append(rel.version)
        queue.append(p)

    def met(rel: Relation) -> bool:  # by a chosen package of that name or a Provides of one
        return any(rel.allows(v) for v in provided.get(rel.name, []))

    for name in roots:
        if name in excludes:
            raise BadInput(where, f"{name} is both a package and an exclusion of the image")
        if name not in arch.by_name:
            raise BadInput(where, f"no package {name!r} in the locked suites", "check the name (amd64, main)")
        if name not in chosen:
            add(arch.by_name[name][0])
    while queue:
        pkg = queue.popleft()
        for group in pkg.relations("pre_depends") + pkg.relations("depends"):
            if any(met(rel) for rel in group):
                continue
            dropped = [rel.name for rel in group if rel.name in excludes]
            if dropped:
                for name in dropped:
                    excluded.setdefault(name, []).append(pkg.name)
                continue
            text = " | ".join(map(str, group))
            for rel in group:
                cands = [p for p in arch.candidates(rel) if p.name not in excludes]
                if not cands:
                    continue
                names = sorted({p.name for p in cands})
                if len(names) > 1:  # only providers of a virtual name can differ in name
                    raise BadInput(where, f"{pkg.name} needs the virtual package {rel.name}, provided by "
                                          f"{', '.join(names)}", "add one of them to the image's packages")
                if cands[0].name in chosen:
                    raise BadInput(where, f"{pkg.name} {pkg.version} needs {text}, but {cands[0].name} "
                                          f"{chosen[cands[0].name].version} is already chosen")
                add(cands[0])
                break
            else:
                raise BadInput(where, f"{pkg.name} {pkg.version} needs {text}: nothing in the locked suites meets it")
    return Resolution(dict(sorted(chosen.items())), {k: sorted(set(v)) for k, v in sorted(excluded.items())})


# ---------------------------------------------------------------------------------------------
# Pinned builds: what an online build downloaded, and a local repository of exactly the pins

def pins_from_debs(debs: Iterable[Path], arch: Archive, where: str) -> dict[str, dict]:
    """Lock entries for .debs an online build downloaded, each checked against the signed index
    (the same name, version and sha256 must be listed there: that is where its URL comes from)."""
    pins = {}
    for deb in sorted(debs):
        fields = next(parse_stanzas(deb_control(deb)), {})
        name, version = fields.get("Package", ""), fields.get("Version", "")
        listed = next((p for p in arch.by_name.get(name, []) if p.version == version), None)
        digest = sha256_file(deb)
        if listed is None or listed.sha256 != digest:
            raise BadInput(where, f"{deb.name}: {name} {version} with sha256 {digest[:16]}… is not in the signed "
                                  "indices of the locked suites", "the mirror changed during the build; retry")
        pins[name] = listed.pin()
    return dict(sorted(pins.items()))


def local_repository(debs: Mapping[str, Path], dest: Path, suite: str, source_date_epoch: int,
                     components: Iterable[str] = MAIN) -> Path:
    """A plain APT repository in dest holding exactly these .debs (name -> file): pool/ with
    the files, dists/<suite>/main/binary-amd64/Packages from their control files (the other
    components the image's sources name get empty indices), and a Release listing them. Unsigned:
    apt trusts it because every .deb was checked against the lock."""
    pool = dest / "pool"
    index = dest / "dists" / suite / "main" / f"binary-{ARCH}"
    pool.mkdir(parents=True)
    index.mkdir(parents=True)
    stanzas = []
    for name, src in sorted(debs.items()):
        target = pool / src.name if src.name.endswith(".deb") else pool / f"{name}.deb"
        try:
            os.link(src, target)
        except OSError:
            shutil.copyfile(src, target)
        control = deb_control(target).rstrip("\n")
        stanzas.append(f"{control}\nFilename: pool/{target.name}\nSize: {target.stat().st_size}\n"
                       f"SHA256: {sha256_file(target)}\n")
    packages = "\n".join(stanzas).encode()
    (index / "Packages").write_bytes(packages)
    components = ["main", *(c for c in components if c != "main")]
    listed = []
    for component in components:
        data = packages if component == "main" else b""
        if component != "main":
            (dest / "dists" / suite / component / f"binary-{ARCH}").mkdir(parents=True)
            (dest / "dists" / suite / component / f"binary-{ARCH}" / "Packages").write_bytes(data)
        listed.append(f" {hashlib.sha256(data).hexdigest()} {len(data)} {component}/binary-{ARCH}/Packages\n")
    date = email.utils.format_datetime(datetime.fromtimestamp(source_date_epoch, timezone.utc), usegmt=True)
    (dest / "dists" / suite / "Release").write_text(
        f"Origin: mithril-build\nLabel: pinned packages\nSuite: {suite}\nCodename: {suite}\nDate: {date}\n"
        f"Architectures: {ARCH}\nComponents: {' '.join(components)}\nSHA256:\n" + "".join(listed))
    return dest
