//! The ordering rules of [`crate::node`]'s module docs, each checked on the
//! plan alone (no maps): a packet never meets a half-made pool.

use std::{collections::BTreeMap, net::IpAddr};

use lb_common::{BACKEND_ACTIVE, BACKEND_DOWN, BACKEND_DRAINING};

use super::{Facts, Plan, PlanError, plan};
use crate::{
    model::{NodeModel, Protocol, ServerSpec, ServerState, ServiceSpec},
    node::{
        ledger::{Ledger, Step},
        nexthop::NextHop,
    },
};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

fn server(name: &str, address: &str, state: ServerState) -> ServerSpec {
    ServerSpec {
        name: name.into(),
        address: ip(address),
        mac: None,
        weight: 1,
        state,
        local: false,
        forward: crate::config::Forward::L2,
    }
}

fn service(name: &str, port: u16, servers: Vec<ServerSpec>) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        vip: ip("10.0.0.1"),
        port,
        protocol: Protocol::Tcp,
        table_size: 13,
        weight_scale: 1,
        servers,
    }
}

fn model(services: Vec<ServiceSpec>) -> NodeModel {
    NodeModel { services }
}

/// The node's maps as a plan leaves them: the ledger and the active table
/// of each service.
#[derive(Default)]
struct Maps {
    ledger: Ledger,
    active: BTreeMap<u32, Vec<u16>>,
    hops: BTreeMap<IpAddr, NextHop>,
    max_services: u32,
    max_backends: u32,
}

impl Maps {
    fn new() -> Self {
        let mut hops = BTreeMap::new();
        for last in 11..=20 {
            hops.insert(
                ip(&format!("10.0.0.{last}")),
                NextHop {
                    ifindex: 2,
                    src_mac: [2, 0, 0, 0, 0, 1],
                    dst_mac: [2, 0, 0, 0, 0, last],
                },
            );
        }
        Self {
            hops,
            max_services: 4,
            max_backends: 16,
            ..Self::default()
        }
    }

    fn plan(&self, model: &NodeModel) -> Result<Plan, PlanError> {
        let last_seen = BTreeMap::new();
        let facts = Facts {
            max_services: self.max_services,
            max_backends: self.max_backends,
            hops: &self.hops,
            active_tables: &self.active,
            last_seen: &last_seen,
        };
        plan(&self.ledger, model, facts)
    }

    /// Plans `model` and carries the plan out on the ledger; a grace period
    /// passes afterwards, as between two applies in practice.
    fn apply(&mut self, model: &NodeModel) -> Plan {
        let plan = self.plan(model).expect("plan");
        for step in &plan.steps {
            self.ledger.record(step);
            if let Step::Table {
                index,
                cells,
                flip: Some(_),
                ..
            } = step
            {
                self.active.insert(*index, cells.clone());
            }
        }
        self.ledger.record(&Step::WaitGrace);
        plan
    }

    fn index_of(&self, service: &str, address: &str) -> u32 {
        let service = self.ledger.services[service].index;
        self.ledger.backends[&(service, ip(address))].index
    }
}

fn position(plan: &Plan, what: impl Fn(&Step) -> bool) -> Option<usize> {
    plan.steps.iter().position(what)
}

fn positions(plan: &Plan, what: impl Fn(&Step) -> bool) -> Vec<usize> {
    (0..plan.steps.len())
        .filter(|&i| what(&plan.steps[i]))
        .collect()
}

fn is_flip(step: &Step) -> bool {
    matches!(step, Step::Table { flip: Some(_), .. })
}

fn is_grace(step: &Step) -> bool {
    matches!(step, Step::WaitGrace)
}

fn state_written(step: &Step, key_address: &str) -> Option<u32> {
    match step {
        Step::UpdateBackend { key, record } | Step::RetireBackend { key, record }
            if key.1 == ip(key_address) =>
        {
            Some(record.state)
        }
        _ => None,
    }
}

