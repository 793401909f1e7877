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
