//! The pin directory on bpffs: mounting bpffs when it is missing, where a
//! config's pins live, removing every pin.

use std::path::{Path, PathBuf};

use aya::programs::links::PinnedLink;
use lb_common::MAP_ABI_VERSION;
use tracing::info;

use super::DataPlaneError;
use crate::config::Config;

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Makes sure a bpffs is mounted at /sys/fs/bpf.
pub fn ensure_bpffs() -> Result<(), DataPlaneError> {
    let path = Path::new("/sys/fs/bpf");
    if is_bpffs(path) {
        return Ok(());
    }
    std::fs::create_dir_all(path).map_err(|source| DataPlaneError::Io {
        path: path.to_owned(),
        source,
    })?;
    let status = std::process::Command::new("mount")
        .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
        .status()
        .map_err(|e| DataPlaneError::BpfFs(format!("running mount: {e}")))?;
    if !status.success() || !is_bpffs(path) {
        return Err(DataPlaneError::BpfFs(
            "/sys/fs/bpf is not a bpf filesystem and mounting one failed (are we root? inside `ip netns exec` /sys is private: use nsenter --net= instead)".into(),
        ));
    }
    info!("mounted bpffs at /sys/fs/bpf");
    Ok(())
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs fills the struct; zeroed is a valid initial value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out pointer.
    let rc = unsafe { libc::statfs(c.as_ptr(), &raw mut st) };
    rc == 0 && st.f_type as i64 == BPF_FS_MAGIC
}

/// This process's hold on a pin directory: while it lives, no other
/// `lb-control` starts on the same pins.
#[derive(Debug)]
pub struct InstanceLock {
    _dir: std::fs::File,
}

/// Takes the pin directory `pin_dir` (created on bpffs if missing) for
/// this process: an exclusive `flock` on the directory itself, released by
/// the kernel when the process ends, so nothing is left behind.
///
/// # Errors
/// Another process holds it ([`DataPlaneError::InUse`], naming its pid
/// from `/proc/locks`), or the directory cannot be made or opened.
pub fn lock_instance(pin_dir: &Path) -> Result<InstanceLock, DataPlaneError> {
    use std::os::fd::AsRawFd as _;
    ensure_bpffs()?;
    let io = |source| DataPlaneError::Io {
        path: pin_dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(pin_dir).map_err(io)?;
    let dir = std::fs::File::open(pin_dir).map_err(io)?;
    // SAFETY: a valid open descriptor.
    if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(InstanceLock { _dir: dir });
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
        return Err(io(e));
    }
    Err(DataPlaneError::InUse {
        dir: pin_dir.to_owned(),
        pid: crate::locks::flock_holder(&dir),
    })
}

/// The versioned pin directory of a config.
#[must_use]
pub fn pin_dir(config: &Config) -> PathBuf {
    config.node.pin_dir.join(format!("v{MAP_ABI_VERSION}"))
}

/// Detaches the program from every interface and removes every pin.
pub fn detach(config: &Config) -> Result<(), DataPlaneError> {
    let dir = pin_dir(config);
    if !dir.exists() {
        info!(dir = %dir.display(), "nothing pinned");
        return Ok(());
    }
    let entries = std::fs::read_dir(&dir).map_err(|source| DataPlaneError::Io {
        path: dir.clone(),
        source,
    })?;
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("link_")
            && let Ok(link) = PinnedLink::from_pin(&path)
        {
            let _ = link.unpin();
            info!(link = %name, "detached");
            continue;
        }
        let _ = std::fs::remove_file(&path);
    }
    std::fs::remove_dir(&dir).map_err(|source| DataPlaneError::Io {
        path: dir.clone(),
        source,
    })?;
    let _ = std::fs::remove_dir(&config.node.pin_dir);
    info!(dir = %dir.display(), "detached and unpinned everything");
    Ok(())
}