#[test]
fn a_new_service_gets_its_records_then_its_table_then_its_services_entry() {
    let maps = Maps::new();
    let web = model(vec![service(
        "web",
        80,
        vec![
            server("s1", "10.0.0.11", ServerState::Active),
            server("s2", "10.0.0.12", ServerState::Active),
        ],
    )]);
    let plan = maps.plan(&web).expect("plan");
    let records = positions(&plan, |s| matches!(s, Step::AddBackend { .. }));
    let flip = position(&plan, is_flip).expect("the new table flips");
    let insert = position(&plan, |s| matches!(s, Step::InsertService { .. })).expect("insert");
    let publish = plan
        .steps
        .iter()
        .rposition(|s| matches!(s, Step::PublishServices))
        .expect("publish");
    assert_eq!(records.len(), 2);
    assert!(records.iter().all(|&r| r < flip), "{:?}", plan.steps);
    assert!(flip < insert && insert < publish, "{:?}", plan.steps);
    assert_eq!(plan.report.services_added, vec!["web".to_owned()]);
    assert_eq!(plan.report.tables_flipped, vec!["web".to_owned()]);
}

#[test]
fn a_promotion_is_written_before_the_flip_that_uses_it() {
    let mut maps = Maps::new();
    let s2 = |state| server("s2", "10.0.0.12", state);
    let s1 = || server("s1", "10.0.0.11", ServerState::Active);
    maps.apply(&model(vec![service(
        "web",
        80,
        vec![s1(), s2(ServerState::Draining)],
    )]));
    let plan = maps
        .plan(&model(vec![service(
            "web",
            80,
            vec![s1(), s2(ServerState::Active)],
        )]))
        .expect("plan");
    let promoted = position(&plan, |s| {
        state_written(s, "10.0.0.12") == Some(BACKEND_ACTIVE)
    })
    .expect("s2 promoted");
    let flip = position(&plan, is_flip).expect("flip");
    assert!(promoted < flip, "{:?}", plan.steps);
}

#[test]
fn a_demotion_waits_for_the_flip_and_a_grace_period() {
    let mut maps = Maps::new();
    let s1 = || server("s1", "10.0.0.11", ServerState::Active);
    let s2 = |state| server("s2", "10.0.0.12", state);
    maps.apply(&model(vec![service(
        "web",
        80,
        vec![s1(), s2(ServerState::Active)],
    )]));
    for lower in [ServerState::Draining, ServerState::Down] {
        let plan = maps
            .plan(&model(vec![service("web", 80, vec![s1(), s2(lower)])]))
            .expect("plan");
        let flip = position(&plan, is_flip).expect("flip");
        let grace = plan.steps[flip..]
            .iter()
            .position(is_grace)
            .map(|g| g + flip)
            .expect("a grace period after the flip");
        let written = positions(&plan, |s| state_written(s, "10.0.0.12").is_some());
        assert_eq!(written.len(), 1, "{:?}", plan.steps);
        assert!(written[0] > grace, "{:?}", plan.steps);
        let want = if lower == ServerState::Down {
            BACKEND_DOWN
        } else {
            BACKEND_DRAINING
        };
        assert_eq!(
            state_written(&plan.steps[written[0]], "10.0.0.12"),
            Some(want)
        );
    }
}

#[test]
fn a_next_hop_change_with_a_demotion_keeps_the_old_state_until_after_the_flip() {
    let mut maps = Maps::new();
    let s1 = || server("s1", "10.0.0.11", ServerState::Active);
    let s2 = |state| server("s2", "10.0.0.12", state);
    maps.apply(&model(vec![service(
        "web",
        80,
        vec![s1(), s2(ServerState::Active)],
    )]));
    maps.hops.get_mut(&ip("10.0.0.12")).expect("hop").dst_mac = [2, 0, 0, 0, 0, 0x99];
    let plan = maps
        .plan(&model(vec![service(
            "web",
            80,
            vec![s1(), s2(ServerState::Draining)],
        )]))
        .expect("plan");
    let flip = position(&plan, is_flip).expect("flip");
    let early: Vec<&Step> = plan.steps[..flip]
        .iter()
        .filter(|s| state_written(s, "10.0.0.12").is_some())
        .collect();
    assert_eq!(
        early.len(),
        1,
        "the new MAC is written before: {:?}",
        plan.steps
    );
    let Step::UpdateBackend { record, .. } = early[0] else {
        panic!("{early:?}");
    };
    assert_eq!(record.dst_mac, [2, 0, 0, 0, 0, 0x99]);
    assert_eq!(record.state, BACKEND_ACTIVE, "still active before the flip");
}

