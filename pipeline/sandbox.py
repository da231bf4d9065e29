"""How the no-k3s runtime runs an image (docs/sandbox.md): its OCI config read as runc reads it
(Entrypoint + Cmd, Env, WorkingDir, User, StopSignal, Volumes), and the systemd sandbox around
each service. run.d/main passes what `service_argv` returns to `systemd-run`.

systemd resolves `User=` through the guest OS's user database before it enters the service's
root, so an image's own users (or a bare numeric uid) fail with 217/USER there. An image service
therefore starts as root with only CAP_SETUID and CAP_SETGID and execs gosu (Debian's static
build, pinned in mithril.lock): inside the image root, gosu reads the image's /etc/passwd and
/etc/group with runc's own user library (libcontainer/user) and drops to the user, with runc's
supplementary groups and HOME, before it execs the entrypoint. The capabilities go with the uid.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from . import log
from .errors import BadInput
from .oci_read import ImageConfig, in_root

GOSU = "/.mithril/gosu"  # where gosu goes in every image root that drops to a user
DEFAULT_USER = "65532:65532"  # an image that names no user runs as this one (appdisk.app_user)
MAX_ID = 2**31 - 1  # runc's range for uids and gids

# Every service. What each property stops is in docs/sandbox.md; systemd 252 (the guest's) has all.
COMMON = (
    # /proc, /sys, /dev inside the root (and nothing else of the host). Not PrivateDevices=: with
    # RootDirectory= and ProtectSystem=strict, systemd 252 fails to set up the private /dev
    # (226/NAMESPACE, "…/dev: Read-only file system"); DevicePolicy=closed closes the devices instead.
    "MountAPIVFS=yes",
    "ProtectSystem=strict",  # the root is read-only ...
    "TemporaryFileSystem=/tmp:mode=1777",  # ... but /tmp, a tmpfs of its own
    "ProtectProc=invisible",  # /proc shows only the processes this service may ptrace
    "ProtectKernelTunables=yes", "ProtectKernelModules=yes", "ProtectKernelLogs=yes",
    "ProtectControlGroups=yes", "ProtectClock=yes", "ProtectHostname=yes",
    "NoNewPrivileges=yes", "RestrictSUIDSGID=yes", "RestrictNamespaces=yes", "LockPersonality=yes",
    "RestrictRealtime=yes", "PrivateIPC=yes", "KeyringMode=private", "SystemCallArchitectures=native",
    "SystemCallFilter=~@clock @cpu-emulation @debug @module @mount @obsolete @raw-io @reboot @swap",
    "SystemCallErrorNumber=EPERM",
    "Restart=on-failure", "RestartSec=2",
)


@dataclass(frozen=True)
class Identity:
    """Who a service runs as, resolved as runc resolves an OCI `User` in the image's own files."""
    spec: str  # the User string (gosu is given it and resolves it the same way inside the root)
    uid: int | None  # None: not known before the build (render, a name)
    gid: int | None
    groups: tuple[int, ...]  # supplementary groups
    home: str


def _table(rootfs: Path | None, name: str) -> list[list[str]] | None:
    # resolved inside the image's root: an /etc/passwd -> /host/file symlink stays in the image
    path = in_root(rootfs, f"etc/{name}") if rootfs else None
    if path is None or not path.is_file():
        return None
    rows = []
    with path.open("rb") as f:
        text = f.read(4 << 20).decode(errors="replace")
    for line in text.splitlines():
        parts = line.split(":")
        if line and not line.startswith("#"):
            rows.append(parts)
    return rows


def _int(value: str) -> int | None:
    return int(value) if value.isascii() and value.isdigit() and int(value) <= MAX_ID else None


