//! The mount policy: which host directories a sandbox may bind-mount, decided before anything is
//! created. Blocking filesystem calls; the runtime runs [`VolumePolicy::check`] on the blocking pool.

use std::io;
use std::path::{Path, PathBuf};

use sandboxd_domain::VolumePath;
use sandboxd_usecase::ports::{RuntimeError, VolumeRefusal};

use super::names::EVENT_VOLUME_ROOT_UNRESOLVED;

/// Host paths never mountable, nor any directory that contains them: mounting `/var` would expose
/// `/var/lib/docker` and `/var/run/docker.sock`, i.e. the whole host.
const PROTECTED_PATHS: &[&str] = &["/proc", "/sys", "/dev", "/etc", "/var/lib/docker", "/boot"];
/// Where Docker's socket usually is; the configured one is added to these.
const DOCKER_SOCKETS: &[&str] = &["/var/run/docker.sock", "/run/docker.sock"];

/// The allowed roots and protected paths, as configured (resolved again on every check, so a root
/// that is itself a symlink, or that appears after start, is handled).
#[derive(Debug, Clone)]
pub(super) struct VolumePolicy {
    allowed_roots: Vec<PathBuf>,
    protected: Vec<PathBuf>,
}

impl VolumePolicy {
    /// `docker_socket` is the engine's unix socket when known (from `docker_host`/`DOCKER_HOST`).
    #[must_use]
    pub(super) fn new(allowed_roots: Vec<PathBuf>, docker_socket: Option<PathBuf>) -> Self {
        let mut protected: Vec<PathBuf> = PROTECTED_PATHS
            .iter()
            .chain(DOCKER_SOCKETS)
            .map(PathBuf::from)
            .collect();
        protected.extend(docker_socket);
        Self {
            allowed_roots,
            protected,
        }
    }

    /// This policy, also refusing `path`, what lies under it and what contains it (the warm
    /// pool's root: a volume there would be another chat's slot).
    #[must_use]
    pub(super) fn with_protected(mut self, path: PathBuf) -> Self {
        self.protected.push(path);
        self
    }

    /// [`Self::check_with`] without an engine root: the tests' shorthand (the runtime always
    /// passes the root the engine reported).
    #[cfg(test)]
    pub(super) fn check(&self, volume: &VolumePath) -> Result<PathBuf, RuntimeError> {
        self.check_with(volume, None)
    }

    /// Resolves `volume` and returns the canonical directory to mount, also protecting
    /// `engine_root_dir` (the engine's data root, when the engine has reported one and it is not
    /// the default `/var/lib/docker`).
    ///
    /// Order matters: a path that is not even lexically under a root is denied before the
    /// filesystem is touched, so clients cannot probe which host paths exist.
    ///
    /// # Errors
    /// [`RuntimeError::VolumeDenied`] for policy (outside every allowed root, a symlink leaving
    /// them, or a protected path), [`RuntimeError::VolumeInvalid`] for a missing, unreadable or
    /// non-directory path. The reasons never echo the path: they may reach clients.
    pub(super) fn check_with(
        &self,
        volume: &VolumePath,
        engine_root_dir: Option<&Path>,
    ) -> Result<PathBuf, RuntimeError> {
        use RuntimeError::{VolumeDenied, VolumeInvalid};
        let requested = Path::new(volume.as_str());
        let roots = self.resolved_roots();
        if roots.is_empty() {
            return Err(VolumeDenied(VolumeRefusal::NoAllowedRoots));
        }
        let lexically_inside = roots.iter().any(|(raw, canonical)| {
            strictly_below(requested, raw) || strictly_below(requested, canonical)
        });
        if !lexically_inside {
            return Err(VolumeDenied(VolumeRefusal::OutsideAllowedRoots));
        }
        let canonical = std::fs::canonicalize(requested).map_err(|error| match error.kind() {
            io::ErrorKind::NotFound => VolumeInvalid(VolumeRefusal::DoesNotExist),
            _ => VolumeInvalid(VolumeRefusal::CannotBeResolved),
        })?;
        if !roots
            .iter()
            .any(|(_, root)| strictly_below(&canonical, root))
        {
            return Err(VolumeDenied(VolumeRefusal::ResolvesOutsideAllowedRoots));
        }
        if self.is_protected(&canonical)
            || engine_root_dir.is_some_and(|dir| overlaps(&canonical, dir))
        {
            return Err(VolumeDenied(VolumeRefusal::ProtectedPath));
        }
        match std::fs::metadata(&canonical) {
            Ok(meta) if meta.is_dir() => Ok(canonical),
            Ok(_) => Err(VolumeInvalid(VolumeRefusal::NotADirectory)),
            Err(_) => Err(VolumeInvalid(VolumeRefusal::CannotBeRead)),
        }
    }

