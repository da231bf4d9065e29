"""pipeline/debian.py: version comparison against dpkg, index parsing, InRelease verification with
gpgv, and the resolver against the real index (properties) and apt (concrete closures).

Tests marked by the `debian_archive` fixture fetch the signed indices from deb.debian.org and
security.debian.org (reachable on the development machines and in CI)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from pipeline import debian, gpu, inputs
from pipeline import lock as lk
from pipeline.debian import Archive, Package, Relation, compare_versions, parse_relations, resolve
from pipeline.errors import BadInput
from pipeline.images import RECIPES
from pipeline.run import SYSTEM_PATH, run
from tests.conftest import REPO, need

# ---------------------------------------------------------------------------------------------
# Version comparison: dpkg --compare-versions is the reference.

_DPKG_LOOP = """while read -r a b; do
  dpkg --compare-versions "$a" lt "$b"; lt=$?
  dpkg --compare-versions "$a" eq "$b"; eq=$?
  if [ $lt = 2 ] || [ $eq = 2 ]; then echo "bad:$a:$b"
  elif [ $lt = 0 ]; then echo -1
  elif [ $eq = 0 ]; then echo 0
  else echo 1; fi
done"""


def dpkg_compare(pairs: list[tuple[str, str]]) -> list[int]:
    need("dpkg")
    text = "".join(f"{a} {b}\n" for a, b in pairs).encode()
    out = run(["sh", "-c", _DPKG_LOOP], input=text, extra_env={"PATH": SYSTEM_PATH}).text.split()
    assert len(out) == len(pairs) and not [x for x in out if x.startswith("bad:")]
    return [int(x) for x in out]


def _sign(n: int) -> int:
    return (n > 0) - (n < 0)


EDGE = [  # Policy 5.6.12's examples and the corners of the algorithm
    ("1.0~~", "1.0~~a"), ("1.0~~a", "1.0~"), ("1.0~", "1.0"), ("1.0", "1.0a"), ("1.0~rc1", "1.0"),
    ("1.0", "1.0-0"), ("1.0-1", "1.0-1.1"), ("1.0-1", "1.0-1~bpo1"), ("1.01", "1.1"), ("1.001", "1.0010"),
    ("1:1.0", "2.0"), ("0:1.0", "1.0"), ("2:0.1", "1:9.9"), ("1.2.3", "1.2.3.0"), ("1.2a", "1.2+"),
    ("1.2+", "1.2.0"), ("1.2-1", "1.2-0"), ("1.0+dfsg-1", "1.0-1"), ("1.0.dfsg", "1.0+dfsg"),
    ("3.0.22-1~deb12u2", "3.0.22-1"), ("1.2.3-1+b1", "1.2.3-1.1"), ("10", "9"), ("1a", "1A"),
    ("1-2-3", "1-2-4"), ("1:2:3", "1:2:4"), ("1.0~a~b", "1.0~a"), ("9999999999999999999", "10000000000000000000"),
    ("2.36-9+deb12u14", "2.36-9+deb12u9"), ("1.5.4+dfsg2-5", "1.5.4+dfsg-5"), ("0.0.0", "0"),
]


def test_edge_cases_agree_with_dpkg():
    ours = [_sign(compare_versions(a, b)) for a, b in EDGE]
    assert ours == dpkg_compare(EDGE)
    assert all(compare_versions(a, a) == 0 for a, _ in EDGE)


def test_real_versions_agree_with_dpkg(debian_archive):
    """Versions from the Packages index: every pair of versions of the same package, random pairs,
    and neighbours in our order of a large sample (dpkg agreeing on neighbours means it agrees
    with the whole sorted order, by transitivity)."""
    import functools

    rng = random.Random(5612)
    versions = sorted({p.version for cands in debian_archive.by_name.values() for p in cands})
    same = [(a.version, b.version) for cands in debian_archive.by_name.values() if len(cands) > 1
            for a, b in zip(cands, cands[1:])]
    pairs = same[:300] + [tuple(rng.sample(versions, 2)) for _ in range(300)]
    sample = sorted(rng.sample(versions, 700), key=functools.cmp_to_key(compare_versions))
    pairs += list(zip(sample, sample[1:]))
    ours = [_sign(compare_versions(a, b)) for a, b in pairs]
    assert ours == dpkg_compare(pairs)


# ---------------------------------------------------------------------------------------------
# Parsing

def test_relations():
    assert parse_relations("libc6 (>= 2.34), media-types | mime-support, python3:any, foo:i386, "
                           "bar (<< 2) [amd64] <!nocheck>, old (< 1)", "t") == [
        (Relation("libc6", ">=", "2.34"),), (Relation("media-types"), Relation("mime-support")),
        (Relation("python3"),), (Relation("bar", "<<", "2"),), (Relation("old", "<", "1"),)]
    assert Relation("x", ">=", "1.0").allows("1.0") and not Relation("x", ">=", "1.0").allows("1.0~rc1")
    assert not Relation("x", "=", "1").allows(None) and Relation("x").allows(None)  # unversioned Provides
    assert Relation("x", "<", "1.0").allows("1.0")  # obsolete "<" means "<="
    with pytest.raises(BadInput, match=r"t: cannot parse the relation 'libc6 \(>= \)'"):
        parse_relations("libc6 (>= )", "t")


INDEX = """Package: caddy
Version: 2.6.2-5
Installed-Size: 36036
Depends: libc6 (>= 2.34), media-types
Architecture: amd64
Description: powerful, enterprise-ready, open source web server
Filename: pool/main/c/caddy/caddy_2.6.2-5_amd64.deb
Size: 9326868
SHA256: 0000000000000000000000000000000000000000000000000000000000000001

