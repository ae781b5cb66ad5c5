#!/usr/bin/env bash
# Installs what lurk needs on Debian when it is missing. Usage:
#   scripts/install-deps.sh             what the CS and the engine need to run (the quickstart):
#                                       SoftHSM2 (the default PKCS#11 token), OpenSSL (test
#                                       servers and certificates), curl
#   scripts/install-deps.sh --postgres  and PostgreSQL (scripts/cluster.sh)
#   scripts/install-deps.sh --test      and everything the test suite uses: PostgreSQL (private
#                                       clusters), Go (tests/go_tls_server, stdlib only), Python
#                                       venvs with tlslite-ng (tests/tlslite_server.py) and
#                                       kubernetes-validate (deploy/kubernetes/), PyYAML, prlimit,
#                                       promtool (Debian's prometheus package), make and a C
#                                       compiler (AFL++, scripts/fuzz.sh), nginx and h2load
#                                       (nghttp2-client) for the edge proxy test, OpenSSL's
#                                       PKCS#11 engine (libengine-pkcs11-openssl) for lurk-bench
# Rust comes from rustup.
set -euo pipefail
test_deps=0
postgres=0
for arg in "$@"; do
  case "$arg" in
    --test) test_deps=1; postgres=1 ;;
    --postgres) postgres=1 ;;
    *) echo "install-deps: unknown option $arg" >&2; exit 2 ;;
  esac
done
need=()
[ -e /usr/lib/softhsm/libsofthsm2.so ] || need+=(softhsm2)
command -v softhsm2-util >/dev/null 2>&1 || need+=(softhsm2)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v curl >/dev/null 2>&1 || need+=(curl)
if [ "$test_deps" = 1 ]; then
  command -v python3 >/dev/null 2>&1 || need+=(python3 python3-venv)
  command -v go >/dev/null 2>&1 || need+=(golang-go)
  # prlimit: the transport-limit tests lower a running CS's descriptor limit.
  command -v prlimit >/dev/null 2>&1 || need+=(util-linux)
  # cargo-afl builds AFL++ (scripts/fuzz.sh) with make and a C compiler.
  command -v make >/dev/null 2>&1 || need+=(make)
  command -v cc >/dev/null 2>&1 || need+=(gcc)
  # The edge proxy e2e test: nginx as the upstream, h2load as the load generator.
  [ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1 || need+=(nginx)
  command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client)
  # OpenSSL's PKCS#11 engine (libp11): lurk-bench's `openssl s_client` rows with the client key
  # in the token (bench/src/openssl_engine.rs; Debian packages no pkcs11 provider).
  ls /usr/lib/*/engines-3/pkcs11.so >/dev/null 2>&1 || need+=(libengine-pkcs11-openssl)
fi
# promtool (Debian's prometheus package, without its recommended node exporter): the tests
# check the scraped metrics and deploy/prometheus/ (alerting rules and their cases).
if [ "$test_deps" = 1 ] && ! command -v promtool >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  echo "install-deps: installing prometheus (promtool)" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
if [ "$postgres" = 1 ]; then
  # PostgreSQL server binaries for private clusters (Debian puts them in
  # /usr/lib/postgresql/NN/bin, off PATH); no system-wide server is used.
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || need+=(postgresql)
fi
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  echo "install-deps: installing ${need[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [ "$test_deps" = 1 ]; then
  # tlslite-ng, pinned, in a venv in the user's cache (tests/src/tlslite.rs looks there), unless
  # python3 imports it already.
  TLSLITE_VERSION=0.8.2
  venv="${XDG_CACHE_HOME:-$HOME/.cache}/lurk/tlslite-venv"
  if ! python3 -c 'import tlslite' >/dev/null 2>&1 &&
    ! "$venv/bin/python" -c 'import tlslite' >/dev/null 2>&1; then
    echo "install-deps: installing tlslite-ng $TLSLITE_VERSION in $venv" >&2
    rm -rf "$venv"
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
      # Debian's python3 has no venv module without python3-venv.
      SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
      $SUDO apt-get update -qq
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
      rm -rf "$venv"
      python3 -m venv "$venv"
    fi
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "tlslite-ng==$TLSLITE_VERSION"
  fi
  # PyYAML for the `python3` on PATH, which may not be Debian's (pip, not apt): a test checks
  # deploy/compose.yaml (no container engine on the test machines).
  python3 -c 'import yaml' >/dev/null 2>&1 ||
    python3 -m pip install -q --disable-pip-version-check pyyaml >/dev/null 2>&1 ||
    { echo "install-deps: cannot install PyYAML for $(command -v python3)" >&2; exit 1; }
  # kubernetes-validate, pinned, in its own venv (scripts/validate-k8s.sh): the Kubernetes
  # OpenAPI schemas ship in the package, so deploy/kubernetes/ is validated offline.
  K8S_VALIDATE_VERSION=1.37.0
  kvenv="${XDG_CACHE_HOME:-$HOME/.cache}/lurk/k8s-validate-venv"
  if ! "$kvenv/bin/python" -c "import kubernetes_validate, importlib.metadata as m; assert m.version('kubernetes-validate') == '$K8S_VALIDATE_VERSION'" >/dev/null 2>&1; then
    echo "install-deps: installing kubernetes-validate $K8S_VALIDATE_VERSION in $kvenv" >&2
    rm -rf "$kvenv"
    if ! python3 -m venv "$kvenv" >/dev/null 2>&1; then
      SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
      $SUDO apt-get update -qq
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
      rm -rf "$kvenv"
      python3 -m venv "$kvenv"
    fi
    "$kvenv/bin/python" -m pip install -q --disable-pip-version-check "kubernetes-validate==$K8S_VALIDATE_VERSION"
  fi
fi
command -v cargo >/dev/null 2>&1 || { echo "install-deps: cargo not found; install Rust with rustup" >&2; exit 1; }
