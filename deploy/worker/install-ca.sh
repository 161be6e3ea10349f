#!/usr/bin/env bash
# Installs Tollgate's CA certificate on a Debian/Ubuntu worker so tools trust intercepted TLS,
# and prints the environment variables coding tools read for their own trust stores.
#   usage: install-ca.sh /path/to/ca.pem        (run as root on the worker)
set -euo pipefail

ca="${1:-}"
if [[ -z "$ca" || ! -r "$ca" ]]; then
    echo "usage: $0 /path/to/tollgate/ca.pem" >&2
    exit 2
fi
if ! openssl x509 -in "$ca" -noout 2>/dev/null; then
    echo "$0: $ca is not a PEM certificate" >&2
    exit 1
fi
if [[ $EUID -ne 0 ]]; then
    echo "$0: run as root (it writes the system trust store)" >&2
    exit 1
fi
if ! command -v update-ca-certificates >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q ca-certificates >/dev/null
fi

install -m 0644 "$ca" /usr/local/share/ca-certificates/tollgate-ca.crt
update-ca-certificates >/dev/null
bundle=/etc/ssl/certs/ca-certificates.crt
echo "Tollgate CA installed: $(openssl x509 -in "$ca" -noout -subject -fingerprint -sha256 | tr '\n' ' ')" >&2

# Tools that ship their own CA lists (Node, Python requests, pip, git built with GnuTLS) need these.
cat <<VARS
export NODE_EXTRA_CA_CERTS=/usr/local/share/ca-certificates/tollgate-ca.crt
export REQUESTS_CA_BUNDLE=$bundle
export SSL_CERT_FILE=$bundle
export GIT_SSL_CAINFO=$bundle
export PIP_CERT=$bundle
export CURL_CA_BUNDLE=$bundle
VARS
