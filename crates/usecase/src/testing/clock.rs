//! A clock that moves only when the test says so.

use std::sync::Mutex;
use std::time::Duration;

use sandboxd_domain::Timestamp;

use super::lock;
use crate::ports::Clock;

#[derive(Debug)]
pub struct ManualClock(Mutex<Timestamp>);

impl ManualClock {
    #[must_use]
    pub fn new(start: Timestamp) -> Self {
        Self(Mutex::new(start))
    }

    /// A fixed, round start instant: 2026-01-01T00:00:00Z.
    #[must_use]
    pub fn at_epoch() -> Self {
        Self::new(time::macros::datetime!(2026-01-01 00:00 UTC))
    }

    pub fn advance(&self, by: Duration) {
        let mut now = lock(&self.0);
        *now += by;
    }

    pub fn set(&self, to: Timestamp) {
        *lock(&self.0) = to;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *lock(&self.0)
    }
}
