"""Pydantic models of mithril.yaml. Every error names the file, the field and the reason."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import BadInput

CONFIG_FILE = "mithril.yaml"
Platform = Literal["qemu", "azure-trusted-launch", "azure-cvm"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# Integers as YAML writes them: `true`, 1.0 or "443" for a port or a count is a mistake, not a number.
Port = Annotated[StrictInt, Field(ge=1, le=65535)]
Count = Annotated[StrictInt, Field(ge=1, le=2**31 - 1)]  # TensorRT-LLM takes int32


class OsConfig(Strict):
    """The Mithril OS image (mkosi)."""

    release: Literal["bookworm"] = "bookworm"
    kernel_package: str = "linux-image-cloud-amd64"
    k3s: bool = Field(False, description="install k3s (binary and airgap images pinned in mithril.lock)")
    nvidia: bool = Field(False, description="NVIDIA driver and container toolkit from Debian non-free")
    tpm2_tools: bool = Field(False, description="install tpm2-tools in the image")
    extra_packages: tuple[str, ...] = ()


class AppDiskConfig(Strict):
    """The dm-verity application disk."""

    ingress_port: Port = 443
    app_port: Port = 8000
    attestation_port: Port = 8400
    namespace: str = Field("mithril", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    extra_images: tuple[str, ...] = Field(
        (), description="names under `images` in mithril.lock whose archives go on the disk too (your own images)")
    app_image: str | None = Field(
        None, description="app 'image': the name under `images` in mithril.lock of your app's image archive")


class ModelConfig(Strict):
    """A model served by Triton; `repo` and `revision` are resolved to a commit in mithril.lock."""

    repo: str = Field(pattern=r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
    family: Literal["llama", "gpt"]
    revision: str = "main"
    backend: Literal["tensorrt-engine", "pytorch"] = "tensorrt-engine"
    dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    tensor_parallel: Annotated[StrictInt, Field(ge=1, le=8)] = 1
    max_batch_size: Count = 8
    max_input_len: Count = 2048
    max_seq_len: Count = 4096
    allow_patterns: tuple[str, ...] = ("*.json", "*.model", "*.safetensors", "tokenizer*")
    # engine build (trtllm-build) and Triton serving options
    gemm_plugin: Literal["auto", "disable", "float16", "bfloat16", "float32"] = "auto"
    paged_kv_cache: bool = Field(True, description="paged KV cache (needed for inflight batching)")
    inflight_batching: bool = Field(True, description="Triton gpt_model_type inflight_fused_batching (else V1)")
    max_beam_width: Annotated[StrictInt, Field(ge=1, le=8)] = 1
    kv_cache_free_gpu_mem_fraction: float = Field(0.9, gt=0, le=1)
    image: str = Field("triton", description="name under `images` in mithril.lock of the Triton TRT-LLM image")
    engine_dir: str | None = Field(None, description="import an engine built elsewhere (folder with engine.json)")

    @model_validator(mode="after")
    def _lengths(self):
        if self.max_input_len >= self.max_seq_len:
            raise ValueError(f"max_input_len ({self.max_input_len}) must be below max_seq_len ({self.max_seq_len})")
        if self.inflight_batching and not self.paged_kv_cache:
            raise ValueError("inflight_batching needs paged_kv_cache: true")
        return self


class AzureConfig(Strict):
    """Azure deployment settings; credentials come from azure-identity's default chain only."""

    subscription_id: str | None = Field(None, pattern=r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$",
                                        description="needed by `azure deploy`/`destroy`")
    resource_group: str = Field("mithril", pattern=r"^[-\w.()]{1,90}$")
    location: str = Field("eastus", pattern=r"^[a-z0-9]+$")
    vm_size: str = Field("Standard_NC24ads_A100_v4", pattern=r"^Standard_\w+$")
    security_type: Literal["TrustedLaunch", "ConfidentialVM"] = "TrustedLaunch"
    secure_boot: bool = Field(False, description="off by default: the NVIDIA driver modules are not signed")
    vtpm: bool = True
    disk_sku: Literal["Premium_LRS", "StandardSSD_LRS", "Standard_LRS", "Premium_ZRS", "StandardSSD_ZRS"] = "Premium_LRS"
    tags: dict[str, str] = {}

    @model_validator(mode="after")
    def _confidential_size(self):
        # Confidential VMs exist only in the SEV-SNP families (DCasv5/ECasv5, NCCadsH100v5 with a GPU).
        if self.security_type == "ConfidentialVM" and not re.match(
                r"^Standard_(DC|EC)\d+a\w*_v[56]$|^Standard_NCC\d+ads_H100_v5$", self.vm_size):
            raise ValueError(f"security_type ConfidentialVM needs a confidential VM size (DCasv5/ECasv5, "
                             f"NCCadsH100v5), not vm_size {self.vm_size}")
        return self


