//! Small charts for tables and panels: sparklines, category bars and single stats.

use std::fmt::Write as _;

use super::format::*;
use super::time_chart::{Frame, Threshold, TimeChart};
use super::{FONT, GRID_COLOR, PALETTE, TEXT_COLOR, THRESHOLD_COLOR};

/// A small line without axes, for tables. Gaps where steps have no data; the `<title>` gives
/// the range and the last value.
pub fn sparkline_svg(
    label: &str,
    points: &[(i64, f64)],
    from_ms: i64,
    to_ms: i64,
    step_ms: i64,
    unit: &Unit,
) -> String {
    let (w, h) = (120.0, 28.0);
    let chart = TimeChart::new(label, unit.clone(), from_ms, to_ms, step_ms);
    let max = points
        .iter()
        .map(|p| p.1)
        .fold(0.0_f64, f64::max)
        .max(f64::MIN_POSITIVE);
    let frame = Frame {
        left: 1.0,
        top: 2.0,
        width: w - 2.0,
        height: h - 4.0,
        from_ms: chart.from_ms,
        to_ms: chart.to_ms,
        y_lo: 0.0,
        y_hi: max,
    };
    let summary = if points.is_empty() {
        format!("{label}: no data")
    } else {
        let min = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
        format!(
            "{label}: min {}, max {}, last {}",
            unit.format(min),
            unit.format(max),
            unit.format(points[points.len() - 1].1)
        )
    };
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"rl-spark\" width=\"{w}\" height=\"{h}\" \
         viewBox=\"0 0 {w} {h}\" role=\"img\"><title>{}</title>",
        escape(&summary)
    );
    let mut path = String::new();
    for segment in chart.segments(points) {
        for (j, (t, v)) in segment.iter().enumerate() {
            let _ = write!(
                path,
                "{}{:.1},{:.1}",
                if j == 0 { "M" } else { "L" },
                frame.x(*t),
                frame.y(*v)
            );
        }
        if segment.len() == 1 {
            // A lone step: a short stroke so it stays visible.
            let _ = write!(path, "m-1.5,0h3");
        }
    }
    let _ = write!(
        out,
        "<line x1=\"1\" x2=\"{}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"{GRID_COLOR}\" class=\"rl-grid\"/>\
         <path d=\"{path}\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" stroke-linejoin=\"round\"/></svg>",
        w - 1.0,
        frame.bottom(),
        frame.bottom(),
        PALETTE[0]
    );
    out
}

/// Bars for categories (status classes, latency buckets): one bar each, labelled with its
/// value. `bars` are (label, value).
pub fn bar_chart_svg(
    title: &str,
    bars: &[(String, f64)],
    unit: &Unit,
    width: u32,
    height: u32,
) -> String {
    let (w, h) = (width.max(120) as f64, height.max(80) as f64);
    let max = bars.iter().map(|b| b.1).fold(0.0_f64, f64::max);
    let (left, top, bottom) = (8.0, 16.0, 30.0);
    let plot_h = h - top - bottom;
    let slot = (w - 2.0 * left) / bars.len().max(1) as f64;
    let mut desc = format!("{title}:");
    for (label, value) in bars {
        let _ = write!(desc, " {label} {};", unit.format(*value));
    }
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"rl-chart rl-barchart\" width=\"{w}\" height=\"{h}\" \
         viewBox=\"0 0 {w} {h}\" role=\"img\" {FONT} font-size=\"11\"><title>{}</title><desc>{}</desc>\
         <rect class=\"rl-bg\" width=\"{w}\" height=\"{h}\" fill=\"#ffffff\"/>",
        escape(title),
        escape(&desc)
    );
    for (i, (label, value)) in bars.iter().enumerate() {
        let bar_h = if max > 0.0 { value / max * plot_h } else { 0.0 };
        let x = left + slot * i as f64 + slot * 0.15;
        let y = top + plot_h - bar_h;
        let _ = write!(
            out,
            "<g><title>{}: {}</title><rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"/>\
             <text class=\"rl-text\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"{TEXT_COLOR}\">{}</text>\
             <text class=\"rl-text\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"{TEXT_COLOR}\">{}</text></g>",
            escape(label),
            escape(&unit.format(*value)),
            slot * 0.7,
            bar_h.max(if *value > 0.0 { 1.0 } else { 0.0 }),
            PALETTE[0],
            x + slot * 0.35,
            (y - 3.0).max(10.0),
            escape(&unit.format(*value)),
            x + slot * 0.35,
            h - bottom + 14.0,
            escape(&truncate(label, ((slot / 6.0) as usize).max(4))),
        );
    }
    let _ = write!(
        out,
        "<line class=\"rl-axis\" x1=\"{left}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"{TEXT_COLOR}\"/></svg>",
        w - left,
        top + plot_h,
        top + plot_h
    );
    out
}

/// A big number with its label. Above a threshold it turns red and says so in words.
pub fn single_stat_svg(
    title: &str,
    value: Option<f64>,
    unit: &Unit,
    thresholds: &[Threshold],
    width: u32,
    height: u32,
) -> String {
    let (w, h) = (width.max(120) as f64, height.max(80) as f64);
    let crossed = value.and_then(|v| {
        thresholds
            .iter()
            .filter(|t| v >= t.value)
            .max_by(|a, b| a.value.total_cmp(&b.value))
    });
    let text = value
        .map(|v| unit.format(v))
        .unwrap_or_else(|| "no data".into());
    let (color, class) = match crossed {
        Some(_) => (THRESHOLD_COLOR, "rl-stat rl-over"),
        None => ("#111827", "rl-stat rl-value"),
    };
    let note = match crossed {
        Some(t) => format!("▲ over {} ({})", unit.format(t.value), t.label),
        None => String::new(),
    };
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"rl-chart rl-single\" width=\"{w}\" height=\"{h}\" \
         viewBox=\"0 0 {w} {h}\" role=\"img\" {FONT}><title>{}</title><desc>{}</desc>\
         <rect class=\"rl-bg\" width=\"{w}\" height=\"{h}\" fill=\"#ffffff\"/>\
         <text class=\"rl-text\" x=\"{:.1}\" y=\"20\" text-anchor=\"middle\" fill=\"{TEXT_COLOR}\" font-size=\"12\">{}</text>\
         <text class=\"{class}\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"{color}\" font-size=\"30\" font-weight=\"600\">{}</text>\
         <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"{THRESHOLD_COLOR}\" font-size=\"11\">{}</text></svg>",
        escape(title),
        escape(&format!("{title}: {text}. {note}")),
        w / 2.0,
        escape(title),
        w / 2.0,
        h / 2.0 + 12.0,
        escape(&text),
        w / 2.0,
        h - 8.0,
        escape(&note),
    )
}