def identity(rootfs: Path | None, spec: str, where: str) -> Identity:
    """runc's GetExecUser with its defaults (uid 0, gid 0, HOME /): "name", "uid", "name:group",
    "uid:gid", "name:gid", "uid:group". A numeric uid needs no passwd entry (gid 0 then, as in
    runc); a name must be in the image's /etc/passwd (group names in /etc/group). Supplementary
    groups: those of /etc/group that list the matched user, only when no group is given."""
    user, _, group = spec.partition(":")
    passwd, groups = _table(rootfs, "passwd") or [], _table(rootfs, "group") or []
    uid, gid, home, matched = 0, 0, "/", None
    if user:
        number = _int(user)
        entry = next((p for p in passwd if len(p) >= 6 and (p[2] == str(number) if number is not None else p[0] == user)),
                     None)
        if entry is not None and _int(entry[2]) is not None and _int(entry[3]) is not None:
            matched, uid, gid, home = entry[0], int(entry[2]), int(entry[3]), entry[5] or "/"
        elif number is not None:
            uid = number
        else:
            raise BadInput(where, f"User {spec!r}: no user {user!r} in the image's /etc/passwd",
                           "use a numeric uid (no passwd entry needed) or add the user to the image")
    extra: tuple[int, ...] = ()
    if group:
        number = _int(group)
        entry = next((g for g in groups if len(g) >= 3 and (g[2] == str(number) if number is not None else g[0] == group)),
                     None)
        if entry is not None and _int(entry[2]) is not None:
            gid = int(entry[2])
        elif number is not None:
            gid = number
        else:
            raise BadInput(where, f"User {spec!r}: no group {group!r} in the image's /etc/group",
                           "use a numeric gid or add the group to the image")
    elif matched:
        extra = tuple(int(g[2]) for g in groups
                      if len(g) >= 4 and _int(g[2]) is not None and matched in g[3].split(","))
    return Identity(spec, uid, gid, extra, home)


def unresolved_identity(spec: str) -> Identity:
    """For `render` (no image root at hand): numeric ids as runc gives them, names unknown."""
    user, _, group = spec.partition(":")
    uid = _int(user) if user else 0
    gid = _int(group) if group else (0 if uid is not None else None)
    return Identity(spec, uid, gid, (), "/")


def user_spec(config: ImageConfig, default: str) -> str:
    """The User an image service runs as: the image's own, else appdisk.app_user."""
    return config.user or default


def issues(config: ImageConfig, where: str, port: int | None) -> list[str]:
    """What of an image's config this runtime does not do as a container runtime would: one line
    each (the build prints them as warnings; `init` too)."""
    out = []
    if config.healthcheck:
        out.append(f"{where}: its HEALTHCHECK is not run (systemd restarts the app only when it exits)")
    for v in config.volumes:
        out.append(f"{where}: VOLUME {v} is an empty tmpfs, emptied at every boot: nothing in it persists "
                   "and the image's own files there are hidden")
    if port is not None and config.exposed_ports and port not in config.exposed_ports:
        out.append(f"{where}: exposes {', '.join(map(str, config.exposed_ports))} but is served on port {port} "
                   "(appdisk.app_port): the ingress gets no answer unless the app listens there")
    return out


def warn(lines: list[str]) -> None:
    for line in lines:
        log.warn(line)


def service_argv(name: str, root: str, config: ImageConfig, who: Identity, props: list[str], args: list[str],
                 where: str, image: bool = True) -> str:
    """The systemd-run arguments of one service, shell-quoted. `image`: an image service (drops
    to its user with gosu, or stays root with no capability at all); otherwise one of ours, whose
    props say who it runs as."""
    argv = [*config.argv, *args]
    if not argv:
        raise BadInput(where, "the image has no Entrypoint or Cmd", "rebuild it with an ENTRYPOINT")
    env = list(config.env)
    if not any(e.startswith("HOME=") for e in env):
        env.append(f"HOME={who.home}")  # runc sets HOME from passwd (else /) unless the image does
    sandbox = [*COMMON, f"RootDirectory={root}", f"WorkingDirectory={config.workdir or '/'}"]
    if config.stop_signal:
        sandbox.append(f"KillSignal={config.stop_signal}")
    for v in config.volumes:
        sandbox.append(f"TemporaryFileSystem={v}")
    if image:
        if who.uid == 0:
            sandbox.append("CapabilityBoundingSet=")  # root, but with no capability
        else:
            sandbox.append("CapabilityBoundingSet=CAP_SETUID CAP_SETGID")  # for gosu; dropped with the uid
            argv = [GOSU, who.spec, *argv]
    return shlex.join([*(f"--property={p}" for p in [*sandbox, *props]), *(f"--setenv={e}" for e in env),
                       "--", *argv])