Package: media-types
Version: 10.0.0
Architecture: all
Multi-Arch: foreign
Provides: mime-support,
 mime-types (= 10)
Filename: pool/main/m/media-types/media-types_10.0.0_all.deb
Size: 26136
SHA256: 0000000000000000000000000000000000000000000000000000000000000002
"""


def test_index_parsing():
    pkgs = list(debian.packages_from_index(INDEX, "http://deb.debian.org/debian", "bookworm"))
    assert [(p.name, p.version, p.architecture, p.size) for p in pkgs] == [
        ("caddy", "2.6.2-5", "amd64", 9326868), ("media-types", "10.0.0", "all", 26136)]
    assert pkgs[0].url == "http://deb.debian.org/debian/pool/main/c/caddy/caddy_2.6.2-5_amd64.deb"
    assert pkgs[1].relations("provides") == [(Relation("mime-support"),), (Relation("mime-types", "=", "10"),)]
    with pytest.raises(BadInput, match="bookworm Packages: stanza x: bad or missing field 'Version'"):
        list(debian.packages_from_index("Package: x\n", "u", "bookworm"))


def test_real_index_is_complete(debian_archive):
    caddy = debian_archive.by_name["caddy"][0]
    assert caddy.version.startswith("2.6.2") and caddy.url.endswith(".deb") and len(caddy.sha256) == 64
    assert len(debian_archive.by_name) > 60000
    # bookworm and bookworm-security both list libssl3: the security update is the newest.
    ssl = debian_archive.by_name["libssl3"]
    assert len({p.suite for p in ssl}) >= 2 and ssl[0].suite == "bookworm-security"


# ---------------------------------------------------------------------------------------------
# InRelease: gpgv with Debian's keyring is the trust root

@pytest.fixture(scope="module")
def inrelease(tmp_path_factory) -> Path:
    need("gpgv", debian.KEYRING)
    path = tmp_path_factory.mktemp("release") / "InRelease"
    inputs.download("http://security.debian.org/debian-security/dists/bookworm-security/InRelease", path, "InRelease")
    return path


def test_inrelease_verifies(inrelease):
    release = debian.verify_release(inrelease, "t", "bookworm-security")
    sha, size = debian.release_files(release)[debian.index_path("main")]
    assert len(sha) == 64 and size > 0


def test_tampered_inrelease_is_refused(inrelease, tmp_path):
    text = inrelease.read_text()
    sha, _ = debian.release_files(debian.verify_release(inrelease, "t", "bookworm-security"))[debian.index_path("main")]
    bad = tmp_path / "InRelease"
    bad.write_text(text.replace(sha, "0" * 64))
    with pytest.raises(BadInput, match=r"^x: the signature does not verify with /usr/share/keyrings/debian-archive"):
        debian.verify_release(bad, "x", "bookworm-security")


def test_text_outside_the_signature_is_ignored(inrelease, tmp_path):
    junk = tmp_path / "InRelease"
    junk.write_text(f"SHA256:\n {'0' * 64} 1 {debian.index_path('main')}\n\n" + inrelease.read_text())
    release = debian.verify_release(junk, "t", "bookworm-security")
    assert debian.release_files(release)[debian.index_path("main")][0] != "0" * 64


def test_wrong_suite_and_expired_release_are_refused(inrelease):
    with pytest.raises(BadInput, match="signed for suite 'bookworm-security', not 'bookworm'"):
        debian.verify_release(inrelease, "t", "bookworm")
    from datetime import datetime, timezone

    with pytest.raises(BadInput, match=r"expired on .* \(Valid-Until\)"):
        debian.verify_release(inrelease, "t", "bookworm-security", now=datetime(2999, 1, 1, tzinfo=timezone.utc))


def test_packages_index_must_match_the_signed_list(tmp_path, monkeypatch):
    """A Packages.xz that is not the one the verified InRelease lists is refused and not kept."""
    need("gpgv", debian.KEYRING)
    real = debian.download

    def swap(url, dest, what):
        real(url, dest, what)
        if "Packages" in what:
            dest.write_bytes(b"\xfd7zXZ\0 not the index")
    monkeypatch.setattr(debian, "download", swap)
    with pytest.raises(BadInput, match="by-hash/SHA256/.*: size or sha256 differs from the signed InRelease"):
        debian.fetch_index("http://security.debian.org/debian-security", "bookworm-security", tmp_path)
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------
# Resolver: rules on a small synthetic archive

def _pkg(name, version="1", depends="", provides="", suite="s", pre=""):
    return Package(name, version, "amd64", f"u/{name}_{version}.deb", 1, "0" * 64, suite, pre, depends, provides)


def _resolve(pkgs, roots, excludes=()):
    return resolve(Archive(pkgs), roots, excludes, "image t")


def test_resolver_rules():
    arch = [
        _pkg("app", depends="liba (>= 2) | libb, virt, any:any, tool", pre="base"),
        _pkg("liba", "1"), _pkg("liba", "2", suite="security"), _pkg("libb"),
        _pkg("base"), _pkg("prov", provides="virt (= 3)"), _pkg("any"), _pkg("tool", depends="dpkg"),
        _pkg("dpkg"),
    ]
    res = _resolve(arch, ["app"], ["dpkg"])
    assert {n: (p.version, p.suite) for n, p in res.packages.items()} == {
        "app": ("1", "s"), "base": ("1", "s"), "liba": ("2", "security"), "prov": ("1", "s"),
        "any": ("1", "s"), "tool": ("1", "s")}
    assert res.excluded == {"dpkg": ["tool"]}
    # an alternative whose versions cannot meet the constraint is passed over
    res = _resolve([_pkg("app", depends="liba (>= 3) | libb"), *arch[1:4]], ["app"])
    assert set(res.packages) == {"app", "libb"}


@pytest.mark.parametrize("pkgs,roots,msg", [
    ([_pkg("a", depends="nope")], ["a"], "image t: a 1 needs nope: nothing in the locked suites meets it"),
    ([_pkg("a")], ["b"], "image t: no package 'b' in the locked suites"),
    ([_pkg("a", depends="v"), _pkg("p1", provides="v"), _pkg("p2", provides="v")], ["a"],
     "image t: a needs the virtual package v, provided by p1, p2"),
    ([_pkg("a", depends="c (>= 2)"), _pkg("b", depends="c (<< 2)"), _pkg("c", "1"), _pkg("c", "2")], ["b", "a"],
     "image t: a 1 needs c \\(>= 2\\), but c 1 is already chosen"),
])
def test_resolver_errors(pkgs, roots, msg):
    with pytest.raises(BadInput, match=msg):
        _resolve(pkgs, roots)


# ---------------------------------------------------------------------------------------------
# Resolver against the real index

def _check_closed(archive: Archive, res: debian.Resolution, excludes) -> None:
    """Every Pre-Depends/Depends group of every chosen package is met inside the set or names an
    excluded package; no chosen package Conflicts with or Breaks another."""
    chosen = res.packages
    provided: dict[str, list] = {}
    for p in chosen.values():
        provided.setdefault(p.name, []).append(p.version)
        for (rel,) in p.relations("provides"):
            provided.setdefault(rel.name, []).append(rel.version)
    for p in chosen.values():
        for group in p.relations("pre_depends") + p.relations("depends"):
            ok = any(rel.allows(v) for rel in group for v in provided.get(rel.name, []))
            assert ok or any(rel.name in excludes for rel in group), f"{p.name}: {group} not met"
        for group in p.relations("conflicts") + p.relations("breaks"):
            for rel in group:
                other = chosen.get(rel.name)
                if other is not None and other.name != p.name:
                    assert not rel.allows(other.version), f"{p.name} conflicts with {other.name} {other.version}"


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipes_resolve_to_closed_sets(debian_archive, name):
    recipe = RECIPES[name]
    excludes = dict(recipe.excludes)
    res = resolve(debian_archive, recipe.packages, excludes, name)
    _check_closed(debian_archive, res, excludes)
    assert set(res.excluded) == set(excludes), "every exclusion is needed (else drop it and its comment)"
    assert set(recipe.packages) <= set(res.packages)


@pytest.mark.parametrize("roots", [["curl"], ["python3-yaml", "tpm2-tools"], ["openssh-client"], ["git"]])
def test_other_closures_are_closed(debian_archive, roots):
    _check_closed(debian_archive, resolve(debian_archive, roots, (), "t"), ())


@pytest.fixture(scope="module")
def apt_root(tmp_path_factory) -> Path:
    """A private apt configuration with the lock's suites and an empty dpkg status."""
    need("apt-get")
    root = tmp_path_factory.mktemp("apt")
    for d in ("etc/apt/sources.list.d", "etc/apt/apt.conf.d", "etc/apt/preferences.d", "var/lib/apt/lists/partial",
              "var/cache/apt/archives/partial", "var/lib/dpkg"):
        (root / d).mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text("")
    cfg = lk.load(REPO / "mithril.lock").debian
    (root / "etc/apt/sources.list.d/lock.sources").write_text("\n".join(
        f"Types: deb\nURIs: {debian.suite_url(cfg, s)}\nSuites: {s}\nComponents: main\nSigned-By: {debian.KEYRING}\n"
        for s in cfg["suites"]))
    run(["apt-get", *_apt_options(root), "-q", "update"], extra_env={"PATH": SYSTEM_PATH})
    return root


