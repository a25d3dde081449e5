//! Charts as self-contained SVG strings: line charts with several series, stacked areas, bars
//! over time, category bars, sparklines and single stats.
//!
//! Nothing here knows about HTTP or templates, so the alert e-mail can draw the same chart and
//! rasterise it (resvg): every colour, font and stroke is a presentation attribute, fonts are the
//! generic `sans-serif`, and the chart paints its own white background. The dashboard's CSS
//! overrides the `rl-*` classes for dark mode (CSS wins over presentation attributes).
//!
//! Conventions every chart keeps:
//! - every piece of text is escaped ([`escape`]): series names and titles are telemetry text;
//! - a step without data is a gap, never a line through zero;
//! - each time step has a `<title>` (the browser's hover tooltip) with every series' value;
//! - the chart has a `<title>` and a `<desc>` summarising the data (its text equivalent), and
//!   series differ by dash pattern as well as colour.

use std::fmt::Write as _;

/// Series colours: readable on white and on a dark background.
const PALETTE: [&str; 8] = [
    "#2563eb", "#ea580c", "#7c3aed", "#059669", "#db2777", "#0891b2", "#ca8a04", "#64748b",
];
/// Dash patterns, paired with colours, so series differ by more than colour.
const DASHES: [&str; 4] = ["", "6 3", "2 3", "8 3 2 3"];
const THRESHOLD_COLOR: &str = "#dc2626";
const TEXT_COLOR: &str = "#4b5563";
const GRID_COLOR: &str = "#e5e7eb";
const FONT: &str = "font-family=\"sans-serif\"";

/// Escapes text for an XML/HTML text node or a quoted attribute value.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control characters are not allowed in XML 1.0.
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\t' | '\r') => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// What a value measures; decides tick spacing and labels.
#[derive(Debug, Clone, PartialEq)]
pub enum Unit {
    /// Milliseconds, shown as µs/ms/s/min as the size demands.
    Millis,
    /// Seconds (OTel durations); shown like [`Unit::Millis`].
    Seconds,
    /// A per-second rate; the string is the suffix, e.g. `req/s`.
    PerSecond(String),
    /// A fraction 0..1 shown as a percentage.
    Ratio,
    /// Already a percentage.
    Percent,
    Bytes,
    /// A plain count with k/M suffixes; the string names the things counted (may be empty).
    Count(String),
}

impl Unit {
    /// The unit of an OTLP metric (UCUM-ish `unit` field) after an aggregation: `rate` turns
    /// any unit into "per second".
    pub fn from_otel(unit: &str, rate: bool) -> Unit {
        let bare = unit.trim().trim_start_matches('{').trim_end_matches('}');
        if rate {
            return match unit {
                "s" | "ms" => Unit::PerSecond(format!("{unit}/s")),
                "By" => Unit::PerSecond("B/s".into()),
                _ if bare.is_empty() || bare == "1" => Unit::PerSecond("/s".into()),
                _ => Unit::PerSecond(format!("{bare}/s")),
            };
        }
        match unit {
            "ms" => Unit::Millis,
            "s" => Unit::Seconds,
            "By" => Unit::Bytes,
            "1" => Unit::Ratio,
            "%" => Unit::Percent,
            _ => Unit::Count(bare.to_string()),
        }
    }

    /// (divisor, suffix) for an axis whose largest value is `max`: ticks are nice numbers of
    /// `value / divisor`, labelled with `suffix`.
    fn scale(&self, max: f64) -> (f64, String) {
        let max = max.abs();
        match self {
            Unit::Millis => millis_scale(max),
            Unit::Seconds => {
                let (div, suffix) = millis_scale(max * 1000.0);
                (div / 1000.0, suffix)
            }
            // A trickle reads better per minute (or hour) than as 0.0003/s.
            Unit::PerSecond(suffix)
                if max > 0.0
                    && max < 0.1
                    && let Some(base) = suffix.strip_suffix("/s") =>
            {
                if max * 60.0 >= 0.1 {
                    (1.0 / 60.0, format!("{}/min", spaced(base)))
                } else {
                    (1.0 / 3600.0, format!("{}/h", spaced(base)))
                }
            }
            Unit::PerSecond(suffix) => {
                let (div, prefix) = si_scale(max);
                (div, format!("{prefix}{}", spaced(suffix)))
            }
            Unit::Ratio => (0.01, "%".into()),
            Unit::Percent => (1.0, "%".into()),
            Unit::Bytes => {
                let mut div = 1.0;
                let mut name = "B";
                for unit in ["KiB", "MiB", "GiB", "TiB"] {
                    if max >= div * 1024.0 {
                        div *= 1024.0;
                        name = unit;
                    }
                }
                (div, format!(" {name}"))
            }
            Unit::Count(what) => {
                let (div, prefix) = si_scale(max);
                (div, format!("{prefix}{}", spaced(what)))
            }
        }
    }

    /// One value with the scale that suits it, e.g. `1.25 s`, `12 req/s`, `3.5%`.
    pub fn format(&self, value: f64) -> String {
        if !value.is_finite() {
            return "–".into();
        }
        let (div, suffix) = self.scale(value);
        format!("{}{suffix}", number(value / div))
    }

    /// The axis label: what the numbers on the axis are in.
    fn axis_label(&self, max: f64) -> String {
        self.scale(max).1.trim().to_string()
    }
}

fn spaced(suffix: &str) -> String {
    match suffix {
        "" => String::new(),
        s if s.starts_with('/') || s.starts_with('%') => s.to_string(),
        s => format!(" {s}"),
    }
}

fn millis_scale(max_ms: f64) -> (f64, String) {
    if max_ms >= 120_000.0 {
        (60_000.0, " min".into())
    } else if max_ms >= 1000.0 {
        (1000.0, " s".into())
    } else if max_ms > 0.0 && max_ms < 1.0 {
        (0.001, " µs".into())
    } else {
        (1.0, " ms".into())
    }
}

