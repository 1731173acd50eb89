//! Small inline SVG charts: horizontal bars, a histogram, a line. Hand
//! drawn (a few dozen elements each) so that the report is one static file
//! with no chart library; every label is XML-escaped.

use std::fmt::Write as _;

/// Escape text for HTML and SVG (element content and quoted attributes).
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// One bar: its label, the value that sets its length, the text after it.
pub struct Bar {
    pub label: String,
    pub value: f64,
    pub text: String,
}

const LABEL_W: f64 = 230.0;
const BAR_W: f64 = 380.0;
const ROW_H: f64 = 22.0;

fn clip(label: &str, n: usize) -> String {
    if label.chars().count() <= n {
        label.to_string()
    } else {
        let mut s: String = label.chars().take(n - 1).collect();
        s.push('…');
        s
    }
}

/// Horizontal bars scaled to `max` (e.g. 1.0 for rates).
pub fn hbars(name: &str, title: &str, bars: &[Bar], max: f64) -> String {
    let h = ROW_H * bars.len().max(1) as f64 + 10.0;
    let w = LABEL_W + BAR_W + 120.0;
    let mut s = format!(
        "<svg class=\"chart\" data-chart=\"{}\" role=\"img\" aria-label=\"{}\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" xmlns=\"http://www.w3.org/2000/svg\">",
        esc(name),
        esc(title)
    );
    if bars.is_empty() {
        let _ = write!(s, "<text x=\"4\" y=\"16\" class=\"muted\">no data</text>");
    }
    for (i, b) in bars.iter().enumerate() {
        let y = 4.0 + i as f64 * ROW_H;
        let len = if max > 0.0 {
            (b.value / max).clamp(0.0, 1.0) * BAR_W
        } else {
            0.0
        };
        let _ = write!(
            s,
            "<g class=\"bar\"><title>{}: {}</title><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\
             <rect class=\"track\" x=\"{LABEL_W}\" y=\"{y}\" width=\"{BAR_W}\" height=\"{}\"/>\
             <rect class=\"fill\" x=\"{LABEL_W}\" y=\"{y}\" width=\"{len:.1}\" height=\"{}\"/>\
             <text x=\"{}\" y=\"{}\">{}</text></g>",
            esc(&b.label),
            esc(&b.text),
            LABEL_W - 6.0,
            y + 14.0,
            esc(&clip(&b.label, 34)),
            ROW_H - 6.0,
            ROW_H - 6.0,
            LABEL_W + BAR_W + 6.0,
            y + 14.0,
            esc(&b.text)
        );
    }
    s.push_str("</svg>");
    s
}

/// Vertical bars over labelled bins (a histogram of counts).
pub fn columns(name: &str, title: &str, bins: &[(String, u64)], x_label: &str) -> String {
    let (w, h, left, bottom, top) = (560.0, 230.0, 40.0, 40.0, 12.0);
    let max = bins.iter().map(|b| b.1).max().unwrap_or(0).max(1) as f64;
    let n = bins.len().max(1) as f64;
    let slot = (w - left - 10.0) / n;
    let mut s = format!(
        "<svg class=\"chart\" data-chart=\"{}\" role=\"img\" aria-label=\"{}\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" xmlns=\"http://www.w3.org/2000/svg\">",
        esc(name),
        esc(title)
    );
    let _ = write!(
        s,
        "<line class=\"axis\" x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\"/>",
        h - bottom,
        w - 10.0,
        h - bottom
    );
    for (i, (label, count)) in bins.iter().enumerate() {
        let bh = (*count as f64 / max) * (h - bottom - top - 14.0);
        let x = left + i as f64 * slot + slot * 0.15;
        let y = h - bottom - bh;
        let _ = write!(
            s,
            "<g class=\"bar\"><title>{}: {count}</title><rect class=\"fill\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{bh:.1}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{count}</text>\
             <text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text></g>",
            esc(label),
            slot * 0.7,
            x + slot * 0.35,
            y - 3.0,
            x + slot * 0.35,
            h - bottom + 15.0,
            esc(&clip(label, 10))
        );
    }
    let _ = write!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" class=\"muted\">{}</text></svg>",
        (w + left) / 2.0,
        h - 6.0,
        esc(x_label)
    );
    s
}

/// A rising line of `points` (x in seconds from the first, y a count).
pub fn line(name: &str, title: &str, points: &[(f64, f64)], x_label: &str) -> String {
    let (w, h, left, bottom, top, right) = (560.0, 230.0, 50.0, 40.0, 12.0, 16.0);
    let max_x = points.iter().map(|p| p.0).fold(0.0, f64::max).max(1e-9);
    let max_y = points.iter().map(|p| p.1).fold(0.0, f64::max).max(1.0);
    let sx = |x: f64| left + x / max_x * (w - left - right);
    let sy = |y: f64| h - bottom - y / max_y * (h - bottom - top);
    let mut s = format!(
        "<svg class=\"chart\" data-chart=\"{}\" role=\"img\" aria-label=\"{}\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" xmlns=\"http://www.w3.org/2000/svg\">",
        esc(name),
        esc(title)
    );
    let _ = write!(
        s,
        "<line class=\"axis\" x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\"/><line class=\"axis\" x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{}\"/>",
        h - bottom,
        w - right,
        h - bottom,
        h - bottom
    );
    let path: Vec<String> = points
        .iter()
        .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
        .collect();
    if !path.is_empty() {
        let _ = write!(
            s,
            "<polyline class=\"line\" fill=\"none\" points=\"{}\"/>",
            path.join(" ")
        );
    }
    let _ = write!(
        s,
        "<text x=\"{left}\" y=\"{}\" class=\"muted\">0</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\" class=\"muted\">{:.0} s</text>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"end\" class=\"muted\">{max_y:.0}</text>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\" class=\"muted\">{}</text></svg>",
        h - bottom + 15.0,
        w - right,
        h - bottom + 15.0,
        max_x,
        left - 4.0,
        top + 8.0,
        (w + left) / 2.0,
        h - 6.0,
        esc(x_label)
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped() {
        let svg = hbars(
            "t",
            "<x>",
            &[Bar {
                label: "</svg><script>alert(1)</script>".into(),
                value: 1.0,
                text: "a&b".into(),
            }],
            1.0,
        );
        assert!(!svg.contains("<script>"));
        assert!(svg.contains("a&amp;b"));
        assert_eq!(svg.matches("</svg>").count(), 1);
    }
}
