//! The tool runs and writes its outputs (no figure is checked: they depend on the machine).

use std::process::Command;

#[test]
fn quick_cs_half_writes_the_markdown_and_the_plots() {
    let out = tempfile::tempdir().unwrap();
    let st = Command::new(env!("CARGO_BIN_EXE_lurk-bench"))
        .args(["--quick", "--only", "cs", "--out"])
        .arg(out.path())
        .status()
        .expect("run lurk-bench");
    assert!(st.success());
    let md = std::fs::read_to_string(out.path().join("BENCHMARKS.md")).unwrap();
    assert!(md.contains("lurk-bench:begin") && md.contains("lurk-bench:end"));
    assert!(md.contains("### Crypto Service in-process"));
    for svg in ["bench-handshake.svg", "bench-cs.svg", "bench-memory.svg"] {
        let s = std::fs::read_to_string(out.path().join("docs").join(svg)).unwrap();
        assert!(
            s.starts_with("<svg") && s.trim_end().ends_with("</svg>"),
            "{svg}"
        );
    }
}

/// The requests at every cap at once are within the caps: the ClientHello and the ServerHello
/// are accepted, the flights refused (invalid_handshake) only for their Finished, which the tool
/// makes wrong; nothing is refused as invalid_format.
#[test]
fn parse_cost_runs_the_largest_requests_the_caps_allow() {
    let out = Command::new(env!("CARGO_BIN_EXE_lurk-bench"))
        .args(["parse-cost", "--n", "3"])
        .output()
        .expect("run lurk-bench parse-cost");
    let md = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{md}");
    for (row, answer) in [
        ("ClientHello at every cap", "accepted"),
        ("flight at every cap", "refused (invalid_handshake)"),
        ("ServerHello at the 64 KiB cap", "accepted"),
    ] {
        let line = md
            .lines()
            .find(|l| l.contains(row))
            .unwrap_or_else(|| panic!("no {row} in {md}"));
        assert!(line.contains(answer), "{line}");
    }
    assert!(!md.contains("invalid_format"), "{md}");
}
