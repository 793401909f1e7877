//! Waiting out an RCU grace period from user space.
//!
//! XDP programs run inside an RCU read-side section, so once a grace period
//! has passed after a table flip, no packet can still be reading the slot
//! that was active before it. The kernel offers no direct `synchronize_rcu`
//! to user space, but an update of an array-of-maps waits for one before it
//! returns (`maybe_wait_bpf_programs` in `kernel/bpf/syscall.c`). This
//! module keeps a one-element array-of-maps for exactly that.

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;

/// Errors creating or using the grace-period barrier.
#[derive(Debug, thiserror::Error)]
pub enum GraceError {
    #[error("creating the grace-period barrier map failed: {0}")]
    Create(std::io::Error),
    #[error("waiting for an RCU grace period failed: {0}")]
    Wait(std::io::Error),
}

/// A barrier: [`GracePeriod::wait`] returns after an RCU grace period.
pub struct GracePeriod {
    outer: OwnedFd,
    inner: OwnedFd,
}

#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
    map_ifindex: u32,
    btf_fd: u32,
    btf_key_type_id: u32,
    btf_value_type_id: u32,
    btf_vmlinux_value_type_id: u32,
    map_extra: u64,
    _rest: [u64; 8],
}

#[repr(C)]
#[derive(Default)]
struct MapUpdateAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
    _rest: [u64; 8],
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    #[expect(
        clippy::cast_possible_truncation,
        reason = "a bpf_attr prefix is a few dozen bytes"
    )]
    let size = std::mem::size_of::<T>() as libc::c_uint;
    // SAFETY: `attr` is a valid, zero-padded bpf_attr prefix of the size passed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut::<T>(attr).cast::<libc::c_void>(),
            size,
        )
    };
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

impl GracePeriod {
    pub fn new() -> Result<Self, GraceError> {
        let inner = create(BPF_MAP_TYPE_ARRAY, None)?;
        let outer = create(BPF_MAP_TYPE_ARRAY_OF_MAPS, Some(&inner))?;
        Ok(Self { outer, inner })
    }

    /// Returns once every XDP invocation that started before the call has
    /// finished.
    pub fn wait(&self) -> Result<(), GraceError> {
        let key = 0u32;
        let value = self.inner.as_raw_fd().cast_unsigned();
        let mut attr = MapUpdateAttr {
            map_fd: self.outer.as_raw_fd().cast_unsigned(),
            key: &raw const key as u64,
            value: &raw const value as u64,
            ..Default::default()
        };
        bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map_err(GraceError::Wait)?;
        Ok(())
    }
}

fn create(map_type: u32, inner: Option<&OwnedFd>) -> Result<OwnedFd, GraceError> {
    let mut name = [0u8; 16];
    name[..10].copy_from_slice(b"lb_barrier");
    let mut attr = MapCreateAttr {
        map_type,
        key_size: 4,
        value_size: 4,
        max_entries: 1,
        inner_map_fd: inner.map_or(0, |fd| fd.as_raw_fd().cast_unsigned()),
        map_name: name,
        ..Default::default()
    };
    let fd = bpf(BPF_MAP_CREATE, &mut attr).map_err(GraceError::Create)?;
    #[expect(
        clippy::cast_possible_truncation,
        reason = "BPF_MAP_CREATE returns a file descriptor, an int"
    )]
    let fd = fd as i32;
    // SAFETY: the syscall returned a new file descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
