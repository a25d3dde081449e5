//! The alert e-mail's evidence: a [`ChartSpec`] drawn as a self-contained SVG line chart (axes
//! with the unit, the threshold line, the firing period shaded) and rasterised to PNG with
//! resvg, so mail clients that block remote images still show it inline.
//!
//! Self-contained on purpose: every colour and font is a presentation attribute, fonts are the
//! generic `sans-serif` resolved against the system fonts (DejaVu Sans on Debian), and every
//! piece of text is escaped. The dashboard's `web::charts` draws richer charts; the two can be
//! merged once that module settles.

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};

use resvg::tiny_skia;
use resvg::usvg::{self, fontdb};

use super::{ChartSpec, NotifyError};

/// Logical size of the chart in CSS pixels; the PNG is drawn at [`SCALE`]× for sharp text on
/// high-density screens.
pub const WIDTH: u32 = 640;
pub const HEIGHT: u32 = 240;
pub const SCALE: u32 = 2;

const LEFT: f64 = 70.0;
const RIGHT: f64 = 18.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 34.0;
const LINE_COLOR: &str = "#2563eb";
const THRESHOLD_COLOR: &str = "#dc2626";
const FIRING_FILL: &str = "#fee2e2";
const TEXT_COLOR: &str = "#374151";
const GRID_COLOR: &str = "#e5e7eb";

/// Escapes text for an XML text node or a quoted attribute value; drops characters XML 1.0
/// does not allow.
pub fn escape_xml(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\t' | '\r') => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// A number as a human reads it on an axis: few digits, no trailing zeros.
pub fn format_number(value: f64) -> String {
    if !value.is_finite() {
        return "–".into();
    }
    let abs = value.abs();
    let text = if abs >= 1e6 {
        return format!("{:.1}M", value / 1e6).replace(".0M", "M");
    } else if abs >= 100.0 || abs == 0.0 {
        format!("{value:.0}")
    } else if abs >= 10.0 {
        format!("{value:.1}")
    } else if abs >= 0.01 {
        format!("{value:.2}")
    } else {
        format!("{value:.4}")
    };
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

fn with_unit(value: f64, unit: &str) -> String {
    let number = format_number(value);
    match unit {
        "" => number,
        "%" => format!("{number}%"),
        unit => format!("{number} {unit}"),
    }
}

/// Round tick values covering `lo..=hi`, about `target` of them.
fn nice_ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    let span = (hi - lo).max(f64::EPSILON);
    let raw = span / target.max(1) as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude);
    let first = (lo / step).ceil() * step;
    (0..=target * 3)
        .map(|i| first + i as f64 * step)
        .take_while(|t| *t <= hi + step * 1e-9)
        .collect()
}

/// Round time steps for the x axis.
fn time_step(span_ms: i64) -> i64 {
    const STEPS: [i64; 12] = [
        10_000, 30_000, 60_000, 120_000, 300_000, 600_000, 900_000, 1_800_000, 3_600_000,
        10_800_000, 21_600_000, 86_400_000,
    ];
    let raw = span_ms / 5;
    STEPS
        .iter()
        .copied()
        .find(|s| *s >= raw)
        .unwrap_or(86_400_000)
}

struct Frame {
    from_ms: i64,
    to_ms: i64,
    lo: f64,
    hi: f64,
    width: f64,
    height: f64,
}

impl Frame {
    fn x(&self, ms: i64) -> f64 {
        let span = (self.to_ms - self.from_ms).max(1) as f64;
        LEFT + (ms.clamp(self.from_ms, self.to_ms) - self.from_ms) as f64 / span * self.width
    }

    fn y(&self, value: f64) -> f64 {
        let span = (self.hi - self.lo).max(f64::MIN_POSITIVE);
        TOP + self.height - (value.clamp(self.lo, self.hi) - self.lo) / span * self.height
    }
}

