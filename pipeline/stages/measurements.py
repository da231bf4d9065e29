"""The measurements stage: predict every PCR from the built OS disk (the UKI on its ESP), the
app disk's roothash and the platform file; write measurements.json (schema v1, validated
against measurements/schema/measurements.v1.json) and eventlog.json.
"""

from __future__ import annotations

import json
from pathlib import Path

from .. import gpu, log, platforms, starter
from ..errors import BadInput
from ..graph import Context, Stage, StageResult
from ..measure import gpt, predict
from ..platforms import firmware
from ..records import AppDiskRecord, OsRecord, read

SCHEMA = Path("measurements") / "schema" / "measurements.v1.json"
OUTPUTS = ("measurements.json", "eventlog.json")


def schema_path(root: Path) -> Path:
    """The project's copy of the schema, else mithril-build's own."""
    return root / SCHEMA if (root / SCHEMA).is_file() else starter() / SCHEMA


def validate(doc: dict, root: Path) -> None:
    """Raise BadInput naming the field when `doc` does not follow measurements.v1.json."""
    path = schema_path(root)
    schema = json.loads(path.read_text())
    import jsonschema

    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
    if errors:
        e = errors[0]
        field = ".".join(str(p) for p in e.path) or "(top level)"
        raise BadInput("measurements.json", f"{field}: {e.message} (schema {path})")


def _check_app_disk(disk: Path, roothash: str) -> None:
    """The app disk's partition UUIDs are the roothash halves (systemd's convention)."""
    uuids = sorted(p.uuid.hex for p in gpt.read_table(disk).partitions)
    if sorted((roothash[:32], roothash[32:])) != uuids:
        raise BadInput(str(disk), f"partition UUIDs {uuids} are not the halves of roothash {roothash}",
                       "appdisk.json and application_disk.raw come from different builds")


class Measurements(Stage):
    name = "measurements"
    version = 1
    deps = ("os", "appdisk")
    data = (str(SCHEMA),)

    def lock_entries(self, ctx: Context) -> list[str]:
        return [f"files.{gpu.DRIVER_RIM_PIN}"] if gpu_attested(ctx) else []

    def key_inputs(self, ctx: Context) -> dict:
        return {
            "platform": ctx.profile.platform,
            "mode": ctx.profile.mode,
            "platform_file": ctx.checkout_digests(str(firmware.path_for(Path("."), ctx.profile.platform))),
        }

    def build(self, ctx: Context, out: Path, deps: dict[str, StageResult]) -> dict:
        os_dir, app_dir = deps["os"].dir, deps["appdisk"].dir
        plat = firmware.load(ctx.root, ctx.profile.platform)
        os_record = read(os_dir, OsRecord)
        if os_record.mode != ctx.profile.mode:
            raise BadInput(str(os_dir / OsRecord.FILE), f"mode: the OS image is {os_record.mode!r}, the profile "
                           f"says {ctx.profile.mode!r}", "rebuild the os stage for this profile")
        roothash = read(app_dir, AppDiskRecord).roothash
        _check_app_disk(app_dir / "application_disk.raw", roothash)

        # digests the cache already verified; os_disk.raw is not hashed again
        digests = {k: v for k, v in deps["os"].outputs.items() if k in ("os_disk.raw", "uki.efi", "os.json")}
        digests |= {k: v for k, v in deps["appdisk"].outputs.items() if k in ("application_disk.raw", "appdisk.json")}
        # No boot phases in PCR 11: the image masks systemd-pcrphase, in the initrd too (mkosi.finalize).
        with log.step("Predicting PCRs", "Predicted PCRs"):
            result = predict.predict(os_dir / "os_disk.raw", roothash, plat, ctx.profile.mode,
                                     platform_file=firmware.path_for(ctx.root, plat.name).read_bytes(),
                                     digests=digests, uki_copy=os_dir / "uki.efi")
        if gpu_attested(ctx):
            result.measurements["gpu"] = driver_rim(ctx, out)
        write(result, out, ctx.root)
        pcrs = result.measurements["pcrs"]
        return {"platform": plat.name, "mode": ctx.profile.mode,
                "pcrs": {k: v["expected"][0] for k, v in pcrs.items() if len(v["expected"]) == 1}}


def gpu_attested(ctx: Context) -> bool:
    """A GPU profile's releases carry the driver RIM and clients demand GPU evidence, on every
    platform that passes the GPU through (not the local QEMU one: gpu-local)."""
    return ctx.profile.os.nvidia and platforms.get(ctx.profile.platform).gpu_passthrough


def driver_rim(ctx: Context, out: Path) -> dict:
    """A GPU profile's `gpu` section of measurements.json, and the driver RIM it names copied to
    out/gpu-rims/: the RIM pinned in mithril.lock, whose XML signature and certificate chain to
    NVIDIA's RIM root must verify at the time they were checked when pinned (`checked_at`)."""
    import datetime as dt

    from mithril_client.gpu.rim import parse_rim

    where = f"mithril.lock: files.{gpu.DRIVER_RIM_PIN}"
    pin = ctx.lock.file(gpu.DRIVER_RIM_PIN)
    if not pin.checked_at:
        raise BadInput(where, "checked_at: missing", "pin the RIM with `mithril-build lock`, which checks it")
    path = ctx.store.pinned(pin, f"files.{gpu.DRIVER_RIM_PIN}")
    raw = path.read_bytes()
    rim = parse_rim(raw, where)
    checked_at = dt.datetime.fromisoformat(pin.checked_at.replace("Z", "+00:00"))
    if problem := rim.problem(checked_at):
        raise BadInput(where, f"{problem} (judged at checked_at {pin.checked_at})")
    from .os_image import debs_key

    key = debs_key(ctx.profile.os)
    for name in gpu.DRIVER_DEBS:  # the driver the image installs must be the RIM's
        deb = ctx.lock.debs.get(key, {}).get(name)
        if deb is not None and not deb.version.startswith(rim.version + "-"):
            raise BadInput(where, f"the RIM is for driver {rim.version}, debs.{key}.{name} is {deb.version}",
                           "pin the RIM of the driver the image installs")
    rim_id = gpu.driver_rim_id(rim.version)
    (out / gpu.RIMS_DIR).mkdir(exist_ok=True)
    (out / gpu.RIMS_DIR / f"{rim_id}.swidtag").write_bytes(raw)
    return {"driver_version": rim.version,
            "driver_rim": {"id": rim_id, "sha256": rim.sha256, "checked_at": pin.checked_at}}


def write(result: predict.Prediction, out: Path, root: Path) -> None:
    """Validate, then write measurements.json and eventlog.json (each replaced atomically)."""
    from ..files import atomic_write

    validate(result.measurements, root)
    atomic_write(out / "eventlog.json", predict.dumps(result.eventlog))
    atomic_write(out / "measurements.json", predict.dumps(result.measurements))


def measure_disk(os_disk: Path, roothash: str, platform_name: str, mode: str, root: Path, out: Path,
                 phases: tuple[str, ...] = ()) -> dict:
    """Outside a build: predict the PCRs of any OS disk image; returns measurements.json."""
    if not Path(os_disk).is_file():
        raise BadInput(str(os_disk), "not found", "pass the OS disk image (out/<profile>/os_disk.raw)")
    plat = firmware.load(root, platform_name)
    result = predict.predict(Path(os_disk), roothash.lower(), plat, mode, phases=phases,
                             platform_file=firmware.path_for(root, plat.name).read_bytes())
    out.mkdir(parents=True, exist_ok=True)
    write(result, out, root)
    return result.measurements
