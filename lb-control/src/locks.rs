//! Who holds a `flock`: the instance lock on the pin directory and the
//! configuration file's lock name the process that keeps another out.

/// The pid of the process holding a `flock` on `file`, from `/proc/locks`
/// (`None` if it cannot be told).
#[must_use]
pub fn flock_holder(file: &std::fs::File) -> Option<u32> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = file.metadata().ok()?;
    let id = format!(
        "{:02x}:{:02x}:{}",
        libc::major(meta.dev()),
        libc::minor(meta.dev()),
        meta.ino()
    );
    lock_holder(&std::fs::read_to_string("/proc/locks").ok()?, &id)
}

/// The pid holding a `FLOCK` on the file `id` (`major:minor:inode` as
/// `/proc/locks` writes it) in the text of `/proc/locks`.
fn lock_holder(locks: &str, id: &str) -> Option<u32> {
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // `1: FLOCK  ADVISORY  WRITE 1234 00:1f:5678 0 EOF`
        (fields.get(1) == Some(&"FLOCK") && fields.get(5) == Some(&id))
            .then(|| fields.get(4)?.parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_lock_holder_is_read_from_proc_locks() {
        let locks = "1: POSIX  ADVISORY  WRITE 99 00:1f:5678 0 EOF\n2: FLOCK  ADVISORY  WRITE 1234 00:1f:5678 0 EOF\n3: FLOCK  ADVISORY  WRITE 77 00:20:5678 0 EOF\n";
        assert_eq!(super::lock_holder(locks, "00:1f:5678"), Some(1234));
        assert_eq!(super::lock_holder(locks, "00:1f:9"), None);
    }
}
