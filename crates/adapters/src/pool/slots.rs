//! Slots: the empty directories a volume is hot-attached onto.
//!
//! The slots root is bound onto itself and made private, so nothing made below it propagates
//! anywhere (under systemd `/` is shared). Each slot is bound onto itself and made shared: a peer
//! group of its own, of which the one pooled sandbox bound from it (`rslave`, at its mount target)
//! is the only slave. Attaching a chat's volume is a bind mount onto the slot on the host: the
//! kernel propagates it into that sandbox's mount namespace only, where it appears on top of the
//! mount target, and the sandbox (without CAP_SYS_ADMIN) cannot unmount it. One peer group per
//! slot, not one for the root, because a mount propagates to every slave of its group under the
//! kernel's namespace lock: with one group for all, every attach visited every pooled sandbox
//! (measured: up to 34 ms per attach in a burst of 32 claims with 64 sandboxes). Detaching
//! unmounts the volume on the host, which propagates the same way.
//!
//! A slot is only ever removed with `rmdir`, never recursively: a slot that still has a volume
//! attached is a mount point, `rmdir` refuses it, and the chat's files are never touched.
//!
//! The calls are synchronous system calls (a few microseconds to milliseconds each), run on the
//! blocking pool so a slow filesystem cannot stall the async workers.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::io::Errno;
use rustix::mount::{MountPropagationFlags, UnmountFlags};

use super::is_plain_name;

/// Where the kernel lists the mounts of the calling process's mount namespace.
const MOUNTINFO: &str = "/proc/self/mountinfo";

/// Why a slot operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    #[error("invalid slot name {0:?}: one path component of letters, digits, '-', '_' or '.'")]
    InvalidName(String),
    #[error("{0} is not an absolute path")]
    NotAbsolute(PathBuf),
    #[error("slot {0} already has a volume attached")]
    AlreadyAttached(String),
    #[error("slot {0} does not exist")]
    NoSuchSlot(String),
    #[error("slot {slot} is busy: a process still uses the attached volume")]
    Busy { slot: String },
    #[error("slot {slot} is not empty: refusing to remove it")]
    NotEmpty { slot: String },
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("slot task failed: {0}")]
    Task(String),
}

/// The slots root of this host, prepared (bound onto itself, `rshared`).
#[derive(Debug, Clone)]
pub struct SlotDirectory {
    /// Canonical: it is compared with mount points as the kernel prints them.
    root: PathBuf,
}

impl SlotDirectory {
    /// Creates `root` if missing and makes it a private mount point, idempotently: bound onto
    /// itself only when it is not a mount point yet (a second bind would stack another mount).
    /// Private, so the slots made below it propagate nowhere; each slot is its own peer group.
    ///
    /// # Errors
    /// [`SlotError::NotAbsolute`] for a relative `root`; [`SlotError::Io`] when the directory
    /// cannot be created or mounted (sandboxd is not root, or runs in a mount namespace that
    /// forbids it).
    pub async fn prepare(root: &Path) -> Result<Self, SlotError> {
        if !root.is_absolute() {
            return Err(SlotError::NotAbsolute(root.to_path_buf()));
        }
        let root = root.to_path_buf();
        blocking(move || {
            std::fs::create_dir_all(&root).map_err(io_error("create", &root))?;
            let root = std::fs::canonicalize(&root).map_err(io_error("resolve", &root))?;
            if mounts_at(&root)? == 0 {
                rustix::mount::mount_bind(&root, &root)
                    .map_err(errno_error("bind onto itself", &root))?;
            }
            // Not recursive: the slots below keep their own peer groups.
            rustix::mount::mount_change(&root, MountPropagationFlags::PRIVATE)
                .map_err(errno_error("make private", &root))?;
            Ok(Self { root })
        })
        .await
    }

    /// The canonical slots root.
    /// The slots directory at `root` as it is, without preparing it: enough to detach and
    /// remove slots (a release needs no shared mount, and must not make one).
    ///
    /// # Errors
    /// [`SlotError::NotAbsolute`] for a relative `root`.
    pub fn unprepared(root: &Path) -> Result<Self, SlotError> {
        if !root.is_absolute() {
            return Err(SlotError::NotAbsolute(root.to_path_buf()));
        }
        // Canonical when it exists, as `prepare` makes it; else nothing below it is mounted.
        let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
        Ok(Self { root })
    }

    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where slot `name` lives (whether or not it exists): the bind source for the sandbox's
    /// mount target.
    ///
    /// # Errors
    /// [`SlotError::InvalidName`] unless `name` is one plain path component.
    pub fn slot_path(&self, name: &str) -> Result<PathBuf, SlotError> {
        if !is_plain_name(name) {
            return Err(SlotError::InvalidName(name.to_owned()));
        }
        Ok(self.root.join(name))
    }

