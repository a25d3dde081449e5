//! A page's query string: parameters, the time range (presets or custom, within 1970–9999),
//! steps, and links that change one parameter.

use super::*;

/// Query-string parameters of a page (pages are lenient about unknown names: links from
/// elsewhere may carry extra ones).
#[derive(Debug, Clone, Default)]
pub struct Params(pub BTreeMap<String, String>);

pub type Pairs = QueryString<Vec<(String, String)>>;

impl Params {
    pub fn from_pairs(QueryString(pairs): Pairs) -> Self {
        Params(pairs.into_iter().collect())
    }

    /// A non-empty parameter.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// The value even when empty: an endpoint's method is empty for servers that are neither
    /// HTTP nor RPC, and its route when the span has no name.
    pub fn given(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    pub fn flag(&self, name: &str) -> bool {
        matches!(self.get(name), Some("1" | "true" | "on" | "yes"))
    }

    /// The time range: `range=15m|1h|6h|24h|7d` (default 1h), or `from`/`to` as unix ms or
    /// `YYYY-MM-DDTHH:MM` (UTC, what a datetime-local input sends).
    pub fn range(&self) -> Result<RangeChoice, PageError> {
        let now = now_ms();
        if let Some(from) = self.get("from") {
            let from_ms = parse_time("from", from)?;
            let to_ms = match self.get("to") {
                Some(to) => parse_time("to", to)?,
                None => now,
            };
            let range = TimeRange::checked(from_ms, to_ms)
                .map_err(|e| PageError::bad(e.parameter(), e.to_string()))?;
            return Ok(RangeChoice {
                range,
                preset: None,
            });
        }
        let preset = self.get("range").unwrap_or("1h");
        let Some((_, ms)) = PRESETS.iter().find(|(name, _)| *name == preset) else {
            return Err(PageError::bad(
                "range",
                format!("{preset:?} is not one of 15m, 1h, 6h, 24h, 7d"),
            ));
        };
        Ok(RangeChoice {
            range: TimeRange {
                from_ms: now - ms,
                to_ms: now,
            },
            preset: Some(preset.to_string()),
        })
    }

    /// Auto-refresh in seconds: `refresh=off|10s|30s|1m|5m`.
    pub fn refresh(&self) -> Result<u32, PageError> {
        match self.get("refresh").unwrap_or("off") {
            "off" => Ok(0),
            "10s" => Ok(10),
            "30s" => Ok(30),
            "1m" => Ok(60),
            "5m" => Ok(300),
            other => Err(PageError::bad(
                "refresh",
                format!("{other:?} is not one of off, 10s, 30s, 1m, 5m"),
            )),
        }
    }

    /// This query string with `changes` applied (`None` removes), as `?a=b&…`.
    /// Empty values of this query string are dropped; empty values in `changes` are kept (an
    /// endpoint's method or route may be empty and still name it).
    pub fn with(&self, changes: &[(&str, Option<&str>)]) -> String {
        let mut map = self.0.clone();
        map.retain(|_, v| !v.is_empty());
        for (name, value) in changes {
            match value {
                Some(v) => map.insert(name.to_string(), v.to_string()),
                None => map.remove(*name),
            };
        }
        query_string(map.iter())
    }
}

/// `?k=v&…`, percent-encoded (empty when there is nothing).
pub fn query_string<'a>(pairs: impl Iterator<Item = (&'a String, &'a String)>) -> String {
    let encoded: Vec<String> = pairs
        .map(|(k, v)| format!("{}={}", url_component(k), url_component(v)))
        .collect();
    if encoded.is_empty() {
        String::new()
    } else {
        format!("?{}", encoded.join("&"))
    }
}

use crate::render::url_component;

pub(super) const PRESETS: [(&str, i64); 5] = [
    ("15m", 15 * 60_000),
    ("1h", 3_600_000),
    ("6h", 6 * 3_600_000),
    ("24h", 24 * 3_600_000),
    ("7d", 7 * 24 * 3_600_000),
];

pub(super) fn parse_time(name: &str, text: &str) -> Result<i64, PageError> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    parse_datetime_local(text).ok_or_else(|| {
        PageError::bad(
            name,
            format!("{text:?} is not unix ms or a UTC time like 2026-11-28T15:40"),
        )
    })
}

/// `YYYY-MM-DDTHH:MM[:SS]` as UTC unix ms.
pub(super) fn parse_datetime_local(text: &str) -> Option<i64> {
    use time::macros::format_description;
    let with_seconds = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
    let without = format_description!("[year]-[month]-[day]T[hour]:[minute]");
    let time = time::PrimitiveDateTime::parse(text, with_seconds)
        .or_else(|_| time::PrimitiveDateTime::parse(text, without))
        .ok()?;
    if !(1970..=9999).contains(&time.year()) {
        return None;
    }
    let ms = time.assume_utc().unix_timestamp_nanos() / 1_000_000;
    i64::try_from(ms).ok()
}

/// `YYYY-MM-DDTHH:MM` for a datetime-local input.
pub(super) fn datetime_local(ms: i64) -> String {
    let (y, mo, d, h, mi, _) = crate::render::civil(ms);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}")
}

pub struct RangeChoice {
    pub range: TimeRange,
    /// The preset name, or `None` for a custom range.
    pub preset: Option<String>,
}

/// A step that gives about `points` steps over the range, rounded up to a round interval.
pub fn step_for(range: TimeRange, points: i64) -> i64 {
    const STEPS: [i64; 14] = [
        10_000, 30_000, 60_000, 120_000, 300_000, 600_000, 900_000, 1_800_000, 3_600_000,
        7_200_000, 10_800_000, 21_600_000, 43_200_000, 86_400_000,
    ];
    let raw = (range.to_ms - range.from_ms) / points.max(1);
    STEPS.into_iter().find(|s| *s >= raw).unwrap_or(86_400_000)
}

/// A step of about `points` steps, but at least an hour for ranges over 6 hours: a RED read
/// returns every window of every endpoint in the range, and the store picks the coarsest
/// resolution not above the step — a day at 1-minute resolution is 1,440 rows per endpoint,
/// at 1-hour resolution 24.
pub fn red_step(range: TimeRange, points: i64) -> i64 {
    let step = step_for(range, points);
    if range.to_ms - range.from_ms > 6 * 3_600_000 {
        step.max(3_600_000)
    } else {
        step
    }
}
