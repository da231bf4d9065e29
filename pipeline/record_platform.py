"""`record-platform`: add observed firmware PCR 0-3 values to measurements/platforms/<name>.yaml,
from a boot under QEMU, a serial log, a quote or an evidence document (e.g. taken on a real Azure
VM); from azure-cvm evidence also the SNP report's ID key digest (which paravisor signed it)."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

from . import run as runner
from .attest import pcrs_from_quote, read_file
from .errors import BadInput, ToolFailed, VerificationFailed
from .platforms import firmware as plat
from .platforms.qemu.boot import boot_disks
from mithril_client.platforms.choose import validator
from mithril_client.evidence import parse_evidence
from mithril_client.tpm2 import load_ak, parse_public, parse_quote, parse_signature, pcr_digest, signature_valid


def _version(argv: list[str]) -> str:
    try:
        return runner.run(argv, timeout=30).text.strip().splitlines()[0]
    except (ToolFailed, IndexError):
        return "unknown"


def qemu_source(accel: str) -> str:
    """What the values were observed on, for the platform file's `source` field."""
    qemu = _version(["qemu-system-x86_64", "--version"])
    ovmf = _version(["dpkg-query", "-W", "-f", "${Version}", "ovmf"])
    swtpm = _version(["swtpm", "--version"]).split(",")[0]  # drop the copyright line
    return f"mithril-build boot ({accel}): {qemu}; ovmf {ovmf}; {swtpm}"


def from_boot(out_dir: Path, timeout: float, accel: str = "auto") -> tuple[dict[int, str], str]:
    app = out_dir / "application_disk.raw"
    report, used, _, _ = boot_disks(out_dir / "os_disk.raw", app if app.exists() else None, timeout,
                                    out_dir / "boot-serial.log", accel)
    return report.pcrs, qemu_source(used)


def from_quote(quote: Path, pcrs: Path, signature: Path | None, ak_pub: Path | None) -> dict[int, str]:
    """PCR values the quote vouches for; its signature is checked when --signature/--ak-pub are given."""
    if (signature is None) != (ak_pub is None):
        raise BadInput("--signature/--ak-pub", "give both or neither")
    if signature is not None:
        q = parse_quote(read_file(quote, "--from-quote"), str(quote))
        sig = parse_signature(read_file(signature, "--signature"), str(signature))
        if not signature_valid(q, sig, load_ak(read_file(ak_pub, "--ak-pub"), str(ak_pub))):
            raise VerificationFailed(f"{quote}: the signature does not verify with {ak_pub}; nothing recorded")
    return pcrs_from_quote(quote, pcrs)


def from_evidence(path: Path, platform: str) -> tuple[dict[int, str], str | None]:
    """PCR values an evidence document's quote vouches for (its signature checked with the
    document's own AK), and on azure-cvm the SNP report's ID key digest. The report must pass
    every SNP check but the ID key itself (AMD's chain, signature, HCLAkPub = the quote's AK,
    report_data, policy, TCB): what is recorded was said by a genuine chip about this AK."""
    doc = parse_evidence(read_file(path, "--from-evidence"), str(path))
    if doc.platform != platform:
        raise BadInput(str(path), f"platform: the evidence is from {doc.platform!r}, not --platform {platform!r}")
    quote = parse_quote(doc.quote, f"{path}: quote")
    sig = parse_signature(doc.signature, f"{path}: signature")
    ak = parse_public(doc.ak_public, f"{path}: ak_public")
    if not signature_valid(quote, sig, ak.key):
        raise VerificationFailed(f"{path}: the quote's signature does not verify with its ak_public; nothing recorded")
    if pcr_digest(quote.selections, doc.pcrs, sig.hash) != quote.pcr_digest:
        raise VerificationFailed(f"{path}: the PCR values do not match the quote's pcrDigest; nothing recorded")
    quoted = {i for s in quote.selections if s.bank == "sha256" for i in s.pcrs}
    values = {i: v.hex() for i, v in doc.pcrs.get("sha256", {}).items() if i in quoted}
    id_key = getattr(validator(platform), "id_key_to_record", None)
    return values, (id_key(doc, ak.key, str(path)) if id_key else None)


def record(root: Path, name: str, observed: dict[int, str], source: str,
           date: datetime.date | None = None, id_key_digest: str | None = None) -> dict:
    """Append PCR 0-3 values (and an SNP ID key digest) to the platform file (known values are
    not repeated)."""
    values = {i: v.lower() for i, v in observed.items() if i in plat.FIRMWARE_PCRS}
    if not values:
        raise BadInput(source, "no value for any of PCRs 0-3 in the input")
    current = plat.load(root, name)
    date = date or datetime.datetime.now(datetime.UTC).date()
    updated = plat.add_values(current, values, source, date)
    if id_key_digest is not None:
        updated = plat.add_id_key(updated, id_key_digest, source, date)
    # a "not recorded yet" note is stale once a value is recorded
    stale = {i: e.model_copy(update={"note": ""}) for i, e in updated.firmware_pcrs.items()
             if e.values and e.note.startswith("not recorded yet")}
    if stale:
        updated = updated.model_copy(update={"firmware_pcrs": {**updated.firmware_pcrs, **stale}})
    path = plat.path_for(root, name)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(plat.dump(updated))
    os.replace(tmp, path)
    rows = []
    for i, value in sorted(values.items()):
        known = any(v.value == value for v in current.firmware_pcrs[i].values)
        rows.append({"pcr": i, "value": value, "state": "already known" if known else "added",
                     "policy": updated.firmware_pcrs[i].policy})
    result = {"platform": name, "file": str(path), "source": source, "date": date.isoformat(), "pcrs": rows}
    if id_key_digest is not None:
        shipped = validator(name).AZURE_ID_KEY_DIGESTS
        known = any(v.value == id_key_digest for v in current.snp_id_key_digests)
        result["snp_id_key_digest"] = {"value": id_key_digest, "state": "already known" if known else "added",
                                       "shipped": id_key_digest in shipped}
    return result
