#!/usr/bin/env bash
# MSRV check: every dependency in Cargo.lock must declare a rust-version no newer than the
# workspace's `rust-version`. (Compiling with that exact toolchain would also check our own
# code; the build machines have one toolchain and cannot fetch another.)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo metadata --format-version 1 --locked | python3 -c '
import json, re, sys
m = json.load(sys.stdin)
def ver(s):
    p = [int(x) for x in s.split(".")[:3]]
    return tuple(p + [0] * (3 - len(p)))
ours = {p["rust_version"] for p in m["packages"] if p["source"] is None}
if len(ours) != 1 or None in ours:
    sys.exit(f"check-msrv: workspace crates must share one rust-version, found {ours}")
msrv = ours.pop()
used = {n["id"] for n in m["resolve"]["nodes"]}
newer = sorted(f"{p['name']} {p['version']} needs {p['rust_version']}"
               for p in m["packages"]
               if p["id"] in used and p.get("rust_version") and ver(p["rust_version"]) > ver(msrv))
if newer:
    sys.exit("check-msrv: dependencies newer than rust-version " + msrv + ":\n  " + "\n  ".join(newer))
print(f"check-msrv: {len(used)} packages, none needs more than Rust {msrv}")
'
