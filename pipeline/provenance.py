"""SLSA v1 provenance: build the in-toto Statement, validate it, sign and verify DSSE envelopes.

The statement is written as one canonical JSON line (sorted keys, no spaces) so that identical
builds give identical bytes: no timestamps, host names or absolute paths go into it.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from .errors import BadInput, ToolFailed, VerificationFailed
from .files import atomic_write, canonical, sha256_file

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
# Where docs/buildtype-v1.md is published; buildType must be a URI that names that document.
REPOSITORY_URL = "https://github.com/mithril-security/mithril-build"
BUILD_TYPE = f"{REPOSITORY_URL}/blob/main/docs/buildtype-v1.md"
BUILDER_ID = f"{REPOSITORY_URL}/builder/mithril-build@v1"
FILE = "provenance.intoto.jsonl"
SIGNED_FILE = "provenance.intoto.dsse.jsonl"
KEY_PASSWORD_ENV = "MITHRIL_SIGNING_KEY_PASSWORD"


def canonical_line(obj: dict) -> bytes:
    return canonical(obj) + b"\n"


def subjects_from_outputs(outputs: dict[str, str]) -> list[dict]:
    """Subjects from stage records' {relpath: sha256[+x]} (symlinks have no content digest)."""
    subjects = []
    for rel, dig in sorted(outputs.items()):
        if dig.startswith("symlink:"):
            continue
        subjects.append({"name": rel, "digest": {"sha256": dig.removesuffix("+x")}})
    return subjects


def statement(subjects: list[dict], external: dict, internal: dict, dependencies: list[dict],
              builder_version: dict) -> dict:
    stmt = {
        "_type": STATEMENT_TYPE,
        "subject": subjects,
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": external,
                "internalParameters": internal,
                "resolvedDependencies": dependencies,
            },
            "runDetails": {"builder": {"id": BUILDER_ID, "version": builder_version}},
        },
    }
    validate(stmt)
    return stmt


def _missing(e: ImportError) -> ToolFailed:
    return ToolFailed(f"{e.name} is not installed: pip install 'mithril-build[provenance]'")


def validate(stmt: dict) -> None:
    """Check the statement against the in-toto v1 and SLSA provenance v1 protos; raise ValueError."""
    try:
        from google.protobuf import json_format
        from in_toto_attestation.predicates.provenance.v1 import provenance_pb2
        from in_toto_attestation.v1 import statement_pb2
        from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
        from in_toto_attestation.v1.statement import Statement
    except ImportError as e:
        raise _missing(e) from None

    if not isinstance(stmt, dict):
        raise ValueError("the statement is not a JSON object")  # noqa: TRY004 (callers expect ValueError)
    try:
        pb = json_format.ParseDict(stmt, statement_pb2.Statement())
        Statement.copy_from_pb(pb).validate()
        if pb.predicate_type != PREDICATE_TYPE:
            raise ValueError(f"predicateType is {pb.predicate_type!r}, expected {PREDICATE_TYPE}")
        prov = json_format.ParseDict(stmt["predicate"], provenance_pb2.Provenance())
    except json_format.ParseError as e:
        raise ValueError(str(e)) from None
    bd = prov.build_definition
    if not bd.build_type:
        raise ValueError("predicate.buildDefinition.buildType is required")
    if not prov.HasField("build_definition") or not bd.HasField("external_parameters"):
        raise ValueError("predicate.buildDefinition.externalParameters is required")
    if not prov.run_details.builder.id:
        raise ValueError("predicate.runDetails.builder.id is required")
    for i, dep in enumerate(bd.resolved_dependencies):
        try:
            ResourceDescriptor.copy_from_pb(dep).validate()
        except ValueError as e:
            raise ValueError(f"resolvedDependencies[{i}]: {e}") from None
    for s in stmt["subject"]:
        if not _safe_relpath(s.get("name", "")):
            raise ValueError(f"subject name {s.get('name')!r} is not a relative path inside the output folder")


def _safe_relpath(name: str) -> bool:
    p = Path(name)
    return bool(name) and not p.is_absolute() and ".." not in p.parts


# --- signing -------------------------------------------------------------------------------------

def _load_private_key(path: Path):
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        from securesystemslib.signer import CryptoSigner
    except ImportError as e:
        raise _missing(e) from None

    try:
        data = path.read_bytes()
    except OSError as e:
        raise BadInput(str(path), f"cannot read the key: {e.strerror}") from None
    password = os.environ.get(KEY_PASSWORD_ENV)
    try:
        key = load_pem_private_key(data, password.encode() if password else None)
        return CryptoSigner(key)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:  # never echo the key material itself
        raise BadInput(str(path), f"not a usable PEM private key ({type(e).__name__})",
                       f"use an unencrypted ed25519/ecdsa/rsa PEM key, or set ${KEY_PASSWORD_ENV}") from None


def load_public_key(path: Path):
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        from securesystemslib.signer import SSlibKey
    except ImportError as e:
        raise _missing(e) from None

    try:
        return SSlibKey.from_crypto(load_pem_public_key(path.read_bytes()))
    except OSError as e:
        raise BadInput(str(path), f"cannot read the key: {e.strerror}") from None
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise BadInput(str(path), f"not a usable PEM public key ({type(e).__name__})",
                       "pass the public half: openssl pkey -in key.pem -pubout") from None


