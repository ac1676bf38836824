//! The host side of the warm pool's two risky mechanisms, proven on the real engine by
//! `tests/pool_mechanisms.rs` and used by the Docker runtime's pool (`docker::pooled`; see
//! `docs/design.md`, "Warm pool"):
//!
//! - [`slots`]: empty directories under one `rshared` directory, each the bind source of one pooled
//!   sandbox's mount target (`rslave`), onto which a chat's volume is bind-mounted when claimed;
//! - [`claim`]: the FIFO through which a claim reaches the waiter (`sandboxd-pool-waiter`), the
//!   entrypoint that blocks in the sandbox until then.
//!
//! Both need root (CAP_SYS_ADMIN for mounts) in the engine's mount namespace, as sandboxd has.

pub mod claim;
pub mod slots;

/// Checks that `path` is the waiter a pooled sandbox can run: a regular, executable ELF file
/// without a program interpreter (static), since the sandbox's image may have no loader or libc.
///
/// # Errors
/// A sentence saying what is wrong, for the configuration error.
pub fn check_waiter(path: &std::path::Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(format!("{shown} is not an executable file"));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    match elf_interpreter(&bytes) {
        Some(false) => Ok(()),
        Some(true) => Err(format!(
            "{shown} is dynamically linked: build it static (scripts/lib/common.sh build_pool_waiter)"
        )),
        None => Err(format!(
            "{shown} is not a 64-bit little-endian ELF executable"
        )),
    }
}

/// Whether a 64-bit little-endian ELF file has a `PT_INTERP` program header (a dynamic loader);
/// `None` when it is not such a file.
fn elf_interpreter(bytes: &[u8]) -> Option<bool> {
    const PT_INTERP: u32 = 3;
    if bytes.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let u16_at = |at: usize| Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?));
    let u64_at = |at: usize| Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?));
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let entry_size = usize::from(u16_at(0x36)?);
    let count = usize::from(u16_at(0x38)?);
    let mut interp = false;
    for index in 0..count {
        let at = phoff.checked_add(index.checked_mul(entry_size)?)?;
        let kind = u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?);
        interp |= kind == PT_INTERP;
    }
    Some(interp)
}

/// The last part of a path below a directory this module owns: one component, no dots, no
/// separators, so a name can never reach outside its directory.
pub(crate) fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::{elf_interpreter, is_plain_name};

    #[test]
    fn a_dynamic_elf_has_an_interpreter_and_garbage_is_no_elf() {
        // This test binary is dynamically linked (the default target).
        let me = std::fs::read(std::env::current_exe().unwrap_or_default()).unwrap_or_default();
        assert_eq!(elf_interpreter(&me), Some(true));
        assert_eq!(elf_interpreter(b"#!/bin/sh\n"), None);
        assert_eq!(elf_interpreter(b""), None);
        let mut truncated = me[..64].to_vec();
        truncated.truncate(40);
        assert_eq!(elf_interpreter(&truncated), None);
    }

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
