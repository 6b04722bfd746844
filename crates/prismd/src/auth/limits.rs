//! Per-key rate limits (token buckets for requests and for creates) and per-project quotas.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

/// Limits applied to authenticated callers (auth on). A rate of 0 disables that limit; a quota
/// of 0 is unlimited. Admin keys are rate-limited but have no quota.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Requests per second per key (sustained).
    pub requests_per_s: f64,
    /// Requests a key may send at once before the rate applies.
    pub requests_burst: f64,
    /// Sandbox creates per second per key.
    pub creates_per_s: f64,
    pub creates_burst: f64,
    /// Sandboxes a project may have at once (creating, running or stopped).
    pub max_sandboxes: u64,
    /// Sum of `resources.cpus` over a project's sandboxes (creating, running or stopped).
    pub max_cpus: f64,
    /// Sum of `resources.memory_mb` over the same sandboxes.
    pub max_memory_mb: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            requests_per_s: 50.0,
            requests_burst: 100.0,
            creates_per_s: 5.0,
            creates_burst: 10.0,
            max_sandboxes: 0,
            max_cpus: 0.0,
            max_memory_mb: 0,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// Take one token, or say how long until one is there.
    fn take(&mut self, rate: f64, burst: f64, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst.max(1.0));
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
        }
    }
}

/// Token buckets by key id.
#[derive(Debug)]
pub struct RateLimiter {
    pub limits: Limits,
    buckets: Mutex<HashMap<(String, bool), Bucket>>,
}

impl RateLimiter {
    pub fn new(limits: Limits) -> Self {
        RateLimiter {
            limits,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Count one request (and one create when `create`) of `key`; `Err(retry_after)` when over.
    pub fn check(&self, key: &str, create: bool) -> Result<(), Duration> {
        self.check_at(key, create, Instant::now())
    }

    fn check_at(&self, key: &str, create: bool, now: Instant) -> Result<(), Duration> {
        let l = &self.limits;
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let mut one = |is_create: bool, rate: f64, burst: f64| {
            if rate <= 0.0 {
                return Ok(());
            }
            buckets
                .entry((key.to_string(), is_create))
                .or_insert(Bucket {
                    tokens: burst.max(1.0),
                    at: now,
                })
                .take(rate, burst, now)
        };
        one(false, l.requests_per_s, l.requests_burst)?;
        if create {
            one(true, l.creates_per_s, l.creates_burst)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refused_then_refilled() {
        let r = RateLimiter::new(Limits {
            requests_per_s: 2.0,
            requests_burst: 3.0,
            ..Limits::default()
        });
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(r.check_at("k", false, t0).is_ok());
        }
        let wait = r.check_at("k", false, t0).err();
        assert!(wait.is_some_and(|w| w > Duration::ZERO && w <= Duration::from_millis(500)));
        assert!(r.check_at("other", false, t0).is_ok(), "per key");
        assert!(
            r.check_at("k", false, t0 + Duration::from_millis(500))
                .is_ok()
        );
    }

    #[test]
    fn creates_have_their_own_bucket() {
        let r = RateLimiter::new(Limits {
            creates_per_s: 1.0,
            creates_burst: 1.0,
            ..Limits::default()
        });
        let t0 = Instant::now();
        assert!(r.check_at("k", true, t0).is_ok());
        assert!(r.check_at("k", true, t0).is_err());
        assert!(r.check_at("k", false, t0).is_ok());
    }
}
