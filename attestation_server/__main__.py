"""python3 -m attestation_server --listen HOST:PORT --platform qemu|azure-trusted-launch|azure-cvm
--tpm /dev/tpmrm0|swtpm:/path/tpm.sock --tls-dir DIR --state-dir DIR [--tls-owner UID:GID] [--pcr 15] [--nvml LIB]"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mithril_client.platforms import NAMES as PLATFORMS

from . import imds
from .server import Config, StartError, log, serve
from .tpm import TpmError


def _listen(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT (port 0 picks a free one)")
    return host, int(port)


def _owner(text: str) -> tuple[int, int]:
    uid, _, gid = text.partition(":")
    if not (uid.isascii() and gid.isascii() and uid.isdigit() and gid.isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r}: expected numeric UID:GID")
    return int(uid), int(gid)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m attestation_server", description=__doc__.splitlines()[0])
    p.add_argument("--listen", type=_listen, required=True, help="HOST:PORT to serve plain HTTP on (behind the ingress)")
    p.add_argument("--platform", choices=PLATFORMS, required=True)
    p.add_argument("--tpm", required=True, help="/dev/tpmrm0 or swtpm:/path/to/tpm.sock (swtpm's data socket)")
    p.add_argument("--tls-dir", type=Path, required=True, help="where server.pem, server.key and ca.pem go")
    p.add_argument("--state-dir", type=Path, required=True, help="the CA key and the PCR record (tmpfs)")
    p.add_argument("--tls-owner", type=_owner, help="UID:GID that gets server.key (the ingress's user)")
    p.add_argument("--pcr", type=int, default=15, help="PCR that measures the CA (sha256 bank; default 15)")
    p.add_argument("--nvml", help="GPU profiles: libnvidia-ml.so.1 of the measured root; every answer then carries "
                                  "each GPU's attestation report and certificate chain (evidence version 2)")
    p.add_argument("--thim-url", default=imds.THIM_URL, help="Azure IMDS THIM endpoint (azure-cvm; a stand-in in tests)")
    args = p.parse_args(argv)
    try:
        cfg = Config(platform=args.platform, tpm=args.tpm, tls_dir=args.tls_dir, state_dir=args.state_dir,
                     tls_owner=args.tls_owner, pcr=args.pcr, thim_url=args.thim_url, nvml=args.nvml)
        serve(cfg, *args.listen)
    except (StartError, TpmError, ValueError, OSError) as e:
        log(f"attestation server: cannot start: {e}")
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
