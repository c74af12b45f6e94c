//! The one retry pause of Kiln, for every request that is tried again (the bundle download,
//! the Consul and Vault sources, `kiln rollout`): exponential with jitter, never past a
//! deadline.

use std::time::{Duration, Instant};

/// The one retry pause of Kiln: exponential from `first`, doubling up to `max`, with jitter
/// (so a fleet booting at once spreads its retries), and never past the deadline.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff { next: first, max }
    }

    /// The pause before the next attempt, or `None` when the deadline has passed.
    pub fn next(&mut self, deadline: Instant) -> Option<Duration> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let pause = jitter(self.next).min(left);
        self.next = (self.next * 2).min(self.max);
        Some(pause)
    }

    /// Back to the first pause (after an attempt that worked).
    pub fn reset(&mut self, first: Duration) {
        self.next = first;
    }
}

/// `d/2 + random(0..d/2)`: spreads the retries of a fleet booting at once.
fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 4];
    let r = match getrandom::fill(&mut b) {
        Ok(()) => u32::from_le_bytes(b) as f64 / u32::MAX as f64,
        Err(_) => 0.5,
    };
    d / 2 + d.mul_f64(0.5 * r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_with_jitter_up_to_the_max_and_stop_at_the_deadline() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(4));
        let far = Instant::now() + Duration::from_secs(3600);
        let pauses: Vec<Duration> = (0..5).map(|_| b.next(far).unwrap()).collect();
        for (p, base) in pauses.iter().zip([1, 2, 4, 4, 4]) {
            let base = Duration::from_secs(base);
            assert!(*p >= base / 2 && *p <= base, "{p:?} for {base:?}");
        }
        let near = Instant::now() + Duration::from_millis(50);
        assert!(b.next(near).unwrap() <= Duration::from_millis(50));
        assert_eq!(b.next(Instant::now()), None);
        b.reset(Duration::from_millis(10));
        assert!(b.next(far).unwrap() <= Duration::from_millis(10));
    }
}
