#!/usr/bin/env bash
# Installs what lurk needs on Debian when it is missing: SoftHSM2 (the default PKCS#11
# token), OpenSSL (test servers and certificates), PostgreSQL (the tests start private
# clusters for the PostgreSQL ticket store). Rust comes from rustup.
set -euo pipefail
need=()
[ -e /usr/lib/softhsm/libsofthsm2.so ] || need+=(softhsm2)
command -v softhsm2-util >/dev/null 2>&1 || need+=(softhsm2)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v curl >/dev/null 2>&1 || need+=(curl)
# PostgreSQL server binaries for the tests' private clusters (Debian puts them in
# /usr/lib/postgresql/NN/bin, off PATH); no system-wide server is used.
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  echo "install-deps: installing ${need[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v cargo >/dev/null 2>&1 || { echo "install-deps: cargo not found; install Rust with rustup" >&2; exit 1; }
