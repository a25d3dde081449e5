//! The instances of each service: the `service.instance.id` values its telemetry carried, and
//! when each was last seen, so the service page can show that two replicas feed one service
//! (and which one fell silent). Held in memory only — instances announce themselves with every
//! export — and bounded in count and bytes: a sender inventing ids fills its own service's
//! share and is counted as "more", never the process's memory.

use std::collections::BTreeMap;
use std::sync::Arc;

use foldhash::HashMap;

use crate::model::InstanceSeen;

/// Instances listed per service; more are counted, not named.
pub const MAX_INSTANCES_PER_SERVICE: usize = 64;
/// Services whose instances are tracked; the cardinality guard caps services lower.
const MAX_SERVICES: usize = 1_000;
/// An instance not heard from for this long is forgotten.
pub const INSTANCE_IDLE_MS: i64 = 15 * 60 * 1000;

#[derive(Debug, Default)]
struct ServiceInstances {
    /// Instance id → last seen (ms since the epoch).
    seen: BTreeMap<String, i64>,
    /// Exports from instances the full list had no room for (ids not kept, so not distinct).
    more: u64,
}

/// One service's instances, as pages show them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstancesView {
    /// Id and last seen, most recently seen first.
    pub instances: Vec<(String, i64)>,
    /// Exports from instances beyond [`MAX_INSTANCES_PER_SERVICE`].
    pub more: u64,
}

#[derive(Debug, Default)]
pub struct InstanceRegistry {
    services: HashMap<Arc<str>, ServiceInstances>,
}

impl InstanceRegistry {
    /// Notes that `seen` exported at `now_ms`.
    pub fn record(&mut self, seen: &InstanceSeen, now_ms: i64) {
        if !self.services.contains_key(&seen.service) && self.services.len() >= MAX_SERVICES {
            return;
        }
        let service = self.services.entry(seen.service.clone()).or_default();
        if let Some(last) = service.seen.get_mut(&seen.instance) {
            *last = now_ms;
        } else if service.seen.len() < MAX_INSTANCES_PER_SERVICE {
            service.seen.insert(seen.instance.clone(), now_ms);
        } else {
            service.more += 1;
        }
    }

    /// Forgets instances idle for [`INSTANCE_IDLE_MS`], and services left without any.
    pub fn expire(&mut self, now_ms: i64) {
        let cutoff = now_ms.saturating_sub(INSTANCE_IDLE_MS);
        self.services.retain(|_, service| {
            service.seen.retain(|_, last| *last >= cutoff);
            if service.seen.len() < MAX_INSTANCES_PER_SERVICE {
                service.more = 0;
            }
            !service.seen.is_empty()
        });
    }

    pub fn of(&self, service: &str) -> InstancesView {
        let Some(found) = self.services.get(service) else {
            return InstancesView {
                instances: Vec::new(),
                more: 0,
            };
        };
        let mut instances: Vec<(String, i64)> = found
            .seen
            .iter()
            .map(|(id, at)| (id.clone(), *at))
            .collect();
        instances.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        InstancesView {
            instances,
            more: found.more,
        }
    }

    /// Heap bytes held, for the memory budget.
    pub fn heap_bytes(&self) -> usize {
        self.services
            .iter()
            .map(|(name, service)| {
                name.len()
                    + size_of::<(Arc<str>, ServiceInstances)>()
                    + service
                        .seen
                        .keys()
                        .map(|id| id.len() + size_of::<(String, i64)>() + 16)
                        .sum::<usize>()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(service: &str, instance: &str) -> InstanceSeen {
        InstanceSeen {
            service: Arc::from(service),
            instance: instance.to_string(),
        }
    }

    #[test]
    fn instances_are_listed_newest_first_and_forgotten_when_idle() {
        let mut registry = InstanceRegistry::default();
        registry.record(&seen("api", "api-1"), 1_000);
        registry.record(&seen("api", "api-2"), 2_000);
        registry.record(&seen("api", "api-1"), 3_000);
        registry.record(&seen("other", "x"), 3_000);
        let view = registry.of("api");
        assert_eq!(
            view.instances,
            vec![("api-1".to_string(), 3_000), ("api-2".to_string(), 2_000)]
        );
        registry.expire(2_500 + INSTANCE_IDLE_MS);
        assert_eq!(registry.of("api").instances.len(), 1);
        registry.expire(3_001 + INSTANCE_IDLE_MS);
        assert!(registry.of("api").instances.is_empty());
        assert_eq!(registry.heap_bytes(), 0);
    }

    #[test]
    fn a_flood_of_ids_is_counted_not_kept() {
        let mut registry = InstanceRegistry::default();
        for i in 0..MAX_INSTANCES_PER_SERVICE + 10 {
            registry.record(&seen("api", &format!("pod-{i}")), 1_000);
        }
        let view = registry.of("api");
        assert_eq!(view.instances.len(), MAX_INSTANCES_PER_SERVICE);
        assert_eq!(view.more, 10);
        let bytes = registry.heap_bytes();
        registry.record(&seen("api", "one-more"), 1_000);
        assert_eq!(registry.heap_bytes(), bytes);
    }
}