def _apt_options(root: Path) -> list[str]:
    return [f"-oDir={root}", f"-oDir::State::status={root}/var/lib/dpkg/status", "-oAPT::Architecture=amd64",
            "-oAPT::Architectures=amd64", "-oAcquire::Languages=none"]


@pytest.mark.parametrize("roots", [["caddy"], ["python3", "python3-cryptography"], ["curl"]])
def test_closure_matches_apt(debian_archive, apt_root, roots):
    """Without exclusions our closure is exactly what `apt-get --simulate --no-install-recommends
    install` would install on an empty system, versions included."""
    out = run(["apt-get", *_apt_options(apt_root), "--simulate", "--no-install-recommends", "install", *roots],
              extra_env={"PATH": SYSTEM_PATH}).text
    apt = {line.split()[1]: line.split()[2].strip("(") for line in out.splitlines() if line.startswith("Inst ")}
    ours = {n: p.version for n, p in resolve(debian_archive, roots, (), "t").packages.items()}
    assert ours == apt


# ---------------------------------------------------------------------------------------------
# The local repository a pinned OS build installs from: apt and dpkg-scanpackages are the references.

@pytest.fixture(scope="module")
def caddy_repo(tmp_path_factory):
    """A local repository of the caddy image's pinned .debs (fetched through the input store),
    with the components a GPU image's sources name (all but main empty): apt must accept it."""
    lock = lk.load(REPO / "mithril.lock")
    d = tmp_path_factory.mktemp("localrepo")
    store = inputs.InputStore(d / "store", lock, REPO)
    debs = {n: store.pinned(p.file(), f"debs.caddy.{n}") for n, p in lock.debs["caddy"].items()}
    return (debian.local_repository(debs, d / "repo", "bookworm", 1704067200, gpu.COMPONENTS),
            lock.debs["caddy"])