/// The chart as an SVG document of [`WIDTH`]×[`HEIGHT`].
pub fn render_svg(spec: &ChartSpec) -> String {
    let mut points: Vec<(i64, f64)> = spec
        .points
        .iter()
        .copied()
        .filter(|(_, v)| v.is_finite())
        .collect();
    points.sort_by_key(|(t, _)| *t);
    let threshold = spec.threshold.filter(|t| t.is_finite());

    // Time range: the data, plus the firing period.
    let mut from_ms = points.first().map(|p| p.0).unwrap_or(spec.firing_from_ms);
    let mut to_ms = points.last().map(|p| p.0).unwrap_or(spec.firing_from_ms);
    from_ms = from_ms.min(spec.firing_from_ms);
    to_ms = to_ms.max(spec.firing_to_ms.unwrap_or(spec.firing_from_ms));
    if to_ms - from_ms < 60_000 {
        from_ms -= 30_000;
        to_ms += 30_000;
    }

    // Value range: zero-based, the data and the threshold, with headroom.
    let mut lo = points.iter().map(|p| p.1).fold(0.0f64, f64::min);
    let mut hi = points.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    if let Some(t) = threshold {
        hi = hi.max(t);
        lo = lo.min(t);
    }
    if !hi.is_finite() || hi <= lo {
        hi = lo + 1.0;
    }
    hi += (hi - lo) * 0.1;
    let ticks = nice_ticks(lo, hi, 4);
    if let Some(last) = ticks.last() {
        hi = hi.max(*last);
    }

    let frame = Frame {
        from_ms,
        to_ms,
        lo,
        hi,
        width: WIDTH as f64 - LEFT - RIGHT,
        height: HEIGHT as f64 - TOP - BOTTOM,
    };
    let font = "font-family=\"sans-serif\"";
    let mut svg = String::with_capacity(4096);
    let _ = write!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
         viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\"><title>{}</title>\
         <rect width=\"{WIDTH}\" height=\"{HEIGHT}\" fill=\"#ffffff\"/>",
        escape_xml(&spec.title)
    );
    let _ = write!(
        svg,
        "<text x=\"{LEFT}\" y=\"18\" {font} font-size=\"13\" font-weight=\"bold\" fill=\"{TEXT_COLOR}\">{}</text>",
        escape_xml(&spec.title)
    );

    // Firing period, shaded behind everything else.
    let firing_to = spec.firing_to_ms.unwrap_or(to_ms);
    let (x0, x1) = (frame.x(spec.firing_from_ms), frame.x(firing_to));
    if x1 > x0 {
        let _ = write!(
            svg,
            "<rect x=\"{x0:.1}\" y=\"{TOP}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{FIRING_FILL}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" {font} font-size=\"10\" fill=\"{THRESHOLD_COLOR}\">firing</text>",
            x1 - x0,
            frame.height,
            x0 + 3.0,
            TOP + 11.0
        );
    }

    // Value axis: grid lines and labels with the unit.
    for tick in &ticks {
        let y = frame.y(*tick);
        let _ = write!(
            svg,
            "<line x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"{GRID_COLOR}\" stroke-width=\"1\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" {font} font-size=\"10\" text-anchor=\"end\" fill=\"{TEXT_COLOR}\">{}</text>",
            LEFT + frame.width,
            LEFT - 6.0,
            y + 3.5,
            escape_xml(&with_unit(*tick, &spec.unit))
        );
    }
    // Time axis: round steps, labelled HH:MM in UTC.
    let step = time_step(to_ms - from_ms);
    let mut t = (from_ms + step - 1).div_euclid(step) * step;
    while t <= to_ms {
        let x = frame.x(t);
        let (_, _, _, h, mi, _) = civil(t);
        let _ = write!(
            svg,
            "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"{TEXT_COLOR}\" stroke-width=\"1\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" {font} font-size=\"10\" text-anchor=\"middle\" fill=\"{TEXT_COLOR}\">{h:02}:{mi:02}</text>",
            TOP + frame.height,
            TOP + frame.height + 4.0,
            TOP + frame.height + 16.0
        );
        t += step;
    }
    let _ = write!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" {font} font-size=\"10\" text-anchor=\"end\" fill=\"{TEXT_COLOR}\">UTC</text>\
         <line x1=\"{LEFT}\" x2=\"{LEFT}\" y1=\"{TOP}\" y2=\"{:.1}\" stroke=\"{TEXT_COLOR}\" stroke-width=\"1\"/>\
         <line x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"{TEXT_COLOR}\" stroke-width=\"1\"/>",
        LEFT + frame.width,
        HEIGHT as f64 - 4.0,
        TOP + frame.height,
        LEFT + frame.width,
        TOP + frame.height,
        TOP + frame.height
    );

    // The series, broken where the data has a gap (more than 3 typical steps).
    if points.is_empty() {
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" {font} font-size=\"13\" text-anchor=\"middle\" fill=\"{TEXT_COLOR}\">no data</text>",
            LEFT + frame.width / 2.0,
            TOP + frame.height / 2.0
        );
    } else {
        let mut gaps: Vec<i64> = points.windows(2).map(|w| w[1].0 - w[0].0).collect();
        gaps.sort_unstable();
        let typical = gaps.get(gaps.len() / 2).copied().unwrap_or(i64::MAX / 4);
        let mut path = String::new();
        let mut previous: Option<i64> = None;
        for (t, v) in &points {
            let jump = previous.is_none_or(|p| t - p > typical.saturating_mul(3));
            let _ = write!(
                path,
                "{}{:.1},{:.1} ",
                if jump { "M" } else { "L" },
                frame.x(*t),
                frame.y(*v)
            );
            previous = Some(*t);
        }
        let _ = write!(
            svg,
            "<path d=\"{}\" fill=\"none\" stroke=\"{LINE_COLOR}\" stroke-width=\"2\" stroke-linejoin=\"round\" stroke-linecap=\"round\"/>",
            path.trim_end()
        );
        if points.len() == 1 {
            let (t, v) = points[0];
            let _ = write!(
                svg,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{LINE_COLOR}\"/>",
                frame.x(t),
                frame.y(v)
            );
        }
    }

    if let Some(t) = threshold {
        let y = frame.y(t);
        let _ = write!(
            svg,
            "<line x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"{THRESHOLD_COLOR}\" stroke-width=\"1.5\" stroke-dasharray=\"6 4\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" {font} font-size=\"10\" text-anchor=\"end\" fill=\"{THRESHOLD_COLOR}\">threshold {}</text>",
            LEFT + frame.width,
            LEFT + frame.width - 2.0,
            y - 4.0,
            escape_xml(&with_unit(t, &spec.unit))
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The system fonts, loaded once per process.
fn font_database() -> Arc<fontdb::Database> {
    static FONTS: OnceLock<Arc<fontdb::Database>> = OnceLock::new();
    FONTS
        .get_or_init(|| {
            let mut db = fontdb::Database::new();
            db.load_system_fonts();
            // `sans-serif` defaults to Arial, which a server rarely has.
            let families: Vec<String> = db
                .faces()
                .flat_map(|face| face.families.iter().map(|(name, _)| name.clone()))
                .collect();
            let preferred = ["DejaVu Sans", "Liberation Sans", "Noto Sans", "Arial"]
                .iter()
                .find(|f| families.iter().any(|name| name == *f))
                .map(|f| f.to_string())
                .or_else(|| families.first().cloned());
            if let Some(family) = preferred {
                db.set_sans_serif_family(family);
            }
            if db.is_empty() {
                tracing::warn!(
                    "no system fonts found: alert charts are drawn without text (install fonts-dejavu-core)"
                );
            }
            Arc::new(db)
        })
        .clone()
}

/// Rasterises an SVG document to PNG at `scale`.
pub fn svg_to_png(svg: &str, scale: u32) -> Result<Vec<u8>, NotifyError> {
    let options = usvg::Options {
        fontdb: font_database(),
        font_family: "sans-serif".into(),
        ..usvg::Options::default()
    };
    let tree =
        usvg::Tree::from_str(svg, &options).map_err(|e| NotifyError::Chart(e.to_string()))?;
    let size = tree.size().to_int_size();
    let scale = scale.max(1);
    let mut pixmap = tiny_skia::Pixmap::new(size.width() * scale, size.height() * scale)
        .ok_or_else(|| NotifyError::Chart("empty chart size".into()))?;
    resvg::render(
        &tree,
        tiny_skia::Transform::from_scale(scale as f32, scale as f32),
        &mut pixmap.as_mut(),
    );
    pixmap
        .encode_png()
        .map_err(|e| NotifyError::Chart(e.to_string()))
}

/// The chart as a PNG of ([`WIDTH`]·[`SCALE`])×([`HEIGHT`]·[`SCALE`]) pixels.
pub fn render_png(spec: &ChartSpec) -> Result<Vec<u8>, NotifyError> {
    svg_to_png(&render_svg(spec), SCALE)
}

/// (year, month, day, hour, minute, second) of a Unix time in milliseconds, UTC.
pub fn civil(ms: i64) -> (i64, u32, u32, u32, u32, u32) {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ChartSpec {
        let base = 1_764_340_800_000; // 2025-11-28 14:40 UTC
        ChartSpec {
            title: "p99 latency <GET /a&b>".into(),
            unit: "ms".into(),
            points: (0..30)
                .map(|i| {
                    (
                        base + i * 20_000,
                        if i > 15 { 320.0 } else { 120.0 + i as f64 },
                    )
                })
                .collect(),
            threshold: Some(250.0),
            firing_from_ms: base + 16 * 20_000,
            firing_to_ms: None,
        }
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(civil(951_782_400_000), (2000, 2, 29, 0, 0, 0));
        assert_eq!(civil(1_764_340_812_000), (2025, 11, 28, 14, 40, 12));
        assert_eq!(civil(-1000), (1969, 12, 31, 23, 59, 59));
    }

    #[test]
    fn numbers_and_ticks() {
        assert_eq!(format_number(250.0), "250");
        assert_eq!(format_number(12.5), "12.5");
        assert_eq!(format_number(0.25), "0.25");
        assert_eq!(format_number(2_500_000.0), "2.5M");
        let ticks = nice_ticks(0.0, 352.0, 4);
        assert_eq!(ticks, vec![0.0, 100.0, 200.0, 300.0]);
    }

    #[test]
    fn svg_escapes_text_and_draws_threshold_and_firing() {
        let svg = render_svg(&spec());
        assert!(svg.contains("p99 latency &lt;GET /a&amp;b&gt;"));
        assert!(!svg.contains("<GET"));
        assert!(svg.contains("threshold 250 ms"));
        assert!(svg.contains(FIRING_FILL));
        assert!(svg.contains("stroke-dasharray=\"6 4\""));
        // Parses as XML.
        usvg::Tree::from_str(&svg, &usvg::Options::default()).expect("valid svg");
    }

    #[test]
    fn empty_chart_says_no_data() {
        let mut spec = spec();
        spec.points.clear();
        spec.threshold = None;
        let svg = render_svg(&spec);
        assert!(svg.contains("no data"));
        render_png(&spec).expect("still renders");
    }

    #[test]
    fn png_is_a_non_blank_image_of_the_promised_size() {
        let png = render_png(&spec()).expect("png");
        let pixmap = tiny_skia::Pixmap::decode_png(&png).expect("decodes");
        assert_eq!(pixmap.width(), WIDTH * SCALE);
        assert_eq!(pixmap.height(), HEIGHT * SCALE);
        let first = pixmap.pixels()[0];
        let differing = pixmap.pixels().iter().filter(|p| **p != first).count();
        assert!(
            differing > 1000,
            "only {differing} pixels differ from the background"
        );
    }
}
