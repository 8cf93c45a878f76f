//! The pause between failed commits (deliveries): doubling from a first
//! pause up to a cap, back to the first after a success.

use std::time::Duration;

/// Exponential backoff of one runner.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    /// Starts at `initial`, doubling up to `max` (at least `initial`).
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            current: initial,
        }
    }

    /// The pause to wait now; the next one is twice as long (up to the cap).
    pub fn next_pause(&mut self) -> Duration {
        let now = self.current;
        self.current = self.current.saturating_mul(2).min(self.max);
        now
    }

    /// The pause [`Backoff::next_pause`] would return, without moving on.
    pub fn peek(&self) -> Duration {
        self.current
    }

    /// The pause after the `n`th failure in a row (1: `initial`) of a
    /// backoff starting at `initial` and capped at `max`, for retries whose
    /// count is stored rather than held in a `Backoff` (the alert outbox).
    pub fn after_failures(initial: Duration, max: Duration, n: u32) -> Duration {
        let cap = max.max(initial);
        let mut pause = initial;
        for _ in 1..n {
            if pause >= cap {
                break;
            }
            pause = pause.saturating_mul(2);
        }
        pause.min(cap)
    }

    /// After a success: the next failure waits the first pause again.
    pub fn reset(&mut self) {
        self.current = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(500));
        let waits: Vec<Duration> = (0..5).map(|_| b.next_pause()).collect();
        assert_eq!(waits, [ms(100), ms(200), ms(400), ms(500), ms(500)]);
        b.reset();
        assert_eq!(b.peek(), ms(100));
        assert_eq!(b.next_pause(), ms(100));
    }

    #[test]
    fn after_failures_is_the_nth_pause_of_a_backoff() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(500));
        for n in 1..=6 {
            assert_eq!(Backoff::after_failures(ms(100), ms(500), n), b.next_pause());
        }
        assert_eq!(Backoff::after_failures(ms(100), ms(500), 0), ms(100));
        assert_eq!(
            Backoff::after_failures(ms(1), Duration::from_secs(300), u32::MAX),
            Duration::from_secs(300)
        );
    }

    #[test]
    fn a_cap_below_the_first_pause_is_the_first_pause() {
        let mut b = Backoff::new(Duration::from_secs(2), Duration::from_secs(1));
        assert_eq!(b.next_pause(), Duration::from_secs(2));
        assert_eq!(b.next_pause(), Duration::from_secs(2));
    }

    #[test]
    fn huge_pauses_do_not_overflow() {
        let mut b = Backoff::new(Duration::MAX / 2 + Duration::from_secs(1), Duration::MAX);
        b.next_pause();
        assert_eq!(b.next_pause(), Duration::MAX);
    }
}
