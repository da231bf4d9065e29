"""Upstream definitions vendored as data under tests/fixtures/upstream/ (sources and commits in
its SOURCES.md): loaders the upstream-check tests share."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

UPSTREAM = Path(__file__).resolve().parents[1] / "fixtures" / "upstream"


@functools.cache
def triton_model_config():
    """Triton's ModelConfig message class, compiled at test time from the vendored
    model_config.proto with grpcio-tools' protoc into a descriptor set, loaded into a pool of its
    own (so no generated module, and no clash with any other copy of the proto in the process)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    from grpc_tools import protoc

    src = UPSTREAM / "triton"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "model_config.desc"
        code = protoc.main(["protoc", f"-I{src}", f"--descriptor_set_out={out}", "model_config.proto"])
        if code != 0:
            raise RuntimeError(f"protoc failed ({code}) on {src / 'model_config.proto'}")
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for f in files.file:
        pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))


def parse_pbtxt(text: str):
    """A config.pbtxt as Triton reads it (protobuf text format into ModelConfig): an unknown field
    or enum value raises google.protobuf.text_format.ParseError."""
    from google.protobuf import text_format

    return text_format.Parse(text, triton_model_config()())
