#!/usr/bin/env bash
# Coverage-guided fuzzing with AFL++ through cargo-afl (stable toolchain; FUZZING.md).
# Builds fuzz/, writes the seed corpus, runs each target for SECONDS (default 5), then replays
# every input kept in fuzz/regressions/TARGET/. Fails if a run found a crash or a regression
# input fails. Needs a C compiler (cargo-afl builds AFL++ on install).
#   scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
secs=${1:-5}
shift || true
command -v cargo-afl >/dev/null 2>&1 || cargo install cargo-afl --locked
cd "$root/fuzz"
cargo afl build --release --locked
bin=$PWD/target/release/lurk-fuzz
if [ $# -gt 0 ]; then targets=("$@"); else mapfile -t targets < <("$bin" list); fi
rm -rf seeds
"$bin" seeds seeds
# No UI, no CPU binding (cores are shared), no core-dump or CPU-governor checks (containers).
export AFL_NO_UI=1 AFL_NO_AFFINITY=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
failed=0
for t in "${targets[@]}"; do
  rm -rf "out/$t"
  mkdir -p out
  cargo afl fuzz -V "$secs" -i "seeds/$t" -o "out/$t" "$bin" "$t" >"out/$t.log" 2>&1 || {
    echo "fuzz: $t: afl-fuzz failed, see fuzz/out/$t.log" >&2
    failed=1
    continue
  }
  stats=out/$t/default/fuzzer_stats
  execs=$(sed -n 's/^execs_done *: //p' "$stats")
  cvg=$(sed -n 's/^bitmap_cvg *: //p' "$stats")
  crashes=$(find "out/$t/default/crashes" -type f -name 'id:*' | wc -l)
  echo "fuzz: $t: $execs executions, bitmap coverage $cvg, $crashes crashes"
  if [ "$crashes" -gt 0 ]; then
    echo "fuzz: $t: crashing inputs in fuzz/out/$t/default/crashes" >&2
    failed=1
  fi
done
for d in regressions/*/; do
  [ -d "$d" ] || continue
  "$bin" replay "$(basename "$d")" "$d"* >/dev/null
done
exit $failed
