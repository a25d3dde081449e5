//! The shape of the generated traffic: which products are asked for (Zipf-skewed popularity),
//! when requests arrive (a constant or sinusoidally modulated "diurnal" rate), and bursts of
//! writes to popular products on top. Arrival times come from a schedule computed in advance
//! of the responses, so the generator stays an open model whatever the server does.

use rand::Rng;
use rand_distr::{Distribution, Zipf};
use std::f64::consts::TAU;
use std::time::Duration;

/// Traffic shape options (the `--zipf-exponent`, `--write-burst-*` and `--diurnal-*` flags).
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct Traffic {
    /// Exponent of the Zipf distribution of product popularity: the product of rank k is asked
    /// for in proportion to 1/k^s (0: uniform; 1: a few products take most reads).
    #[arg(long, default_value_t = 1.0)]
    pub zipf_exponent: f64,
    /// Seconds between bursts of writes (review POSTs to popular products, each writing the
    /// product through the cache); 0 turns bursts off.
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    pub write_burst_every: f64,
    /// Writes per burst, sent over half a second on top of the regular arrivals.
    #[arg(long, default_value_t = 20)]
    pub write_burst_size: u32,
    /// Period in seconds of a sinusoidal modulation of the arrival rate (a compressed day);
    /// 0 keeps the rate constant.
    #[arg(long, value_name = "SECONDS", default_value_t = 0.0)]
    pub diurnal_period: f64,
    /// Depth of the diurnal modulation: the rate swings between (1 − a) and (1 + a) times the
    /// nominal rate, whose mean it keeps. Below 1.
    #[arg(long, default_value_t = 0.5)]
    pub diurnal_amplitude: f64,
}

