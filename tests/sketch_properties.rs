//! Property tests of the accuracy contract: on skewed data split into random windows and merged
//! in random order, every reported quantile is within 1 % of the exact sample at its rank,
//! counts are exact, and merging is the same as sketching the union.

use proptest::prelude::*;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_distr::{Distribution, LogNormal, Pareto};
use redline::aggregate::red::RedStats;
use redline::aggregate::sketch::LatencySketch;
use redline::model::RequestRecord;

use crate::helpers::{assert_within_one_percent, exact_quantile};

#[derive(Debug, Clone, Copy)]
enum Shape {
    LogNormal,
    Bimodal,
    Pareto,
    WithOutliers,
}

fn samples(shape: Shape, count: usize, seed: u64) -> Vec<f64> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let lognormal = LogNormal::new(3.0, 1.2).unwrap();
    let pareto = Pareto::new(1.0, 1.5).unwrap();
    (0..count)
        .map(|i| match shape {
            Shape::LogNormal => lognormal.sample(&mut rng),
            Shape::Bimodal => {
                if i % 3 == 0 {
                    800.0 + lognormal.sample(&mut rng)
                } else {
                    0.5 + lognormal.sample(&mut rng) / 100.0
                }
            }
            Shape::Pareto => pareto.sample(&mut rng),
            Shape::WithOutliers => {
                if i % 97 == 0 {
                    60_000.0 * (1.0 + (i % 7) as f64)
                } else {
                    5.0 + lognormal.sample(&mut rng) / 10.0
                }
            }
        })
        .collect()
}

fn request(duration_ms: f64, i: usize) -> RequestRecord {
    RequestRecord {
        end_unix_ms: 0,
        duration_ms,
        status_code: Some(if i.is_multiple_of(10) { 500 } else { 200 }),
        is_error: i.is_multiple_of(10),
        count: 1,
    }
}

fn shape() -> impl Strategy<Value = Shape> {
    prop_oneof![
        Just(Shape::LogNormal),
        Just(Shape::Bimodal),
        Just(Shape::Pareto),
        Just(Shape::WithOutliers)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn merged_windows_keep_the_one_percent_guarantee(
        shape in shape(),
        count in 50usize..4000,
        windows in 1usize..40,
        seed in any::<u64>(),
    ) {
        let values = samples(shape, count, seed);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed);
        // Random split into windows, then merge them in random order.
        let mut parts: Vec<RedStats> = (0..windows).map(|_| RedStats::default()).collect();
        for (i, v) in values.iter().enumerate() {
            let window = (rand::Rng::random::<u64>(&mut rng) as usize) % windows;
            parts[window].add_request(&request(*v, i));
        }
        parts.shuffle(&mut rng);
        let mut merged = RedStats::default();
        for part in &parts {
            merged.merge(part);
        }
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);
        prop_assert_eq!(merged.requests, count as u64);
        prop_assert_eq!(merged.errors, values.iter().enumerate().filter(|(i, _)| i % 10 == 0).count() as u64);
        for q in [0.5, 0.9, 0.95, 0.99] {
            let reported = merged.quantile_ms(q).unwrap();
            assert_within_one_percent(reported, exact_quantile(&sorted, q), &format!("{shape:?} q={q}"));
        }
        prop_assert_eq!(merged.max_ms(), sorted.last().copied());
        prop_assert_eq!(merged.min_ms(), sorted.first().copied());
    }

    #[test]
    fn merging_parts_equals_sketching_the_union(
        shape in shape(),
        count in 1usize..3000,
        split in 0.0f64..1.0,
        seed in any::<u64>(),
    ) {
        let values = samples(shape, count, seed);
        let cut = (split * count as f64) as usize;
        let (mut a, mut b, mut union) = (LatencySketch::default(), LatencySketch::default(), LatencySketch::default());
        for (i, v) in values.iter().enumerate() {
            if i < cut { a.add(*v) } else { b.add(*v) }
            union.add(*v);
        }
        let mut ab = a.clone();
        ab.merge(&b);
        let mut ba = b.clone();
        ba.merge(&a);
        for step in 0..=200 {
            let q = step as f64 / 200.0;
            prop_assert_eq!(ab.quantile(q), union.quantile(q));
            prop_assert_eq!(ba.quantile(q), union.quantile(q));
        }
        prop_assert_eq!(ab.count(), count as u64);
    }

    #[test]
    fn stored_sketches_round_trip_exactly(shape in shape(), count in 1usize..2000, seed in any::<u64>()) {
        let mut sketch = LatencySketch::default();
        for v in samples(shape, count, seed) {
            sketch.add(v);
        }
        let decoded = LatencySketch::decode(&sketch.encode()).unwrap();
        prop_assert_eq!(decoded.count(), sketch.count());
        for step in 0..=100 {
            let q = step as f64 / 100.0;
            prop_assert_eq!(decoded.quantile(q), sketch.quantile(q));
        }
    }
}
