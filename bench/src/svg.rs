//! Plain SVG charts written by hand (no font or system library needed).

use std::fmt::Write;

const W: f64 = 820.0;
const PALETTE: [&str; 6] = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A horizontal bar chart: one bar per (label, value, colour index, note).
pub(crate) fn bars(title: &str, unit: &str, items: &[(String, f64, usize, String)]) -> String {
    let row = 22.0;
    // Room for the longest label (about 6.8 px per character at font-size 12).
    let longest = items
        .iter()
        .map(|i| i.0.chars().count())
        .max()
        .unwrap_or(10);
    let left = longest as f64 * 6.8 + 16.0;
    let right = 150.0;
    let w = left + 420.0 + right;
    let top = 40.0;
    let h = top + row * items.len() as f64 + 30.0;
    let max = items.iter().map(|i| i.1).fold(0.0_f64, f64::max).max(1e-9);
    let scale = (w - left - right) / max;
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="10" y="22" font-size="15" font-weight="bold">{}</text>
"##,
        esc(title)
    );
    for (i, (label, v, colour, note)) in items.iter().enumerate() {
        let y = top + row * i as f64;
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}" text-anchor="end">{}</text><rect x="{left}" y="{}" width="{:.1}" height="{}" fill="{}"/><text x="{:.1}" y="{}">{} {} {}</text>"##,
            left - 6.0,
            y + 14.0,
            esc(label),
            y + 3.0,
            (v * scale).max(0.5),
            row - 6.0,
            PALETTE[colour % PALETTE.len()],
            left + v * scale + 4.0,
            y + 14.0,
            fmt_num(*v),
            esc(unit),
            esc(note)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// A line chart of several series of (x, y) points.
pub(crate) fn lines(
    title: &str,
    xlabel: &str,
    ylabel: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> String {
    let (left, right, top, bottom) = (80.0, 30.0, 40.0, 60.0);
    let h = 380.0;
    let pts = series.iter().flat_map(|s| s.1.iter());
    let xmax = pts.clone().map(|p| p.0).fold(0.0_f64, f64::max).max(1e-9);
    let ymax = pts.map(|p| p.1).fold(0.0_f64, f64::max).max(1e-9) * 1.1;
    let px = |x: f64| left + x / xmax * (W - left - right);
    let py = |y: f64| h - bottom - y / ymax * (h - top - bottom);
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="10" y="22" font-size="15" font-weight="bold">{}</text>
<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="black"/>
<line x1="{left}" y1="{top}" x2="{left}" y2="{}" stroke="black"/>
<text x="{}" y="{}" text-anchor="middle">{}</text>
<text x="16" y="{}" transform="rotate(-90 16 {})" text-anchor="middle">{}</text>
"##,
        esc(title),
        h - bottom,
        W - right,
        h - bottom,
        h - bottom,
        (left + W - right) / 2.0,
        h - 15.0,
        esc(xlabel),
        (top + h - bottom) / 2.0,
        (top + h - bottom) / 2.0,
        esc(ylabel)
    );
    for k in 0..=4 {
        let y = ymax * f64::from(k) / 4.0;
        let x = xmax * f64::from(k) / 4.0;
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{:.1}" text-anchor="end">{}</text><line x1="{left}" y1="{:.1}" x2="{}" y2="{:.1}" stroke="#ddd"/><text x="{:.1}" y="{}" text-anchor="middle">{}</text>"##,
            left - 4.0,
            py(y) + 4.0,
            fmt_num(y),
            py(y),
            W - right,
            py(y),
            px(x),
            h - bottom + 16.0,
            fmt_num(x)
        );
    }
    for (i, (name, p)) in series.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let path: Vec<String> = p
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        let _ = writeln!(
            s,
            r##"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/><text x="{}" y="{}" fill="{colour}" text-anchor="end">{}</text>"##,
            path.join(" "),
            // The legend sits in the bottom-right corner, away from the curves' rise.
            W - right - 10.0,
            h - bottom - 10.0 - 16.0 * (series.len() - 1 - i) as f64,
            esc(name)
        );
    }
    s.push_str("</svg>\n");
    s
}

pub(crate) fn fmt_num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}
