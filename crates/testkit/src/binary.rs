//! Which `sandboxd` binary the tests run, and the workspace it is built from: a stale binary
//! would silently test old code.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The workspace root (two levels above this crate).
#[must_use]
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .nth(2)
        .unwrap_or(manifest)
        .to_path_buf()
}

/// The `sandboxd` binary under test: `SANDBOXD_BIN`, else `target/debug/sandboxd` (honouring
/// `CARGO_TARGET_DIR`). `cargo test` does not build other packages' binaries, so a stale binary
/// would silently test old code: refuse one older than the sources.
pub fn sandboxd_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("SANDBOXD_BIN") {
        let bin = PathBuf::from(bin);
        assert!(
            bin.is_file(),
            "SANDBOXD_BIN={} does not exist",
            bin.display()
        );
        return bin;
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|dir| {
            if dir.is_relative() {
                workspace_root().join(dir)
            } else {
                dir
            }
        })
        .unwrap_or_else(|| workspace_root().join("target"));
    let bin = target.join("debug").join("sandboxd");
    let built = std::fs::metadata(&bin).and_then(|m| m.modified());
    let Ok(built) = built else {
        panic!(
            "{} is missing: build it first with `cargo build -p sandboxd-server` \
             (scripts/test does), or point SANDBOXD_BIN at a sandboxd binary",
            bin.display()
        );
    };
    if let Some((source, changed)) = newest_source()
        && changed > built
    {
        panic!(
            "{} is older than {}: rebuild it with `cargo build -p sandboxd-server` \
             (or set SANDBOXD_BIN to test another binary)",
            bin.display(),
            source.display()
        );
    }
    bin
}

/// The most recently modified source file the binary is built from.
fn newest_source() -> Option<(PathBuf, SystemTime)> {
    let root = workspace_root();
    let mut dirs: Vec<PathBuf> = ["src", "proto", "crates"]
        .iter()
        .map(|d| root.join(d))
        .collect();
    let mut newest: Option<(PathBuf, SystemTime)> = None;
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            // Tests, examples and the kit itself are not part of the binary.
            if path.is_dir() {
                if !matches!(
                    name.as_ref(),
                    "tests" | "examples" | "benches" | "target" | "testkit" | "bench"
                ) {
                    dirs.push(path);
                }
                continue;
            }
            // A `tests.rs` is a `#[cfg(test)]` module: editing it does not relink the binary.
            if name == "tests.rs"
                || !(name.ends_with(".rs") || name.ends_with(".proto") || name == "Cargo.toml")
            {
                continue;
            }
            if let Ok(modified) = entry.metadata().and_then(|m| m.modified())
                && newest.as_ref().is_none_or(|(_, t)| modified > *t)
            {
                newest = Some((path, modified));
            }
        }
    }
    newest
}
