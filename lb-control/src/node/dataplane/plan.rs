//! What to do with what is pinned, decided before anything changes: a pure
//! function of the [`Pins`] found, the map table and this build's identity.
//!
//! - Every pinned map must have the shape this build gives it; the flow
//!   table alone may differ (another layout or size), and is then migrated.
//!   Any other difference refuses the start, before a pin is touched.
//! - The running program is kept ([`Adoption::Adopted`]) only when it is
//!   this build with these load-time constants, linked on every configured
//!   interface, and the flow table stays; it is replaced in place when any
//!   interface has a link; otherwise the program starts fresh.

use std::mem::size_of;

use aya::maps::MapType;
use lb_common::{FlowEntry, FlowEntryV0, FlowKey, FlowSet, MAP_FLOWS};

use super::{
    Adoption,
    maps::{MapSizes, MapSpec},
    pins::{Pins, Shape},
};
use crate::config::Config;

/// The kernel marks devmaps read-only for programs.
const BPF_F_RDONLY_PROG: u32 = 0x80;

/// What opening the data plane will do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub adoption: Adoption,
    /// The pinned flow table to migrate, and how it differs.
    pub migrate_flows: Option<String>,
}

/// A pinned map this build cannot use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub name: &'static str,
    pub detail: String,
}

