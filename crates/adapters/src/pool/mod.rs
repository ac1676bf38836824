//! The host side of the warm pool's two risky mechanisms, proven on the real engine by
//! `tests/pool_mechanisms.rs` and not wired into the runtime yet (see `docs/pool-foundation.md`):
//!
//! - [`slots`]: empty directories under one `rshared` directory, each the bind source of one pooled
//!   sandbox's mount target (`rslave`), onto which a chat's volume is bind-mounted when claimed;
//! - [`claim`]: the FIFO through which a claim reaches the waiter (`sandboxd-pool-waiter`), the
//!   entrypoint that blocks in the sandbox until then.
//!
//! Both need root (CAP_SYS_ADMIN for mounts) in the engine's mount namespace, as sandboxd has.

pub mod claim;
pub mod slots;

/// The last part of a path below a directory this module owns: one component, no dots, no
/// separators, so a name can never reach outside its directory.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::is_plain_name;

    #[test]
    fn a_plain_name_is_one_harmless_path_component() {
        for name in ["pool-web-0", "a", "slot_1.2"] {
            assert!(is_plain_name(name), "{name}");
        }
        for name in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "/abs",
            "a b",
            "ü",
            &"x".repeat(129),
        ] {
            assert!(!is_plain_name(name), "{name:?}");
        }
    }
}
