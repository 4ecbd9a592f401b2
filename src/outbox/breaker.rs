//! A circuit breaker per target. Closed: deliveries flow. After `threshold` consecutive failures that say the
//! target is unwell (unavailable, throttled) it opens: nothing is claimed for the target, so no attempt is spent
//! while it is down. After the cooldown a health check may close it; a failed check re-opens it for another
//! cooldown.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open { until: Instant },
}

#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    failures: u32,
    state: State,
}

/// A change of state worth an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Opened,
    Closed,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Breaker {
            threshold: threshold.max(1),
            cooldown,
            failures: 0,
            state: State::Closed,
        }
    }

    pub fn is_open(&self) -> bool {
        matches!(self.state, State::Open { .. })
    }

    /// Open, and the cooldown is over: time for a health check.
    pub fn probe_due(&self, now: Instant) -> bool {
        matches!(self.state, State::Open { until } if now >= until)
    }

    pub fn success(&mut self) -> Option<Transition> {
        self.failures = 0;
        match self.state {
            State::Open { .. } => {
                self.state = State::Closed;
                Some(Transition::Closed)
            }
            State::Closed => None,
        }
    }

    pub fn failure(&mut self, now: Instant) -> Option<Transition> {
        self.failures = self.failures.saturating_add(1);
        match self.state {
            State::Closed if self.failures >= self.threshold => {
                self.state = State::Open {
                    until: now + self.cooldown,
                };
                Some(Transition::Opened)
            }
            State::Open { .. } => {
                self.state = State::Open {
                    until: now + self.cooldown,
                };
                None
            }
            State::Closed => None,
        }
    }
}

/// Capped exponential backoff with full jitter: a uniform draw in `[0, min(max, base * 2^(attempt-1))]`, never
/// below `base / 2` so a retry is never immediate.
pub fn backoff(attempt: u32, base: Duration, max: Duration, jitter: f64) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let cap = exp.min(max);
    let floor = base / 2;
    floor.max(cap.mul_f64(jitter.clamp(0.0, 1.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_closes_on_success() {
        let t0 = Instant::now();
        let mut b = Breaker::new(3, Duration::from_secs(5));
        assert_eq!(b.failure(t0), None);
        assert_eq!(b.failure(t0), None);
        assert_eq!(b.failure(t0), Some(Transition::Opened));
        assert!(b.is_open());
        assert!(!b.probe_due(t0));
        assert!(b.probe_due(t0 + Duration::from_secs(5)));
        // A failed probe re-arms the cooldown.
        assert_eq!(b.failure(t0 + Duration::from_secs(5)), None);
        assert!(!b.probe_due(t0 + Duration::from_secs(6)));
        assert_eq!(b.success(), Some(Transition::Closed));
        assert!(!b.is_open());
        // A success resets the count.
        b.failure(t0);
        b.failure(t0);
        b.success();
        assert_eq!(b.failure(t0), None);
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(2);
        assert_eq!(backoff(1, base, max, 1.0), Duration::from_millis(100));
        assert_eq!(backoff(3, base, max, 1.0), Duration::from_millis(400));
        assert_eq!(backoff(30, base, max, 1.0), max);
        assert_eq!(backoff(30, base, max, 0.0), Duration::from_millis(50));
        assert_eq!(backoff(5, base, max, 0.5), Duration::from_millis(800));
    }
}
