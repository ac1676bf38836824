//! Isolation beyond the default hardening, end to end: sandboxes under gVisor (`gvisor`).

mod gvisor;
