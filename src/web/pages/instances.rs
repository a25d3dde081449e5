//! The instances line of a service page: the `service.instance.id`s the aggregator heard from
//! lately, and how long ago each last exported.

use super::Pages;

pub struct InstanceRow {
    pub id: String,
    /// How long ago it last exported, e.g. "4s".
    pub seen: String,
}

/// `service`'s instances, most recently heard first, and the exports from instances beyond
/// the listed ones.
pub fn instance_rows(pages: &Pages, service: &str) -> (Vec<InstanceRow>, u64) {
    let heard = pages.live.instances(service);
    let now = crate::vocab::now_ms();
    let rows = heard
        .instances
        .into_iter()
        .map(|(id, at_ms)| InstanceRow {
            id,
            seen: humantime::format_duration(std::time::Duration::from_secs(
                (now.saturating_sub(at_ms) / 1000).max(0) as u64,
            ))
            .to_string(),
        })
        .collect();
    (rows, heard.more)
}
