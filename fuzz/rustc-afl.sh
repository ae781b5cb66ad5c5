#!/usr/bin/env bash
# RUSTC_WRAPPER for the fuzz build (scripts/fuzz.sh): AFL++'s coverage instrumentation
# (SanitizerCoverage, as cargo-afl sets it) for the lurk crates only, and the AFL++ runtime
# linked into the fuzz binary. Dependencies build uninstrumented: faster to build, and the
# coverage map holds only our code.
#   RUSTC_WRAPPER=fuzz/rustc-afl.sh AFL_RT=.../afl-compiler-rt.o cargo build --profile fuzz
set -euo pipefail
rustc=$1
shift
extra=()
name=
prev=
for a in "$@"; do
  [ "$prev" = --crate-name ] && name=$a
  prev=$a
done
case "$name" in
  lurk_proto | lurk_engine | lurk_cs | lurk_fuzz)
    extra=(-C passes=sancov-module
      -C llvm-args=-sanitizer-coverage-level=3
      -C llvm-args=-sanitizer-coverage-trace-pc-guard
      -C llvm-args=-sanitizer-coverage-prune-blocks=0
      -C llvm-args=-sanitizer-coverage-trace-compares
      --cfg fuzzing)
    ;;
esac
# The fuzz binary links the runtime (the sancov hooks, the fork server, the shared map).
if [ "$name" = lurk_fuzz ]; then
  case " $* " in
    *" --crate-type bin "*) extra+=(-C "link-arg=${AFL_RT:?path of afl-compiler-rt.o}") ;;
  esac
fi
exec "$rustc" "$@" "${extra[@]}"