def test_apt_installs_exactly_the_pins_from_the_local_repository(caddy_repo, tmp_path):
    need("apt-get")
    repo, pins = caddy_repo
    root = tmp_path / "apt"
    for sub in ("etc/apt/sources.list.d", "etc/apt/apt.conf.d", "etc/apt/preferences.d", "var/lib/apt/lists/partial",
                "var/cache/apt/archives/partial", "var/lib/dpkg"):
        (root / sub).mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text("")
    (root / "etc/apt/sources.list.d/local.sources").write_text(
        f"Types: deb\nURIs: file://{repo}\nSuites: bookworm\nComponents: {' '.join(gpu.COMPONENTS)}\nTrusted: yes\n")
    run(["apt-get", *_apt_options(root), "-q", "update"], extra_env={"PATH": SYSTEM_PATH})
    # every pin but caddy (whose libnss3-tools the image leaves out): a closed set
    wanted = sorted(n for n in pins if n != "caddy")
    out = run(["apt-get", *_apt_options(root), "--simulate", "--no-install-recommends", "install", *wanted],
              extra_env={"PATH": SYSTEM_PATH}).text
    installed = {line.split()[1]: line.split()[2].strip("(") for line in out.splitlines() if line.startswith("Inst ")}
    assert installed == {n: pins[n].version for n in wanted}


def test_packages_index_agrees_with_dpkg_scanpackages(caddy_repo):
    need("dpkg-scanpackages")
    repo, _ = caddy_repo
    ours = {s["Package"]: s for s in debian.parse_stanzas((repo / "dists/bookworm/main/binary-amd64/Packages").read_text())}
    ref_text = run(["dpkg-scanpackages", "--multiversion", "pool"], cwd=repo, extra_env={"PATH": SYSTEM_PATH}).text
    ref = {s["Package"]: s for s in debian.parse_stanzas(ref_text)}
    assert set(ours) == set(ref)
    for name, stanza in ref.items():
        for field in ("Version", "Architecture", "Depends", "Pre-Depends", "Provides", "Filename", "Size", "SHA256"):
            assert ours[name].get(field) == stanza.get(field), (name, field)
