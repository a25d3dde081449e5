//! Rendering, a leaf the dashboard, the alert e-mail and the dashboards-as-code checker all use:
//! charts as self-contained SVG strings: line charts with several series, stacked areas, bars
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
//!
//! - `format`: escaping, units, number and time formatting, axis ticks;
//! - `time_chart`: [`TimeChart`], lines, stacked areas and bars over time;
//! - `small`: sparklines, category bars and single stats for tables and panels.

pub mod format;
pub mod small;
pub mod time_chart;

pub use format::{Unit, civil, escape, format_utc, nice_ticks, number, time_ticks, url_component};
pub use small::{bar_chart_svg, single_stat_svg, sparkline_svg};
pub use time_chart::{Interval, Series, Threshold, TimeChart};

/// Series colours: readable on white and on a dark background.
pub(crate) const PALETTE: [&str; 8] = [
    "#2563eb", "#ea580c", "#7c3aed", "#059669", "#db2777", "#0891b2", "#ca8a04", "#64748b",
];
/// Dash patterns, paired with colours, so series differ by more than colour.
pub(crate) const DASHES: [&str; 4] = ["", "6 3", "2 3", "8 3 2 3"];
pub(crate) const THRESHOLD_COLOR: &str = "#dc2626";
pub(crate) const TEXT_COLOR: &str = "#4b5563";
pub(crate) const GRID_COLOR: &str = "#e5e7eb";
pub(crate) const FONT: &str = "font-family=\"sans-serif\"";

#[cfg(test)]
mod tests {
    use super::format::*;
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
    fn url_components_keep_only_unreserved_characters() {
        assert_eq!(
            url_component("a/b c%é~-_.?#&="),
            "a%2Fb%20c%25%C3%A9~-_.%3F%23%26%3D"
        );
        assert_eq!(url_component(""), "");
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
