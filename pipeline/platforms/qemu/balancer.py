"""One local address for N replicas (`mithril-build run --replicas N`): Debian's HAProxy in TCP
mode, round-robin, so TLS still ends inside each guest and every client connection is attested by
the replica that answers it.

Health checks: an HTTPS GET of /attestation with no nonce. The attestation server answers 400
without touching the TPM, and only when Caddy and the server behind it are both up; a check that
can't attest anyway should cost the TPM nothing. A replica that stops answering is taken out of
the rotation; a connection sent to it meanwhile is redispatched to another one.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

from ...errors import ToolFailed
from ...run import Background

CHECK_INTERVAL_MS = 1000


def haproxy_config(port: int, backends: list[int]) -> str:
    """haproxy.cfg: 127.0.0.1:port -> 127.0.0.1:backend, round-robin over all of them."""
    servers = "".join(f"    server replica{i} 127.0.0.1:{p} check check-ssl verify none\n"
                      for i, p in enumerate(backends, 1))
    return (
        "global\n"
        "    maxconn 4096\n"
        "defaults\n"
        "    mode tcp\n"
        "    timeout connect 5s\n"
        "    timeout client 10m\n"
        "    timeout server 10m\n"
        "    timeout check 5s\n"
        "    retries 3\n"
        "    option redispatch\n"  # a connection refused by a dead replica is retried on another
        "frontend ingress\n"
        f"    bind 127.0.0.1:{port}\n"
        "    default_backend replicas\n"
        "backend replicas\n"
        "    balance roundrobin\n"
        f"    default-server inter {CHECK_INTERVAL_MS} fall 2 rise 1\n"
        "    option httpchk\n"
        "    http-check send meth GET uri /attestation ver HTTP/1.1 hdr Host mithril\n"
        "    http-check expect status 400\n"  # the attestation server's answer to a missing nonce
        + servers)


class Balancer:
    """HAProxy in the foreground (-db) with its config in `work`; always stop() it."""

    def __init__(self, port: int, backends: list[int], work: Path, timeout: float = 30.0):
        work.mkdir(parents=True, exist_ok=True)
        cfg = work / "haproxy.cfg"
        cfg.write_text(haproxy_config(port, backends))
        self.port, self.log = port, work / "haproxy.out"
        self._proc = Background(["haproxy", "-db", "-f", cfg], self.log)
        deadline = time.monotonic() + timeout
        while not _listening(port):
            if not self._proc.alive() or time.monotonic() > deadline:
                out = self.log.read_text(errors="replace").strip() if self.log.exists() else ""
                self.stop()
                raise ToolFailed(f"haproxy did not listen on 127.0.0.1:{port}: {out[-500:]}")
            time.sleep(0.05)

    def alive(self) -> bool:
        return self._proc.alive()

    def stop(self) -> None:
        self._proc.stop()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
