"""Pydantic models of mithril.yaml. Every error names the file, the field and the reason."""

from __future__ import annotations

import ipaddress
import uuid
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StrictInt, create_model, field_validator, model_validator

from . import CONFIG_FILE, platforms
from .errors import BadInput
from .readers import Strict, load_model

PlatformName = Literal[platforms.names()]  # one per folder of pipeline/platforms/


# Integers as YAML writes them: `true`, 1.0 or "443" for a port or a count is a mistake, not a number.
Port = Annotated[StrictInt, Field(ge=1, le=65535)]
Count = Annotated[StrictInt, Field(ge=1, le=2**31 - 1)]  # TensorRT-LLM takes int32


class OsConfig(Strict):
    """The Mithril OS image (mkosi)."""

    release: Literal["bookworm"] = "bookworm"
    kernel_package: str = "linux-image-cloud-amd64"
    k3s: bool = Field(False, description="install k3s (binary and airgap images pinned in mithril.lock); "
                      "implied by app 'llm'")
    nvidia: bool = Field(False, description="NVIDIA kernel modules and driver libraries from Debian non-free (no "
                         "container toolkit: docs/gpu.md); implied by app 'llm'")
    tpm2_tools: bool = Field(False, description="install tpm2-tools in the image")
    extra_packages: tuple[str, ...] = ()
    cluster_cidr: str = Field("10.42.0.0/16", description="k3s pod network (k3s's default)")
    service_cidr: str = Field("10.43.0.0/16", description="k3s service network (k3s's default)")

    @field_validator("cluster_cidr", "service_cidr")
    @classmethod
    def _network(cls, v):
        return _ipv4_network(v)


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
    app_user: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]*)?$",
        description="who an image that names no USER runs as (no k3s): default 65532:65532; `root` or `0` "
                    "opts into root, still with no capability (docs/sandbox.md)")


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


def _ipv4_network(v: str) -> str:
    try:
        return str(ipaddress.IPv4Network(v))
    except ValueError as e:
        raise ValueError(f"not an IPv4 network in CIDR notation ({e})") from None


class AzureConfig(Strict):
    """Azure deployment settings; credentials come from azure-identity's default chain only."""

    subscription_id: str | None = Field(None, pattern=r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$",
                                        description="needed by `azure deploy`/`destroy`")
    resource_group: str = Field("mithril", pattern=r"^[-\w.()]{1,90}$")
    location: str = Field("eastus", pattern=r"^[a-z0-9]+$")
    vm_size: str = Field("Standard_DC2as_v5", pattern=r"^Standard_\w+$")
    security_type: Literal["TrustedLaunch", "ConfidentialVM"] | None = Field(
        None, description="follows the profile's platform (azure-cvm: ConfidentialVM, azure-trusted-launch: "
                          "TrustedLaunch); if given it must agree")
    secure_boot: bool = Field(False, description="must stay false: the UKI is not signed yet")
    vtpm: bool = Field(True, description="must stay true: attestation quotes come from the vTPM")
    disk_sku: Literal["Premium_LRS", "StandardSSD_LRS", "Standard_LRS", "Premium_ZRS", "StandardSSD_ZRS"] = "Premium_LRS"
    vnet_prefix: str = Field("10.10.0.0/16", description="the VM's virtual network; must not overlap the k3s ranges")
    subnet_prefix: str = Field("10.10.0.0/24", description="the VM's subnet, inside vnet_prefix")
    tags: dict[str, str] = {}
    replicas: int = Field(1, ge=1, le=32, description="N > 1: N VMs from one gallery image behind a Standard "
                                                       "Load Balancer on the ingress port (docs/azure.md)")

    @field_validator("vnet_prefix", "subnet_prefix")
    @classmethod
    def _network(cls, v):
        return _ipv4_network(v)


def _partial(model: type[BaseModel]) -> type[BaseModel]:
    """The same fields, all optional (None = inherit the top-level value): a profile's overrides."""
    fields: dict[str, Any] = {n: (f.annotation | None, Field(None, description=f.description))
                              for n, f in model.model_fields.items()}
    return create_model(f"{model.__name__}Override", __base__=Strict, **fields)


OsOverride = _partial(OsConfig)
AzureOverride = _partial(AzureConfig)

K3S_PORTS = {6443: "the k3s API server", 10250: "the kubelet", 8472: "flannel's VXLAN"}


