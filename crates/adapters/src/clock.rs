//! The system clock behind the `Clock` port.

use sandboxd_domain::Timestamp;
use sandboxd_usecase::ports::Clock;

/// Wall-clock UTC time, truncated to the millisecond. Expiry is compared across processes and
/// stored in Redis as unix milliseconds, so it is the wall clock (not a monotonic one), and a
/// session read back must equal the one that was saved.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let now = Timestamp::now_utc();
        now.replace_nanosecond(u32::from(now.millisecond()) * 1_000_000)
            .unwrap_or(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_is_utc_whole_milliseconds_and_moves_forward() {
        let clock = SystemClock;
        let first = clock.now();
        let second = clock.now();
        assert!(first.offset().is_utc());
        assert_eq!(first.nanosecond() % 1_000_000, 0);
        assert!(second >= first);
    }
}