impl Default for Traffic {
    fn default() -> Self {
        Traffic {
            zipf_exponent: 1.0,
            write_burst_every: 30.0,
            write_burst_size: 20,
            diurnal_period: 0.0,
            diurnal_amplitude: 0.5,
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TrafficError {
    #[error("--zipf-exponent must be a number ≥ 0 (got {0})")]
    ZipfExponent(f64),
    #[error("--write-burst-every must be a number of seconds ≥ 0 (got {0})")]
    BurstEvery(f64),
    #[error("--diurnal-period must be a number of seconds ≥ 0 (got {0})")]
    DiurnalPeriod(f64),
    #[error("--diurnal-amplitude must be in [0, 1) (got {0})")]
    DiurnalAmplitude(f64),
}

impl Traffic {
    /// Uniform ids, constant rate, no bursts: a benchmark's steady load.
    pub fn steady() -> Self {
        Traffic {
            zipf_exponent: 0.0,
            write_burst_every: 0.0,
            ..Traffic::default()
        }
    }

    pub fn validate(&self) -> Result<(), TrafficError> {
        let non_negative = |x: f64| x.is_finite() && x >= 0.0;
        if !non_negative(self.zipf_exponent) {
            return Err(TrafficError::ZipfExponent(self.zipf_exponent));
        }
        if !non_negative(self.write_burst_every) {
            return Err(TrafficError::BurstEvery(self.write_burst_every));
        }
        if !non_negative(self.diurnal_period) {
            return Err(TrafficError::DiurnalPeriod(self.diurnal_period));
        }
        if !(non_negative(self.diurnal_amplitude) && self.diurnal_amplitude < 1.0) {
            return Err(TrafficError::DiurnalAmplitude(self.diurnal_amplitude));
        }
        Ok(())
    }

    fn bursts(&self) -> Option<(f64, u32)> {
        (self.write_burst_every > 0.0 && self.write_burst_size > 0)
            .then_some((self.write_burst_every, self.write_burst_size))
    }
}

/// Product ids by Zipf-distributed popularity rank: id 1 is the most popular.
pub struct Popularity {
    zipf: Zipf<f64>,
    products: i64,
}

impl Popularity {
    /// `exponent` must be ≥ 0 ([`Traffic::validate`]); `products` is clamped to ≥ 1.
    pub fn new(products: i64, exponent: f64) -> Result<Self, TrafficError> {
        let products = products.max(1);
        let zipf = Zipf::new(products as f64, exponent)
            .map_err(|_| TrafficError::ZipfExponent(exponent))?;
        Ok(Popularity { zipf, products })
    }

    pub fn sample(&self, rng: &mut impl Rng) -> i64 {
        (self.zipf.sample(rng) as i64).clamp(1, self.products)
    }
}

/// What an arrival is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// A request of the regular mix (or of the single endpoint of `only`).
    Regular,
    /// A write of a burst.
    BurstWrite,
}

/// The arrival times, as offsets from the start: the regular process at the (possibly
/// modulated) rate, merged with the bursts' writes.
pub struct Schedule {
    rate: f64,
    /// (angular frequency, amplitude) of the diurnal modulation.
    diurnal: Option<(f64, f64)>,
    next_regular: f64,
    /// Regular arrivals scheduled so far.
    regular: u64,
    /// (seconds between bursts, writes per burst).
    bursts: Option<(f64, u32)>,
    /// Bursts started so far, and writes of the current one sent.
    burst: u64,
    burst_sent: u32,
}

/// A burst's writes are spread over this long (or half the interval, if shorter).
const BURST_SPREAD_S: f64 = 0.5;

impl Schedule {
    /// `rate` must be positive; `bursts` are left out when `with_bursts` is false.
    pub fn new(rate: f64, traffic: &Traffic, with_bursts: bool) -> Self {
        let diurnal = (traffic.diurnal_period > 0.0 && traffic.diurnal_amplitude > 0.0)
            .then(|| (TAU / traffic.diurnal_period, traffic.diurnal_amplitude));
        Schedule {
            rate,
            diurnal,
            next_regular: 0.0,
            regular: 0,
            bursts: if with_bursts { traffic.bursts() } else { None },
            burst: 1,
            burst_sent: 0,
        }
    }

    /// The intended arrival rate at `t` seconds.
    pub fn rate_at(&self, t: f64) -> f64 {
        match self.diurnal {
            Some((w, a)) => self.rate * (1.0 + a * (w * t).sin()),
            None => self.rate,
        }
    }

    fn next_burst(&self) -> Option<f64> {
        let (every, size) = self.bursts?;
        let spread = BURST_SPREAD_S.min(every / 2.0);
        Some(self.burst as f64 * every + spread * f64::from(self.burst_sent) / f64::from(size))
    }

    /// The next arrival: its offset in seconds from the start, and its kind.
    pub fn next_arrival(&mut self) -> (f64, Arrival) {
        if let Some(b) = self.next_burst()
            && b < self.next_regular
        {
            let (_, size) = self.bursts.unwrap_or((0.0, 1));
            self.burst_sent += 1;
            if self.burst_sent >= size {
                self.burst += 1;
                self.burst_sent = 0;
            }
            return (b, Arrival::BurstWrite);
        }
        let t = self.next_regular;
        self.regular += 1;
        self.next_regular = match self.diurnal {
            // Not a running sum: n × 0.01 s must be exactly on schedule after a long run.
            None => self.regular as f64 / self.rate,
            // The gap is the inverse of the rate at its midpoint (a second-order step along
            // the cumulative intensity), so the modulated process keeps the nominal mean rate.
            Some(_) => t + 1.0 / self.rate_at(t + 0.5 / self.rate_at(t)),
        };
        (t, Arrival::Regular)
    }
}

/// Seconds to a [`Duration`], for the flags given in seconds.
pub fn seconds(s: f64) -> Duration {
    Duration::try_from_secs_f64(s).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn arrivals(s: &mut Schedule, until: f64) -> Vec<(f64, Arrival)> {
        let mut out = Vec::new();
        loop {
            let a = s.next_arrival();
            if a.0 >= until {
                return out;
            }
            out.push(a);
        }
    }

    #[test]
    fn zipf_popularity_is_skewed_and_in_range() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        let p = Popularity::new(10_000, 1.0).unwrap();
        let n = 100_000;
        let ids: Vec<i64> = (0..n).map(|_| p.sample(&mut rng)).collect();
        assert!(ids.iter().all(|&i| (1..=10_000).contains(&i)));
        let top10 = ids.iter().filter(|&&i| i <= 10).count() as f64 / n as f64;
        // H(10)/H(10000) ≈ 2.93/9.79 ≈ 0.30 of all reads go to the ten most popular products.
        assert!((0.26..0.34).contains(&top10), "{top10}");
        let uniform = Popularity::new(10_000, 0.0).unwrap();
        let top10u = (0..n).filter(|_| uniform.sample(&mut rng) <= 10).count() as f64 / n as f64;
        assert!(top10u < 0.003, "{top10u}");
    }

    #[test]
    fn constant_rate_without_bursts() {
        let mut s = Schedule::new(100.0, &Traffic::steady(), true);
        let a = arrivals(&mut s, 10.0);
        assert_eq!(a.len(), 1000);
        assert!(a.iter().all(|x| x.1 == Arrival::Regular));
        assert!((a[1].0 - 0.01).abs() < 1e-9);
    }

    #[test]
    fn bursts_add_writes_every_interval() {
        let t = Traffic {
            write_burst_every: 2.0,
            write_burst_size: 10,
            ..Traffic::steady()
        };
        let mut s = Schedule::new(100.0, &t, true);
        let a = arrivals(&mut s, 7.0);
        let writes: Vec<f64> = a
            .iter()
            .filter(|x| x.1 == Arrival::BurstWrite)
            .map(|x| x.0)
            .collect();
        // Bursts at 2, 4 and 6 s, each spread over half a second.
        assert_eq!(writes.len(), 30);
        assert!((writes[0] - 2.0).abs() < 1e-9 && writes[9] < 2.5 && writes[10] >= 4.0);
        assert_eq!(a.len() - writes.len(), 700);
        assert!(a.windows(2).all(|w| w[0].0 <= w[1].0), "in time order");
        let mut off = Schedule::new(100.0, &t, false);
        assert_eq!(arrivals(&mut off, 7.0).len(), 700);
    }

    #[test]
    fn diurnal_rate_swings_and_keeps_its_mean() {
        let t = Traffic {
            diurnal_period: 10.0,
            diurnal_amplitude: 0.5,
            ..Traffic::steady()
        };
        let mut s = Schedule::new(200.0, &t, true);
        let a = arrivals(&mut s, 20.0);
        // Two whole periods: the mean rate is the nominal one.
        assert!((a.len() as i64 - 4000).abs() <= 4, "{}", a.len());
        // The peak quarter (around 2.5 s) is about 3× as busy as the trough (around 7.5 s).
        let count = |from: f64, to: f64| a.iter().filter(|x| x.0 >= from && x.0 < to).count();
        let peak = count(2.0, 3.0) as f64;
        let trough = count(7.0, 8.0) as f64;
        assert!((peak / trough - 3.0).abs() < 0.2, "{peak} / {trough}");
    }

    #[test]
    fn invalid_options_are_rejected() {
        let bad = [
            Traffic {
                zipf_exponent: -1.0,
                ..Traffic::default()
            },
            Traffic {
                diurnal_amplitude: 1.0,
                ..Traffic::default()
            },
            Traffic {
                write_burst_every: f64::NAN,
                ..Traffic::default()
            },
            Traffic {
                diurnal_period: -5.0,
                ..Traffic::default()
            },
        ];
        for t in bad {
            assert!(t.validate().is_err(), "{t:?}");
        }
        assert!(Traffic::default().validate().is_ok());
    }
}
