//! What a manager sends a node, after a genuine stream header, through the
//! node listener's own steps short of the maps: the stream decoder, the
//! generation judgement, the desired state a `<reconfigure>` makes, and
//! the plan that would program it. It must never panic, and:
//!
//! - the judgement takes a first generation, re-acks the very same one and
//!   refuses an older one;
//! - an accepted reconfiguration leaves a desired state within the node's
//!   limits, with the service as sent (or gone, when retired) and the other
//!   services untouched;
//! - a plan of an accepted state either is made or says why (no free
//!   index, a table Maglev cannot fill); it never panics.
//!
//! The first input byte picks the feed size (1..=128 bytes a step).

#![no_main]

use std::{collections::BTreeMap, net::IpAddr, path::Path, sync::OnceLock};

use lb_control::{
    config::Config,
    node::{
        desired::Desired,
        ledger::Ledger,
        nexthop::NextHop,
        plan::{Facts, plan},
        reconfigure::{Applied, Refusal, Verdict, judge},
    },
};
use lb_proto::{Decoder, Encoder, Message, Reconfigure, Role, StreamHeader};
use libfuzzer_sys::fuzz_target;

const BASE: &str = r#"
[node]
interfaces = ["eth0"]

[limits]
max_services = 4
max_backends = 16
max_table_size = 1021
flow_table_size = 4096

[[service]]
name = "web"
vip = "10.0.0.100"
port = 80
table_size = 13

[[server]]
name = "s1"
address = "10.0.0.11"
mac = "02:00:00:00:00:11"
services = ["web"]
"#;

struct Fixture {
    config: Config,
    desired: Desired,
    header: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let config = Config::parse(BASE, Path::new("fuzz.toml")).expect("the base file is valid");
        let desired = Desired::from_config(&config).expect("the base model");
        let mut encoder = Encoder::new(Vec::new(), 1);
        encoder
            .start(&StreamHeader::new(Role::Manager, "manager"))
            .expect("header");
        Fixture {
            config,
            desired,
            header: encoder.into_inner(),
        }
    })
}

fn check_judgement(message: &Reconfigure) {
    assert!(matches!(judge(None, message), Ok(Verdict::Apply)));
    let same = Applied {
        generation: message.generation,
        service: message.service.clone(),
    };
    assert!(matches!(judge(Some(&same), message), Ok(Verdict::Reack)));
    if let Some(newer) = message.generation.checked_add(1) {
        let applied = Applied {
            generation: newer,
            ..same
        };
        assert!(matches!(
            judge(Some(&applied), message),
            Err(Refusal::Older { .. })
        ));
    }
}

fn check_reconfigure(message: &Reconfigure) {
    check_judgement(message);
    let f = fixture();
    let Ok(desired) = f.desired.with_service(&message.service) else {
        return;
    };
    let limits = &f.config.limits;
    let model = &desired.model;
    model.check(limits).expect("an accepted state passes the node's checks");
    assert!(model.services.len() <= limits.max_services as usize);
    let backends: usize = model.services.iter().map(|s| s.servers.len()).sum();
    assert!(backends <= limits.max_backends as usize);
    let sent = &message.service;
    let found = model.services.iter().find(|s| s.name == sent.name);
    if sent.retired {
        assert!(found.is_none(), "a retired service stays");
    } else {
        let found = found.expect("the service sent is there");
        let names: Vec<&str> = found.servers.iter().map(|s| s.name.as_str()).collect();
        let wanted: Vec<&str> = sent.servers.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, wanted);
    }
    for before in &f.desired.model.services {
        if before.name != sent.name {
            assert!(model.services.contains(before), "{} changed", before.name);
        }
    }
    // Every server resolved: the plan sees the whole model.
    let hops: BTreeMap<IpAddr, NextHop> = model
        .services
        .iter()
        .flat_map(|s| &s.servers)
        .map(|s| {
            let hop = NextHop {
                ifindex: 2,
                src_mac: [2, 0, 0, 0, 0, 1],
                dst_mac: [2, 0, 0, 0, 0, 2],
            };
            (s.address, hop)
        })
        .collect();
    let facts = Facts {
        max_services: limits.max_services,
        max_backends: limits.max_backends,
        hops: &hops,
        active_tables: &BTreeMap::new(),
        last_seen: &BTreeMap::new(),
    };
    let _ = plan(&Ledger::default(), model, facts);
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(first & 0x7f) + 1;
    let mut decoder = Decoder::new();
    decoder.feed(&fixture().header);
    for piece in rest.chunks(chunk) {
        decoder.feed(piece);
        loop {
            match decoder.next() {
                Ok(Some(Message::Reconfigure(message))) => check_reconfigure(&message),
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) if e.is_fatal() => return,
                Err(_) => {}
            }
        }
    }
});
