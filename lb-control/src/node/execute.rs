//! Carries a [`Plan`](super::plan::Plan)'s steps out on the maps, one at a
//! time, keeping the ledger in step with what was written (an error leaves
//! it naming exactly the steps done).

use std::collections::BTreeMap;

use lb_common::{BACKEND_UNUSED, ServiceValue};
use tracing::{info, warn};

use super::{
    ApplyError,
    dataplane::{DataPlane, DataPlaneError, tables},
    ledger::{Ledger, Step},
    map_err,
    nexthop::{Interface, NextHopError},
};

/// What the plan reads from the maps: each programmed service's active
/// table (by index) and when each backend last forwarded a packet.
pub fn map_facts(dp: &DataPlane, ledger: &Ledger) -> (BTreeMap<u32, Vec<u16>>, BTreeMap<u32, u32>) {
    let tables = ledger
        .services
        .values()
        .map(|rt| {
            let cells = tables::read_active(&dp.service_state, &dp.tables, dp.stride, rt.index);
            (rt.index, cells)
        })
        .collect();
    let last_seen = ledger
        .backends
        .values()
        .map(|b| (b.index, dp.backend_last_seen(b.index)))
        .collect();
    (tables, last_seen)
}

/// Carries `steps` out in order; `ports` are the node interfaces for
/// [`Step::SyncTxPorts`].
pub fn execute(
    dp: &mut DataPlane,
    ledger: &mut Ledger,
    steps: &[Step],
    ports: &Result<Vec<Interface>, NextHopError>,
) -> Result<(), ApplyError> {
    for step in steps {
        carry_out(dp, ledger, step, ports)?;
        ledger.record(step);
    }
    Ok(())
}

fn carry_out(
    dp: &mut DataPlane,
    ledger: &Ledger,
    step: &Step,
    ports: &Result<Vec<Interface>, NextHopError>,
) -> Result<(), ApplyError> {
    match step {
        Step::RemoveService { key, .. } => dp.services.remove(key).map_err(map_err("SERVICES"))?,
        Step::PublishServices => dp.publish_services()?,
        Step::WaitGrace => dp.grace.wait().map_err(DataPlaneError::from)?,
        Step::AddService { index, .. } | Step::DropService { index } => {
            tables::clear(&mut dp.service_state, *index);
        }
        Step::UpdateBackend { key, record } | Step::RetireBackend { key, record } => {
            let rt = ledger.backends.get(key).ok_or(ApplyError::Map {
                map: "BACKENDS",
                source: aya::maps::MapError::KeyNotFound,
            })?;
            dp.backends
                .set(rt.index, *record, 0)
                .map_err(map_err("BACKENDS"))?;
        }
        Step::AddBackend { index, record, .. } => dp
            .backends
            .set(*index, *record, 0)
            .map_err(map_err("BACKENDS"))?,
        Step::ReleaseBackend { key, reused } => {
            if let Some(rt) = ledger.backends.get(key) {
                // The index keeps its incarnation, so flow entries that name
                // it are re-hashed.
                let mut record = rt.record;
                record.state = BACKEND_UNUSED;
                dp.backends
                    .set(rt.index, record, 0)
                    .map_err(map_err("BACKENDS"))?;
                if *reused {
                    info!(server = %rt.server, backend = rt.index, "index of retired backend reused; its remaining flows are re-hashed");
                }
            }
        }
        Step::Table {
            index,
            cells,
            flip: Some(generation),
            ..
        } => {
            tables::write_and_flip(
                &mut dp.service_state,
                &mut dp.tables,
                dp.stride,
                *index,
                cells,
                *generation,
            )?;
        }
        Step::InsertService { name } => {
            let rt = &ledger.services[name];
            let value = ServiceValue {
                index: rt.index,
                flags: 0,
            };
            dp.services
                .insert(rt.key, value, 0)
                .map_err(map_err("SERVICES"))?;
        }
        Step::SyncVips(want) => sync_vips(dp, want)?,
        Step::SyncTxPorts => sync_tx_ports(dp, ports),
        Step::Unretire { .. } | Step::Table { flip: None, .. } | Step::KeepExpected(_) => {}
    }
    Ok(())
}

fn sync_vips(
    dp: &mut DataPlane,
    want: &BTreeMap<lb_common::ServiceKey, u32>,
) -> Result<(), ApplyError> {
    let have: Vec<lb_common::ServiceKey> = dp.vips.keys().filter_map(Result::ok).collect();
    for k in have {
        if !want.contains_key(&k) {
            dp.vips.remove(&k).map_err(map_err("VIPS"))?;
        }
    }
    for (k, n) in want {
        dp.vips.insert(k, n, 0).map_err(map_err("VIPS"))?;
    }
    Ok(())
}

fn sync_tx_ports(dp: &mut DataPlane, ports: &Result<Vec<Interface>, NextHopError>) {
    match ports {
        Ok(list) => {
            for i in list {
                if let Err(e) = dp.tx_ports.insert(i.ifindex, i.ifindex, None, 0) {
                    warn!(interface = %i.name, error = %e, "cannot add redirect port");
                }
            }
        }
        Err(e) => warn!(error = %e, "cannot list interfaces"),
    }
}
