#!/usr/bin/env bash
# Installs what building and testing Tollgate needs on Debian 12, and nothing
# that is already there. Idempotent: a second run changes nothing and needs no
# network. Run as root (only needed when something is missing).
set -euo pipefail

APT_PACKAGES=(
  libssl-dev libpcap-dev libnftnl-dev zlib1g-dev  # build: OpenSSL, later capture/nft helpers, zlib
  nftables iproute2 curl                          # transparent redirect, test bed, test client
  wrk nginx-light                                 # bench/: load generator and the nginx baseline
  python3 python3-pip                             # integration tests
)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$'; then
    missing+=("$pkg")
  fi
done

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else
    echo "bootstrap: need root to run: $*" >&2
    exit 1
  fi
}

if [ "${#missing[@]}" -gt 0 ]; then
  echo "bootstrap: installing ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  # nginx-light's package starts a system nginx on :80; the bench runs its own.
  if [[ " ${missing[*]} " == *" nginx-light "* ]] && command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now nginx >/dev/null 2>&1 || true
  fi
fi

# pytest for the integration tests (Tests/Integration). The tests need nothing
# else from PyPI: WebSocket framing and HTTP are hand-rolled.
if ! python3 -c 'import pytest' >/dev/null 2>&1; then
  if [ "$(command -v python3)" = /usr/bin/python3 ]; then
    echo "bootstrap: installing python3-pytest"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-pytest
  else
    echo "bootstrap: installing pytest for $(command -v python3)"
    python3 -m pip install -q pytest || python3 -m pip install -q --break-system-packages pytest
  fi
fi

# noida-db: a local server speaking the Elasticsearch HTTP API, for the end-to-end test of
# flow shipping (Tests/Integration/test_elasticsearch.py). From PyPI; its wheel carries the binary.
if ! python3 -c 'import noida_db' >/dev/null 2>&1 && ! command -v noida-db >/dev/null 2>&1; then
  echo "bootstrap: installing noida-db for $(command -v python3)"
  python3 -m pip install -q noida-db || python3 -m pip install -q --break-system-packages noida-db
fi

if ! command -v swift >/dev/null 2>&1; then
  echo "bootstrap: the Swift toolchain (swift) is not on PATH; install Swift 6 and retry" >&2
  exit 1
fi