    /// Each configured root with its canonical form; roots that do not resolve are skipped (they
    /// cannot contain anything that exists).
    fn resolved_roots(&self) -> Vec<(PathBuf, PathBuf)> {
        self.allowed_roots
            .iter()
            .filter_map(|root| match std::fs::canonicalize(root) {
                Ok(canonical) => Some((root.clone(), canonical)),
                Err(error) => {
                    tracing::warn!(
                        name: EVENT_VOLUME_ROOT_UNRESOLVED,
                        message = EVENT_VOLUME_ROOT_UNRESOLVED,
                        root = %root.display(),
                        %error,
                    );
                    None
                }
            })
            .collect()
    }

    /// `/` itself, any protected path, anything under one, or any ancestor of one.
    fn is_protected(&self, canonical: &Path) -> bool {
        if canonical == Path::new("/") {
            return true;
        }
        self.protected.iter().any(|raw| {
            // Compare against both spellings: /var/run is usually a symlink to /run.
            let resolved = std::fs::canonicalize(raw).ok();
            [Some(raw.as_path()), resolved.as_deref()]
                .into_iter()
                .flatten()
                .any(|protected| overlaps(canonical, protected))
        })
    }
}

/// `path` is `protected`, lies under it, or contains it.
fn overlaps(path: &Path, protected: &Path) -> bool {
    path.starts_with(protected) || protected.starts_with(path)
}

