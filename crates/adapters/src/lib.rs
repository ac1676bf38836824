//! sandboxd adapters: every piece of I/O behind the use-case ports (Docker runtime, system clock,
//! Redis session store and lease locker).

pub mod clock;
pub mod docker;
