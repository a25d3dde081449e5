//! [`TimeChart`]: one or more series over time as lines, stacked areas or bars, with a value
//! axis in the series' unit, time ticks, thresholds, shaded intervals and hover titles.

use std::fmt::Write as _;

use super::format::*;
use super::{DASHES, FONT, GRID_COLOR, PALETTE, TEXT_COLOR, THRESHOLD_COLOR};

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
/// use redline::render::{TimeChart, Unit};
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
pub(super) struct Frame {
    pub(super) left: f64,
    pub(super) top: f64,
    pub(super) width: f64,
    pub(super) height: f64,
    pub(super) from_ms: i64,
    pub(super) to_ms: i64,
    pub(super) y_lo: f64,
    pub(super) y_hi: f64,
}

impl Frame {
    pub(super) fn x(&self, ms: i64) -> f64 {
        let span = (self.to_ms - self.from_ms).max(1) as f64;
        self.left + (ms - self.from_ms) as f64 / span * self.width
    }

    pub(super) fn y(&self, value: f64) -> f64 {
        let span = (self.y_hi - self.y_lo).max(f64::MIN_POSITIVE);
        let clamped = value.clamp(self.y_lo, self.y_hi);
        self.top + self.height - (clamped - self.y_lo) / span * self.height
    }

    pub(super) fn bottom(&self) -> f64 {
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
    pub(super) fn segments<'a>(&self, points: &'a [(i64, f64)]) -> Vec<&'a [(i64, f64)]> {
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