#[test]
fn at_most_one_flip_per_grace_period() {
    let mut maps = Maps::new();
    let pool = |n: u8| -> Vec<ServerSpec> {
        (0..n)
            .map(|i| {
                server(
                    &format!("s{i}"),
                    &format!("10.0.0.{}", 11 + i),
                    ServerState::Active,
                )
            })
            .collect()
    };
    maps.apply(&model(vec![
        service("web", 80, pool(2)),
        service("api", 81, pool(2)),
    ]));
    let plan = maps
        .plan(&model(vec![
            service("web", 80, pool(3)),
            service("api", 81, pool(3)),
        ]))
        .expect("plan");
    let flips = positions(&plan, is_flip);
    assert_eq!(flips.len(), 2, "{:?}", plan.steps);
    assert!(
        plan.steps[flips[0]..flips[1]].iter().any(is_grace),
        "a grace period between two flips: {:?}",
        plan.steps
    );
    let generations: Vec<u32> = flips
        .iter()
        .map(|&i| match &plan.steps[i] {
            Step::Table { flip: Some(g), .. } => *g,
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(generations[1], generations[0] + 1);
}

#[test]
fn an_unchanged_table_is_not_flipped() {
    let mut maps = Maps::new();
    let web = model(vec![service(
        "web",
        80,
        vec![server("s1", "10.0.0.11", ServerState::Active)],
    )]);
    maps.apply(&web);
    let plan = maps.plan(&web).expect("plan");
    assert_eq!(position(&plan, is_flip), None, "{:?}", plan.steps);
    assert!(plan.report.tables_flipped.is_empty());
    assert!(!plan.steps.iter().any(is_grace), "{:?}", plan.steps);
}

#[test]
fn a_removed_server_is_retired_after_the_flip_and_keeps_its_flows() {
    let mut maps = Maps::new();
    let s1 = || server("s1", "10.0.0.11", ServerState::Active);
    let s2 = || server("s2", "10.0.0.12", ServerState::Active);
    maps.apply(&model(vec![service("web", 80, vec![s1(), s2()])]));
    let plan = maps
        .plan(&model(vec![service("web", 80, vec![s1()])]))
        .expect("plan");
    let flip = position(&plan, is_flip).expect("flip");
    let retire = position(&plan, |s| matches!(s, Step::RetireBackend { .. })).expect("retired");
    assert!(
        plan.steps[flip..retire].iter().any(is_grace),
        "{:?}",
        plan.steps
    );
    assert_eq!(
        state_written(&plan.steps[retire], "10.0.0.12"),
        Some(BACKEND_DRAINING),
        "a retired backend drains: its flows still reach it"
    );
    assert!(
        !plan
            .steps
            .iter()
            .any(|s| matches!(s, Step::ReleaseBackend { .. }))
    );
    assert_eq!(plan.report.backends_retired, 1);
}

#[test]
fn a_removed_service_leaves_services_first_and_its_backends_after_a_grace_period() {
    let mut maps = Maps::new();
    let web = || {
        service(
            "web",
            80,
            vec![server("s1", "10.0.0.11", ServerState::Active)],
        )
    };
    let api = || {
        service(
            "api",
            81,
            vec![server("s2", "10.0.0.12", ServerState::Active)],
        )
    };
    maps.apply(&model(vec![web(), api()]));
    let released_index = maps.index_of("api", "10.0.0.12");
    let plan = maps.plan(&model(vec![web()])).expect("plan");
    assert!(
        matches!(&plan.steps[0], Step::RemoveService { name, .. } if name == "api"),
        "{:?}",
        plan.steps
    );
    assert!(matches!(plan.steps[1], Step::PublishServices));
    let release = position(&plan, |s| matches!(s, Step::ReleaseBackend { .. })).expect("release");
    let drop = position(&plan, |s| matches!(s, Step::DropService { .. })).expect("drop");
    assert!(
        plan.steps[..release].iter().any(is_grace),
        "{:?}",
        plan.steps
    );
    assert!(release < drop);
    assert_eq!(plan.report.services_removed, vec!["api".to_owned()]);
    assert_eq!(plan.report.backends_removed, 1);

    // Its index is quarantined: a server added before the next grace period
    // gets another one.
    let mut after = maps.ledger.clone();
    for step in &plan.steps {
        after.record(step);
    }
    assert!(after.quarantined_backends.contains(&released_index));
}

#[test]
fn a_released_index_is_reused_only_after_a_grace_period() {
    let mut maps = Maps::new();
    maps.max_backends = 2;
    let s = |name: &str, last: u8| server(name, &format!("10.0.0.{last}"), ServerState::Active);
    maps.apply(&model(vec![service(
        "web",
        80,
        vec![s("s1", 11), s("s2", 12)],
    )]));
    // s2 leaves (retired, draining); s3 needs its index, the only one left.
    maps.apply(&model(vec![service("web", 80, vec![s("s1", 11)])]));
    let old = maps.index_of("web", "10.0.0.12");
    let plan = maps
        .plan(&model(vec![service(
            "web",
            80,
            vec![s("s1", 11), s("s3", 13)],
        )]))
        .expect("plan");
    let release = position(&plan, |s| {
        matches!(s, Step::ReleaseBackend { reused: true, .. })
    })
    .expect("the retired backend's index is released");
    let add = position(
        &plan,
        |s| matches!(s, Step::AddBackend { index, .. } if *index == old),
    )
    .expect("and given to s3");
    assert!(
        plan.steps[release..add].iter().any(is_grace),
        "nothing may read the old record when it is rewritten: {:?}",
        plan.steps
    );
    assert_eq!(plan.report.backends_reused, 1);
}

#[test]
fn a_full_backend_table_is_an_error_that_says_which_limit() {
    let mut maps = Maps::new();
    maps.max_backends = 1;
    let error = maps
        .plan(&model(vec![service(
            "web",
            80,
            vec![
                server("s1", "10.0.0.11", ServerState::Active),
                server("s2", "10.0.0.12", ServerState::Active),
            ],
        )]))
        .expect_err("two servers, one index");
    assert!(error.to_string().contains("limits.max_backends"), "{error}");
}

#[test]
fn an_unresolved_server_is_left_out_and_the_others_are_programmed() {
    let mut maps = Maps::new();
    maps.hops.remove(&ip("10.0.0.12"));
    let plan = maps
        .plan(&model(vec![service(
            "web",
            80,
            vec![
                server("s1", "10.0.0.11", ServerState::Active),
                server("s2", "10.0.0.12", ServerState::Active),
            ],
        )]))
        .expect("plan");
    let added: Vec<IpAddr> = plan
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::AddBackend { key, .. } => Some(key.1),
            _ => None,
        })
        .collect();
    assert_eq!(added, vec![ip("10.0.0.11")]);
}

