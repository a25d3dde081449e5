//! The alert e-mail's evidence: a [`ChartSpec`] drawn by the dashboard's own chart code
//! ([`crate::render::TimeChart`]: value axis with the unit, the threshold line, the firing
//! period shaded) and rasterised to PNG with resvg, so mail clients that block remote images
//! still show it inline, and it looks like the dashboard page the e-mail links to.
//!
//! Fonts: the dashboard's SVG asks for the generic `sans-serif`, resolved here against the
//! system fonts (DejaVu Sans on Debian: `fonts-dejavu-core`).

use std::sync::{Arc, OnceLock};

use resvg::tiny_skia;
use resvg::usvg::{self, fontdb};

use super::{ChartSpec, NotifyError};
use crate::render::{TimeChart, Unit};

/// Logical size of the chart in CSS pixels; the PNG is drawn at [`SCALE`]× for sharp text on
/// high-density screens.
pub const WIDTH: u32 = 640;
pub const HEIGHT: u32 = 240;
pub const SCALE: u32 = 2;

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

/// The dashboard's unit for a [`ChartSpec::unit`] string.
fn unit(unit: &str) -> Unit {
    match unit.trim() {
        "ms" => Unit::Millis,
        "s" => Unit::Seconds,
        "%" => Unit::Percent,
        "1" | "ratio" => Unit::Ratio,
        "By" | "B" | "bytes" => Unit::Bytes,
        u if u.ends_with("/s") => Unit::PerSecond(u.to_string()),
        u => Unit::Count(u.to_string()),
    }
}

/// The chart as the dashboard draws it: time range covering the data and the firing period,
/// the query step guessed from the points' spacing (a larger jump is a gap).
fn time_chart(spec: &ChartSpec) -> TimeChart {
    let mut points: Vec<(i64, f64)> = spec
        .points
        .iter()
        .copied()
        .filter(|(_, v)| v.is_finite())
        .collect();
    points.sort_by_key(|(t, _)| *t);
    let mut steps: Vec<i64> = points
        .windows(2)
        .map(|w| w[1].0 - w[0].0)
        .filter(|d| *d > 0)
        .collect();
    steps.sort_unstable();
    let step = steps.get(steps.len() / 2).copied().unwrap_or(60_000);
    let last = points.last().map(|p| p.0).unwrap_or(spec.firing_from_ms);
    let from = points
        .first()
        .map(|p| p.0)
        .unwrap_or(spec.firing_from_ms)
        .min(spec.firing_from_ms);
    let mut to = last.max(spec.firing_to_ms.unwrap_or(last));
    if to - from < 60_000 {
        to = from + 60_000;
    }
    let unit = unit(&spec.unit);
    let series_name = spec.title.clone();
    let mut chart = TimeChart::new(spec.title.clone(), unit.clone(), from, to, step)
        .size(WIDTH, HEIGHT)
        .series(series_name, points);
    if let Some(threshold) = spec.threshold.filter(|t| t.is_finite()) {
        chart = chart.threshold(threshold, format!("threshold {}", unit.format(threshold)));
    }
    chart.shade(
        spec.firing_from_ms,
        spec.firing_to_ms.unwrap_or(to),
        "firing",
    )
}

/// The chart as an SVG document of [`WIDTH`]×[`HEIGHT`].
pub fn render_svg(spec: &ChartSpec) -> String {
    time_chart(spec).line_svg()
}

/// The chart's text equivalent (the image's `alt`): range, values, threshold, firing period.
pub fn describe(spec: &ChartSpec) -> String {
    time_chart(spec).describe()
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
        use crate::render::civil;
        assert_eq!(civil(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(civil(951_782_400_000), (2000, 2, 29, 0, 0, 0));
        assert_eq!(civil(1_764_340_812_000), (2025, 11, 28, 14, 40, 12));
        assert_eq!(civil(-1000), (1969, 12, 31, 23, 59, 59));
    }

    #[test]
    fn numbers_and_units() {
        assert_eq!(format_number(250.0), "250");
        assert_eq!(format_number(12.5), "12.5");
        assert_eq!(format_number(0.25), "0.25");
        assert_eq!(format_number(2_500_000.0), "2.5M");
        assert_eq!(unit("ms"), Unit::Millis);
        assert_eq!(unit("req/s"), Unit::PerSecond("req/s".into()));
        assert_eq!(unit("%"), Unit::Percent);
        assert_eq!(unit("{jobs}"), Unit::Count("{jobs}".into()));
    }

    #[test]
    fn svg_escapes_text_and_draws_threshold_and_firing() {
        let svg = render_svg(&spec());
        assert!(svg.contains("p99 latency &lt;GET /a&amp;b&gt;"));
        assert!(!svg.contains("<GET"));
        assert!(svg.contains("threshold 250 ms"), "{svg}");
        // The firing period is shaded from the first firing point to the end (still firing).
        let description = describe(&spec());
        assert!(description.contains("firing"), "{description}");
        // Parses as XML.
        usvg::Tree::from_str(&svg, &usvg::Options::default()).expect("valid svg");
    }

    #[test]
    fn empty_chart_says_no_data() {
        let mut spec = spec();
        spec.points.clear();
        spec.threshold = None;
        assert!(describe(&spec).contains("No data"), "{}", describe(&spec));
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
