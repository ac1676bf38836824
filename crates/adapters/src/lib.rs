//! sandboxd adapters: every piece of I/O behind the use-case ports (Redis session store and
//! lease locker, Docker runtime, system clock), and the host's egress enforcement (bridge
//! networks and packet-filter rules) that the Docker runtime's sandboxes run under.

pub mod clock;
pub mod docker;
pub mod egress;
pub mod node;
pub mod pool;
pub mod redis;