class Profile(Strict):
    """One build target. `os` and `azure` override the top-level sections field by field; after
    `Config.profile()` they hold the resolved settings (top level, then the profile, then what the
    app implies: app 'llm' means k3s and the NVIDIA driver)."""

    platform: PlatformName = "qemu"
    mode: Literal["production", "debug"] = "production"
    app: Literal["demo", "llm", "image"] = Field(
        "demo", description="demo: the static demo page; llm: Triton with a model; image: your own image (appdisk.app_image)")
    model: str | None = None
    os: OsOverride | OsConfig | None = None  # type: ignore[valid-type]
    azure: AzureOverride | AzureConfig | None = None  # type: ignore[valid-type]

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
            check(self, name, resolve(self, p))
        return self

    def profile(self, name: str | None, model: str | None = None, where: str = CONFIG_FILE) -> tuple[str, Profile]:
        """The named (or default) profile, with --model applied, resolved (see `resolve`) and checked."""
        name = name or self.default_profile
        if name not in self.profiles:
            raise BadInput(where, f"unknown profile {name!r}", "choose one of: " + ", ".join(sorted(self.profiles)))
        p = self.profiles[name]
        if model:
            if model not in self.models:
                raise BadInput(where, f"--model {model!r} is not defined under models",
                               "known models: " + (", ".join(sorted(self.models)) or "none"))
            p = p.model_copy(update={"model": model, "app": "llm"})
        resolved = resolve(self, p)
        try:
            check(self, name, resolved)
        except ValueError as e:
            raise BadInput(where, f"{e}" + (f" (with --model {model})" if model else "")) from None
        return name, resolved


def _overrides(section: BaseModel | None) -> dict:
    """The fields a profile sets explicitly."""
    if section is None:
        return {}
    return {k: getattr(section, k) for k in section.model_fields_set if getattr(section, k) is not None}


def resolve(config: Config, p: Profile) -> Profile:
    """The profile with complete `os` and `azure` sections: top level, then the profile's own
    values, then what the app implies (app 'llm' runs Triton as a pod on a GPU: k3s and NVIDIA)."""
    if isinstance(p.os, OsConfig) and isinstance(p.azure, AzureConfig):
        return p  # already resolved
    os_values = {**config.os.model_dump(), **_overrides(p.os)}
    if p.app == "llm":
        os_values = {**os_values, "k3s": True, "nvidia": True, **_overrides(p.os)}
    az_values = {**config.azure.model_dump(), **_overrides(p.azure)}
    for field, value in platforms.get(p.platform).azure_defaults().items():
        if az_values.get(field) is None:
            az_values[field] = value
    return p.model_copy(update={"os": OsConfig.model_validate(os_values),
                                "azure": AzureConfig.model_validate(az_values)})


def check(config: Config, name: str, p: Profile) -> None:
    """Reject combinations that cannot work, with one line naming the field (ValueError)."""
    raw = config.profiles.get(name, p)
    own_os, own_az = _overrides(raw.os), _overrides(raw.azure)
    osc = p.os
    platform = platforms.get(p.platform)

    def at(section: str, field: str) -> str:
        own = own_os if section == "os" else own_az
        return f"profiles.{name}.{section}.{field}" if field in own else f"{section}.{field}"

    if p.app == "llm":
        for field, why in (("k3s", "Triton runs as a pod"), ("nvidia", "Triton needs the GPU")):
            if not getattr(osc, field):
                raise ValueError(f"{at('os', field)}: false, but app 'llm' needs it ({why}); remove the override")
    if osc.nvidia and not osc.k3s:
        raise ValueError(f"{at('os', 'nvidia')}: the GPU reaches the app only as a k3s pod (docs/gpu.md); "
                         "set os.k3s: true")
    # address ranges: pod, service and the platform's network (VNet, QEMU's user network) never overlap
    ranges = platform.networks(config, p, at)
    if osc.k3s:
        ranges += [(at("os", "cluster_cidr"), osc.cluster_cidr), (at("os", "service_cidr"), osc.service_cidr)]
    for i, (field, net) in enumerate(ranges):
        for other, net2 in ranges[:i]:
            if ipaddress.IPv4Network(net).overlaps(ipaddress.IPv4Network(net2)):
                raise ValueError(f"{field}: {net} overlaps {other} ({net2}); choose disjoint ranges")
    ports = {"appdisk.ingress_port": config.appdisk.ingress_port, "appdisk.app_port": config.appdisk.app_port,
             "appdisk.attestation_port": config.appdisk.attestation_port}
    seen: dict[int, str] = {}
    for field, port in ports.items():
        if port in seen:
            raise ValueError(f"{field}: {port} is also {seen[port]}")
        if osc.k3s and port in K3S_PORTS:
            raise ValueError(f"{field}: {port} is the port of {K3S_PORTS[port]}")
        seen[port] = field
    platform.check(config, p, at)


def load(path: Path) -> Config:
    return load_model(path, Config, fix="run `mithril-build init` or pass --project DIR",
                      wording={"missing": "required key is missing"})
