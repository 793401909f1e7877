//! Atomic file replacement for the controller's files: the project's one
//! atomic write ([`lb_proto::atomic_file`]), keeping the mode and owner of
//! the file it replaces (an operator's `chmod 600` on the configuration
//! file survives the manager's edits).

/// Replaces `path` with `contents` atomically, mode and owner kept.
pub fn write(path: &std::path::Path, contents: &[u8]) -> std::io::Result<()> {
    lb_proto::atomic_file::write(path, contents, None)
}
