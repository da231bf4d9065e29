"""What stages hand each other: records among their outputs, read through these models. A stage
reads an earlier stage's files, never its functions; a model names what its readers use (the
stage that writes the record may record more)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from .readers import load_model


class Record(BaseModel):
    FILE: ClassVar[str]  # its name in the stage's output folder
    model_config = ConfigDict(extra="ignore", frozen=True)


class OsRecord(Record):
    """os.json of the os stage."""

    FILE = "os.json"
    mode: Literal["production", "debug"]


class AppDiskRecord(Record):
    """appdisk.json of the appdisk stage."""

    FILE = "appdisk.json"
    roothash: str = Field(pattern=r"^[0-9a-f]{64}$")  # dm-verity root hash of application_disk.raw


class TritonServing(Record):
    """triton.json of the model stage: how the app disk runs Triton for the model (the GPUs, shared
    memory, the server's arguments and environment, where the model repository is mounted)."""

    FILE = "triton.json"
    model: str
    backend: str
    gpus: int
    shm_size: str
    model_root: str
    args: list[str]
    env: dict[str, str]


R = TypeVar("R", bound=Record)


def read(folder: Path, record: type[R]) -> R:
    """A stage's record from its output folder; BadInput naming the file and field if it is wrong."""
    return load_model(folder / record.FILE, record)
