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
