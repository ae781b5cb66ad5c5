#!/usr/bin/env bash
# The main job on a fresh Debian machine, end to end:
#   1. installs what is missing (SoftHSM2, OpenSSL) and builds lurk (release);
#   2. creates a development SoftHSM token with client keys, certificates, sealing key, mTLS
#      files and a config (under $LURK_DEV_DIR, default ./lurk-dev);
#   3. starts the Crypto Service (lurk-cs) on that token;
#   4. starts an `openssl s_server` with a test PKI (scripts/make-certs.sh);
#   5. makes real TLS 1.3 connections through `lurk-engine get`, whose secrets come from the
#      CS: a full handshake, then a resumption with the ticket the CS stored, and prints the
#      page and the handshake summaries.
# With --serve the CS keeps running afterwards (Ctrl-C stops it).
set -euo pipefail
cd "$(dirname "$0")/.."
serve=false; [ "${1:-}" = "--serve" ] && serve=true
scripts/install-deps.sh
cargo build --release --locked -p lurk-cs -p lurk-engine
BIN=${CARGO_TARGET_DIR:-$PWD/target}/release
DIR=${LURK_DEV_DIR:-$PWD/lurk-dev}
mkdir -p "$DIR"
if [ ! -f "$DIR/lurk-cs.toml" ]; then
  "$BIN/lurk-cs" token init-dev "$DIR"
fi
CERTS=$DIR/server-pki
if [ ! -f "$CERTS/ca-all.pem" ]; then
  bash scripts/make-certs.sh "$CERTS" >"$DIR/make-certs.log" 2>&1 || { cat "$DIR/make-certs.log"; exit 1; }
fi

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# The Crypto Service, on a free port (it prints READY <addr>).
"$BIN/lurk-cs" serve --config "$DIR/lurk-cs.toml" --listen 127.0.0.1:0 >"$DIR/lurk-cs.out" 2>"$DIR/lurk-cs.log" &
pids+=($!)
for _ in $(seq 1 200); do
  grep -q '^READY ' "$DIR/lurk-cs.out" 2>/dev/null && break
  kill -0 "${pids[0]}" 2>/dev/null || { cat "$DIR/lurk-cs.log"; exit 1; }
  sleep 0.05
done
CS_ADDR=$(sed -n 's/^READY //p' "$DIR/lurk-cs.out")
echo "== lurk-cs (pid ${pids[0]}) serving on $CS_ADDR, log in $DIR/lurk-cs.log"
CS_ARGS=(--cs "https://$CS_ADDR" --cs-ca "$DIR/tls/ca.pem" --cs-cert "$DIR/tls/engine.pem" --cs-key "$DIR/tls/engine.key")
"$BIN/lurk-engine" cs-info "${CS_ARGS[@]}"

# An OpenSSL TLS 1.3 server (status page with -www), on a free port below 32768.
for _ in $(seq 1 20); do
  PORT=$((20000 + RANDOM % 12000))
  openssl s_server -accept "127.0.0.1:$PORT" -tls1_3 -www -naccept 2 \
    -cert "$CERTS/server-ecdsa-p256.pem" -key "$CERTS/server-ecdsa-p256.key" \
    >"$DIR/s_server.out" 2>&1 &
  SRV=$!
  for _ in $(seq 1 100); do
    grep -q '^ACCEPT' "$DIR/s_server.out" 2>/dev/null && break
    kill -0 $SRV 2>/dev/null || break
    sleep 0.05
  done
  if grep -q '^ACCEPT' "$DIR/s_server.out" 2>/dev/null; then pids+=($SRV); break; fi
  kill $SRV 2>/dev/null || true
done
echo "== openssl s_server on 127.0.0.1:$PORT"

# A full handshake, then a resumption; the CS makes the key shares in the token, runs the
# key schedule and keeps the resumption PSK.
echo "== lurk-engine get https://localhost:$PORT/ (then --resume 1)"
"$BIN/lurk-engine" get "https://localhost:$PORT/" "${CS_ARGS[@]}" --ca "$CERTS/ca-all.pem" \
  --resume 1 --json 2>"$DIR/engine.json" >"$DIR/page.html"
echo "(the s_server status pages, in full in $DIR/page.html:)"
grep -E '^(New|Reused), TLSv1.3' "$DIR/page.html"
echo "== handshake summaries (one JSON line per connection)"
cat "$DIR/engine.json"

if $serve; then
  echo "== the CS keeps serving on $CS_ADDR; Ctrl-C stops it."
  wait "${pids[0]}"
fi
