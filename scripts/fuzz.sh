#!/usr/bin/env bash
# Coverage-guided fuzzing with AFL++ (stable toolchain; FUZZING.md).
# Builds fuzz/ (the lurk crates instrumented, fuzz/rustc-afl.sh), writes the seed corpus,
# runs each target under afl-fuzz for SECONDS (default 6, two targets at a time), then
# replays every input kept in fuzz/regressions/TARGET/. Fails if a target crashed, hung, or
# could not start, or if a regression input fails. Needs a C compiler and make (cargo-afl
# builds AFL++ when it is installed) and SoftHSM (the CS targets' token).
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#   scripts/fuzz.sh build          (the build only)
#   scripts/fuzz.sh long [TARGET...]
#     (long campaigns, FUZZING.md: each target to FUZZ_EXECS executions, default 10,100,000,
#     in FUZZ_LONG_DIR/TARGET, default fuzz/long, under nice 19; a campaign stopped before is
#     resumed where it stopped: its queue, executions and run time carry over)
#   FUZZ_JOBS=N (parallel targets, default 2), FUZZ_OUT=DIR (default fuzz/out),
#   FUZZ_DEPS_OPT_LEVEL=N (dependencies' opt-level, default 0, 3 for `long`: faster to build,
#   slower to run)
#   The build goes to \$CARGO_TARGET_DIR (default target/), profile directory fuzz/.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
secs=${1:-6}
shift || true
jobs=${FUZZ_JOBS:-2}
out=${FUZZ_OUT:-$root/fuzz/out}

command -v cargo-afl >/dev/null 2>&1 || cargo install --locked cargo-afl@0.18.2
# The AFL++ runtime that cargo-afl built for this rustc (its own layout).
ver=$(rustc -vV | sed -n 's/^release: //p')
commit=$(rustc -vV | sed -n 's/^commit-hash: //p' | cut -c1-7)
rt=$(ls "${XDG_DATA_HOME:-$HOME/.local/share}"/afl.rs/rustc-"$ver"-"$commit"/afl.rs-*/afl-llvm/afl-compiler-rt.o 2>/dev/null | tail -n 1 || true)
if [ -z "$rt" ]; then
  cargo afl config --build --force
  rt=$(ls "${XDG_DATA_HOME:-$HOME/.local/share}"/afl.rs/rustc-"$ver"-"$commit"/afl.rs-*/afl-llvm/afl-compiler-rt.o | tail -n 1)
fi

cd "$root/fuzz"
# Its own profile directory (`fuzz`) in the usual target directory: nothing is shared with the
# workspace's builds, but a kept target directory keeps the dependencies built.
target_dir=${CARGO_TARGET_DIR:-$root/target}
# Dependencies unoptimised (the build is what CI pays for), at opt-level 3 for long campaigns
# (the connection and CS targets run 2.5 to 4 times faster).
deps_opt=0
[ "$secs" = long ] && deps_opt=3
RUSTC_WRAPPER="$root/fuzz/rustc-afl.sh" AFL_RT="$rt" CARGO_TARGET_DIR="$target_dir" \
  cargo build --profile fuzz --locked --quiet \
  --config "profile.fuzz.package.\"*\".opt-level=${FUZZ_DEPS_OPT_LEVEL:-$deps_opt}"
