//! How RED statistics map onto table columns, in both directions.

use rusqlite::Row;

use crate::aggregate::explicit::ExplicitBuckets;
use crate::aggregate::red::RedStats;
use crate::aggregate::sketch::LatencySketch;
use crate::store::StoreError;

/// Column values of one RED row, ready for binding.
pub struct RedColumns {
    pub requests: i64,
    pub errors: i64,
    pub status: Vec<u8>,
    pub sum_ms: f64,
    pub min_ms: Option<f64>,
    pub max_ms: Option<f64>,
    pub sketch: Option<Vec<u8>>,
    pub sketch_from_buckets: bool,
    pub explicit: Option<String>,
}

/// The columns of `stats`, or [`StoreError::Unstorable`] when a value would not read back as
/// it is: SQLite stores a NaN as NULL (which `sum_ms` refuses), JSON has no NaN or infinity,
/// and counts above `i64::MAX` do not fit an integer column.
/// Tests make a RED row unstorable with this duration sum (statistics are kept finite, so no
/// input can produce such a row any more; the writer's row-by-row path still needs a test).
#[cfg(test)]
pub const REFUSED_SUM_MS: f64 = 123_456.789;

pub fn to_columns(stats: &RedStats) -> Result<RedColumns, StoreError> {
    // Counts beyond i64 only arise from saturated sums of hostile counts: stored saturated.
    let count = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
    if stats.duration_sum_ms.is_nan() {
        return Err(StoreError::Unstorable("duration sum NaN".into()));
    }
    #[cfg(test)]
    if stats.duration_sum_ms == REFUSED_SUM_MS {
        return Err(StoreError::Unstorable("test: this row is refused".into()));
    }
    let explicit = match &stats.explicit {
        Some(buckets) => Some(json(buckets)?),
        None => None,
    };
    Ok(RedColumns {
        requests: count(stats.requests),
        errors: count(stats.errors),
        status: stats.status.iter().flat_map(|c| c.to_le_bytes()).collect(),
        sum_ms: stats.duration_sum_ms,
        min_ms: stats.min_ms(),
        max_ms: stats.max_ms(),
        sketch: (stats.sketch.count() > 0).then(|| stats.sketch.encode()),
        sketch_from_buckets: stats.sketch_from_buckets,
        explicit,
    })
}

/// `value` as JSON. Every float of the stored types reads back as written (non-finite ones as
/// strings, [`crate::model::json_float`]).
pub fn json<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Unstorable(e.to_string()))
}

/// A stored count, which is never negative.
fn stored_count(what: &str, value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("{what} {value}")))
}

/// Column list matching [`from_row`], starting at the given row offset.
pub const RED_COLUMNS: &str =
    "requests, errors, status, sum_ms, min_ms, max_ms, sketch, sketch_from_buckets, explicit";
/// How many columns [`RED_COLUMNS`] names.
pub const RED_COLUMN_COUNT: usize = 9;

pub fn from_row(row: &Row<'_>, offset: usize) -> Result<RedStats, StoreError> {
    let requests = stored_count("requests", row.get(offset)?)?;
    let errors = stored_count("errors", row.get(offset + 1)?)?;
    let status_bytes: Vec<u8> = row.get(offset + 2)?;
    let mut status = [0u64; 5];
    if status_bytes.len() != 40 {
        return Err(StoreError::Corrupt("status counts".into()));
    }
    for (i, chunk) in status_bytes.chunks_exact(8).enumerate() {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(chunk);
        status[i] = u64::from_le_bytes(bytes);
    }
    let sketch: Option<Vec<u8>> = row.get(offset + 6)?;
    let explicit: Option<String> = row.get(offset + 8)?;
    Ok(RedStats {
        requests,
        errors,
        status,
        duration_sum_ms: row.get(offset + 3)?,
        duration_min_ms: row
            .get::<_, Option<f64>>(offset + 4)?
            .unwrap_or(f64::INFINITY),
        duration_max_ms: row
            .get::<_, Option<f64>>(offset + 5)?
            .unwrap_or(f64::NEG_INFINITY),
        sketch: match sketch {
            Some(bytes) => {
                LatencySketch::decode(&bytes).map_err(|e| StoreError::Corrupt(e.to_string()))?
            }
            None => LatencySketch::default(),
        },
        sketch_from_buckets: row.get(offset + 7)?,
        explicit: match explicit {
            Some(text) => Some(
                serde_json::from_str::<ExplicitBuckets>(&text)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            ),
            None => None,
        },
    })
}

/// Adds the row at `offset` (columns as [`RED_COLUMNS`]) to `stats`: the same as
/// `stats.merge(&from_row(row, offset)?)`, reading blobs in place and merging the sketch
/// straight from its bytes instead of building the row's statistics first. A row that cannot be
/// read leaves `stats` as it was: every check comes before the first change.
pub fn merge_row(row: &Row<'_>, offset: usize, stats: &mut RedStats) -> Result<(), StoreError> {
    let requests = stored_count("requests", row.get(offset)?)?;
    let errors = stored_count("errors", row.get(offset + 1)?)?;
    let status_bytes = row
        .get_ref(offset + 2)?
        .as_blob()
        .map_err(|e| StoreError::Corrupt(format!("status counts: {e}")))?;
    if status_bytes.len() != 40 {
        return Err(StoreError::Corrupt("status counts".into()));
    }
    let sum_ms: f64 = row.get(offset + 3)?;
    let min_ms = row
        .get::<_, Option<f64>>(offset + 4)?
        .unwrap_or(f64::INFINITY);
    let max_ms = row
        .get::<_, Option<f64>>(offset + 5)?
        .unwrap_or(f64::NEG_INFINITY);
    let sketch = row
        .get_ref(offset + 6)?
        .as_blob_or_null()
        .map_err(|e| StoreError::Corrupt(format!("latency sketch: {e}")))?;
    let sketch_from_buckets: bool = row.get(offset + 7)?;
    let explicit: Option<String> = row.get(offset + 8)?;
    let explicit = match explicit {
        Some(text) => Some(
            serde_json::from_str::<ExplicitBuckets>(&text)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        ),
        None => None,
    };
    if let Some(bytes) = sketch {
        stats
            .sketch
            .merge_encoded(bytes)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    }
    // Saturating: stored counts are not trusted to sum within u64.
    stats.requests = stats.requests.saturating_add(requests);
    stats.errors = stats.errors.saturating_add(errors);
    for (mine, chunk) in stats.status.iter_mut().zip(status_bytes.chunks_exact(8)) {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(chunk);
        *mine = mine.saturating_add(u64::from_le_bytes(bytes));
    }
    stats.duration_sum_ms += sum_ms;
    stats.duration_min_ms = stats.duration_min_ms.min(min_ms);
    stats.duration_max_ms = stats.duration_max_ms.max(max_ms);
    stats.sketch_from_buckets |= sketch_from_buckets;
    match (&mut stats.explicit, explicit) {
        (Some(mine), Some(theirs)) => mine.merge(&theirs),
        (None, Some(theirs)) => stats.explicit = Some(theirs),
        _ => {}
    }
    Ok(())
}
