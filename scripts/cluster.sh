#!/usr/bin/env bash
# N lurk-cs replicas (default 3) on one private PostgreSQL cluster, on this machine:
#   1. a PostgreSQL cluster in $DIR/pg (initdb as the postgres user when run as root; its
#      own port on 127.0.0.1 and socket dir; password in $DIR/pg/password);
#   2. one development SoftHSM token per replica (lurk-cs token init-dev), all holding the
#      same sealing key: created exportable on replica 1, wrapped under a fresh AES wrapping
#      key imported into every token, unwrapped into the others;
#   3. every replica serving on its own port with replica 1's mTLS files (one engine
#      certificate works for all), ticket store in PostgreSQL, health probe every 200 ms.
# Prints one `REPLICA i https://127.0.0.1:PORT` line per replica, then `CLUSTER READY`, and
# runs until SIGINT/SIGTERM, when it stops the replicas and PostgreSQL (by PID).
# Usage: scripts/cluster.sh [DIR] [N]   (DIR default ./lurk-cluster, replaced if present)
# LURK_BIN=dir uses the lurk-cs binary there instead of building a release.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=$(realpath -m "${1:-./lurk-cluster}")
N=${2:-3}
if [ -z "${LURK_BIN:-}" ]; then
  scripts/install-deps.sh --postgres
  cargo build --release --bins --locked
  LURK_BIN=${CARGO_TARGET_DIR:-$PWD/target}/release
fi
CS=$LURK_BIN/lurk-cs
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -n "$PGBIN" ] || PGBIN=$(dirname "$(readlink -f "$(command -v initdb)")")

rm -rf "$DIR"
mkdir -p "$DIR/pg/data" "$DIR/pg/sock"
chmod 755 "$DIR" "$DIR/pg"
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[ "$(id -u)" -eq 0 ] && chown postgres:postgres "$DIR/pg/data" "$DIR/pg/sock"
openssl rand -hex 24 >"$DIR/pg/password"
chmod 644 "$DIR/pg/password"  # initdb runs as postgres; the CS reads it as the first line
as_pg "$PGBIN/initdb" -D "$DIR/pg/data" -U lurk --auth-host=scram-sha-256 --auth-local=trust \
  --pwfile="$DIR/pg/password" -E UTF8 >"$DIR/pg/initdb.log" 2>&1 || { cat "$DIR/pg/initdb.log"; exit 1; }
free_port() {  # a port below 32768 (outside Linux's ephemeral range) nothing listens on
  local p
  while :; do
    p=$((20000 + RANDOM % 12000))
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
  done
}
PGPORT=$(free_port)
as_pg "$PGBIN/pg_ctl" start -D "$DIR/pg/data" -w -l "$DIR/pg/sock/log" \
  -o "-p $PGPORT -k $DIR/pg/sock -c listen_addresses=127.0.0.1" >/dev/null
PGPID=$(head -1 "$DIR/pg/data/postmaster.pid")
"$PGBIN/psql" -h "$DIR/pg/sock" -p "$PGPORT" -U lurk -d postgres -q -c 'CREATE DATABASE lurk'

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  kill -INT "$PGPID" 2>/dev/null || true
  for _ in $(seq 1 100); do [ -e "$DIR/pg/data/postmaster.pid" ] || break; sleep 0.1; done
  echo "== cluster stopped"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

openssl rand -hex 32 >"$DIR/wrap.hex"
for i in $(seq 1 "$N"); do
  R=$DIR/replica-$i
  "$CS" token init-dev "$R" >/dev/null
  conf=$R/lurk-cs.toml
  # A sealing key of its own label (init-dev's is not exportable), the shared store, one PKI.
  sed -i -e 's/^sealing_key = .*/sealing_key = "replica-seal"/' \
    -e 's/^\[store\]$/[store]\nbackend = "postgres"/' "$conf"
  if [ "$i" -gt 1 ]; then
    sed -i -e "s#$R/tls/cs.pem#$DIR/replica-1/tls/cs.pem#" -e "s#$R/tls/cs.key#$DIR/replica-1/tls/cs.key#" \
      -e "s#$R/tls/ca.pem#$DIR/replica-1/tls/ca.pem#" "$conf"
  fi
  cat >>"$conf" <<TOML
[store.postgres]
dsn = "host=127.0.0.1 port=$PGPORT user=lurk dbname=lurk"
password_file = "$DIR/pg/password"
[health]
probe_interval_ms = 200
TOML
  "$CS" token wrapping-key import --config "$conf" --label replica-wrap --key-file "$DIR/wrap.hex" >/dev/null
  if [ "$i" -eq 1 ]; then
    "$CS" token sealing-key --config "$conf" --exportable >/dev/null
    "$CS" token sealing-key --config "$conf" export-wrapped --wrapping-key replica-wrap --out "$DIR/seal.wrapped" >/dev/null
    "$CS" store migrate --config "$conf" >/dev/null
  else
    "$CS" token sealing-key --config "$conf" import-wrapped --wrapping-key replica-wrap --in "$DIR/seal.wrapped" >/dev/null
  fi
done
rm -f "$DIR/wrap.hex"

for i in $(seq 1 "$N"); do
  R=$DIR/replica-$i
  "$CS" serve --config "$R/lurk-cs.toml" --listen 127.0.0.1:0 >"$R/lurk-cs.out" 2>"$R/lurk-cs.log" &
  pids+=($!)
  for _ in $(seq 1 200); do
    grep -q '^READY ' "$R/lurk-cs.out" 2>/dev/null && break
    kill -0 "${pids[-1]}" 2>/dev/null || { cat "$R/lurk-cs.log"; exit 1; }
    sleep 0.05
  done
  echo "REPLICA $i https://$(sed -n 's/^READY //p' "$R/lurk-cs.out") pid ${pids[-1]} log $R/lurk-cs.log"
done
echo "== PostgreSQL (pid $PGPID) on 127.0.0.1:$PGPORT; engine credentials in $DIR/replica-1/tls"
echo "CLUSTER READY"
wait
