//! Retry timing and limits: AWS "full jitter" backoff — sleep U(0, min(cap, base·2ⁿ)) — which
//! spreads retries of many clients apart (`backon`'s jitter adds to the delay instead), and a
//! retry budget (a token bucket in the style of Finagle's and tower's `TpsBudget`): each first
//! attempt deposits `ratio` tokens, each retry withdraws one, plus a small floor per second.
//! When the dependency is down, retries stop at ~`ratio` of traffic instead of multiplying it.

use rand::Rng;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Full-jitter delay before retry number `attempt` (0 = the first retry).
pub fn full_jitter(base: Duration, cap: Duration, attempt: u32, rng: &mut impl Rng) -> Duration {
    let exp = base.saturating_mul(2u32.saturating_pow(attempt.min(20)));
    let ceiling = exp.min(cap);
    if ceiling.is_zero() {
        return Duration::ZERO;
    }
    Duration::from_nanos(rng.random_range(0..=ceiling.as_nanos() as u64))
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

pub struct RetryBudget {
    ratio: f64,
    min_per_sec: f64,
    max_tokens: f64,
    bucket: Mutex<Bucket>,
}

impl RetryBudget {
    pub fn new(ratio: f64, min_per_sec: f64) -> Self {
        // Allow a burst of up to ten seconds' worth of floor retries plus deposits.
        let max_tokens = (min_per_sec * 10.0).max(1.0) + 100.0 * ratio;
        RetryBudget {
            ratio,
            min_per_sec,
            max_tokens,
            bucket: Mutex::new(Bucket {
                tokens: min_per_sec.max(1.0),
                last: Instant::now(),
            }),
        }
    }

    fn refill(&self, b: &mut Bucket) {
        let now = Instant::now();
        b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * self.min_per_sec)
            .min(self.max_tokens);
        b.last = now;
    }

    /// Called once per logical request (first attempt).
    pub fn deposit(&self) {
        let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        self.refill(&mut b);
        b.tokens = (b.tokens + self.ratio).min(self.max_tokens);
    }

    /// Called before each retry; false means "do not retry".
    pub fn try_withdraw(&self) -> bool {
        let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        self.refill(&mut b);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn full_jitter_stays_within_the_capped_exponential() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let base = Duration::from_millis(10);
        let cap = Duration::from_millis(100);
        for attempt in 0..8 {
            let ceiling = (base * 2u32.pow(attempt)).min(cap);
            let samples: Vec<Duration> = (0..2000)
                .map(|_| full_jitter(base, cap, attempt, &mut rng))
                .collect();
            assert!(samples.iter().all(|d| *d <= ceiling));
            // Full jitter: uniform from zero, so some delays fall in the lowest tenth.
            assert!(
                samples.iter().any(|d| *d < ceiling / 10),
                "attempt {attempt}"
            );
            let mean = samples.iter().map(|d| d.as_secs_f64()).sum::<f64>() / samples.len() as f64;
            assert!((mean - ceiling.as_secs_f64() / 2.0).abs() < ceiling.as_secs_f64() * 0.1);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn budget_limits_retries_to_a_share_of_requests() {
        let budget = RetryBudget::new(0.2, 0.0);
        // Initial allowance is 1 token (floor max(0,1)).
        let mut retries = 0;
        for _ in 0..100 {
            budget.deposit();
            if budget.try_withdraw() {
                retries += 1;
            }
        }
        assert!((20..=22).contains(&retries), "retries = {retries}");
    }

    #[tokio::test(start_paused = true)]
    async fn budget_floor_refills_over_time() {
        let budget = RetryBudget::new(0.0, 2.0);
        while budget.try_withdraw() {}
        assert!(!budget.try_withdraw());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(budget.try_withdraw());
        assert!(budget.try_withdraw());
        assert!(!budget.try_withdraw());
    }
}