/// Identity of a program build with its load-time constants. Changing any
/// of them means the running program must be replaced.
pub fn build_identity(bytes: &[u8], config: &Config) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: &[u8]| {
        for x in b {
            h ^= u64::from(*x);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    eat(bytes);
    eat(&config.node.hash_seed.to_le_bytes());
    eat(&config.node.udp_idle_timeout.to_le_bytes());
    eat(&config.limits.max_table_size.to_le_bytes());
    h
}

/// Decides from what is pinned; fails on the first map (in table order)
/// this build cannot use.
pub fn decide(
    pins: &Pins,
    specs: &[MapSpec],
    sizes: &MapSizes,
    identity: u64,
) -> Result<Plan, Mismatch> {
    let mut migrate_flows = None;
    for (name, have) in &pins.maps {
        let Some(spec) = specs.iter().find(|s| s.name == *name) else {
            continue;
        };
        let want = sizes.entries(spec);
        if fits(have, spec, want) {
            continue;
        }
        let detail = describe(have, spec, want);
        if spec.name == MAP_FLOWS && migratable_flows(have) {
            migrate_flows = Some(detail);
        } else {
            return Err(Mismatch {
                name: spec.name,
                detail,
            });
        }
    }
    let all_linked = pins.linked.iter().all(|l| *l);
    let adoption = if pins.build_id == Some(identity) && all_linked && migrate_flows.is_none() {
        Adoption::Adopted
    } else if pins.linked.iter().any(|l| *l) {
        Adoption::Replaced
    } else {
        Adoption::Fresh
    };
    Ok(Plan {
        adoption,
        migrate_flows,
    })
}

fn fits(have: &Shape, spec: &MapSpec, entries: u32) -> bool {
    have.kind == Some(spec.kind)
        && have.key == spec.key
        && have.value == spec.value
        && have.entries == entries
        && have.flags & !BPF_F_RDONLY_PROG == spec.flags
}

fn describe(have: &Shape, spec: &MapSpec, entries: u32) -> String {
    format!(
        "{:?} key {} value {} entries {} flags {:#x}; expected {:?} key {} value {} entries {} flags {:#x}",
        have.kind,
        have.key,
        have.value,
        have.entries,
        have.flags,
        spec.kind,
        spec.key,
        spec.value,
        entries,
        spec.flags
    )
}

/// Whether a pinned flow table can be migrated into this build's: a kernel
/// LRU hash of either earlier entry layout, or a set array of another size.
fn migratable_flows(have: &Shape) -> bool {
    let bytes = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    match have.kind {
        Some(MapType::LruHash) => {
            have.key == bytes(size_of::<FlowKey>())
                && [size_of::<FlowEntryV0>(), size_of::<FlowEntry>()]
                    .map(bytes)
                    .contains(&have.value)
        }
        Some(MapType::Array) => have.value == bytes(size_of::<FlowSet>()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::Limits,
        node::dataplane::maps::{
            FlowLayout, GLOBAL_STATS, GUARD_STATS, LEGACY_FLOWS, MAP_SPECS, SERVICE_STATE,
            TX_PORTS, VIPS, specs,
        },
    };

    const ID: u64 = 42;

    fn sizes() -> MapSizes {
        MapSizes::new(&Limits::default())
    }

    fn shape(spec: &MapSpec) -> Shape {
        Shape {
            kind: Some(spec.kind),
            key: spec.key,
            value: spec.value,
            entries: sizes().entries(spec),
            flags: spec.flags,
        }
    }

    /// Every map pinned as this build wants it, linked on `linked`.
    fn running(build_id: Option<u64>, linked: &[bool]) -> Pins {
        Pins {
            maps: MAP_SPECS.iter().map(|s| (s.name, shape(s))).collect(),
            build_id,
            linked: linked.to_vec(),
        }
    }

    fn decide_now(pins: &Pins) -> Result<Plan, Mismatch> {
        decide(pins, &MAP_SPECS, &sizes(), ID)
    }

    fn adoption(pins: &Pins) -> Adoption {
        decide_now(pins).expect("compatible").adoption
    }

    #[test]
    fn nothing_pinned_starts_fresh() {
        assert_eq!(adoption(&Pins::default()), Adoption::Fresh);
        assert_eq!(
            adoption(&Pins {
                linked: vec![false, false],
                ..Pins::default()
            }),
            Adoption::Fresh
        );
        // Maps without links (a program detached by hand): fresh too.
        assert_eq!(adoption(&running(Some(ID), &[false])), Adoption::Fresh);
    }

    #[test]
    fn the_same_build_linked_everywhere_is_adopted() {
        assert_eq!(
            adoption(&running(Some(ID), &[true, true])),
            Adoption::Adopted
        );
    }

    #[test]
    fn another_build_or_a_missing_link_is_replaced() {
        assert_eq!(adoption(&running(Some(7), &[true])), Adoption::Replaced);
        assert_eq!(adoption(&running(None, &[true])), Adoption::Replaced);
        assert_eq!(
            adoption(&running(Some(ID), &[true, false])),
            Adoption::Replaced
        );
    }

    #[test]
    fn a_migrated_flow_table_replaces_even_the_same_build() {
        let mut pins = running(Some(ID), &[true]);
        let flows = pins.maps.iter_mut().find(|(n, _)| *n == MAP_FLOWS).unwrap();
        flows.1 = shape(&LEGACY_FLOWS);
        let plan = decide_now(&pins).expect("migratable");
        assert_eq!(plan.adoption, Adoption::Replaced);
        let detail = plan.migrate_flows.expect("migrates");
        assert!(
            detail.starts_with("Some(LruHash) key 40 value 8 "),
            "{detail}"
        );
        // A set array of another size migrates too.
        flows_entries(&mut pins, 8);
        assert!(decide_now(&pins).unwrap().migrate_flows.is_some());
    }

    fn flows_entries(pins: &mut Pins, entries: u32) {
        let flows = pins.maps.iter_mut().find(|(n, _)| *n == MAP_FLOWS).unwrap();
        flows.1 = Shape {
            entries,
            ..shape(&MAP_SPECS[5])
        };
    }

    #[test]
    fn a_legacy_build_keeps_a_legacy_table() {
        let table = specs(FlowLayout::Legacy);
        let pins = Pins {
            maps: table.iter().map(|s| (s.name, shape(s))).collect(),
            build_id: Some(ID),
            linked: vec![true],
        };
        let plan = decide(&pins, &table, &sizes(), ID).unwrap();
        assert_eq!(plan.adoption, Adoption::Adopted);
        assert_eq!(plan.migrate_flows, None);
    }

    #[test]
    fn any_other_difference_is_refused_naming_the_first_map() {
        let mut pins = running(Some(ID), &[true]);
        for (name, have) in &mut pins.maps {
            if *name == SERVICE_STATE.name || *name == VIPS.name {
                have.entries += 1;
            }
        }
        let err = decide_now(&pins).unwrap_err();
        assert_eq!(err.name, SERVICE_STATE.name);
        assert!(
            err.detail.contains("; expected Array key 4 value 16"),
            "{}",
            err.detail
        );
        // A flow table of an unknown layout is refused too.
        let mut pins = running(None, &[]);
        let flows = pins.maps.iter_mut().find(|(n, _)| *n == MAP_FLOWS).unwrap();
        flows.1.kind = Some(MapType::Hash);
        assert_eq!(decide_now(&pins).unwrap_err().name, MAP_FLOWS);
    }

    /// The pins of the release before `GUARD_STATS`: its counter maps had
    /// 13 (`GLOBAL_STATS`) and 1 (`FLOW_STATS`) entries. A counter added to
    /// either would refuse this upgrade, and no end-to-end test would see
    /// it: the legacy object is built from this tree's `lb-common`.
    #[test]
    fn the_previous_releases_pins_are_replaced_in_place() {
        let mut pins = running(Some(7), &[true]);
        pins.maps.retain(|(n, _)| *n != GUARD_STATS.name);
        for (name, have) in &pins.maps {
            match *name {
                lb_common::MAP_GLOBAL_STATS => assert_eq!(have.entries, 13),
                lb_common::MAP_FLOW_STATS => assert_eq!(have.entries, 1),
                _ => {}
            }
        }
        let plan = decide_now(&pins).expect("the previous release's maps fit");
        assert_eq!(plan.adoption, Adoption::Replaced);
        assert_eq!(plan.migrate_flows, None);
        // A resized counter map is refused (why new counters need room).
        let mut grown = pins.clone();
        for (name, have) in &mut grown.maps {
            if *name == GLOBAL_STATS.name {
                have.entries += 1;
            }
        }
        assert_eq!(decide_now(&grown).unwrap_err().name, GLOBAL_STATS.name);
    }

    #[test]
    fn the_kernels_read_only_mark_on_devmaps_is_not_a_difference() {
        let mut pins = running(Some(ID), &[true]);
        let tx = pins
            .maps
            .iter_mut()
            .find(|(n, _)| *n == TX_PORTS.name)
            .unwrap();
        tx.1.flags |= BPF_F_RDONLY_PROG;
        assert_eq!(adoption(&pins), Adoption::Adopted);
    }

    #[test]
    fn the_identity_covers_the_build_and_its_constants() {
        let config = Config::parse(
            "[node]\ninterfaces = [\"eth0\"]\n",
            std::path::Path::new("identity.toml"),
        )
        .expect("minimal config");
        let base = build_identity(b"object", &config);
        assert_eq!(base, build_identity(b"object", &config));
        assert_ne!(base, build_identity(b"object2", &config));
        let mut seeded = config.clone();
        seeded.node.hash_seed ^= 1;
        assert_ne!(base, build_identity(b"object", &seeded));
        let mut sized = config.clone();
        sized.limits.max_table_size = 13;
        assert_ne!(base, build_identity(b"object", &sized));
    }
}
