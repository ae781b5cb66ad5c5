#!/usr/bin/env bash
# The main job on a fresh Debian machine: installs what is missing, builds, creates a
# development SoftHSM token with client keys, certificates, sealing key, mTLS files and a
# config (under $LURK_DEV_DIR, default ./lurk-dev), starts the Crypto Service and checks it
# from the engine over mTLS. The CS then keeps serving until Ctrl-C (or exits at once with
# --check).
set -euo pipefail
cd "$(dirname "$0")/.."
check_only=false; [ "${1:-}" = "--check" ] && check_only=true
scripts/install-deps.sh
cargo build --release --bins --locked
BIN=$PWD/target/release
DIR=${LURK_DEV_DIR:-$PWD/lurk-dev}
if [ ! -f "$DIR/lurk-cs.toml" ]; then
  "$BIN/lurk-cs" token init-dev "$DIR"
fi
LOG=$DIR/lurk-cs.log
"$BIN/lurk-cs" serve --config "$DIR/lurk-cs.toml" --listen 127.0.0.1:0 >"$DIR/lurk-cs.out" 2>"$LOG" &
CS=$!
trap 'kill $CS 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  grep -q '^READY ' "$DIR/lurk-cs.out" 2>/dev/null && break
  kill -0 $CS 2>/dev/null || { cat "$LOG"; exit 1; }
  sleep 0.1
done
ADDR=$(sed -n 's/^READY //p' "$DIR/lurk-cs.out")
echo "lurk-cs (pid $CS) serving on $ADDR, log in $LOG"
"$BIN/lurk-engine" cs-info --cs "https://$ADDR" --cs-ca "$DIR/tls/ca.pem" \
  --cs-cert "$DIR/tls/engine.pem" --cs-key "$DIR/tls/engine.key"
if $check_only; then exit 0; fi
echo "Ctrl-C stops the CS."
wait $CS
