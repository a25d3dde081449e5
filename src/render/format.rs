//! Text on charts and pages: escaping telemetry text, URL components in links, units and their scaling, numbers with
//! three significant digits, UTC times, and the ticks of value and time axes.

/// What a URL component keeps as it is: RFC 3986's unreserved characters.
const URL_COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encodes a URL component (a path segment or a query value) for a link.
pub fn url_component(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, URL_COMPONENT).to_string()
}

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
    pub(super) fn scale(&self, max: f64) -> (f64, String) {
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
    pub(super) fn axis_label(&self, max: f64) -> String {
        self.scale(max).1.trim().to_string()
    }
}

pub(super) fn spaced(suffix: &str) -> String {
    match suffix {
        "" => String::new(),
        s if s.starts_with('/') || s.starts_with('%') => s.to_string(),
        s => format!(" {s}"),
    }
}

pub(super) fn millis_scale(max_ms: f64) -> (f64, String) {
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

pub(super) fn si_scale(max: f64) -> (f64, &'static str) {
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

/// (year, month 1-12, day, hour, minute, second) of a unix time in ms, UTC. Times beyond what
/// the calendar covers (±9999 years) are held at its ends.
pub fn civil(ms: i64) -> (i64, u32, u32, u32, u32, u32) {
    let nanos = i128::from(ms) * 1_000_000;
    let time = time::OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap_or(if ms < 0 {
        time::PrimitiveDateTime::MIN.assume_utc()
    } else {
        time::PrimitiveDateTime::MAX.assume_utc()
    });
    (
        i64::from(time.year()),
        u32::from(u8::from(time.month())),
        u32::from(time.day()),
        u32::from(time.hour()),
        u32::from(time.minute()),
        u32::from(time.second()),
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
pub(super) fn tick_label(ms: i64, interval: i64) -> String {
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
pub(super) fn point_time(ms: i64, range_ms: i64) -> String {
    let (_, mo, d, h, mi, s) = civil(ms);
    if range_ms <= 86_400_000 {
        format!("{h:02}:{mi:02}:{s:02} UTC")
    } else {
        format!("{} {d} {h:02}:{mi:02} UTC", MONTHS[(mo - 1) as usize])
    }
}

/// At most `max` characters, the last an ellipsis when cut.
pub(super) fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let mut t: String = text.chars().take(max - 1).collect();
        t.push('…');
        t
    }
}
