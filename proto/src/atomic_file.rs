//! Atomic file replacement, the one used for every state, config and key
//! file of the project: a temporary file created exclusively beside the
//! target (mode and owner those of the file it replaces, or the mode asked
//! for), written and fsynced, renamed over the target, and the directory
//! fsynced. A crash leaves the old file or the new one, never a mix, and
//! every failure is reported.

use std::{
    fs::{File, OpenOptions},
    io::{self, Write as _},
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
};

/// Mode of a new file when neither the caller nor an old file says.
const DEFAULT_MODE: u32 = 0o644;

/// Distinguishes the temporary files of concurrent writers in one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Replaces `path` with `contents` atomically. `mode`: the new file's
/// permission bits; `None` keeps the old file's (0644 for a new file). The
/// old file's owner is kept when the process may (as root).
///
/// # Errors
///
/// An I/O error, its text naming the file, when `path` has no file name, or
/// the temporary file cannot be created, given its mode or owner, written or
/// synced, or cannot be renamed over `path`: the temporary file is removed and
/// `path` is left as it was. When only the directory sync after the rename
/// fails, `path` has the new contents but a crash may still undo them.
pub fn write(path: &Path, contents: &[u8], mode: Option<u32>) -> io::Result<()> {
    let with_path = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other(format!("{} has no file name", path.display())))?;
    let old = std::fs::metadata(path).ok();
    let mode = mode
        .or_else(|| old.as_ref().map(|m| m.mode() & 0o7777))
        .unwrap_or(DEFAULT_MODE);
    let tmp = dir.join(format!(
        ".{}.tmp.{}.{}",
        name.to_string_lossy(),
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have narrowed the mode; set it exactly.
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        if let Some(old) = &old {
            let ours = file.metadata()?;
            if (ours.uid(), ours.gid()) != (old.uid(), old.gid()) {
                // Only root may give a file away; others keep their own.
                match std::os::unix::fs::fchown(&file, Some(old.uid()), Some(old.gid())) {
                    Err(e) if e.kind() != io::ErrorKind::PermissionDenied => return Err(e),
                    _ => {}
                }
            }
        }
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(with_path)
}

/// Fsyncs a directory; filesystems that cannot (bpffs answers `EINVAL`)
/// have nothing to lose in a crash, so that is not an error.
fn sync_dir(dir: &Path) -> io::Result<()> {
    match File::open(dir)?.sync_all() {
        Err(e) if e.kind() == io::ErrorKind::InvalidInput => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<std::ffi::OsString> {
        std::fs::read_dir(dir)
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect()
    }

    #[test]
    fn replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("state");
        write(&p, b"one", None).expect("write");
        write(&p, b"two", None).expect("write");
        assert_eq!(std::fs::read(&p).expect("read"), b"two");
        assert_eq!(names(dir.path()).len(), 1, "{:?}", names(dir.path()));
        let mode = std::fs::metadata(&p).expect("meta").mode() & 0o777;
        assert_eq!(mode, DEFAULT_MODE);
    }

    #[test]
    fn keeps_the_old_mode_or_takes_the_one_asked_for() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("key");
        write(&p, b"secret", Some(0o600)).expect("write");
        assert_eq!(std::fs::metadata(&p).expect("meta").mode() & 0o777, 0o600);
        // An operator's chmod survives the next write.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        write(&p, b"again", None).expect("write");
        assert_eq!(std::fs::metadata(&p).expect("meta").mode() & 0o777, 0o640);
    }

    #[test]
    fn keeps_the_owner_when_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("owned");
        std::fs::write(&p, b"x").expect("write");
        if std::os::unix::fs::chown(&p, Some(65_534), Some(65_534)).is_err() {
            return; // not root: nobody's file cannot be made here
        }
        write(&p, b"y", None).expect("write");
        let meta = std::fs::metadata(&p).expect("meta");
        assert_eq!((meta.uid(), meta.gid()), (65_534, 65_534));
    }

    #[test]
    fn a_failure_is_reported_and_leaves_the_old_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("missing-dir").join("state");
        let e = write(&p, b"x", None).expect_err("no such directory");
        assert!(e.to_string().contains("missing-dir"), "{e}");
        // A target that is a directory: rename fails, no temp is left.
        let target = dir.path().join("is-a-dir");
        std::fs::create_dir(&target).expect("mkdir");
        std::fs::write(target.join("inside"), b"x").expect("write");
        write(&target, b"x", None).expect_err("rename over a non-empty directory");
        assert_eq!(names(dir.path()).len(), 1, "{:?}", names(dir.path()));
    }
}
