//! The configuration file as the manager edits it: the operator's TOML, with
//! the manager's decisions (server states, pool membership, new servers and
//! services) written into it in place.
//!
//! Edits go through `toml_edit`, so comments, key order and layout outside
//! the changed lines stay as the operator wrote them. Writes are a
//! compare-and-swap on the file's content under an advisory lock:
//! [`ConfigFile::update`] re-applies its edits on top of a change the
//! operator made meanwhile instead of overwriting it, and fails with
//! [`ConfigFileError::Conflict`] when they no longer apply.

mod edit;
#[cfg(test)]
mod tests;

use std::{
    fs::{File, OpenOptions},
    path::{Path, PathBuf},
};

use toml_edit::DocumentMut;

use crate::{
    atomic_file,
    config::{Config, ConfigError},
};

pub use edit::{Edit, EditError, NewService};

/// Errors reading or updating the configuration file. Each says whether the
/// file was left as it was.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file as read does not parse or validate.
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    /// An edit does not apply to the file the caller read.
    #[error("{path}: cannot apply \"{edit}\": {source}; file left unchanged")]
    Edit {
        path: PathBuf,
        edit: String,
        source: EditError,
    },
    /// The edits apply but the result does not validate (line numbers are
    /// those of the result, which was not written).
    #[error("the edits would make the configuration invalid; file left unchanged: {0}")]
    Rejected(ConfigError),
    /// The file changed under us in a way the edits cannot follow.
    #[error("{path}: conflict: {message}; file left unchanged")]
    Conflict { path: PathBuf, message: String },
    /// Another process held the file's lock for longer than a change may
    /// wait.
    #[error(
        "{path}: its lock {lock} was held by another process{} for over {waited:?}; file left unchanged",
        holder.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Locked {
        path: PathBuf,
        lock: PathBuf,
        holder: Option<u32>,
        waited: std::time::Duration,
    },
}

/// How long a change waits for another process to release the file's
/// lock (an editor following the protocol holds it for a write).
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The file's text and what it says.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The exact text read, compared byte for byte by the next update.
    pub text: String,
    /// The parsed and validated configuration.
    pub config: Config,
}

/// The result of [`ConfigFile::update`].
#[derive(Debug, Clone)]
pub struct Updated {
    /// The file as written.
    pub snapshot: Snapshot,
    /// The file as it was just before the write: the base, or the
    /// operator's version when `rebased`. [`ConfigFile::restore`] rolls back
    /// to it.
    pub previous: Snapshot,
    /// The file had changed since the base was read; the edits were applied
    /// to the changed file.
    pub rebased: bool,
}

/// The operator's configuration file, shared with the manager's edits.
///
/// Writers that go through `ConfigFile` (threads of this process or other
/// processes) serialize on an exclusive `flock` of `.<name>.lock` beside the
/// file and write with [`atomic_file::write`], so readers see the old file
/// or the new one. An editor that ignores the lock can still write between
/// our compare and our rename, and that change is then lost; the window is
/// the few milliseconds it takes to apply the edits and write the file. We
/// compare content rather than mtime so that any change made before the
/// compare is seen: mtime is coarse on some filesystems, and a save within
/// the same tick, or a `touch`, would fool it.
#[derive(Debug)]
pub struct ConfigFile {
    path: PathBuf,
    /// How long [`ConfigFile::update`] and [`ConfigFile::restore`] wait
    /// for the lock.
    lock_wait: std::time::Duration,
    /// The last snapshot [`ConfigFile::read_cached`] parsed, with the
    /// file's identity then.
    cache: std::sync::Mutex<Option<(FileStamp, std::sync::Arc<Snapshot>)>>,
}

/// A clone names the same file, with a cache of its own.
impl Clone for ConfigFile {
    fn clone(&self) -> Self {
        Self {
            lock_wait: self.lock_wait,
            ..Self::new(self.path.clone())
        }
    }
}

/// What tells one version of the file from the next without reading it:
/// our writes rename a new inode into place; an editor writing in place
/// changes the size or the modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    inode: u64,
    len: u64,
    modified: Option<std::time::SystemTime>,
}

