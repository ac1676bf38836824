//! `pool-waiter FIFO [-- DEFAULT COMMAND...]`: the entrypoint of a pooled sandbox.
//!
//! Opens `FIFO` for reading, which blocks in the kernel until the host opens it for writing (no
//! polling, nothing to wake up for), reads one claim to the writer's close, and `exec`s the
//! claim's command (or the default one) with the claim's environment set on top of its own (the
//! profile's), in the claim's working directory or its own entered again by path. Re-entering
//! matters: a volume attached over the mount target after the waiter started is seen only
//! through a fresh path lookup; a process already inside keeps the empty directory underneath.
//!
//! A writer that closes without writing is not a claim: the waiter waits again. Any other bad
//! claim ends it with status 2, so the pool replaces the sandbox rather than guess.
//!
//! No NSS, no allocation-heavy work: the binary is built static and bind-mounted read-only into
//! images that have nothing else (`+crt-static`, see `docs/design.md`, "Warm pool").

use std::fs::File;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use sandboxd_pool_waiter::{Claim, ClaimError, MAX_CLAIM_BYTES};

/// Bad usage or a bad claim (the host's fault, not the command's).
const EXIT_BAD_CLAIM: u8 = 2;
/// The command could not be executed, as a shell says it.
const EXIT_CANNOT_EXEC: u8 = 126;
/// The command was not found, as a shell says it.
const EXIT_NOT_FOUND: u8 = 127;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let Some(fifo) = args.next().map(PathBuf::from) else {
        eprintln!("usage: pool-waiter FIFO [-- DEFAULT COMMAND...]");
        return ExitCode::from(EXIT_BAD_CLAIM);
    };
    let rest: Vec<_> = args.collect();
    let default_command = match rest.split_first() {
        None => Vec::new(),
        Some((dashes, command)) if dashes == "--" => command.to_vec(),
        Some(_) => {
            eprintln!("pool-waiter: expected `--` before the default command");
            return ExitCode::from(EXIT_BAD_CLAIM);
        }
    };
    let claim = match wait_for_claim(&fifo) {
        Ok(claim) => claim,
        Err(error) => {
            eprintln!("pool-waiter: {error}");
            return ExitCode::from(EXIT_BAD_CLAIM);
        }
    };
    let mut command_line: Vec<std::ffi::OsString> = if claim.command.is_empty() {
        default_command
    } else {
        claim.command.iter().map(Into::into).collect()
    };
    if command_line.is_empty() {
        eprintln!("pool-waiter: the claim names no command and there is no default");
        return ExitCode::from(EXIT_BAD_CLAIM);
    }
    let program = command_line.remove(0);
    // The path, looked up again now: `current_dir()` is the path the waiter was started in.
    let working_dir = claim
        .working_dir
        .map(PathBuf::from)
        .or_else(|| std::env::current_dir().ok())
        .unwrap_or_else(|| PathBuf::from("/"));
    let error = Command::new(&program)
        .args(command_line)
        .envs(claim.env)
        .current_dir(&working_dir)
        .exec();
    eprintln!(
        "pool-waiter: cannot execute {} in {}: {error}",
        program.to_string_lossy(),
        working_dir.display()
    );
    if error.kind() == std::io::ErrorKind::NotFound {
        ExitCode::from(EXIT_NOT_FOUND)
    } else {
        ExitCode::from(EXIT_CANNOT_EXEC)
    }
}

/// Blocks until a writer delivers a claim; a writer that delivers nothing is waited out.
fn wait_for_claim(fifo: &PathBuf) -> Result<Claim, String> {
    loop {
        // Blocks in open(2) until the host opens the FIFO for writing.
        let file = File::open(fifo).map_err(|e| format!("cannot open {}: {e}", fifo.display()))?;
        let mut bytes = Vec::new();
        // Reads until the writer closes (EOF), bounded.
        file.take(MAX_CLAIM_BYTES)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("cannot read {}: {e}", fifo.display()))?;
        match Claim::decode(&bytes) {
            Err(ClaimError::Empty) => {}
            decoded => return decoded.map_err(|e| e.to_string()),
        }
    }
}
