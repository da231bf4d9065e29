"""A small TPM 2.0 command library: the commands the attestation server needs, marshalled by hand
from the TPM 2.0 Library specification (Part 2 structures, Part 3 commands). Big-endian throughout.

Transports: a kernel character device (`/dev/tpmrm0`: one write is one command, one read one
response) or swtpm's raw data socket (`swtpm:/path/tpm.sock`). `with Tpm(spec) as tpm:` opens the
connection for one request sequence and closes it afterwards (swtpm's socket serves one client at
a time); transient objects and sessions made inside the block are flushed when it ends, since
without a resource manager the TPM runs out of slots.
"""

from __future__ import annotations

import os
import secrets
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from mithril_client import tpm2
from mithril_client.tpm2 import (ADMIN_WITH_POLICY, ALG_ECC, ALG_NULL, ALG_RSA, ALG_SHA256, DECRYPT, FIXED_PARENT,
                                 FIXED_TPM, HASH_ALGS, NO_DA, RESTRICTED, SENSITIVE_DATA_ORIGIN, SIGN, USER_WITH_AUTH,
                                 tpm2b)

# Part 2: constants (the structures' own, and the TPMA_OBJECT bits, are mithril_client.tpm2's)
ST_NO_SESSIONS, ST_SESSIONS = 0x8001, 0x8002
RH_OWNER, RH_NULL, RS_PW, RH_ENDORSEMENT = 0x40000001, 0x40000007, 0x40000009, 0x4000000B
ALG_AES, ALG_ECDSA, ALG_CFB = 0x0006, 0x0018, 0x0043
ECC_NIST_P256 = 0x0003
SE_POLICY = 0x01
CONTINUE_SESSION = 0x01  # kept open: we flush every session ourselves, success or not
CAP_TPM_PROPERTIES, PT_NV_BUFFER_MAX = 0x00000006, 0x0000012C
RC_HANDLE = 0x08B  # format-one TPM_RC_HANDLE, without its handle/parameter number

# TPMA_NV bits: who may read an index
NV_OWNERREAD, NV_AUTHREAD = 1 << 17, 1 << 18

COMMANDS = {
    "NV_Read": 0x14E, "CreatePrimary": 0x131, "ActivateCredential": 0x147, "PolicySecret": 0x151,
    "Quote": 0x158, "FlushContext": 0x165, "NV_ReadPublic": 0x169, "ReadPublic": 0x173,
    "StartAuthSession": 0x176, "GetCapability": 0x17A, "PCR_Read": 0x17E, "PCR_Extend": 0x182,
}
# "try again" warnings: TPM_RC_YIELDED, TPM_RC_TESTING, TPM_RC_RETRY (a TSS resubmits these; swtpm
# answers TPM_RC_RETRY to the first ECC signing after start-up).
TRY_AGAIN, SUBMISSIONS = (0x908, 0x90A, 0x922), 5
MAX_RESPONSE = 4096  # the kernel's TPM buffer size; no response of ours is larger
SOCKET_TIMEOUT = 120.0  # RSA key generation on a loaded swtpm can take many seconds


class TpmError(Exception):
    """A TPM command failed: a non-zero response code (`rc`), or a broken or truncated response."""

    def __init__(self, command: str, rc: int | None = None, detail: str = ""):
        self.command, self.rc = command, rc
        text = f"TPM2_{command} failed" if command in COMMANDS else f"TPM {command} failed"
        if rc is not None:
            text += f": response code 0x{rc:03x}"
        super().__init__(f"{text}: {detail}" if detail else text)

    @property
    def base(self) -> int | None:
        """A format-one response code without the number of the handle/parameter/session at fault."""
        return self.rc & 0x0BF if self.rc is not None and self.rc & 0x080 else self.rc

    @property
    def parameter(self) -> int | None:
        """The 1-based number of the command parameter the TPM rejected, if it names one."""
        if self.rc is not None and self.rc & 0x0C0 == 0x0C0:  # format one, P bit set
            return self.rc >> 8 & 0xF
        return None


# ---------------------------------------------------------------------------- marshalling

def u8(v: int) -> bytes:
    return struct.pack(">B", v)


def u16(v: int) -> bytes:
    return struct.pack(">H", v)


def u32(v: int) -> bytes:
    return struct.pack(">I", v)


