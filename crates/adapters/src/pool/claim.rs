//! The claim channel of one pooled sandbox: a FIFO in a directory of its own, bind-mounted
//! (read-only) into the sandbox, where the waiter has it open for reading.
//!
//! A FIFO suits a container without capabilities: opening it for reading blocks in the kernel
//! until a writer comes (no polling), and the host writes without the engine's help. The host
//! opens it non-blocking, so a sandbox whose waiter is not (or no longer) reading is reported at
//! once (`ENXIO`) instead of hanging the claim; then it writes the whole claim and closes, and
//! the waiter reads to that close.

use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::{CWD, FileType, Mode, OFlags};
use sandboxd_pool_waiter::{Claim, ClaimError};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;

use super::is_plain_name;

/// The FIFO's name inside its directory.
pub const FIFO_NAME: &str = "claim";

/// Why a claim channel could not be made or a claim not delivered.
#[derive(Debug, thiserror::Error)]
pub enum ClaimSendError {
    #[error("invalid claim channel name {0:?}")]
    InvalidName(String),
    #[error("no waiter is reading {0}: the sandbox is not (or no longer) waiting for a claim")]
    NotWaiting(PathBuf),
    #[error("the claim cannot be encoded: {0}")]
    Unencodable(#[from] ClaimError),
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

/// One pooled sandbox's claim FIFO on the host.
#[derive(Debug, Clone)]
pub struct ClaimChannel {
    /// The directory bind-mounted into the sandbox (read-only is enough: the waiter only reads).
    dir: PathBuf,
}

impl ClaimChannel {
    /// Creates `parent/name/claim` (a FIFO, mode 0600: the sandbox's root user reads it through
    /// owner permissions, without CAP_DAC_OVERRIDE); an existing channel is reused.
    ///
    /// # Errors
    /// [`ClaimSendError::InvalidName`] unless `name` is one plain path component;
    /// [`ClaimSendError::Io`] when the directory or FIFO cannot be made.
    pub fn create(parent: &Path, name: &str) -> Result<Self, ClaimSendError> {
        if !is_plain_name(name) {
            return Err(ClaimSendError::InvalidName(name.to_owned()));
        }
        let dir = parent.join(name);
        std::fs::create_dir_all(&dir).map_err(io_error("create", &dir))?;
        let fifo = dir.join(FIFO_NAME);
        match rustix::fs::mknodat(CWD, &fifo, FileType::Fifo, Mode::from_raw_mode(0o600), 0) {
            Ok(()) => {}
            Err(rustix::io::Errno::EXIST) => {}
            Err(errno) => return Err(io_error("make the FIFO", &fifo)(errno.into())),
        }
        Ok(Self { dir })
    }

    /// The channel `parent/name`, whether or not it exists (to send to, probe or remove).
    ///
    /// # Errors
    /// [`ClaimSendError::InvalidName`] unless `name` is one plain path component.
    pub fn at(parent: &Path, name: &str) -> Result<Self, ClaimSendError> {
        if !is_plain_name(name) {
            return Err(ClaimSendError::InvalidName(name.to_owned()));
        }
        Ok(Self {
            dir: parent.join(name),
        })
    }

    /// The directory to bind-mount into the sandbox.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Delivers `claim` to the waiter: the whole claim, then the close that ends it.
    ///
    /// # Errors
    /// [`ClaimSendError::NotWaiting`] when no process has the FIFO open for reading;
    /// [`ClaimSendError::Unencodable`]; [`ClaimSendError::Io`] when the write fails (the
    /// waiter died mid-claim: it never runs a claim cut short).
    pub async fn send(&self, claim: &Claim) -> Result<(), ClaimSendError> {
        let bytes = claim.encode()?;
        let fifo = self.dir.join(FIFO_NAME);
        let mut sender = match pipe::OpenOptions::new().open_sender(&fifo) {
            Ok(sender) => sender,
            Err(error) if error.raw_os_error() == Some(rustix::io::Errno::NXIO.raw_os_error()) => {
                return Err(ClaimSendError::NotWaiting(fifo));
            }
            Err(error) => return Err(io_error("open", &fifo)(error)),
        };
        sender
            .write_all(&bytes)
            .await
            .map_err(io_error("write the claim to", &fifo))?;
        sender
            .flush()
            .await
            .map_err(io_error("write the claim to", &fifo))?;
        Ok(())
    }

    /// Whether a waiter has the FIFO open for reading now. Harmless to the waiter: it sees a
    /// writer that closes without a word, which is no claim, and goes on waiting.
    ///
    /// # Errors
    /// [`ClaimSendError::Io`] when the FIFO cannot be opened for another reason (it is gone).
    pub fn is_waiting(&self) -> Result<bool, ClaimSendError> {
        let fifo = self.dir.join(FIFO_NAME);
        // Non-blocking, as for a claim: no reader is ENXIO rather than a wait.
        let opened = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(OFlags::NONBLOCK.bits().cast_signed())
            .open(&fifo);
        match opened {
            Ok(_closed_at_once) => Ok(true),
            Err(error) if error.raw_os_error() == Some(rustix::io::Errno::NXIO.raw_os_error()) => {
                Ok(false)
            }
            Err(error) => Err(io_error("open", &fifo)(error)),
        }
    }

    /// Removes the FIFO and its directory; missing ones are removed already.
    ///
    /// # Errors
    /// [`ClaimSendError::Io`] when they exist and cannot be removed.
    pub fn remove(&self) -> Result<(), ClaimSendError> {
        let fifo = self.dir.join(FIFO_NAME);
        for (path, result) in [
            (&fifo, std::fs::remove_file(&fifo)),
            (&self.dir, std::fs::remove_dir(&self.dir)),
        ] {
            match result {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => return Err(io_error("remove", path)(error)),
            }
        }
        Ok(())
    }
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ClaimSendError {
    let path = path.to_path_buf();
    move |source| ClaimSendError::Io {
        action,
        path,
        source,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_claim_without_a_reader_is_refused_at_once() {
        let parent = tempfile::tempdir().unwrap();
        let channel = ClaimChannel::create(parent.path(), "pool-0").unwrap();
        let sent = channel.send(&Claim::default()).await;
        assert!(
            matches!(sent, Err(ClaimSendError::NotWaiting(_))),
            "{sent:?}"
        );
        channel.remove().unwrap();
        assert!(!parent.path().join("pool-0").exists());
    }

    #[tokio::test]
    async fn a_reader_receives_the_whole_claim_at_the_writers_close() {
        let parent = tempfile::tempdir().unwrap();
        let channel = ClaimChannel::create(parent.path(), "pool-0").unwrap();
        let fifo = channel.dir().join(FIFO_NAME);
        // The waiter's side: a blocking open, then a read to the close.
        let reader = std::thread::spawn(move || {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut std::fs::File::open(fifo).unwrap(), &mut bytes)
                .unwrap();
            bytes
        });
        let claim = Claim {
            env: vec![("SANDBOX_CHAT_ID".to_owned(), "chat-1".to_owned())],
            command: vec!["true".to_owned()],
            working_dir: None,
        };
        // Until the reader has opened, the sender is refused: retry briefly (test only).
        let mut sent = channel.send(&claim).await;
        for _ in 0..100 {
            if !matches!(sent, Err(ClaimSendError::NotWaiting(_))) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            sent = channel.send(&claim).await;
        }
        sent.unwrap();
        let received = reader.join().unwrap();
        assert_eq!(Claim::decode(&received), Ok(claim));
        channel.remove().unwrap();
    }
}