    /// Creates the empty slot `name`, bound onto itself with a peer group of its own (private,
    /// then shared); an existing, empty, unattached slot is reused.
    ///
    /// # Errors
    /// [`SlotError::InvalidName`]; [`SlotError::AlreadyAttached`] when it exists with a volume
    /// attached; [`SlotError::NotEmpty`] when it exists with files in it; [`SlotError::Io`].
    pub async fn create(&self, name: &str) -> Result<PathBuf, SlotError> {
        let slot = self.slot_path(name)?;
        let name = name.to_owned();
        blocking(move || {
            match std::fs::create_dir(&slot) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
                    if mounts_at(&slot)? > 1 {
                        return Err(SlotError::AlreadyAttached(name));
                    }
                    let mut entries = std::fs::read_dir(&slot).map_err(io_error("list", &slot))?;
                    if entries.next().is_some() {
                        return Err(SlotError::NotEmpty { slot: name });
                    }
                }
                Err(error) => return Err(io_error("create", &slot)(error)),
            }
            if mounts_at(&slot)? == 0 {
                rustix::mount::mount_bind(&slot, &slot)
                    .map_err(errno_error("bind onto itself", &slot))?;
                rustix::mount::mount_change(&slot, MountPropagationFlags::PRIVATE)
                    .map_err(errno_error("make private", &slot))?;
            }
            rustix::mount::mount_change(&slot, MountPropagationFlags::SHARED)
                .map_err(errno_error("make shared", &slot))?;
            Ok(slot)
        })
        .await
    }

    /// Bind-mounts `volume` (an absolute, already checked and canonical host directory) onto
    /// slot `name`; it appears at the mount target of the sandbox bound from the slot.
    ///
    /// # Errors
    /// [`SlotError::InvalidName`], [`SlotError::NotAbsolute`], [`SlotError::NoSuchSlot`],
    /// [`SlotError::AlreadyAttached`] (one volume per slot: a second would hide the first), or
    /// [`SlotError::Io`] when the mount fails (the volume is missing or not a directory).
    pub async fn attach(&self, name: &str, volume: &Path) -> Result<(), SlotError> {
        let slot = self.slot_path(name)?;
        if !volume.is_absolute() {
            return Err(SlotError::NotAbsolute(volume.to_path_buf()));
        }
        let name = name.to_owned();
        let volume = volume.to_path_buf();
        blocking(move || {
            if !slot.is_dir() {
                return Err(SlotError::NoSuchSlot(name));
            }
            if mounts_at(&slot)? > 1 {
                return Err(SlotError::AlreadyAttached(name));
            }
            if !volume.is_dir() {
                return Err(io_error("attach", &volume)(io::Error::from(
                    io::ErrorKind::NotADirectory,
                )));
            }
            rustix::mount::mount_bind(&volume, &slot).map_err(errno_error("attach onto", &slot))
        })
        .await
    }

    /// Unmounts the volume attached to slot `name`, if any (the kernel propagates the unmount
    /// into the sandbox). A missing slot or one with nothing attached is already detached.
    ///
    /// # Errors
    /// [`SlotError::Busy`] while a process (on the host, or in a sandbox still running) has its
    /// working directory or an open file in the volume; [`SlotError::InvalidName`];
    /// [`SlotError::Io`].
    pub async fn detach(&self, name: &str) -> Result<(), SlotError> {
        let slot = self.slot_path(name)?;
        let name = name.to_owned();
        blocking(move || unmount_down_to(&slot, &name, 1)).await
    }

    /// Detaches and removes slot `name` (`rmdir`: never recursive); a missing slot is removed.
    ///
    /// # Errors
    /// As [`SlotDirectory::detach`]; [`SlotError::NotEmpty`] when files were written into the
    /// slot itself (not into an attached volume).
    pub async fn delete(&self, name: &str) -> Result<(), SlotError> {
        let slot = self.slot_path(name)?;
        let name = name.to_owned();
        blocking(move || {
            unmount_down_to(&slot, &name, 0)?;
            match std::fs::remove_dir(&slot) {
                Ok(()) => Ok(()),
                Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(error) if error.kind() == io::ErrorKind::DirectoryNotEmpty => {
                    Err(SlotError::NotEmpty { slot: name })
                }
                Err(error) => Err(io_error("remove", &slot)(error)),
            }
        })
        .await
    }

    /// Whether a volume is attached to slot `name` now.
    ///
    /// # Errors
    /// [`SlotError::InvalidName`]; [`SlotError::Io`] when the mount table cannot be read.
    pub async fn is_attached(&self, name: &str) -> Result<bool, SlotError> {
        let slot = self.slot_path(name)?;
        blocking(move || Ok(mounts_at(&slot)? > 1)).await
    }
}

