//! sandboxd adapters: every piece of I/O behind the use-case ports (Redis session store and
//! lease locker, Docker runtime, system clock).

pub mod clock;
pub mod docker;
pub mod redis;