def _dsse():
    try:
        from securesystemslib.dsse import Envelope
        from securesystemslib.exceptions import VerificationError
    except ImportError as e:
        raise _missing(e) from None
    return Envelope, VerificationError


def _read_lines(path: Path) -> list[dict]:
    from .readers import parse_json, read_text

    out = []
    for n, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        obj = parse_json(line, f"{path}: line {n}")
        if not isinstance(obj, dict):
            raise BadInput(str(path), f"line {n}: not a JSON object")
        out.append(obj)
    if not out:
        raise BadInput(str(path), "empty: no statement in the file")
    return out


def sign_file(path: Path, key: Path, output: Path | None = None) -> Path:
    """Wrap every statement of `path` in a DSSE envelope signed with `key`; one envelope a line."""
    Envelope, _ = _dsse()
    signer = _load_private_key(key)
    lines = []
    for n, stmt in enumerate(_read_lines(path), 1):
        if "payloadType" in stmt:
            raise BadInput(str(path), f"line {n}: already a DSSE envelope", "sign the unsigned statement file")
        try:
            validate(stmt)
        except ValueError as e:
            raise BadInput(str(path), f"line {n}: not a valid SLSA v1 statement: {e}") from None
        env = Envelope(canonical_line(stmt).rstrip(b"\n"), PAYLOAD_TYPE, {})
        env.sign(signer)
        lines.append(canonical_line(env.to_dict()))
    output = output or path.with_name(SIGNED_FILE)
    atomic_write(output, b"".join(lines))
    return output


REQUIRED_SUBJECTS = ("measurements.json",)  # what clients verify against must be attested too


def verify_file(path: Path, public_key: Path | None = None, out_dir: Path | None = None,
                allow_unsigned: bool = False) -> dict:
    """Check the signature, statement and predicate types, and every subject's sha256 against the
    files in out_dir (default: the file's folder). Without a key nothing vouches for the file, so
    it is a problem unless `allow_unsigned` (then only the digests are checked). Returns a report
    whose `problems` list is empty when everything holds."""
    Envelope, VerificationError = _dsse()
    key = load_public_key(public_key) if public_key else None
    out_dir = out_dir or path.parent
    problems: list[str] = []
    signature = "absent"
    subjects: list[dict] = []
    for n, obj in enumerate(_read_lines(path), 1):
        if "payloadType" in obj:
            try:
                env = Envelope.from_dict(obj)
            except (KeyError, TypeError, ValueError):
                problems.append(f"line {n}: malformed DSSE envelope")
                continue
            if env.payload_type != PAYLOAD_TYPE:
                problems.append(f"line {n}: payloadType is {env.payload_type!r}, expected {PAYLOAD_TYPE}")
                continue
            if key is None:
                signature = "NOT CHECKED (no --key)"
            else:
                try:
                    env.verify([key], 1)
                    signature = "verified"
                except VerificationError:
                    problems.append(f"line {n}: the signature does not verify with {public_key.name}")
                    signature = "INVALID"
                    continue
            try:
                stmt = json.loads(env.payload)
            except (ValueError, RecursionError):
                problems.append(f"line {n}: the envelope payload is not JSON")
                continue
        else:
            if key is not None:
                problems.append(f"line {n}: not signed (a plain statement, but --key was given)")
            stmt = obj
        try:
            validate(stmt)
        except ValueError as e:
            problems.append(f"line {n}: {e}")
            continue
        for s in stmt["subject"]:
            want = s["digest"].get("sha256")
            f = out_dir / s["name"]
            got = sha256_file(f) if f.is_file() else None
            ok = want is not None and got == want
            subjects.append({"name": s["name"], "expected": want, "actual": got, "ok": ok})
            if not ok:
                problems.append(f"subject {s['name']}: " + ("missing in " + str(out_dir) if got is None
                                                           else f"sha256 {got} != {want}"))
    if key is None and not allow_unsigned:
        problems.append("no --key: the signature is not checked (pass --key, or --allow-unsigned to check the "
                        "digests only)")
    names = {s["name"] for s in subjects}
    problems += [f"{n} is not a subject of the provenance" for n in REQUIRED_SUBJECTS if n not in names]
    return {"file": str(path), "signature": signature, "subjects": subjects, "problems": problems,
            "ok": not problems}


def read_statement(path: Path) -> dict:
    """The first statement in a provenance file (plain or inside a DSSE envelope), unverified."""
    obj = _read_lines(path)[0]
    if "payloadType" in obj:
        try:
            obj = json.loads(base64.b64decode(obj["payload"]))
        except (KeyError, TypeError, ValueError, RecursionError):
            raise BadInput(str(path), "line 1: malformed DSSE envelope") from None
    try:
        validate(obj)
    except ValueError as e:
        raise VerificationFailed(f"{path}: not a valid SLSA v1 statement: {e}") from None
    return obj