fn si_scale(max: f64) -> (f64, &'static str) {
    if max >= 1e9 {
        (1e9, "G")
    } else if max >= 1e6 {
        (1e6, "M")
    } else if max >= 1e4 {
        (1e3, "k")
    } else {
        (1.0, "")
    }
}

/// A number with about three significant digits and no trailing zeros.
pub fn number(value: f64) -> String {
    let abs = value.abs();
    let text = if abs >= 100.0 || abs == 0.0 {
        format!("{value:.0}")
    } else if abs >= 10.0 {
        format!("{value:.1}")
    } else if abs >= 1.0 {
        format!("{value:.2}")
    } else if abs >= 0.01 {
        format!("{value:.3}")
    } else if abs >= 0.0001 {
        format!("{value:.5}")
    } else {
        format!("{value:.2e}")
    };
    let text = if text.contains('.') && !text.contains('e') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    };
    if text == "-0" { "0".into() } else { text }
}

/// Nice tick values covering `[lo, hi]`: steps of 1, 2, 2.5 or 5 × 10^k, about `target` ticks.
pub fn nice_ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    let (lo, hi) = if hi > lo { (lo, hi) } else { (lo, lo + 1.0) };
    let raw = (hi - lo) / target.max(1) as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude);
    let first = (lo / step).floor() * step;
    let decimals = (-step.log10().floor() + 2.0).clamp(0.0, 12.0);
    let scale = 10f64.powf(decimals);
    let mut ticks = Vec::new();
    let mut i = 0;
    loop {
        let tick = first + step * i as f64;
        // Round away float noise (0.30000000000000004).
        let tick = (tick * scale).round() / scale;
        ticks.push(tick);
        if tick >= hi - step * 1e-9 || i > 50 {
            break;
        }
        i += 1;
    }
    ticks
}

/// Time ticks (unix ms) at a round UTC interval with at most `max_ticks` in the range.
pub fn time_ticks(from_ms: i64, to_ms: i64, max_ticks: usize) -> (Vec<i64>, i64) {
    const S: i64 = 1000;
    const M: i64 = 60 * S;
    const H: i64 = 60 * M;
    const D: i64 = 24 * H;
    let span = (to_ms - from_ms).max(1);
    let interval = [
        10 * S,
        30 * S,
        M,
        2 * M,
        5 * M,
        10 * M,
        15 * M,
        30 * M,
        H,
        2 * H,
        3 * H,
        6 * H,
        12 * H,
        D,
        2 * D,
        7 * D,
        30 * D,
    ]
    .into_iter()
    .find(|i| span / i <= max_ticks.max(1) as i64)
    // Longer spans: whole days, still at most `max_ticks` of them.
    .unwrap_or_else(|| (span / max_ticks.max(1) as i64 / D + 1) * D);
    let first = from_ms.div_euclid(interval) * interval + interval;
    let ticks = (0..=max_ticks as i64)
        .map_while(|i| first.checked_add(i.checked_mul(interval)?))
        .take_while(|t| *t <= to_ms)
        .collect();
    (ticks, interval)
}

/// (year, month 1-12, day, hour, minute, second) of a unix time in ms, UTC.
pub fn civil(ms: i64) -> (i64, u32, u32, u32, u32, u32) {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's days → civil date.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        month,
        day,
        (rem / 3600) as u32,
        (rem % 3600 / 60) as u32,
        (rem % 60) as u32,
    )
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `2026-11-28 16:04:10 UTC`.
pub fn format_utc(ms: i64) -> String {
    let (y, mo, d, h, mi, s) = civil(ms);
    format!("{y}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02} UTC")
}

/// A tick label: time of day, with the date at midnight or when ticks are days apart.
fn tick_label(ms: i64, interval: i64) -> String {
    let (_, mo, d, h, mi, s) = civil(ms);
    let month = MONTHS[(mo - 1) as usize];
    if interval >= 86_400_000 || (h == 0 && mi == 0 && s == 0) {
        format!("{month} {d}")
    } else if interval < 60_000 {
        format!("{h:02}:{mi:02}:{s:02}")
    } else {
        format!("{h:02}:{mi:02}")
    }
}

/// A hover/tooltip time: time of day for short ranges, with the date otherwise.
fn point_time(ms: i64, range_ms: i64) -> String {
    let (_, mo, d, h, mi, s) = civil(ms);
    if range_ms <= 86_400_000 {
        format!("{h:02}:{mi:02}:{s:02} UTC")
    } else {
        format!("{} {d} {h:02}:{mi:02} UTC", MONTHS[(mo - 1) as usize])
    }
}

/// One named line of a time chart. Points are (unix ms, value), sorted by time.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(i64, f64)>,
}

/// A horizontal line, e.g. an alert rule's threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    pub value: f64,
    pub label: String,
}

/// A shaded time interval, e.g. a period in which an alert was firing.
#[derive(Debug, Clone, PartialEq)]
pub struct Interval {
    pub from_ms: i64,
    pub to_ms: i64,
    pub label: String,
}

/// A chart over time. Build it, then draw it as lines, stacked areas or bars.
///
/// ```
/// use redline::web::charts::{TimeChart, Unit};
/// let svg = TimeChart::new("p99 latency", Unit::Millis, 0, 600_000, 60_000)
///     .series("p99", vec![(0, 120.0), (60_000, 180.0), (180_000, 90.0)])
///     .threshold(150.0, "alert: p99 > 150 ms")
///     .shade(60_000, 120_000, "firing")
///     .line_svg();
/// assert!(svg.starts_with("<svg"));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct TimeChart {
    pub title: String,
    pub unit: Unit,
    pub from_ms: i64,
    pub to_ms: i64,
    /// The query step: consecutive points further apart than this (×1.5) leave a gap.
    pub step_ms: i64,
    pub width: u32,
    pub height: u32,
    pub series: Vec<Series>,
    pub thresholds: Vec<Threshold>,
    pub shaded: Vec<Interval>,
    /// Start the value axis at zero (true unless told otherwise).
    pub zero_based: bool,
    /// Gaps relative to each series' own usual spacing instead of the step: for metrics
    /// exported less often than the step (a 60 s export interval on a 30 s step).
    pub adaptive_gaps: bool,
}