/// Unmounts what is mounted exactly on the slot until `keep` mounts are left there (1: the
/// slot's own bind, so only an attached volume goes; 0: everything, before removal). Never a lazy
/// detach, which would hide a busy mount instead of reporting it.
fn unmount_down_to(slot: &Path, name: &str, keep: usize) -> Result<(), SlotError> {
    while mounts_at(slot)? > keep {
        match rustix::mount::unmount(slot, UnmountFlags::NOFOLLOW) {
            Ok(()) => {}
            Err(Errno::BUSY) => {
                return Err(SlotError::Busy {
                    slot: name.to_owned(),
                });
            }
            // Unmounted concurrently since the count.
            Err(Errno::INVAL | Errno::NOENT) if mounts_at(slot)? <= keep => return Ok(()),
            Err(errno) => return Err(errno_error("detach", slot)(errno)),
        }
    }
    Ok(())
}

/// How many mounts are stacked exactly on `path` (canonical) in this mount namespace.
fn mounts_at(path: &Path) -> Result<usize, SlotError> {
    let table = std::fs::read(MOUNTINFO).map_err(io_error("read", Path::new(MOUNTINFO)))?;
    Ok(mount_points(&table).filter(|point| point == path).count())
}

/// The mount points listed in a `/proc/*/mountinfo` table (the fifth field of each line, with
/// the kernel's octal escapes of space, tab, newline and backslash undone).
pub fn mount_points(mountinfo: &[u8]) -> impl Iterator<Item = PathBuf> + '_ {
    mountinfo
        .split(|byte| *byte == b'\n')
        .filter_map(|line| line.split(|byte| *byte == b' ').nth(4))
        .map(|escaped| PathBuf::from(OsStr::from_bytes(&unescape_octal(escaped))))
}

/// `\NNN` (three octal digits) to the byte it stands for; anything else unchanged.
fn unescape_octal(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut rest = field;
    while let Some((&first, tail)) = rest.split_first() {
        if first == b'\\'
            && let Some(digits) = tail.get(..3)
            && digits.iter().all(|d| (b'0'..=b'7').contains(d))
        {
            let value = digits
                .iter()
                .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                rest = &tail[3..];
                continue;
            }
        }
        out.push(first);
        rest = tail;
    }
    out
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, SlotError> + Send + 'static,
) -> Result<T, SlotError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| SlotError::Task(e.to_string()))?
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SlotError {
    let path = path.to_path_buf();
    move |source| SlotError::Io {
        action,
        path,
        source,
    }
}

fn errno_error(action: &'static str, path: &Path) -> impl FnOnce(Errno) -> SlotError {
    let path = path.to_path_buf();
    move |errno| SlotError::Io {
        action,
        path,
        source: errno.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &[u8] = b"22 1 0:21 / /proc rw,nosuid shared:5 - proc proc rw\n\
        30 22 8:1 /chats/a /srv/slots/pool-0 rw - ext4 /dev/sda1 rw\n\
        31 22 8:1 / /srv/with\\040space\\134and\\012newline rw - ext4 /dev/sda1 rw\n";

    #[test]
    fn mount_points_are_the_fifth_field_unescaped() {
        let points: Vec<_> = mount_points(TABLE).collect();
        assert_eq!(
            points,
            vec![
                PathBuf::from("/proc"),
                PathBuf::from("/srv/slots/pool-0"),
                PathBuf::from("/srv/with space\\and\nnewline"),
            ]
        );
    }

    #[test]
    fn a_backslash_without_three_octal_digits_stays() {
        assert_eq!(unescape_octal(b"a\\9b\\01"), b"a\\9b\\01".to_vec());
        assert_eq!(unescape_octal(b"\\101"), b"A".to_vec());
    }

    #[tokio::test]
    async fn slot_names_cannot_leave_the_root() {
        let slots = SlotDirectory {
            root: PathBuf::from("/srv/slots"),
        };
        assert!(matches!(
            slots.slot_path("../etc"),
            Err(SlotError::InvalidName(_))
        ));
        assert_eq!(
            slots.slot_path("pool-0").ok(),
            Some(PathBuf::from("/srv/slots/pool-0"))
        );
        assert!(matches!(
            slots.attach("pool-0", Path::new("relative")).await,
            Err(SlotError::NotAbsolute(_))
        ));
    }
}