#[test]
fn a_service_replaced_in_one_apply_never_takes_the_index_packets_may_still_read() {
    let web = || {
        service(
            "web",
            80,
            vec![server("s1", "10.0.0.11", ServerState::Active)],
        )
    };
    let api = |name: &str| {
        service(
            name,
            81,
            vec![server("s2", "10.0.0.12", ServerState::Active)],
        )
    };
    for max_services in [4, 2] {
        let mut maps = Maps::new();
        maps.max_services = max_services;
        maps.apply(&model(vec![web(), api("api")]));
        let old = maps.ledger.services["api"].index;
        // `api` renamed: removed and added in the same apply.
        let plan = maps.plan(&model(vec![web(), api("api2")])).expect("plan");
        let removed =
            position(&plan, |s| matches!(s, Step::RemoveService { .. })).expect("removed");
        let (added, index) = plan
            .steps
            .iter()
            .enumerate()
            .find_map(|(i, s)| match s {
                Step::AddService { index, .. } => Some((i, *index)),
                _ => None,
            })
            .expect("added");
        if index == old {
            assert_eq!(max_services, 2, "a free index was there: {:?}", plan.steps);
            assert!(
                plan.steps[removed..added].iter().any(is_grace),
                "the old index again only after a grace period: {:?}",
                plan.steps
            );
        }
        assert!(
            !plan
                .steps
                .iter()
                .any(|s| matches!(s, Step::DropService { index: i } if *i == index)),
            "the new service's state is never cleared after it was written: {:?}",
            plan.steps
        );
        let mut after = maps.ledger.clone();
        for step in &plan.steps {
            after.record(step);
        }
        assert_eq!(after.services["api2"].index, index);
    }
}