impl ConfigFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            lock_wait: LOCK_WAIT,
            cache: std::sync::Mutex::new(None),
        }
    }

    /// This file with a lock wait of `wait` instead of [`LOCK_WAIT`].
    #[must_use]
    pub fn with_lock_wait(mut self, wait: std::time::Duration) -> Self {
        self.lock_wait = wait;
        self
    }

    /// [`ConfigFile::read`], parsed again only when the file changed (the
    /// control loop looks at it several times a second; a large file is
    /// not parsed that often). Decisions are still written with a
    /// compare-and-swap on a fresh read.
    pub fn read_cached(&self) -> Result<std::sync::Arc<Snapshot>, ConfigFileError> {
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::metadata(&self.path).map_err(self.io(&self.path))?;
        let stamp = FileStamp {
            inode: meta.ino(),
            len: meta.len(),
            modified: meta.modified().ok(),
        };
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((seen, snapshot)) = cache.as_ref()
            && *seen == stamp
        {
            return Ok(snapshot.clone());
        }
        let snapshot = std::sync::Arc::new(self.read()?);
        *cache = Some((stamp, snapshot.clone()));
        Ok(snapshot)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads, parses and validates the file.
    pub fn read(&self) -> Result<Snapshot, ConfigFileError> {
        let text = self.read_text()?;
        let config = Config::parse(&text, &self.path)?;
        Ok(Snapshot { text, config })
    }

    /// Applies `edits` to the file `base` was read from, as one
    /// compare-and-swap on its content.
    ///
    /// When the file still holds `base.text` the edits are applied to it;
    /// when the operator changed it since, they are applied to the current
    /// text instead (`rebased`). Nothing is written when an edit does not
    /// apply ([`ConfigFileError::Edit`], or [`ConfigFileError::Conflict`]
    /// after a rebase) or the result does not validate
    /// ([`ConfigFileError::Rejected`], or `Conflict` after a rebase). Edits
    /// that change nothing write nothing.
    pub fn update(&self, base: &Snapshot, edits: &[Edit]) -> Result<Updated, ConfigFileError> {
        let _lock = self.lock()?;
        let current = self.read_text()?;
        let rebased = current != base.text;
        let previous = if rebased {
            let config = Config::parse(&current, &self.path).map_err(|e| {
                self.conflict(format!(
                    "it was changed since it was read and no longer validates: {e}"
                ))
            })?;
            Snapshot {
                text: current,
                config,
            }
        } else {
            base.clone()
        };

        let mut doc: DocumentMut = previous.text.parse().map_err(|e: toml_edit::TomlError| {
            ConfigError::from(lb_proto::toml_file::parse_error(&self.path, &e))
        })?;
        for edit in edits {
            edit.apply(&mut doc).map_err(|source| {
                if rebased {
                    self.conflict(format!(
                        "it was changed since it was read and \"{}\" no longer applies: {source}",
                        edit.describe()
                    ))
                } else {
                    ConfigFileError::Edit {
                        path: self.path.clone(),
                        edit: edit.describe(),
                        source,
                    }
                }
            })?;
        }
        let text = doc.to_string();
        let config = Config::parse(&text, &self.path).map_err(|e| {
            if rebased {
                self.conflict(format!(
                    "it was changed since it was read and the edits would make it invalid: {e}"
                ))
            } else {
                ConfigFileError::Rejected(e)
            }
        })?;

        if text != previous.text {
            self.write(&text)?;
        }
        for edit in edits {
            tracing::debug!(path = %self.path.display(), edit = %edit.describe(), "configuration edit");
        }
        tracing::info!(
            path = %self.path.display(),
            edits = edits.len(),
            rebased,
            "configuration file updated"
        );
        Ok(Updated {
            snapshot: Snapshot { text, config },
            previous,
            rebased,
        })
    }

    /// Rolls the file back to `snapshot` (usually [`Updated::previous`]),
    /// but only while it still holds `written` (usually
    /// [`Updated::snapshot`]): a change made after our write is never
    /// overwritten ([`ConfigFileError::Conflict`], file left as it is).
    pub fn restore(&self, snapshot: &Snapshot, written: &Snapshot) -> Result<(), ConfigFileError> {
        let _lock = self.lock()?;
        let current = self.read_text()?;
        if current != written.text {
            return Err(self
                .conflict("it was changed after the update that is being rolled back".to_owned()));
        }
        if current != snapshot.text {
            self.write(&snapshot.text)?;
        }
        tracing::info!(path = %self.path.display(), "configuration file restored");
        Ok(())
    }

    #[expect(
        clippy::unused_self,
        reason = "a method beside conflict(), so the call sites read alike"
    )]
    fn io(&self, path: &Path) -> impl FnOnce(std::io::Error) -> ConfigFileError {
        let path = path.to_owned();
        move |source| ConfigFileError::Io { path, source }
    }

    fn conflict(&self, message: String) -> ConfigFileError {
        ConfigFileError::Conflict {
            path: self.path.clone(),
            message,
        }
    }

    fn read_text(&self) -> Result<String, ConfigFileError> {
        std::fs::read_to_string(&self.path).map_err(self.io(&self.path))
    }

    fn write(&self, text: &str) -> Result<(), ConfigFileError> {
        atomic_file::write(&self.path, text.as_bytes()).map_err(self.io(&self.path))
    }

    /// `.<name>.lock` beside the file. It is never removed: removing a lock
    /// file lets a waiter lock the old inode while a newcomer locks a new one.
    fn lock_path(&self) -> PathBuf {
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.path.with_file_name(format!(".{name}.lock"))
    }

    /// Waits (up to the lock wait) until this `ConfigFile` holds the lock
    /// every writer following the protocol takes; released when the
    /// returned file is dropped. The lock file is this user's alone (mode
    /// 0600, whatever it was): no one else can hold the manager off by
    /// locking it. Blocks the calling thread: call it off the runtime
    /// (see `Controller::change`).
    fn lock(&self) -> Result<File, ConfigFileError> {
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        let path = self.lock_path();
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(self.io(&path))?;
        // SAFETY: geteuid cannot fail.
        let me = unsafe { libc::geteuid() };
        std::os::unix::fs::fchown(&file, Some(me), None).map_err(self.io(&path))?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(self.io(&path))?;
        let started = std::time::Instant::now();
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(file),
                Err(std::fs::TryLockError::WouldBlock) => {}
                Err(std::fs::TryLockError::Error(e)) => return Err(self.io(&path)(e)),
            }
            if started.elapsed() >= self.lock_wait {
                return Err(ConfigFileError::Locked {
                    path: self.path.clone(),
                    holder: crate::locks::flock_holder(&file),
                    lock: path,
                    waited: self.lock_wait,
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}
