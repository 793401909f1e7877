//! Who may use the control socket. The socket file is `root:<control
//! group>` mode 0660, whatever the umask; each connection's peer
//! credentials (`SO_PEERCRED`, `SO_PEERGROUPS`) then decide what it may do:
//! root and members of the admin group every verb, members of the control
//! group the verbs that only read. A peer in neither is refused, even when
//! someone loosened the file's mode.

use std::{
    ffi::CString,
    os::{fd::AsRawFd as _, unix::fs::PermissionsExt as _},
    path::{Path, PathBuf},
};

use tokio::net::{UnixListener, UnixStream};

use super::Request;
use crate::config::NodeConfig;

/// Why the control socket's access cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error(
        "node.{key} = \"{group}\": no such group on this host (`getent group {group}` lists it once it exists)"
    )]
    NoGroup { key: &'static str, group: String },
    #[error("control socket {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What a peer may do on the control socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Nothing: the connection is answered with one error and closed.
    None,
    /// The verbs that only read: status, lists, stats, events, pool.
    Read,
    /// Every verb.
    Admin,
}

/// The groups the socket admits, resolved once at start.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// Owner group of the socket file; its members may read.
    control_gid: Option<u32>,
    /// Its members may use every verb.
    admin_gid: Option<u32>,
}

impl Access {
    /// The access `[node]` configures (`control_group`, `admin_group`).
    ///
    /// # Errors
    /// A group that does not exist on this host.
    pub fn of(node: &NodeConfig) -> Result<Self, AccessError> {
        let resolve = |key: &'static str, group: &Option<String>| {
            group
                .as_deref()
                .map(|g| {
                    group_id(g).ok_or_else(|| AccessError::NoGroup {
                        key,
                        group: g.to_owned(),
                    })
                })
                .transpose()
        };
        Ok(Self {
            control_gid: resolve("control_group", &node.control_group)?,
            admin_gid: resolve("admin_group", &node.admin_group)?,
        })
    }

    /// The role of a peer with user id `uid` in groups `gids` (its primary
    /// and supplementary groups).
    #[must_use]
    pub fn role(&self, uid: u32, gids: &[u32]) -> Role {
        let member = |gid: Option<u32>| gid.is_some_and(|g| gids.contains(&g));
        if uid == 0 || member(self.admin_gid) {
            Role::Admin
        } else if member(self.control_gid) {
            Role::Read
        } else {
            Role::None
        }
    }

    /// The role of the peer of `stream`, from the kernel's record of its
    /// credentials when it connected.
    ///
    /// # Errors
    /// The kernel does not give the credentials.
    pub fn role_of(&self, stream: &UnixStream) -> std::io::Result<Role> {
        let cred = stream.peer_cred()?;
        let mut gids = peer_groups(stream)?;
        gids.push(cred.gid());
        Ok(self.role(cred.uid(), &gids))
    }

    /// Binds the control socket at `path` (replacing one a killed
    /// predecessor left) with its mode and group already set: it is made in
    /// a directory only root can enter and renamed into place, so no one
    /// can connect to it before it is `root:<control group>` 0660.
    ///
    /// # Errors
    /// The directory, the bind, the mode, the owner or the rename failed.
    pub fn bind(&self, path: &Path) -> Result<UnixListener, AccessError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| AccessError::Io { path, source }
        };
        let dir = path.parent().unwrap_or(Path::new("/"));
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
            // Not the umask's: others may enter, only root may change it.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
                .map_err(io(dir))?;
        }
        let private = dir.join(format!(".control-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&private);
        std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
            .create(&private)
            .map_err(io(&private))?;
        let result = self.bind_in(&private, path);
        let _ = std::fs::remove_dir_all(&private);
        result
    }

    fn bind_in(&self, private: &Path, path: &Path) -> Result<UnixListener, AccessError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| AccessError::Io { path, source }
        };
        let staged = private.join("control.sock");
        let listener = UnixListener::bind(&staged).map_err(io(&staged))?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o660))
            .map_err(io(&staged))?;
        std::os::unix::fs::chown(&staged, Some(0), Some(self.control_gid.unwrap_or(0)))
            .map_err(io(&staged))?;
        std::fs::rename(&staged, path).map_err(io(path))?;
        Ok(listener)
    }
}

/// Whether `request` only reads.
#[must_use]
pub fn reads_only(request: &Request) -> bool {
    matches!(
        request,
        Request::Status
            | Request::ServiceList
            | Request::ServerList
            | Request::Stats
            | Request::Pool
            | Request::Events { .. }
    )
}

/// The id of group `name`, if it exists.
#[must_use]
pub fn group_id(name: &str) -> Option<u32> {
    let name = CString::new(name).ok()?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: zeroed is a valid `group`; getgrnam_r fills it and points
    // its strings into `buf`, which outlives the call.
    let mut group: libc::group = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; `buf.len()` is its size.
    let rc = unsafe {
        libc::getgrnam_r(
            name.as_ptr(),
            &raw mut group,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &raw mut found,
        )
    };
    (rc == 0 && !found.is_null()).then_some(group.gr_gid)
}

/// The supplementary groups of `stream`'s peer when it connected.
fn peer_groups(stream: &UnixStream) -> std::io::Result<Vec<u32>> {
    let mut gids = vec![0 as libc::gid_t; 64];
    loop {
        let mut len = libc::socklen_t::try_from(gids.len() * size_of::<libc::gid_t>())
            .map_err(std::io::Error::other)?;
        // SAFETY: `gids` holds `len` bytes; the kernel writes at most that
        // and says how many it wrote (or needs) in `len`.
        let rc = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                gids.as_mut_ptr().cast(),
                &raw mut len,
            )
        };
        let count = len as usize / size_of::<libc::gid_t>();
        if rc == 0 {
            gids.truncate(count);
            return Ok(gids);
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ERANGE) || count <= gids.len() {
            return Err(e);
        }
        gids.resize(count, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_follow_uid_and_groups() {
        let access = Access {
            control_gid: Some(100),
            admin_gid: Some(200),
        };
        assert_eq!(access.role(0, &[0]), Role::Admin);
        assert_eq!(access.role(1000, &[1000, 200]), Role::Admin);
        assert_eq!(access.role(1000, &[100]), Role::Read);
        assert_eq!(access.role(1000, &[1000]), Role::None);
        assert_eq!(Access::default().role(1000, &[0]), Role::None);
        assert!(reads_only(&Request::Pool));
        assert!(!reads_only(&Request::ServerDrain { server: "s".into() }));
        assert!(!reads_only(&Request::Reload));
        assert_eq!(group_id("root"), Some(0));
        assert_eq!(group_id("no-such-group-xdplb"), None);
    }
}
