//! A `BPF_F_MMAPABLE` array seen through its memory mapping.
//!
//! Filling a 65537-cell table slot element by element through the syscall
//! interface takes tens of milliseconds; through the mapping it is a memcpy.

use std::{
    os::fd::{AsRawFd as _, BorrowedFd},
    ptr::NonNull,
    sync::atomic::{AtomicU32, Ordering},
};

/// Errors mapping an array.
#[derive(Debug, thiserror::Error)]
pub enum MmapError {
    #[error(
        "mmap of map `{name}` ({len} bytes) failed: {source}; was it created with BPF_F_MMAPABLE?"
    )]
    Map {
        name: &'static str,
        len: usize,
        source: std::io::Error,
    },
}

/// Shared mapping of an array map whose values are `T` (8-byte strided, as
/// the kernel stores array values).
pub struct MmapArray<T> {
    ptr: NonNull<u8>,
    len: usize,
    entries: u32,
    _t: std::marker::PhantomData<T>,
}

// SAFETY: the mapping is plain shared memory; access goes through &self /
// &mut self like any buffer.
unsafe impl<T> Send for MmapArray<T> {}
unsafe impl<T> Sync for MmapArray<T> {}

const fn stride<T>() -> usize {
    std::mem::size_of::<T>().div_ceil(8) * 8
}

impl<T: Copy> MmapArray<T> {
    /// Maps `entries` values of the array behind `fd`.
    pub fn new(name: &'static str, fd: BorrowedFd<'_>, entries: u32) -> Result<Self, MmapError> {
        // SAFETY: sysconf has no preconditions.
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "the page size is positive and small on Linux"
        )]
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let len = (entries as usize * stride::<T>()).div_ceil(page) * page;
        // SAFETY: a fresh shared mapping of a map fd; checked for failure.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(MmapError::Map {
                name,
                len,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Self {
            ptr: NonNull::new(ptr.cast()).ok_or_else(|| MmapError::Map {
                name,
                len,
                source: std::io::Error::other("null mapping"),
            })?,
            len,
            entries,
            _t: std::marker::PhantomData,
        })
    }

    #[must_use]
    pub fn entries(&self) -> u32 {
        self.entries
    }

    fn at(&self, index: u32) -> *mut T {
        assert!(
            index < self.entries,
            "index {index} out of {}",
            self.entries
        );
        // SAFETY: in bounds of the mapping (checked above).
        unsafe { self.ptr.as_ptr().add(index as usize * stride::<T>()).cast() }
    }

    #[must_use]
    pub fn get(&self, index: u32) -> T {
        // SAFETY: in bounds, aligned (8-byte stride of a page-aligned mapping).
        unsafe { std::ptr::read_volatile(self.at(index)) }
    }

    pub fn set(&mut self, index: u32, value: T) {
        // SAFETY: as in `get`.
        unsafe { std::ptr::write_volatile(self.at(index), value) }
    }

    /// Elements `start..start + count` as one slice. Only for value types
    /// whose size is a multiple of 8 (no gaps between elements).
    #[must_use]
    pub fn slice(&self, start: u32, count: u32) -> &[T] {
        assert!(std::mem::size_of::<T>() == stride::<T>());
        assert!(u64::from(start) + u64::from(count) <= u64::from(self.entries));
        // SAFETY: in bounds, contiguous, aligned; lives as long as self.
        unsafe { std::slice::from_raw_parts(self.at_unchecked(start), count as usize) }
    }

    /// Mutable form of [`MmapArray::slice`].
    pub fn slice_mut(&mut self, start: u32, count: u32) -> &mut [T] {
        assert!(std::mem::size_of::<T>() == stride::<T>());
        assert!(u64::from(start) + u64::from(count) <= u64::from(self.entries));
        // SAFETY: as in `slice`, and &mut self gives exclusive user-space access.
        unsafe { std::slice::from_raw_parts_mut(self.at_unchecked(start), count as usize) }
    }

    fn at_unchecked(&self, index: u32) -> *mut T {
        // SAFETY: callers check bounds (index may equal `entries` for an
        // empty slice at the end).
        unsafe { self.ptr.as_ptr().add(index as usize * stride::<T>()).cast() }
    }

    /// The 4-byte field at `offset` of element `index`, as an atomic: the
    /// one store that flips a service's active slot.
    #[must_use]
    pub fn atomic_u32(&self, index: u32, offset: usize) -> &AtomicU32 {
        assert!(offset + 4 <= std::mem::size_of::<T>() && offset.is_multiple_of(4));
        // SAFETY: in bounds and 4-byte aligned; the memory lives as long as self.
        unsafe { AtomicU32::from_ptr(self.at(index).cast::<u8>().add(offset).cast()) }
    }

    /// Stores through the atomic with release ordering (everything written
    /// before is visible to a reader that sees the new value).
    pub fn store_u32(&self, index: u32, offset: usize, value: u32) {
        self.atomic_u32(index, offset)
            .store(value, Ordering::Release);
    }
}

impl<T> Drop for MmapArray<T> {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
