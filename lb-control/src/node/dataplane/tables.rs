//! Writing a service's Maglev table: fill the inactive slot, flip the
//! active slot with one store, read both back.
//!
//! The slot that was active before a flip is not written again until an RCU
//! grace period has passed since that flip (`Slots::pending_grace`), so a
//! packet that read the old slot index never finds it half rewritten.

use lb_common::{NO_BACKEND, ServiceState, TABLE_LANES, TableCells, slot_base};

use super::mmap::MmapArray;

/// Errors writing a table.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("table size {size} exceeds the loaded maximum {max}")]
    TooLarge { size: u32, max: u32 },
    #[error(
        "read-back of service {service} slot {slot} differs at cell {cell}: wrote {wrote}, read {read}"
    )]
    Verify {
        service: u32,
        slot: u32,
        cell: u32,
        wrote: u16,
        read: u16,
    },
    #[error("service {service}: active slot reads {read} after flipping to {wrote}")]
    Flip { service: u32, wrote: u32, read: u32 },
}

/// Offset of `ServiceState::active`, `size` and `generation`.
const ACTIVE_OFFSET: usize = 0;
const GENERATION_OFFSET: usize = 12;

/// Writes `cells` (one backend index per Maglev position, `NO_BACKEND` for
/// none) into the inactive slot of `service`, flips to it and verifies.
/// Returns the new active slot. The caller must have waited out a grace
/// period since the previous flip of this service.
pub fn write_and_flip(
    states: &mut MmapArray<ServiceState>,
    tables: &mut MmapArray<TableCells>,
    stride: u32,
    service: u32,
    cells: &[u16],
    generation: u32,
) -> Result<u32, TableError> {
    // Too many cells for a u32 are too many for the slot too.
    let size = u32::try_from(cells.len()).unwrap_or(u32::MAX);
    let max = stride * TABLE_LANES;
    if size > max {
        return Err(TableError::TooLarge { size, max });
    }
    let mut state = states.get(service);
    let target = (state.active ^ 1) & 1;
    let base = slot_base(service, target, stride);
    let elements = size.div_ceil(TABLE_LANES);
    let slot = tables.slice_mut(base, elements);
    for (element, chunk) in slot.iter_mut().zip(cells.chunks(TABLE_LANES as usize)) {
        let mut packed = [NO_BACKEND; TABLE_LANES as usize];
        packed[..chunk.len()].copy_from_slice(chunk);
        *element = packed;
    }
    verify_slot(tables, stride, service, target, cells)?;
    // Size of the target slot first, then the flip: a reader that sees the
    // new `active` (acquire on its side, program order on x86) sees the size.
    state.size[target as usize] = size;
    states.set(service, state);
    states.store_u32(service, ACTIVE_OFFSET, target);
    states.store_u32(service, GENERATION_OFFSET, generation);
    let read = states.get(service);
    if read.active != target || read.size[target as usize] != size {
        return Err(TableError::Flip {
            service,
            wrote: target,
            read: read.active,
        });
    }
    Ok(target)
}

/// Compares a slot's cells with `cells`.
pub fn verify_slot(
    tables: &MmapArray<TableCells>,
    stride: u32,
    service: u32,
    slot: u32,
    cells: &[u16],
) -> Result<(), TableError> {
    let base = slot_base(service, slot, stride);
    let elements = u32::try_from(cells.len())
        .unwrap_or(u32::MAX)
        .div_ceil(TABLE_LANES);
    let stored = tables.slice(base, elements);
    for (i, want) in cells.iter().enumerate() {
        let got = stored[i / TABLE_LANES as usize][i % TABLE_LANES as usize];
        if got != *want {
            return Err(TableError::Verify {
                service,
                slot,
                cell: u32::try_from(i).unwrap_or(u32::MAX),
                wrote: *want,
                read: got,
            });
        }
    }
    Ok(())
}

/// Reads a service's active table back (for `lbctl` and tests).
#[must_use]
pub fn read_active(
    states: &MmapArray<ServiceState>,
    tables: &MmapArray<TableCells>,
    stride: u32,
    service: u32,
) -> Vec<u16> {
    let state = states.get(service);
    let slot = state.active & 1;
    let size = state.size[slot as usize];
    let base = slot_base(service, slot, stride);
    let stored = tables.slice(base, size.div_ceil(TABLE_LANES));
    (0..size as usize)
        .map(|i| stored[i / TABLE_LANES as usize][i % TABLE_LANES as usize])
        .collect()
}

/// Clears a service's state (both slots unused).
pub fn clear(states: &mut MmapArray<ServiceState>, service: u32) {
    states.set(service, ServiceState::default());
}
