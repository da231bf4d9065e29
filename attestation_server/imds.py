"""Azure IMDS's THIM endpoint: the VCEK certificate of this SEV-SNP host and its chain (ASK, ARK).

`GET http://169.254.169.254/metadata/THIM/amd/certification` with `Metadata: true` answers JSON
with `vcekCert` (PEM) and `certificateChain` (PEM: ASK then ARK), the format Azure's own
cvm-attestation-tools read (Azure/cvm-attestation-tools, cvm-attestation/src/imds_client.py).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

THIM_URL = "http://169.254.169.254/metadata/THIM/amd/certification"
TIMEOUT = 10.0
MAX_ANSWER = 1 << 16  # three certificates are about 6 KiB
_PEM_CERT = "-----BEGIN CERTIFICATE-----"


class ImdsError(Exception):
    pass


def vcek_chain(url: str = THIM_URL) -> bytes:
    """VCEK, ASK, ARK as one PEM bundle."""
    request = urllib.request.Request(url, headers={"Metadata": "true"})
    # IMDS is link-local: never go through a proxy set in the environment
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=TIMEOUT) as response:
            body = response.read(MAX_ANSWER + 1)
    except (urllib.error.URLError, OSError) as e:
        raise ImdsError(f"THIM {url}: {e}") from None
    if len(body) > MAX_ANSWER:
        raise ImdsError(f"THIM {url}: answer larger than {MAX_ANSWER} bytes")
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ImdsError(f"THIM {url}: not JSON ({e})") from None
    parts = []
    for field in ("vcekCert", "certificateChain"):
        value = doc.get(field) if isinstance(doc, dict) else None
        if not isinstance(value, str) or _PEM_CERT not in value:
            raise ImdsError(f"THIM {url}: {field} is missing or not a PEM certificate")
        parts.append(value.strip() + "\n")
    return "".join(parts).encode()