/// Plot geometry shared by the time charts.
struct Frame {
    left: f64,
    top: f64,
    width: f64,
    height: f64,
    from_ms: i64,
    to_ms: i64,
    y_lo: f64,
    y_hi: f64,
}

impl Frame {
    fn x(&self, ms: i64) -> f64 {
        let span = (self.to_ms - self.from_ms).max(1) as f64;
        self.left + (ms - self.from_ms) as f64 / span * self.width
    }

    fn y(&self, value: f64) -> f64 {
        let span = (self.y_hi - self.y_lo).max(f64::MIN_POSITIVE);
        let clamped = value.clamp(self.y_lo, self.y_hi);
        self.top + self.height - (clamped - self.y_lo) / span * self.height
    }

    fn bottom(&self) -> f64 {
        self.top + self.height
    }
}

impl TimeChart {
    pub fn new(
        title: impl Into<String>,
        unit: Unit,
        from_ms: i64,
        to_ms: i64,
        step_ms: i64,
    ) -> Self {
        TimeChart {
            title: title.into(),
            unit,
            from_ms,
            to_ms: to_ms.max(from_ms + 1),
            step_ms: step_ms.max(1),
            width: 640,
            height: 220,
            series: Vec::new(),
            thresholds: Vec::new(),
            shaded: Vec::new(),
            zero_based: true,
            adaptive_gaps: false,
        }
    }

    pub fn series(mut self, name: impl Into<String>, points: Vec<(i64, f64)>) -> Self {
        let mut points: Vec<(i64, f64)> =
            points.into_iter().filter(|(_, v)| v.is_finite()).collect();
        points.sort_by_key(|(t, _)| *t);
        self.series.push(Series {
            name: name.into(),
            points,
        });
        self
    }

    pub fn threshold(mut self, value: f64, label: impl Into<String>) -> Self {
        if value.is_finite() {
            self.thresholds.push(Threshold {
                value,
                label: label.into(),
            });
        }
        self
    }

    pub fn shade(mut self, from_ms: i64, to_ms: i64, label: impl Into<String>) -> Self {
        self.shaded.push(Interval {
            from_ms,
            to_ms,
            label: label.into(),
        });
        self
    }

    pub fn size(mut self, width: u32, height: u32) -> Self {
        self.width = width.max(120);
        self.height = height.max(80);
        self
    }

    pub fn zero_based(mut self, zero_based: bool) -> Self {
        self.zero_based = zero_based;
        self
    }

    pub fn adaptive_gaps(mut self, adaptive: bool) -> Self {
        self.adaptive_gaps = adaptive;
        self
    }

    /// Whether any series has a point.
    pub fn has_data(&self) -> bool {
        self.series.iter().any(|s| !s.points.is_empty())
    }

    fn visible_points(&self) -> impl Iterator<Item = &(i64, f64)> {
        self.series.iter().flat_map(|s| s.points.iter())
    }

    fn frame(&self, values_max: f64, values_min: f64) -> (Frame, Vec<f64>) {
        let legend = if self.series.len() > 1 { 18.0 } else { 0.0 };
        let mut hi = values_max;
        let mut lo = if self.zero_based {
            values_min.min(0.0)
        } else {
            values_min
        };
        for t in &self.thresholds {
            hi = hi.max(t.value);
            lo = lo.min(t.value);
        }
        if !hi.is_finite() || !lo.is_finite() {
            (lo, hi) = (0.0, 1.0);
        }
        if hi <= lo {
            hi = if lo == 0.0 { 1.0 } else { lo + lo.abs() * 0.1 };
        }
        let (div, _) = self.unit.scale(hi.abs().max(lo.abs()));
        let rows = ((self.height as f64 - 40.0 - legend) / 36.0).clamp(2.0, 6.0) as usize;
        let ticks: Vec<f64> = nice_ticks(lo / div, hi / div, rows)
            .into_iter()
            .map(|t| t * div)
            .collect();
        let y_lo = ticks.first().copied().unwrap_or(lo).min(lo);
        let y_hi = ticks.last().copied().unwrap_or(hi).max(hi);
        let frame = Frame {
            left: 58.0,
            top: 22.0,
            width: self.width as f64 - 58.0 - 14.0,
            height: self.height as f64 - 22.0 - 24.0 - legend,
            from_ms: self.from_ms,
            to_ms: self.to_ms,
            y_lo,
            y_hi,
        };
        (frame, ticks)
    }

    fn open(&self, out: &mut String, kind: &str) {
        let (w, h) = (self.width, self.height);
        let _ = write!(
            out,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"rl-chart rl-{kind}\" \
             width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\" {FONT} \
             font-size=\"11\"><title>{}</title><desc>{}</desc>\
             <rect class=\"rl-bg\" width=\"{w}\" height=\"{h}\" fill=\"#ffffff\"/>",
            escape(&self.title),
            escape(&self.describe()),
        );
    }

