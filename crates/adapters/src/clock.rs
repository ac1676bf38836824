//! The system clock behind the `Clock` port.

use sandboxd_domain::Timestamp;
use sandboxd_usecase::ports::Clock;

/// Wall-clock UTC time. Expiry is compared across processes and stored in Redis, so it is the
/// wall clock, not a monotonic one.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now_utc()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_is_utc_and_moves_forward() {
        let clock = SystemClock;
        let first = clock.now();
        let second = clock.now();
        assert!(first.offset().is_utc());
        assert!(second >= first);
    }
}
