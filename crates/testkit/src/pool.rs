//! The warm pool's test needs: the static waiter binary, built as it ships, and the removal of
//! every mount a test left under its directories (slots, attached volumes), which must happen
//! before those directories are deleted: deleting one with a volume attached reaches into it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::workspace_root;

/// The target the waiter is built for: a static binary of the host's architecture.
pub const WAITER_TARGET: &str = "x86_64-unknown-linux-gnu";

/// The static waiter (`+crt-static`, as `scripts/lib/common.sh` builds it), built once per test
/// binary into the workspace's target directory.
///
/// # Panics
/// When the build fails: no pool test can run without it.
#[allow(clippy::expect_used)]
#[must_use]
pub fn waiter_binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let workspace = workspace_root();
            let target_dir = std::env::var_os("CARGO_TARGET_DIR")
                .map_or_else(|| workspace.join("target"), PathBuf::from);
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let status = std::process::Command::new(cargo)
                .current_dir(&workspace)
                .env("CARGO_TARGET_DIR", &target_dir)
                .env("RUSTFLAGS", "-C target-feature=+crt-static")
                .args([
                    "build",
                    "--release",
                    "--quiet",
                    "-p",
                    "sandboxd-pool-waiter",
                    "--target",
                    WAITER_TARGET,
                ])
                .status()
                .expect("cargo runs");
            assert!(status.success(), "building the static waiter failed");
            target_dir
                .join(WAITER_TARGET)
                .join("release/pool-waiter")
                .canonicalize()
                .expect("the waiter was built")
        })
        .clone()
}

/// Mount points at or below `root`, as this process's mount namespace lists them.
#[must_use]
pub fn mounts_under(root: &Path) -> Vec<PathBuf> {
    let root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape)
        .filter(|point| point.starts_with(&root))
        .collect()
}

/// Unmounts everything at or below `root`, deepest first, lazily (in a failed test something may
/// still use a mount; it must go regardless). Failures are printed, not raised: this runs in
/// `Drop`.
pub fn unmount_all_under(root: &Path) {
    let mut left = mounts_under(root);
    left.sort_by_key(|path| std::cmp::Reverse(path.components().count()));
    for point in left {
        if let Err(error) = rustix::mount::unmount(&point, rustix::mount::UnmountFlags::DETACH) {
            eprintln!("cleanup: cannot unmount {}: {error}", point.display());
        }
    }
}

/// Unmounts everything below a directory when dropped (see [`unmount_all_under`]): a field
/// placed after the containers' guard and before the directory's own.
#[derive(Debug)]
pub struct MountGuard(PathBuf);

impl MountGuard {
    #[must_use]
    pub fn new(root: &Path) -> Self {
        Self(root.to_path_buf())
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        unmount_all_under(&self.0);
    }
}

/// The kernel's octal escapes of space, tab, newline and backslash in mountinfo, undone.
fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'\\'
            && let Some(code) = bytes
                .get(index + 1..index + 4)
                .and_then(|digits| std::str::from_utf8(digits).ok())
                .and_then(|digits| u8::from_str_radix(digits, 8).ok())
        {
            out.push(code);
            index += 4;
        } else {
            out.push(bytes[index]);
            index += 1;
        }
    }
    PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(out))
}
