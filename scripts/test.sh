#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests, RFC 8448 known-answer tests and the
# end-to-end tests (real SoftHSM tokens in temp dirs, real SQLite files, real lurk-cs
# processes, real openssl s_server). Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# A one-off build: incremental state would only add gigabytes to target/.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
scripts/install-deps.sh --test
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The CS as production builds it: without the RFC 8448 test-vector mode.
cargo clippy -p lurk-cs --all-targets --locked -- -D warnings
# The API docs build with no warning (broken links, unclosed tags).
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked
# Licences, banned crates and sources (deny.toml), and the MSRV of every dependency.
command -v cargo-deny >/dev/null 2>&1 || cargo install --locked --quiet cargo-deny@0.20.2
cargo deny --log-level error check licenses bans sources
scripts/check-msrv.sh
# The Kubernetes manifests, against the API schemas, offline.
scripts/validate-k8s.sh
# The end-to-end tests start the lurk-cs / lurk-engine binaries.
cargo build --workspace --bins --locked
# tests/tests/token_fault.rs loads the test-only PKCS#11 module (a cdylib).
cargo build -p lurk-p11-fault-shim --locked
cargo test --workspace --locked
# The benchmark tool in its quick mode (seconds; figures not checked): it keeps working. The
# binary the workspace build made (`cargo run -p` would rebuild with other features).
"${CARGO_TARGET_DIR:-target}/debug/lurk-bench" --quick > /dev/null
# Coverage-guided fuzzing (FUZZING.md): every target 6 s under AFL++, two at a time, then the
# regression inputs; a crash, a hang or a target that cannot start fails.
scripts/fuzz.sh
# A long campaign (`scripts/fuzz.sh long`) stopped at its budget and run again with a larger
# one is resumed by AFL++ in place and reaches the new budget. The build above serves
# (dependencies at opt-level 0).
long_dir=$(mktemp -d)
FUZZ_DEPS_OPT_LEVEL=0 FUZZ_EXECS=20000 FUZZ_LONG_DIR="$long_dir" scripts/fuzz.sh long deframer
resumed=$(FUZZ_DEPS_OPT_LEVEL=0 FUZZ_EXECS=40000 FUZZ_LONG_DIR="$long_dir" scripts/fuzz.sh long deframer)
echo "$resumed"
grep -Eq '^fuzz: deframer: resumed at [0-9]{5,} executions$' <<<"$resumed"
grep -q 'will attempt session resume' "$long_dir/deframer/afl.log"
execs=$(sed -n 's/^execs_done *: //p' "$long_dir/deframer/afl/default/fuzzer_stats")
[ "$execs" -ge 40000 ] || { echo "fuzz: the resumed campaign ran $execs executions" >&2; exit 1; }
rm -rf "$long_dir"
