"""Start and stop Azurite (blob only, in memory, 127.0.0.1) for tests and benchmarks."""

from __future__ import annotations

import contextlib
import socket
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pipeline.run import Background

REPO = Path(__file__).resolve().parent.parent
BINARY = REPO / ".tools" / "node_modules" / ".bin" / "azurite-blob"
# Azurite's well-known development account (public, documented by Microsoft; not a secret).
ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def azurite(workdir: Path):
    """Yield the blob endpoint of a fresh Azurite; skips the test when it is not installed."""
    if not BINARY.exists():
        pytest.skip("azurite is not installed (scripts/setup.sh: npm install --prefix .tools azurite@3.35.0)")
    port = _free_port()
    argv = [BINARY, "--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence",
            "--skipApiVersionCheck", "--disableTelemetry", "--silent"]
    with Background(argv, workdir / "azurite.log", cwd=workdir) as proc:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if not proc.alive() or time.monotonic() > deadline:
                raise RuntimeError("azurite did not start:\n" + (workdir / "azurite.log").read_text()[-2000:])
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/{ACCOUNT}"


def page_blob_sas(endpoint: str, container: str, name: str, size: int) -> str:
    """Create an empty page blob of `size` bytes (what a managed disk in upload state is) and
    return a read/write SAS URL for it."""
    from azure.storage.blob import (
        BlobSasPermissions,
        BlobServiceClient,
        generate_blob_sas,
    )

    svc = BlobServiceClient(endpoint, credential={"account_name": ACCOUNT, "account_key": KEY})
    with contextlib.suppress(Exception):
        svc.create_container(container)
    svc.get_blob_client(container, name).create_page_blob(size)
    sas = generate_blob_sas(ACCOUNT, container, name, account_key=KEY,
                            permission=BlobSasPermissions(read=True, write=True),
                            expiry=datetime.now(UTC) + timedelta(hours=2))
    return f"{endpoint}/{container}/{name}?{sas}"