class Profile(Strict):
    platform: Platform = "qemu"
    mode: Literal["production", "debug"] = "production"
    app: Literal["demo", "llm", "image"] = Field(
        "demo", description="demo: the static demo page; llm: Triton with a model; image: your own image (appdisk.app_image)")
    model: str | None = None

    @model_validator(mode="after")
    def _llm_needs_model(self):
        if self.app == "llm" and not self.model:
            raise ValueError("app 'llm' needs a model")
        return self


class Config(Strict):
    project: str = Field("mithril", pattern=r"^[a-z0-9][-a-z0-9]*$")
    default_profile: str = "demo"
    seed: uuid.UUID = Field(description="fixed seed for disk/partition UUIDs and verity salts")
    # squashfs stores 32-bit unsigned times: later than 2106-02-07 cannot be written
    source_date_epoch: StrictInt = Field(ge=0, le=2**32 - 1, description="timestamp written into every output")
    profiles: dict[str, Profile]
    os: OsConfig = OsConfig()
    appdisk: AppDiskConfig = AppDiskConfig()
    models: dict[str, ModelConfig] = {}
    azure: AzureConfig = AzureConfig()

    @field_validator("profiles")
    @classmethod
    def _some_profile(cls, v):
        if not v:
            raise ValueError("at least one profile is needed")
        return v

    @model_validator(mode="after")
    def _references(self):
        if self.default_profile not in self.profiles:
            raise ValueError(f"default_profile {self.default_profile!r} is not one of profiles: "
                             + ", ".join(sorted(self.profiles)))
        for name, p in self.profiles.items():
            if p.model and p.model not in self.models:
                raise ValueError(f"profiles.{name}.model {p.model!r} is not defined under models")
            if p.app == "image" and not self.appdisk.app_image:
                raise ValueError(f"profiles.{name}.app 'image' needs appdisk.app_image (a name under `images` "
                                 "in mithril.lock)")
        return self

    def profile(self, name: str | None, model: str | None = None, where: str = CONFIG_FILE) -> tuple[str, Profile]:
        """The named (or default) profile, with --model applied."""
        name = name or self.default_profile
        if name not in self.profiles:
            raise BadInput(where, f"unknown profile {name!r}", "choose one of: " + ", ".join(sorted(self.profiles)))
        p = self.profiles[name]
        if model:
            if model not in self.models:
                raise BadInput(where, f"--model {model!r} is not defined under models",
                               "known models: " + (", ".join(sorted(self.models)) or "none"))
            p = p.model_copy(update={"model": model, "app": "llm"})
        return name, p


def _error_line(path: Path, err: ValidationError) -> str:
    e = err.errors()[0]
    loc = ".".join(str(x) for x in e["loc"]) or "(top level)"
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "extra_forbidden":
        msg = "unknown key"
    elif e["type"] == "missing":
        msg = "required key is missing"
    more = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{loc}: {msg}{more}"


def load(path: Path) -> Config:
    from .readers import load_yaml

    where = str(path)
    raw = load_yaml(path, where, fix="run `mithril-build init` or pass --project DIR")
    if not isinstance(raw, dict):
        raise BadInput(where, "must be a YAML mapping")
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise BadInput(where, _error_line(path, e)) from None
