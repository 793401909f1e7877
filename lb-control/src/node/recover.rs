//! The ledger recovered from the pinned maps after a restart: the indexes
//! in the flow table must keep their meaning.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use lb_common::{BACKEND_UNUSED, FAMILY_V4, ServiceKey};
use tracing::info;

use super::desired::Desired;
use super::{
    ApplyError,
    dataplane::DataPlane,
    ledger::{BackendRuntime, Ledger, ServiceRuntime},
    map_err,
};

fn addr_of(bytes: &[u8; 16], family: u32) -> IpAddr {
    if family == u32::from(FAMILY_V4) {
        IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])
    } else {
        IpAddr::from(*bytes)
    }
}

/// The ledger of what `dp`'s maps hold; names come from `desired` (a
/// service or server it does not name is an orphan, named by its index or
/// address).
pub fn recover(dp: &DataPlane, desired: &Desired) -> Result<Ledger, ApplyError> {
    let mut ledger = Ledger::default();
    let names: BTreeMap<ServiceKey, String> = desired
        .model
        .services
        .iter()
        .map(|s| (s.key(), s.name.clone()))
        .collect();
    for item in &dp.services {
        let (key, value) = item.map_err(map_err("SERVICES"))?;
        let name = names
            .get(&key)
            .cloned()
            .unwrap_or_else(|| format!("#orphan-{}", value.index));
        let rt = ServiceRuntime {
            key,
            index: value.index,
        };
        ledger.services.insert(name, rt);
        let generation = dp.service_state.get(value.index).generation;
        ledger.generation = ledger.generation.max(generation);
    }
    let servers: BTreeMap<IpAddr, String> = desired
        .servers
        .iter()
        .map(|s| (s.address, s.name.clone()))
        .collect();
    let members: BTreeSet<(u32, IpAddr)> = desired
        .model
        .services
        .iter()
        .filter_map(|svc| {
            let rt = ledger.services.get(&svc.name)?;
            Some(svc.servers.iter().map(move |m| (rt.index, m.address)))
        })
        .flatten()
        .collect();
    for index in 0..dp.limits.max_backends {
        let record = dp.backends.get(&index, 0).map_err(map_err("BACKENDS"))?;
        ledger.next_incarnation = ledger.next_incarnation.max(record.incarnation + 1);
        if record.state == BACKEND_UNUSED {
            continue;
        }
        let addr = addr_of(&record.addr, record.family);
        let server = servers
            .get(&addr)
            .cloned()
            .unwrap_or_else(|| addr.to_string());
        let rt = BackendRuntime {
            index,
            record,
            server,
            retired: !members.contains(&(record.service, addr)),
        };
        ledger.backends.insert((record.service, addr), rt);
    }
    if !ledger.services.is_empty() {
        info!(
            services = ledger.services.len(),
            backends = ledger.backends.len(),
            generation = ledger.generation,
            "recovered state from pinned maps"
        );
    }
    Ok(ledger)
}
