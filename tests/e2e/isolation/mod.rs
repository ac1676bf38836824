//! Isolation end to end: what a sandbox can reach on the network, enforced on the host by the
//! real engine and the real packet filter (issue 17's egress part).

mod egress;
