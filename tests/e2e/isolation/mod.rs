//! Isolation end to end: what a sandbox can reach on the network, enforced on the host by the
//! real engine and the real packet filter (`egress`), and sandboxes under gVisor (`gvisor`).

mod egress;
mod gvisor;