    /// The text equivalent: per series its range and last value; thresholds and shaded periods.
    pub fn describe(&self) -> String {
        let mut text = format!(
            "{} from {} to {}.",
            self.title,
            format_utc(self.from_ms),
            format_utc(self.to_ms)
        );
        if !self.has_data() {
            text.push_str(" No data in this range.");
        }
        for s in &self.series {
            if s.points.is_empty() {
                let _ = write!(text, " {}: no data.", s.name);
                continue;
            }
            let min = s.points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
            let max = s
                .points
                .iter()
                .map(|p| p.1)
                .fold(f64::NEG_INFINITY, f64::max);
            let last = s.points.last().map(|p| p.1).unwrap_or(0.0);
            let _ = write!(
                text,
                " {}: {} points, min {}, max {}, last {}.",
                s.name,
                s.points.len(),
                self.unit.format(min),
                self.unit.format(max),
                self.unit.format(last)
            );
        }
        for t in &self.thresholds {
            let _ = write!(
                text,
                " Threshold {} at {}.",
                t.label,
                self.unit.format(t.value)
            );
        }
        for i in &self.shaded {
            let _ = write!(
                text,
                " {} from {} to {}.",
                i.label,
                format_utc(i.from_ms),
                format_utc(i.to_ms)
            );
        }
        text
    }

    /// Grid, axes with unit-aware tick labels, shaded intervals.
    fn axes(&self, out: &mut String, frame: &Frame, ticks: &[f64]) {
        for interval in &self.shaded {
            let from = interval.from_ms.max(self.from_ms);
            let to = interval.to_ms.min(self.to_ms);
            if to <= from {
                continue;
            }
            let (x0, x1) = (frame.x(from), frame.x(to));
            let _ = write!(
                out,
                "<rect class=\"rl-shade\" x=\"{x0:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" \
                 fill=\"{THRESHOLD_COLOR}\" fill-opacity=\"0.12\"><title>{}: {} – {}</title></rect>",
                frame.top,
                (x1 - x0).max(1.0),
                frame.height,
                escape(&interval.label),
                point_time(from, self.to_ms - self.from_ms),
                point_time(to, self.to_ms - self.from_ms),
            );
        }
        let top_value = ticks.last().copied().unwrap_or(frame.y_hi);
        let (div, _) = self.unit.scale(
            top_value
                .abs()
                .max(ticks.first().copied().unwrap_or(0.0).abs()),
        );
        for tick in ticks {
            let y = frame.y(*tick);
            let _ = write!(
                out,
                "<line class=\"rl-grid\" x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" \
                 stroke=\"{GRID_COLOR}\" stroke-width=\"1\"/>\
                 <text class=\"rl-text\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"{TEXT_COLOR}\">{}</text>",
                frame.left,
                frame.left + frame.width,
                frame.left - 6.0,
                y + 4.0,
                escape(&number(tick / div)),
            );
        }
        // The unit of the value axis, above it.
        let _ = write!(
            out,
            "<text class=\"rl-text rl-unit\" x=\"{:.1}\" y=\"11\" text-anchor=\"end\" fill=\"{TEXT_COLOR}\" font-size=\"10\">{}</text>",
            frame.left - 6.0,
            escape(&self.unit.axis_label(top_value))
        );
        let max_ticks = (frame.width / 80.0).max(2.0) as usize;
        let (times, interval) = time_ticks(self.from_ms, self.to_ms, max_ticks);
        for t in times {
            let x = frame.x(t);
            // A label at the right edge ends there instead of being cut off.
            let anchor = if x > frame.left + frame.width - 20.0 {
                "end"
            } else {
                "middle"
            };
            let _ = write!(
                out,
                "<line class=\"rl-grid\" x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" \
                 stroke=\"{GRID_COLOR}\" stroke-width=\"1\"/>\
                 <text class=\"rl-text\" x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"{anchor}\" fill=\"{TEXT_COLOR}\">{}</text>",
                frame.top,
                frame.bottom() + 4.0,
                frame.bottom() + 16.0,
                tick_label(t, interval),
            );
        }
        let _ = write!(
            out,
            "<line class=\"rl-axis\" x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"{TEXT_COLOR}\" stroke-width=\"1\"/>",
            frame.left,
            frame.left + frame.width,
            frame.bottom(),
            frame.bottom()
        );
        if !self.has_data() {
            let _ = write!(
                out,
                "<text class=\"rl-text rl-nodata\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" \
                 fill=\"{TEXT_COLOR}\" font-size=\"13\">No data in this range</text>",
                frame.left + frame.width / 2.0,
                frame.top + frame.height / 2.0
            );
        }
    }

    fn thresholds_svg(&self, out: &mut String, frame: &Frame) {
        for t in &self.thresholds {
            let y = frame.y(t.value);
            let _ = write!(
                out,
                "<g class=\"rl-threshold\"><title>{}: {}</title>\
                 <line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"{THRESHOLD_COLOR}\" \
                 stroke-width=\"1.5\" stroke-dasharray=\"5 4\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"{THRESHOLD_COLOR}\" font-size=\"10\">{}</text></g>",
                escape(&t.label),
                escape(&self.unit.format(t.value)),
                frame.left,
                frame.left + frame.width,
                frame.left + frame.width - 2.0,
                y - 3.0,
                escape(&t.label),
            );
        }
    }