bin=$target_dir/fuzz/lurk-fuzz
# `scripts/fuzz.sh build`: the build only (e.g. to keep the dependencies in a cached target dir).
[ "$secs" = build ] && exit 0
if [ $# -gt 0 ]; then targets=("$@"); else mapfile -t targets < <("$bin" list); fi

# No UI, no CPU binding (cores are shared), no core-dump or CPU-governor checks
# (containers), quick calibration. An input may take a while: the first of a process opens the
# token (10 s is a hang).
# The seeds are calibrated (edges_found then counts their coverage too).
# The map holds every edge of the lurk crates (about 119,000): AFL_MAP_SIZE must cover it; the
# binary says how many it has.
map_size=$(AFL_DUMP_MAP_SIZE=1 "$bin" list || true)
export AFL_NO_UI=1 AFL_NO_AFFINITY=1 AFL_SKIP_CPUFREQ=1 AFL_FAST_CAL=1 \
  AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_MAP_SIZE=$map_size

stat_of() { sed -n "s/^$2 *: //p" "$1/fuzzer_stats"; }

# What a run of target $1 (AFL++ output directory $2) did; fails on a crash or a hang. A
# resumed campaign's earlier crashes and hangs are in crashes.DATE/ and hangs.DATE/ (AFL++
# renames them): counted too.
report() {
  local t=$1 d=$2 crashes hangs
  crashes=$(find "$d" -mindepth 2 -maxdepth 2 -type f -path "$d/crashes*/id:*" | wc -l)
  hangs=$(find "$d" -mindepth 2 -maxdepth 2 -type f -path "$d/hangs*/id:*" | wc -l)
  echo "fuzz: $t: $(stat_of "$d" execs_done) executions in $(stat_of "$d" run_time) s," \
    "$(stat_of "$d" edges_found) edges ($(stat_of "$d" bitmap_cvg)), $crashes crashes, $hangs hangs"
  if [ "$crashes" -gt 0 ] || [ "$hangs" -gt 0 ]; then
    echo "fuzz: $t: inputs in $d/crashes* and hangs*" >&2
    return 1
  fi
}

one() {
  local t=$1
  # Each target its own CS set-up: runs in parallel do not share a ticket store.
  LURK_FUZZ_DIR="$out/$t.cs" cargo afl fuzz -V "$secs" -t 10000 -i "$out/seeds/$t" -o "$out/$t" \
    "$bin" "$t" >"$out/$t.log" 2>&1 || {
    echo "fuzz: $t: afl-fuzz failed, see $out/$t.log" >&2
    return 1
  }
  report "$t" "$out/$t/default"
}

# A long campaign of target $1 in $long_dir/$1, to $execs executions (AFL++ stops at its first
# check past them), resumed when it ran before (`-i -`).
campaign() {
  local t=$1 dir=$long_dir/$1 input
  local d=$dir/afl/default
  mkdir -p "$dir"
  if [ -f "$d/fuzzer_stats" ]; then
    if [ "$(stat_of "$d" execs_done)" -ge "$execs" ]; then
      report "$t" "$d"
      return
    fi
    echo "fuzz: $t: resumed at $(stat_of "$d" execs_done) executions"
    input=-
  else
    LURK_FUZZ_DIR="$dir/seeds.cs" "$bin" seeds "$dir/seeds" >/dev/null
    input=$dir/seeds/$t
  fi
  # nice 19, for afl-fuzz and for its target (in an autogroup of its own: lurk-fuzz sets it).
  LURK_FUZZ_AUTOGROUP_NICE=19 LURK_FUZZ_DIR="$dir/cs" nice -n 19 \
    cargo afl fuzz -E "$execs" -t 10000 -i "$input" \
    -o "$dir/afl" "$bin" "$t" >>"$dir/afl.log" 2>&1 || {
    echo "fuzz: $t: afl-fuzz failed, see $dir/afl.log" >&2
    return 1
  }
  report "$t" "$d"
}

if [ "$secs" = long ]; then
  execs=${FUZZ_EXECS:-10100000}
  long_dir=${FUZZ_LONG_DIR:-$root/fuzz/long}
  run=campaign
else
  rm -rf "$out"
  mkdir -p "$out"
  # The CS set-up (a SoftHSM token, a SQLite store) of the seed run.
  LURK_FUZZ_DIR="$out/seeds.cs" "$bin" seeds "$out/seeds" >/dev/null
  run=one
fi

failed=0
running=0
for t in "${targets[@]}"; do
  if [ "$running" -ge "$jobs" ]; then
    wait -n || failed=1
    running=$((running - 1))
  fi
  "$run" "$t" &
  running=$((running + 1))
done
while [ "$running" -gt 0 ]; do
  wait -n || failed=1
  running=$((running - 1))
done
[ "$run" = campaign ] && exit $failed

# Every input kept as a regression, replayed (without instrumentation feedback: once).
for d in regressions/*/; do
  [ -d "$d" ] || continue
  LURK_FUZZ_DIR="$out/regressions.cs" "$bin" replay "$(basename "$d")" "$d"* >/dev/null || failed=1
done
exit $failed