def pcr_selection(bank: int, pcrs: Iterable[int]) -> bytes:
    """TPML_PCR_SELECTION with one bank; a 3-byte bitmap covers PCRs 0-23."""
    bitmap = bytearray(3)
    for pcr in pcrs:
        bitmap[pcr // 8] |= 1 << pcr % 8
    return u32(1) + u16(bank) + u8(3) + bytes(bitmap)


class Reader(tpm2.Reader):
    """mithril_client's reader over a response: running short is the TPM's fault, a TpmError
    naming the command."""

    def fail(self, message: str, fix: str = "") -> Exception:
        return TpmError(self.where, detail=f"response: {message}")


@dataclass(frozen=True)
class Auth:
    """One TPMS_AUTH_COMMAND: the password session (TPM_RS_PW, `secret` = the password) or a
    policy session (no HMAC; the policy commands run before satisfy it)."""

    handle: int
    secret: bytes = b""
    nonce: bytes = b""

    def marshal(self) -> bytes:
        return u32(self.handle) + tpm2b(self.nonce) + u8(CONTINUE_SESSION) + tpm2b(self.secret)


PASSWORD = Auth(RS_PW)  # empty password: the hierarchies and keys here have none


# ---------------------------------------------------------------------------- templates (TPMT_PUBLIC)

# The qemu AK: ECC NIST P-256, ECDSA-SHA256, restricted signing key in the endorsement hierarchy.
# Primary keys derive from the hierarchy seed and the template, so the same template gives the
# same key on every request. noDA: its authValue is empty, so dictionary-attack lockout protects
# nothing, while swtpm counts every unorderly shutdown as a failed try (3 allowed by default) and
# in lockout refuses every use of a DA-protected key (TPM_RC_LOCKOUT, seen here after 3 kills).
AK_TEMPLATE = (u16(ALG_ECC) + u16(ALG_SHA256)
               + u32(FIXED_TPM | FIXED_PARENT | SENSITIVE_DATA_ORIGIN | USER_WITH_AUTH | NO_DA | RESTRICTED | SIGN)
               + tpm2b(b"")  # no authPolicy
               + u16(ALG_NULL)  # symmetric: none (a signing key)
               + u16(ALG_ECDSA) + u16(ALG_SHA256) + u16(ECC_NIST_P256)
               + u16(ALG_NULL)  # kdf
               + tpm2b(b"") + tpm2b(b""))  # unique: empty point

# TCG EK Credential Profile 2.x, template L-1 (RSA 2048): authPolicy = PolicySecret(TPM_RH_ENDORSEMENT).
EK_POLICY = bytes.fromhex("837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa")
EK_TEMPLATE = (u16(ALG_RSA) + u16(ALG_SHA256)
               + u32(FIXED_TPM | FIXED_PARENT | SENSITIVE_DATA_ORIGIN | ADMIN_WITH_POLICY | RESTRICTED | DECRYPT)
               + tpm2b(EK_POLICY)
               + u16(ALG_AES) + u16(128) + u16(ALG_CFB)
               + u16(ALG_NULL)  # scheme
               + u16(2048) + u32(0)  # keyBits, exponent (0 = 65537)
               + tpm2b(bytes(256)))


@dataclass(frozen=True)
class Key:
    handle: int
    public: bytes  # TPM2B_PUBLIC


@dataclass(frozen=True)
class NvPublic:
    index: int
    name_alg: int
    attributes: int
    size: int


# ---------------------------------------------------------------------------- transports

class _Device:
    def __init__(self, path: str):
        self.fd = os.open(path, os.O_RDWR)

    def transact(self, command: bytes) -> bytes:
        if os.write(self.fd, command) != len(command):
            raise OSError("short write to the TPM device")
        return os.read(self.fd, MAX_RESPONSE)

    def close(self) -> None:
        os.close(self.fd)


class _Socket:
    """swtpm's data channel: the raw command, then the raw response (its header holds its size)."""

    def __init__(self, path: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(SOCKET_TIMEOUT)
        try:
            self.sock.connect(path)
        except OSError:
            self.sock.close()
            raise

    def _exactly(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                break  # the caller sees a short response
            buf += chunk
        return bytes(buf)

    def transact(self, command: bytes) -> bytes:
        self.sock.sendall(command)
        header = self._exactly(10)
        if len(header) < 10:
            return header
        size = struct.unpack(">I", header[2:6])[0]
        return header + self._exactly(min(size, MAX_RESPONSE) - 10)

    def close(self) -> None:
        self.sock.close()


# ---------------------------------------------------------------------------- commands

class Tpm:
    def __init__(self, spec: str):
        if not (spec.startswith("/") or spec.startswith("swtpm:/")):
            raise ValueError(f"TPM {spec!r}: expected a device path (/dev/tpmrm0) or swtpm:/path/to/tpm.sock")
        self.spec = spec
        self._transport = None
        self._loaded: list[int] = []  # transient objects and sessions to flush at the end

    def __enter__(self) -> Tpm:
        try:
            self._transport = (_Socket(self.spec.removeprefix("swtpm:")) if self.spec.startswith("swtpm:")
                               else _Device(self.spec))
        except OSError as e:
            raise TpmError("open", detail=f"{self.spec}: {e}") from None
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        failed: list[TpmError] = []
        try:
            for handle in reversed(self._loaded.copy()):
                try:
                    self.flush_context(handle)
                except TpmError as e:
                    failed.append(e)
        finally:
            self._loaded.clear()
            self._transport.close()
            self._transport = None
        if failed and exc_type is None:  # an error already on its way out matters more
            raise failed[0]

    def _call(self, name: str, handles: Iterable[int] = (), auths: Iterable[Auth] = (), params: bytes = b"",
              out_handles: int = 0) -> tuple[tuple[int, ...], Reader]:
        """Send one command; returns the response handles and a Reader over the response parameters."""
        auths = list(auths)
        body = b"".join(u32(h) for h in handles)
        if auths:
            area = b"".join(a.marshal() for a in auths)
            body += u32(len(area)) + area
        body += params
        command = u16(ST_SESSIONS if auths else ST_NO_SESSIONS) + u32(10 + len(body)) + u32(COMMANDS[name]) + body
        for _ in range(SUBMISSIONS):
            try:
                response = self._transport.transact(command)
            except OSError as e:
                raise TpmError(name, detail=f"{self.spec}: {e}") from None
            r = Reader(response, name)
            tag, size, rc = r.u16(), r.u32(), r.u32()
            if rc not in TRY_AGAIN:
                break
        if rc:
            raise TpmError(name, rc)
        if size != len(response):
            raise TpmError(name, detail=f"response size field says {size} bytes, {len(response)} arrived")
        got = tuple(r.u32() for _ in range(out_handles))
        if tag == ST_SESSIONS:  # parameterSize, parameters, then the session area (nothing to check
            return got, Reader(r.take(r.u32()), name)  # without HMAC sessions)
        return got, Reader(r.rest(), name)

    def flush_context(self, handle: int) -> None:
        self._call("FlushContext", params=u32(handle))  # flushHandle is a parameter, not a handle
        if handle in self._loaded:
            self._loaded.remove(handle)

    def create_primary(self, hierarchy: int, template: bytes) -> Key:
        sensitive = tpm2b(tpm2b(b"") + tpm2b(b""))  # TPMS_SENSITIVE_CREATE: no userAuth, no data
        params = sensitive + tpm2b(template) + tpm2b(b"") + u32(0)  # no outsideInfo, no creationPCR
        (handle,), r = self._call("CreatePrimary", [hierarchy], [PASSWORD], params, out_handles=1)
        self._loaded.append(handle)
        return Key(handle, tpm2b(r.tpm2b()))  # the rest: creation data, hash, ticket, name

    def read_public(self, handle: int) -> Key:
        _, r = self._call("ReadPublic", [handle])
        return Key(handle, tpm2b(r.tpm2b()))

    def quote(self, key: int, nonce: bytes, bank: int, pcrs: Iterable[int]) -> tuple[bytes, bytes]:
        """(TPMS_ATTEST, TPMT_SIGNATURE); the key's own signing scheme (inScheme TPM_ALG_NULL)."""
        params = tpm2b(nonce) + u16(ALG_NULL) + pcr_selection(bank, pcrs)
        _, r = self._call("Quote", [key], [PASSWORD], params)
        return r.tpm2b(), r.rest()

    def pcr_read(self, bank: int, pcrs: Iterable[int]) -> dict[int, bytes]:
        """A response carries at most 8 digests: ask again for what is still missing."""
        wanted = sorted(set(pcrs))
        values: dict[int, bytes] = {}
        while missing := [p for p in wanted if p not in values]:
            _, r = self._call("PCR_Read", params=pcr_selection(bank, missing))
            r.u32()  # pcrUpdateCounter
            answered = {sel.bank: sel.pcrs for sel in r.pcr_selection("pcrSelectionOut")}
            selected = [p for p in answered.get(HASH_ALGS.get(bank), ()) if p in missing]
            digests = [r.tpm2b() for _ in range(r.u32())]
            if not selected or len(selected) != len(digests):
                raise TpmError("PCR_Read", detail=f"{len(digests)} values for PCRs {selected} of bank "
                                                  f"0x{bank:04x} (is the bank allocated?)")
            values.update(zip(selected, digests))
        return values

    def pcr_extend(self, pcr: int, bank: int, digest: bytes) -> None:
        self._call("PCR_Extend", [pcr], [PASSWORD], u32(1) + u16(bank) + digest)

    def nv_read_public(self, index: int) -> NvPublic:
        _, r = self._call("NV_ReadPublic", [index])
        p = Reader(r.tpm2b(), "NV_ReadPublic")
        index, name_alg, attributes = p.u32(), p.u16(), p.u32()
        p.tpm2b()  # authPolicy
        return NvPublic(index, name_alg, attributes, p.u16())

    def nv_buffer_max(self) -> int:
        params = u32(CAP_TPM_PROPERTIES) + u32(PT_NV_BUFFER_MAX) + u32(1)
        _, r = self._call("GetCapability", params=params)
        r.u8()  # moreData
        r.u32()  # capability
        for _ in range(r.u32()):
            prop, value = r.u32(), r.u32()
            if prop == PT_NV_BUFFER_MAX:
                return value
        raise TpmError("GetCapability", detail="no TPM_PT_NV_BUFFER_MAX in the answer")

    def nv_read(self, index: int) -> bytes:
        """The whole index, in chunks of TPM_PT_NV_BUFFER_MAX, authorized by the index itself
        (empty auth) or by the owner, whichever its attributes allow."""
        pub = self.nv_read_public(index)
        if pub.attributes & NV_AUTHREAD:
            auth = index
        elif pub.attributes & NV_OWNERREAD:
            auth = RH_OWNER
        else:
            raise TpmError("NV_Read", detail=f"NV 0x{index:08x} is readable neither with its own auth nor the owner's")
        chunk = self.nv_buffer_max()
        data = b""
        while len(data) < pub.size:
            n = min(chunk, pub.size - len(data))
            _, r = self._call("NV_Read", [auth, index], [PASSWORD], u16(n) + u16(len(data)))
            part = r.tpm2b()
            if len(part) != n:
                raise TpmError("NV_Read", detail=f"asked for {n} bytes at offset {len(data)}, got {len(part)}")
            data += part
        return data

    def start_policy_session(self) -> int:
        """An unsalted, unbound policy session with SHA-256 and no parameter encryption."""
        params = tpm2b(secrets.token_bytes(32)) + tpm2b(b"") + u8(SE_POLICY) + u16(ALG_NULL) + u16(ALG_SHA256)
        (handle,), _ = self._call("StartAuthSession", [RH_NULL, RH_NULL], params=params, out_handles=1)
        self._loaded.append(handle)
        return handle

    def policy_secret(self, auth_handle: int, session: int) -> None:
        """PolicySecret with the (empty) password of `auth_handle`: no nonceTPM, cpHash, policyRef,
        nor expiration."""
        self._call("PolicySecret", [auth_handle, session], [PASSWORD], tpm2b(b"") * 3 + u32(0))

    def activate_credential(self, activate: int, key: int, key_session: int, credential_blob: bytes,
                            secret: bytes) -> bytes:
        """`credential_blob` and `secret` are the contents of the TPM2B_ID_OBJECT and the
        TPM2B_ENCRYPTED_SECRET. `activate` is authorized by its password, `key` by `key_session`."""
        params = tpm2b(credential_blob) + tpm2b(secret)
        _, r = self._call("ActivateCredential", [activate, key], [PASSWORD, Auth(key_session)], params)
        return r.tpm2b()