    fn legend(&self, out: &mut String, swatch_area: bool) {
        if self.series.len() < 2 {
            return;
        }
        let y = self.height as f64 - 6.0;
        let mut x = 58.0;
        for (i, s) in self.series.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let dash = DASHES[i % DASHES.len()];
            if swatch_area {
                let _ = write!(
                    out,
                    "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"14\" height=\"8\" fill=\"{color}\" fill-opacity=\"0.6\" stroke=\"{color}\"/>",
                    y - 8.0
                );
            } else {
                let _ = write!(
                    out,
                    "<line x1=\"{x:.1}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"{color}\" stroke-width=\"2\" stroke-dasharray=\"{dash}\"/>",
                    x + 16.0,
                    y - 4.0,
                    y - 4.0
                );
            }
            let name = truncate(&s.name, 40);
            let _ = write!(
                out,
                "<text class=\"rl-text\" x=\"{:.1}\" y=\"{y:.1}\" fill=\"{TEXT_COLOR}\">{}</text>",
                x + 20.0,
                escape(&name)
            );
            x += 28.0 + name.chars().count() as f64 * 6.2;
            if x > self.width as f64 - 40.0 {
                break;
            }
        }
    }

    /// One transparent column per time step with data, whose `<title>` is the hover tooltip.
    fn hover_columns(&self, out: &mut String, frame: &Frame) {
        let mut times: Vec<i64> = self.visible_points().map(|p| p.0).collect();
        times.sort_unstable();
        times.dedup();
        let range = self.to_ms - self.from_ms;
        let half = (frame.width * self.step_ms as f64 / range.max(1) as f64 / 2.0).max(1.0);
        for t in times {
            let x = frame.x(t);
            let mut tip = point_time(t, range);
            for s in &self.series {
                if let Ok(i) = s.points.binary_search_by_key(&t, |p| p.0) {
                    let _ = write!(tip, "\n{}: {}", s.name, self.unit.format(s.points[i].1));
                }
            }
            let _ = write!(
                out,
                "<rect class=\"rl-hover\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" \
                 fill=\"#000000\" fill-opacity=\"0\"><title>{}</title></rect>",
                (x - half).max(frame.left),
                frame.top,
                half * 2.0,
                frame.height,
                escape(&tip)
            );
        }
    }

    /// Consecutive runs of points with no step missing between them.
    fn segments<'a>(&self, points: &'a [(i64, f64)]) -> Vec<&'a [(i64, f64)]> {
        let mut max_gap = self.step_ms + self.step_ms / 2;
        if self.adaptive_gaps && points.len() > 2 {
            let mut spacings: Vec<i64> = points.windows(2).map(|w| w[1].0 - w[0].0).collect();
            spacings.sort_unstable();
            let usual = spacings[spacings.len() / 2];
            max_gap = max_gap.max(usual + usual / 2);
        }
        let mut segments = Vec::new();
        let mut start = 0;
        for i in 1..=points.len() {
            if i == points.len() || points[i].0 - points[i - 1].0 > max_gap {
                if i > start {
                    segments.push(&points[start..i]);
                }
                start = i;
            }
        }
        segments
    }

    /// Lines, one per series, broken where steps have no data.
    pub fn line_svg(&self) -> String {
        let max = self
            .visible_points()
            .map(|p| p.1)
            .fold(f64::NEG_INFINITY, f64::max);
        let min = self
            .visible_points()
            .map(|p| p.1)
            .fold(f64::INFINITY, f64::min);
        let (frame, ticks) = self.frame(max, min);
        let mut out = String::with_capacity(4096);
        self.open(&mut out, "line");
        self.axes(&mut out, &frame, &ticks);
        for (i, s) in self.series.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let dash = DASHES[i % DASHES.len()];
            let mut path = String::new();
            let mut dots = String::new();
            for segment in self.segments(&s.points) {
                if segment.len() == 1 {
                    let (t, v) = segment[0];
                    let _ = write!(
                        dots,
                        "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"{color}\"/>",
                        frame.x(t),
                        frame.y(v)
                    );
                    continue;
                }
                for (j, (t, v)) in segment.iter().enumerate() {
                    let _ = write!(
                        path,
                        "{}{:.1},{:.1}",
                        if j == 0 { "M" } else { "L" },
                        frame.x(*t),
                        frame.y(*v)
                    );
                }
            }
            let _ = write!(
                out,
                "<g class=\"rl-series\" data-series=\"{}\"><path d=\"{path}\" fill=\"none\" stroke=\"{color}\" \
                 stroke-width=\"1.8\" stroke-linejoin=\"round\" stroke-dasharray=\"{dash}\"/>{dots}</g>",
                escape(&s.name)
            );
        }
        self.thresholds_svg(&mut out, &frame);
        self.legend(&mut out, false);
        self.hover_columns(&mut out, &frame);
        out.push_str("</svg>");
        out
    }

    /// Series stacked on each other; a step missing in one series counts as zero there when
    /// another series has it, and a step missing in all is a gap.
    pub fn stacked_svg(&self) -> String {
        let mut times: Vec<i64> = self.visible_points().map(|p| p.0).collect();
        times.sort_unstable();
        times.dedup();
        let value = |s: &Series, t: i64| {
            s.points
                .binary_search_by_key(&t, |p| p.0)
                .map(|i| s.points[i].1)
                .unwrap_or(0.0)
        };
        // tops[i][k]: top of series i at times[k].
        let mut tops: Vec<Vec<f64>> = Vec::new();
        let mut base = vec![0.0; times.len()];
        for s in &self.series {
            let top: Vec<f64> = times
                .iter()
                .zip(&base)
                .map(|(t, b)| b + value(s, *t))
                .collect();
            base = top.clone();
            tops.push(top);
        }
        let max = base.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let (frame, ticks) = self.frame(max, 0.0);
        let mut out = String::with_capacity(4096);
        self.open(&mut out, "stacked");
        self.axes(&mut out, &frame, &ticks);
        let stamped: Vec<(i64, f64)> = times.iter().map(|t| (*t, 0.0)).collect();
        let runs = self.segments(&stamped);
        for (i, s) in self.series.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let mut path = String::new();
            let mut offset = 0;
            for run in &runs {
                let range = offset..offset + run.len();
                offset += run.len();
                let x = |k: usize| frame.x(times[k]);
                let (first, last) = (range.start, range.end - 1);
                // A lone step is drawn as a narrow band so it stays visible.
                let pad = if first == last { 2.0 } else { 0.0 };
                let _ = write!(
                    path,
                    "M{:.1},{:.1}",
                    x(first) - pad,
                    frame.y(tops[i][first])
                );
                for k in range.clone() {
                    let _ = write!(path, "L{:.1},{:.1}", x(k), frame.y(tops[i][k]));
                }
                let _ = write!(path, "L{:.1},{:.1}", x(last) + pad, frame.y(tops[i][last]));
                let below = |k: usize| if i == 0 { 0.0 } else { tops[i - 1][k] };
                let _ = write!(path, "L{:.1},{:.1}", x(last) + pad, frame.y(below(last)));
                for k in range.clone().rev() {
                    let _ = write!(path, "L{:.1},{:.1}", x(k), frame.y(below(k)));
                }
                let _ = write!(path, "L{:.1},{:.1}Z", x(first) - pad, frame.y(below(first)));
            }
            let _ = write!(
                out,
                "<g class=\"rl-series\" data-series=\"{}\"><path d=\"{path}\" fill=\"{color}\" fill-opacity=\"0.55\" \
                 stroke=\"{color}\" stroke-width=\"1\" stroke-dasharray=\"{}\"/></g>",
                escape(&s.name),
                DASHES[i % DASHES.len()]
            );
        }
        self.thresholds_svg(&mut out, &frame);
        self.legend(&mut out, true);
        self.hover_columns(&mut out, &frame);
        out.push_str("</svg>");
        out
    }

    /// Bars per time step, the series side by side within a step.
    pub fn bars_svg(&self) -> String {
        let max = self
            .visible_points()
            .map(|p| p.1)
            .fold(f64::NEG_INFINITY, f64::max);
        let min = self
            .visible_points()
            .map(|p| p.1)
            .fold(f64::INFINITY, f64::min);
        let (frame, ticks) = self.frame(max, min);
        let mut out = String::with_capacity(4096);
        self.open(&mut out, "bars");
        self.axes(&mut out, &frame, &ticks);
        let range = (self.to_ms - self.from_ms).max(1) as f64;
        let slot = (frame.width * self.step_ms as f64 / range).max(1.0);
        let n = self.series.len().max(1) as f64;
        let bar = (slot * 0.8 / n).max(0.8);
        let zero = frame.y(0.0_f64.clamp(frame.y_lo, frame.y_hi));
        for (i, s) in self.series.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let _ = write!(
                out,
                "<g class=\"rl-series\" data-series=\"{}\" fill=\"{color}\">",
                escape(&s.name)
            );
            for (t, v) in &s.points {
                let x = frame.x(*t) - slot * 0.4 + bar * i as f64;
                let y = frame.y(*v);
                let _ = write!(
                    out,
                    "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{bar:.1}\" height=\"{:.1}\"/>",
                    y.min(zero),
                    (zero - y).abs().max(0.5)
                );
            }
            out.push_str("</g>");
        }
        self.thresholds_svg(&mut out, &frame);
        self.legend(&mut out, true);
        self.hover_columns(&mut out, &frame);
        out.push_str("</svg>");
        out
    }

    /// The data as an HTML table (time × series), for a `<details>` under the chart.
    pub fn table_html(&self) -> String {
        let mut times: Vec<i64> = self.visible_points().map(|p| p.0).collect();
        times.sort_unstable();
        times.dedup();
        let mut out =
            String::from("<table class=\"rl-data\"><thead><tr><th scope=\"col\">time</th>");
        for s in &self.series {
            let _ = write!(out, "<th scope=\"col\">{}</th>", escape(&s.name));
        }
        out.push_str("</tr></thead><tbody>");
        let range = self.to_ms - self.from_ms;
        for t in times {
            let _ = write!(out, "<tr><th scope=\"row\">{}</th>", point_time(t, range));
            for s in &self.series {
                let cell = s
                    .points
                    .binary_search_by_key(&t, |p| p.0)
                    .map(|i| self.unit.format(s.points[i].1))
                    .unwrap_or_else(|_| "–".into());
                let _ = write!(out, "<td>{}</td>", escape(&cell));
            }
            out.push_str("</tr>");
        }
        out.push_str("</tbody></table>");
        out
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let mut t: String = text.chars().take(max - 1).collect();
        t.push('…');
        t
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn chart() -> TimeChart {
        TimeChart::new("latency", Unit::Millis, 0, 600_000, 60_000)
    }

    /// Parses `d` of every `<path>` into its subpaths (split at `M`).
    fn subpaths(svg: &str) -> Vec<usize> {
        svg.match_indices(" d=\"")
            .map(|(i, _)| {
                let rest = &svg[i + 4..];
                let d = &rest[..rest.find('"').unwrap()];
                d.matches('M').count()
            })
            .collect()
    }

    #[test]
    fn numbers_have_three_significant_digits_and_no_trailing_zeros() {
        assert_eq!(number(0.0), "0");
        assert_eq!(number(1.5), "1.5");
        assert_eq!(number(12.34), "12.3");
        assert_eq!(number(250.0), "250");
        assert_eq!(number(0.125), "0.125");
        assert_eq!(number(2.0), "2");
        assert_eq!(number(0.005), "0.005");
    }

    #[test]
    fn units_pick_readable_scales() {
        assert_eq!(Unit::Millis.format(12.0), "12 ms");
        assert_eq!(Unit::Millis.format(1500.0), "1.5 s");
        assert_eq!(Unit::Millis.format(0.25), "250 µs");
        assert_eq!(Unit::Millis.format(180_000.0), "3 min");
        assert_eq!(Unit::Seconds.format(0.012), "12 ms");
        assert_eq!(Unit::Ratio.format(0.025), "2.5%");
        assert_eq!(Unit::PerSecond("req/s".into()).format(12.5), "12.5 req/s");
        assert_eq!(
            Unit::PerSecond("req/s".into()).format(25_000.0),
            "25k req/s"
        );
        assert_eq!(Unit::Bytes.format(3.0 * 1024.0 * 1024.0), "3 MiB");
        assert_eq!(Unit::Count(String::new()).format(7.0), "7");
        assert_eq!(Unit::from_otel("s", false), Unit::Seconds);
        assert_eq!(
            Unit::from_otel("{request}", true),
            Unit::PerSecond("request/s".into())
        );
        assert_eq!(Unit::from_otel("By", false), Unit::Bytes);
    }

    #[test]
    fn nice_ticks_cover_the_range_with_round_steps() {
        assert_eq!(nice_ticks(0.0, 97.0, 4), vec![0.0, 25.0, 50.0, 75.0, 100.0]);
        assert_eq!(nice_ticks(0.0, 1.0, 5), vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
        let ticks = nice_ticks(0.0, 0.3, 3);
        assert!(ticks.last().unwrap() >= &0.3);
        assert!(
            ticks.iter().all(|t| (t * 10.0).fract().abs() < 1e-9),
            "{ticks:?}"
        );
    }

    #[test]
    fn time_ticks_are_at_most_the_maximum_for_any_span() {
        for (from, to) in [
            (0, 253_402_300_799_999),
            (-6_144_843_281_301_380_840, 1_796_537_064_765),
            (i64::MIN / 2, i64::MAX / 2),
        ] {
            let (ticks, _) = time_ticks(from, to, 7);
            assert!(ticks.len() <= 8, "{from}..{to}: {} ticks", ticks.len());
        }
    }

    #[test]
    fn time_ticks_are_round_utc_times_inside_the_range() {
        let hour = 3_600_000;
        let from = 1_764_331_234_000; // not aligned
        let (ticks, interval) = time_ticks(from, from + hour, 4);
        assert_eq!(interval, 15 * 60_000);
        assert!(
            ticks
                .iter()
                .all(|t| t % interval == 0 && *t > from && *t <= from + hour)
        );
        assert_eq!(ticks.len(), 4);
        let (_, day_interval) = time_ticks(from, from + 7 * 24 * hour, 8);
        assert_eq!(day_interval, 24 * hour);
    }

    #[test]
    fn civil_dates_are_right() {
        assert_eq!(civil(0), (1970, 1, 1, 0, 0, 0));
        // 2026-11-28 15:40:00 UTC
        assert_eq!(civil(1_795_880_400_000), (2026, 11, 28, 15, 40, 0));
        assert_eq!(civil(951_782_400_000), (2000, 2, 29, 0, 0, 0));
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
    }

    #[test]
    fn missing_steps_leave_a_gap_not_a_line_through_zero() {
        let svg = chart()
            .series(
                "p99",
                vec![(0, 10.0), (60_000, 12.0), (240_000, 11.0), (300_000, 9.0)],
            )
            .line_svg();
        assert_eq!(subpaths(&svg), vec![2], "two segments: {svg}");
        // No point is drawn at zero height (the plot bottom) for the missing steps.
        assert!(!svg.contains(",188.0L"), "{svg}");
    }

    #[test]
    fn adaptive_gaps_follow_the_series_own_spacing() {
        // Exported every 3 steps: connected, except where an export is missing.
        let points = vec![
            (0, 1.0),
            (180_000, 2.0),
            (360_000, 3.0),
            (900_000, 4.0),
            (1_080_000, 5.0),
        ];
        let strict = TimeChart::new("g", Unit::Count(String::new()), 0, 1_200_000, 60_000)
            .series("g", points.clone());
        assert_eq!(subpaths(&strict.line_svg()), vec![0], "all lone points");
        let adaptive = strict.adaptive_gaps(true);
        assert_eq!(
            subpaths(&adaptive.line_svg()),
            vec![2],
            "{}",
            adaptive.line_svg()
        );
    }

    #[test]
    fn a_lone_point_is_still_visible() {
        let svg = chart()
            .series("p99", vec![(0, 10.0), (300_000, 12.0)])
            .line_svg();
        assert_eq!(svg.matches("<circle").count(), 2, "{svg}");
    }

    #[test]
    fn every_step_has_a_hover_title_with_each_series() {
        let svg = chart()
            .series("p50", vec![(0, 10.0), (60_000, 12.0)])
            .series("p99", vec![(0, 100.0), (60_000, 120.0)])
            .line_svg();
        assert_eq!(svg.matches("class=\"rl-hover\"").count(), 2);
        assert!(
            svg.contains("00:01:00 UTC\np50: 12 ms\np99: 120 ms"),
            "{svg}"
        );
    }

    #[test]
    fn axes_carry_units_and_a_legend_names_each_series() {
        let svg = chart()
            .series("p50", vec![(0, 400.0)])
            .series("p99", vec![(0, 2400.0)])
            .line_svg();
        assert!(svg.contains(">s</text>"), "axis unit in seconds: {svg}");
        assert!(svg.contains(">p50</text>") && svg.contains(">p99</text>"));
        // Series differ by dash pattern as well as colour.
        assert!(svg.contains("stroke-dasharray=\"6 3\""));
    }

    #[test]
    fn thresholds_and_firing_periods_are_drawn_and_described() {
        let svg = chart()
            .series("p99", vec![(0, 10.0), (60_000, 12.0)])
            .threshold(250.0, "p99 > 250 ms")
            .shade(120_000, 180_000, "firing")
            .line_svg();
        assert!(svg.contains("class=\"rl-threshold\""));
        assert!(svg.contains("class=\"rl-shade\""));
        // The threshold is inside the value axis even above the data.
        assert!(svg.contains(">250</text>"), "{svg}");
        assert!(svg.contains("Threshold p99 &gt; 250 ms at 250 ms."));
        assert!(svg.contains("firing from 1970-01-01 00:02:00 UTC"));
    }

    #[test]
    fn telemetry_text_is_escaped_everywhere() {
        let evil = "</svg><script>alert(1)</script>\"'&";
        let svg = chart()
            .series(evil, vec![(0, 1.0)])
            .series("b", vec![(0, 2.0)])
            .threshold(1.0, evil)
            .shade(0, 60_000, evil)
            .line_svg();
        assert!(!svg.contains("<script"));
        assert_eq!(svg.matches("</svg>").count(), 1);
        assert!(svg.contains("&lt;/svg&gt;&lt;script&gt;"));
        let bars = bar_chart_svg(
            evil,
            &[(evil.to_string(), 1.0)],
            &Unit::Count(String::new()),
            200,
            100,
        );
        assert!(!bars.contains("<script") && bars.matches("</svg>").count() == 1);
        let stat = single_stat_svg(evil, Some(1.0), &Unit::Millis, &[], 200, 100);
        assert!(!stat.contains("<script"));
        let spark = sparkline_svg(evil, &[(0, 1.0)], 0, 60_000, 10_000, &Unit::Millis);
        assert!(!spark.contains("<script"));
        assert!(
            !chart()
                .series(evil, vec![(0, 1.0)])
                .table_html()
                .contains("<script")
        );
    }

    #[test]
    fn an_empty_chart_says_so() {
        let svg = chart().series("p99", vec![]).line_svg();
        assert!(svg.contains("No data in this range"));
        assert!(svg.contains("<desc>") && svg.contains("p99: no data."));
    }

    #[test]
    fn stacked_areas_stack_and_break_at_gaps() {
        let svg = chart()
            .series("2xx", vec![(0, 5.0), (60_000, 5.0), (300_000, 5.0)])
            .series("5xx", vec![(0, 5.0), (60_000, 5.0), (300_000, 5.0)])
            .stacked_svg();
        // Two runs (0–60 s and 300 s) per series.
        assert_eq!(subpaths(&svg), vec![2, 2], "{svg}");
        // The top of the stack (10) sets the axis.
        assert!(svg.contains(">10</text>"), "{svg}");
    }

    #[test]
    fn bars_draw_one_rect_per_point() {
        let svg = chart()
            .series("rate", vec![(0, 1.0), (60_000, 2.0), (120_000, 0.0)])
            .bars_svg();
        assert_eq!(svg.matches("<rect x=").count(), 3, "one bar per point");
        assert_eq!(svg.matches("class=\"rl-hover\"").count(), 3);
    }

    #[test]
    fn single_stat_says_in_words_when_over_a_threshold() {
        let t = [Threshold {
            value: 0.05,
            label: "error budget".into(),
        }];
        let ok = single_stat_svg("errors", Some(0.01), &Unit::Ratio, &t, 200, 100);
        assert!(ok.contains(">1%</text>") && !ok.contains("▲"));
        let over = single_stat_svg("errors", Some(0.08), &Unit::Ratio, &t, 200, 100);
        assert!(over.contains("▲ over 5% (error budget)") && over.contains("rl-over"));
        assert!(single_stat_svg("x", None, &Unit::Ratio, &t, 200, 100).contains("no data"));
    }

    #[test]
    fn sparklines_break_at_gaps_and_summarise() {
        let svg = sparkline_svg(
            "rate",
            &[(0, 1.0), (10_000, 2.0), (60_000, 3.0)],
            0,
            60_000,
            10_000,
            &Unit::Count(String::new()),
        );
        assert_eq!(subpaths(&svg), vec![2]);
        assert!(svg.contains("<title>rate: min 1, max 3, last 3</title>"));
    }

    #[test]
    fn the_svg_is_self_contained_and_well_formed() {
        let svg = chart()
            .series("a", vec![(0, 1.0), (60_000, 2.0)])
            .threshold(1.5, "t")
            .shade(0, 60_000, "firing")
            .line_svg();
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(!svg.contains("style=") && !svg.contains("<style") && !svg.contains("href"));
        assert!(svg.contains("font-family=\"sans-serif\"") && svg.contains("fill=\"#ffffff\""));
        // Tags balance.
        for tag in ["svg", "g", "title", "desc", "text"] {
            let opened =
                svg.matches(&format!("<{tag}>")).count() + svg.matches(&format!("<{tag} ")).count();
            let closed = svg.matches(&format!("</{tag}>")).count();
            assert_eq!(opened, closed, "<{tag}> balanced in {svg}");
        }
    }

    #[test]
    fn resvg_rasterises_it_for_the_alert_email() {
        let minute = 60_000;
        let svg = TimeChart::new(
            "p99 latency · checkout",
            Unit::Millis,
            0,
            60 * minute,
            minute,
        )
        .series(
            "p99",
            (0..60)
                .filter(|m| !(20..25).contains(m))
                .map(|m| (m * minute, 100.0 + (m % 13) as f64 * 20.0))
                .collect(),
        )
        .threshold(250.0, "p99 > 250 ms")
        .shade(30 * minute, 42 * minute, "firing")
        .line_svg();
        let png = crate::notify::chart::svg_to_png(&svg, 2).expect("resvg renders the chart");
        assert!(png.starts_with(b"\x89PNG"));
        // Kept for a person to look at.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
        if std::fs::create_dir_all(&dir).is_ok() {
            let _ = std::fs::write(dir.join("chart-for-email.png"), &png);
        }
    }

    #[test]
    fn the_table_lists_every_step_with_a_dash_for_missing_values() {
        let html = chart()
            .series("a", vec![(0, 1.0), (60_000, 2.0)])
            .series("b", vec![(60_000, 3.0)])
            .table_html();
        assert_eq!(html.matches("<tr><th scope=\"row\">").count(), 2);
        assert!(html.contains("<td>1 ms</td><td>–</td>"));
    }
}