/// A root itself is not mountable: it holds every chat's directory.
fn strictly_below(path: &Path, root: &Path) -> bool {
    path.starts_with(root) && path != root
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn volume(path: &Path) -> VolumePath {
        VolumePath::parse(path.to_str().unwrap()).unwrap()
    }

    #[test]
    fn a_directory_under_a_root_is_allowed_and_canonicalised() {
        let root = tempfile::tempdir().unwrap();
        let chat = root.path().join("chat-a");
        std::fs::create_dir(&chat).unwrap();
        let policy = VolumePolicy::new(vec![root.path().to_path_buf()], None);
        assert_eq!(
            policy.check(&volume(&chat)).unwrap(),
            std::fs::canonicalize(&chat).unwrap()
        );
    }

    #[test]
    fn a_root_itself_is_denied() {
        let root = tempfile::tempdir().unwrap();
        let policy = VolumePolicy::new(vec![root.path().to_path_buf()], None);
        assert!(matches!(
            policy.check(&volume(root.path())),
            Err(RuntimeError::VolumeDenied(_))
        ));
    }

    #[test]
    fn no_roots_means_everything_is_denied() {
        let root = tempfile::tempdir().unwrap();
        let policy = VolumePolicy::new(vec![], None);
        assert!(matches!(
            policy.check(&volume(root.path())),
            Err(RuntimeError::VolumeDenied(_))
        ));
    }

    #[test]
    fn outside_roots_is_denied_without_revealing_existence() {
        let root = tempfile::tempdir().unwrap();
        let policy = VolumePolicy::new(vec![root.path().to_path_buf()], None);
        for path in [
            "/nonexistent/x",
            "/etc",
            "/",
            "/var/run/docker.sock",
            "/tmp",
        ] {
            let refusal = policy.check(&VolumePath::parse(path).unwrap());
            assert!(
                matches!(refusal, Err(RuntimeError::VolumeDenied(_))),
                "{path}: {refusal:?}"
            );
        }
    }

    #[test]
    fn symlink_escaping_the_root_is_denied_and_one_staying_inside_is_allowed() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let inside = root.path().join("real");
        std::fs::create_dir(&inside).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("escape")).unwrap();
        std::os::unix::fs::symlink(&inside, root.path().join("alias")).unwrap();
        let policy = VolumePolicy::new(vec![root.path().to_path_buf()], None);
        assert!(matches!(
            policy.check(&volume(&root.path().join("escape"))),
            Err(RuntimeError::VolumeDenied(_))
        ));
        assert_eq!(
            policy.check(&volume(&root.path().join("alias"))).unwrap(),
            std::fs::canonicalize(&inside).unwrap()
        );
    }

    #[test]
    fn missing_and_non_directory_paths_are_invalid() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("file"), b"x").unwrap();
        let policy = VolumePolicy::new(vec![root.path().to_path_buf()], None);
        assert!(matches!(
            policy.check(&volume(&root.path().join("missing"))),
            Err(RuntimeError::VolumeInvalid(VolumeRefusal::DoesNotExist))
        ));
        assert!(matches!(
            policy.check(&volume(&root.path().join("file"))),
            Err(RuntimeError::VolumeInvalid(VolumeRefusal::NotADirectory))
        ));
        assert!(
            !root.path().join("missing").exists(),
            "policy must never create directories"
        );
    }

    #[test]
    fn protected_paths_their_ancestors_and_descendants_are_denied_even_under_a_root() {
        // A root of `/` (a misconfiguration) must still not expose the host's critical paths.
        let policy = VolumePolicy::new(vec![PathBuf::from("/")], None);
        for path in [
            "/", "/etc", "/etc/ssl", "/proc", "/sys", "/dev", "/var", "/var/lib", "/run",
        ] {
            let refusal = policy.check(&VolumePath::parse(path).unwrap());
            assert!(
                matches!(refusal, Err(RuntimeError::VolumeDenied(_))),
                "{path}: {refusal:?}"
            );
        }
    }

    #[test]
    fn the_engine_data_root_is_protected_when_known() {
        let root = tempfile::tempdir().unwrap();
        let data = root.path().join("docker-data");
        let chat = data.join("volumes");
        std::fs::create_dir_all(&chat).unwrap();
        let policy = VolumePolicy::new(vec![root.path().to_path_buf()], None);
        assert!(policy.check(&volume(&chat)).is_ok());
        let engine_root = std::fs::canonicalize(&data).unwrap();
        for path in [&chat, &data] {
            assert!(matches!(
                policy.check_with(&volume(path), Some(&engine_root)),
                Err(RuntimeError::VolumeDenied(_))
            ));
        }
    }

    #[test]
    fn an_added_protected_path_is_refused_with_what_is_under_it() {
        let root = tempfile::tempdir().unwrap();
        let pool = root.path().join("pool");
        std::fs::create_dir_all(pool.join("slots/one")).unwrap();
        let policy =
            VolumePolicy::new(vec![root.path().to_path_buf()], None).with_protected(pool.clone());
        for path in [pool.clone(), pool.join("slots"), pool.join("slots/one")] {
            assert!(
                matches!(
                    policy.check(&volume(&path)),
                    Err(RuntimeError::VolumeDenied(_))
                ),
                "{}",
                path.display()
            );
        }
        std::fs::create_dir(root.path().join("chat")).unwrap();
        assert!(policy.check(&volume(&root.path().join("chat"))).is_ok());
    }

    #[test]
    fn a_configured_socket_is_protected_with_its_directory() {
        let root = tempfile::tempdir().unwrap();
        let sockets = root.path().join("sockets");
        std::fs::create_dir(&sockets).unwrap();
        let socket = sockets.join("docker.sock");
        let policy = VolumePolicy::new(vec![root.path().to_path_buf()], Some(socket));
        assert!(matches!(
            policy.check(&volume(&sockets)),
            Err(RuntimeError::VolumeDenied(_))
        ));
    }
}
