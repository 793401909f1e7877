//! Tests of the next-hop resolver: pure helpers, then the resolver in
//! network namespaces.

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

#[test]
fn prefix_contains_v4() {
    assert!(prefix_contains(ip("10.1.2.0"), 24, ip("10.1.2.3")));
    assert!(prefix_contains(ip("10.1.2.1"), 24, ip("10.1.2.255")));
    assert!(!prefix_contains(ip("10.1.2.0"), 24, ip("10.1.3.3")));
    assert!(prefix_contains(ip("10.1.2.0"), 23, ip("10.1.3.3")));
    assert!(!prefix_contains(ip("10.1.2.0"), 23, ip("10.1.4.0")));
    assert!(prefix_contains(ip("10.1.2.3"), 32, ip("10.1.2.3")));
    assert!(!prefix_contains(ip("10.1.2.3"), 32, ip("10.1.2.4")));
    assert!(prefix_contains(ip("0.0.0.0"), 0, ip("203.0.113.9")));
    assert!(prefix_contains(ip("10.0.0.0"), 0, ip("255.255.255.255")));
    assert!(prefix_contains(ip("128.0.0.0"), 1, ip("200.0.0.1")));
    assert!(!prefix_contains(ip("128.0.0.0"), 1, ip("100.0.0.1")));
    assert!(!prefix_contains(ip("10.1.2.3"), 33, ip("10.1.2.3")));
}

#[test]
fn prefix_contains_v6() {
    assert!(prefix_contains(ip("fd00:1::1"), 64, ip("fd00:1::ffff:2")));
    assert!(!prefix_contains(ip("fd00:1::1"), 64, ip("fd00:2::1")));
    assert!(prefix_contains(ip("fd00:1::"), 48, ip("fd00:1:0:ff::1")));
    assert!(prefix_contains(ip("fd00::1"), 128, ip("fd00::1")));
    assert!(!prefix_contains(ip("fd00::1"), 128, ip("fd00::2")));
    assert!(prefix_contains(ip("::"), 0, ip("2001:db8::1")));
    assert!(prefix_contains(ip("fe80::1"), 0, ip("::1")));
    assert!(!prefix_contains(ip("fd00::1"), 129, ip("fd00::1")));
}

#[test]
fn prefix_contains_mixed_families_is_false() {
    assert!(!prefix_contains(ip("0.0.0.0"), 0, ip("::")));
    assert!(!prefix_contains(ip("::"), 0, ip("0.0.0.0")));
    assert!(!prefix_contains(ip("::ffff:10.1.2.0"), 120, ip("10.1.2.3")));
    assert!(!prefix_contains(ip("10.1.2.0"), 24, ip("::ffff:10.1.2.3")));
}

#[test]
fn egress_is_longest_prefix_then_configuration_order() {
    let iface = |name: &str, ifindex, prefixes: &[(&str, u8)]| Interface {
        name: name.to_owned(),
        ifindex,
        mac: [2, 0, 0, 0, 0, u8::try_from(ifindex).expect("small ifindex")],
        prefixes: prefixes.iter().map(|&(a, l)| (ip(a), l)).collect(),
    };
    let interfaces = [
        iface("eth0", 1, &[("10.0.0.1", 16), ("fd00::1", 64)]),
        iface("eth1", 2, &[("10.0.5.1", 24), ("fd00::2", 64)]),
    ];
    let pick = |a: &str| select_egress(&interfaces, ip(a)).map(|i| i.name.as_str());
    assert_eq!(pick("10.0.5.9"), Some("eth1"));
    assert_eq!(pick("10.0.6.9"), Some("eth0"));
    assert_eq!(pick("fd00::99"), Some("eth0"));
    assert_eq!(pick("10.1.0.1"), None);
    assert_eq!(pick("2001:db8::1"), None);
    assert_eq!(select_egress(&[], ip("10.0.0.1")).map(|i| i.ifindex), None);
}

#[test]
fn neighbour_states() {
    let message = |state, with_mac: bool| {
        let mut m = NeighbourMessage::default();
        m.header.ifindex = 7;
        m.header.state = state;
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                Ipv4Addr::new(10, 0, 0, 2),
            )));
        if with_mac {
            m.attributes
                .push(NeighbourAttribute::LinkLocalAddress(vec![2, 0, 0, 0, 0, 2]));
        }
        m
    };
    let expected = Some((7, ip("10.0.0.2"), [2, 0, 0, 0, 0, 2]));
    for state in VALID_STATES {
        assert_eq!(
            valid_neighbour(&message(state, true)),
            expected,
            "{state:?}"
        );
    }
    for state in [
        NeighbourState::Incomplete,
        NeighbourState::Failed,
        NeighbourState::None,
    ] {
        assert_eq!(valid_neighbour(&message(state, true)), None, "{state:?}");
    }
    assert_eq!(
        valid_neighbour(&message(NeighbourState::Reachable, false)),
        None
    );
}

#[test]
fn mac_round_trip() {
    let mac = [0x00, 0x1b, 0x21, 0xaa, 0xbc, 0xff];
    assert_eq!(format_mac(&mac), "00:1b:21:aa:bc:ff");
    assert_eq!(parse_mac("00:1b:21:aa:bc:ff"), Ok(mac));
    assert_eq!(parse_mac("00:1B:21:AA:BC:FF"), Ok(mac));
    assert_eq!(format_mac(&[0; 6]), "00:00:00:00:00:00");
    assert_eq!(parse_mac(&format_mac(&[0xff; 6])), Ok([0xff; 6]));
}

#[test]
fn mac_parse_errors() {
    for bad in [
        "",
        "00:1b:21:aa:bc",
        "00:1b:21:aa:bc:ff:01",
        "00-1b-21-aa-bc-ff",
        "001b21aabcff",
        "0:1b:21:aa:bc:ff",
        "000:1b:21:aa:bc:ff",
        "+0:1b:21:aa:bc:ff",
        "gg:1b:21:aa:bc:ff",
        "00:1b:21:aa:bc:ff:",
        " 00:1b:21:aa:bc:ff",
    ] {
        let err = parse_mac(bad).expect_err(bad);
        assert!(err.to_string().contains("aa:bb:cc:dd:ee:ff"), "{err}");
    }
}

#[test]
fn error_messages_say_what_to_fix() {
    let err = NextHopError::NotConnected {
        addr: ip("10.1.2.3"),
        interfaces: vec!["eth0".into()],
    };
    assert_eq!(
        err.to_string(),
        "server 10.1.2.3 is not on a segment directly connected to any of the node interfaces [eth0]: direct server return needs it on-link"
    );
    let err = NextHopError::NotConnected {
        addr: ip("fd00::3"),
        interfaces: vec!["eth0".into(), "eth1".into()],
    };
    assert!(err.to_string().contains("[eth0, eth1]"), "{err}");
    let err = NextHopError::Unresolved {
        addr: ip("10.1.2.3"),
        ifname: "eth0".into(),
        waited: Duration::from_secs(3),
    };
    assert!(
        err.to_string()
            .starts_with("no neighbour entry for 10.1.2.3 on eth0 after 3s; is the server up?"),
        "{err}"
    );
}

/// Resolver tests in network namespaces made for the test (needs root).
mod netns {
    use std::{
        fs::File,
        os::fd::AsRawFd,
        process::Command,
        sync::atomic::{AtomicU32, Ordering},
        time::Duration,
    };

    use super::super::*;

    const NODE_IF: &str = "lbnh0";
    const PEER_IF: &str = "lbnhpeer0";
    const NODE_V4: &str = "10.77.0.1";
    const PEER_V4: &str = "10.77.0.2";
    const NODE_V6: &str = "fd00:77::1";
    const PEER_V6: &str = "fd00:77::2";

    /// Deletes the namespaces it holds when dropped, on panic too.
    struct Namespaces(Vec<String>);

    impl Drop for Namespaces {
        fn drop(&mut self) {
            for name in &self.0 {
                let status = Command::new("ip").args(["netns", "del", name]).status();
                if !matches!(status, Ok(s) if s.success()) {
                    eprintln!("could not delete network namespace {name}: {status:?}");
                }
            }
        }
    }

    /// Runs `ip ARGS`, panics on failure, returns stdout.
    fn run_ip(args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run ip {}: {e}", args.join(" ")));
        assert!(
            out.status.success(),
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// (ifindex, MAC) of `ifname` in namespace `ns`, from `ip -o link`.
    fn link_facts(ns: &str, ifname: &str) -> (u32, [u8; 6]) {
        let line = run_ip(&["-n", ns, "-o", "link", "show", "dev", ifname]);
        let ifindex = line
            .split(':')
            .next()
            .and_then(|i| i.trim().parse().ok())
            .unwrap_or_else(|| panic!("no ifindex in {line:?}"));
        let mac = line
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .unwrap_or_else(|| panic!("no link/ether in {line:?}"));
        (ifindex, parse_mac(mac).expect("MAC from ip link"))
    }

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions and cannot fail.
        unsafe { libc::geteuid() == 0 }
    }

    /// Moves the calling thread into the network namespace `name`.
    fn enter_netns(name: &str) {
        let path = format!("/var/run/netns/{name}");
        let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        // SAFETY: the fd is an open namespace file; setns only changes
        // the calling thread's network namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", io::Error::last_os_error());
    }

    struct Expected {
        ifindex: u32,
        node_mac: [u8; 6],
        peer_mac: [u8; 6],
    }

    #[tokio::test(flavor = "current_thread")]
    async fn resolver_in_network_namespace() {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        if !is_root() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "the next-hop resolver test needs root (network namespaces, veth) and CI=true: run the tests as root"
            );
            eprintln!("skipped: needs root");
            return;
        }
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let node = format!("lbnh-{}-{n}", std::process::id());
        let peer = format!("{node}-peer");
        let mut namespaces = Namespaces(Vec::new());
        for ns in [&node, &peer] {
            run_ip(&["netns", "add", ns]);
            namespaces.0.push(ns.clone());
        }
        run_ip(&[
            "-n", &node, "link", "add", NODE_IF, "type", "veth", "peer", "name", PEER_IF, "netns",
            &peer,
        ]);
        for (ns, ifname, v4, v6) in [
            (&node, NODE_IF, NODE_V4, NODE_V6),
            (&peer, PEER_IF, PEER_V4, PEER_V6),
        ] {
            run_ip(&["-n", ns, "addr", "add", &format!("{v4}/24"), "dev", ifname]);
            run_ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                ifname,
                "nodad",
            ]);
            run_ip(&["-n", ns, "link", "set", ifname, "up"]);
        }
        let (ifindex, node_mac) = link_facts(&node, NODE_IF);
        let (_, peer_mac) = link_facts(&peer, PEER_IF);
        let expected = Expected {
            ifindex,
            node_mac,
            peer_mac,
        };

        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let ns = node.clone();
        let thread = std::thread::spawn(move || {
            enter_netns(&ns);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            runtime.block_on(checks(expected));
            let _ = done_tx.send(());
        });
        // Resolves when the thread finishes or panics (sender dropped).
        let _ = done_rx.await;
        if let Err(panic) = thread.join() {
            std::panic::resume_unwind(panic);
        }
        drop(namespaces);
    }

    /// The checks, run inside the node namespace.
    async fn checks(expected: Expected) {
        let err = Resolver::new(&["lbnhnope0".to_owned()])
            .await
            .expect_err("missing interface");
        assert!(
            matches!(&err, NextHopError::UnknownInterface(n) if n == "lbnhnope0"),
            "{err:?}"
        );
        let err = Resolver::new(&["lo".to_owned()])
            .await
            .expect_err("loopback");
        assert!(matches!(err, NextHopError::NotEthernet { .. }), "{err:?}");
        assert!(matches!(
            Resolver::new(&[]).await,
            Err(NextHopError::NoInterfaces)
        ));

        let resolver = Resolver::new(&[NODE_IF.to_owned()])
            .await
            .expect("resolver");
        let interfaces = resolver.interfaces().await.expect("interfaces");
        assert_eq!(interfaces.len(), 1);
        assert_eq!(interfaces[0].name, NODE_IF);
        assert_eq!(interfaces[0].ifindex, expected.ifindex);
        assert_eq!(interfaces[0].mac, expected.node_mac);
        for prefix in [(ip(NODE_V4), 24), (ip(NODE_V6), 64)] {
            assert!(
                interfaces[0].prefixes.contains(&prefix),
                "{prefix:?} not in {:?}",
                interfaces[0].prefixes
            );
        }

        let want = NextHop {
            ifindex: expected.ifindex,
            src_mac: expected.node_mac,
            dst_mac: expected.peer_mac,
        };
        for peer in [PEER_V4, PEER_V6] {
            let hop = resolver
                .resolve(ip(peer), Duration::from_secs(10))
                .await
                .unwrap_or_else(|e| panic!("resolve {peer}: {e}"));
            assert_eq!(hop, want, "{peer}");
            // Now in the table: resolves without waiting.
            let hop = resolver
                .resolve(ip(peer), Duration::ZERO)
                .await
                .unwrap_or_else(|e| panic!("resolve {peer} again: {e}"));
            assert_eq!(hop, want, "{peer}");
        }
        let neighbours = resolver.neighbours().await.expect("neighbours");
        for peer in [PEER_V4, PEER_V6] {
            assert_eq!(
                neighbours.get(&(expected.ifindex, ip(peer))),
                Some(&expected.peer_mac),
                "{peer} in {neighbours:?}"
            );
        }

        for off_link in ["10.78.0.2", "fd00:78::2"] {
            let err = resolver
                .resolve(ip(off_link), Duration::from_secs(1))
                .await
                .expect_err(off_link);
            assert!(
                matches!(&err, NextHopError::NotConnected { addr, interfaces }
                    if *addr == ip(off_link) && interfaces == &[NODE_IF.to_owned()]),
                "{err:?}"
            );
            assert!(err.to_string().contains("[lbnh0]"), "{err}");
        }

        let err = resolver
            .resolve(ip(NODE_V4), Duration::from_secs(1))
            .await
            .expect_err("own address");
        assert!(matches!(err, NextHopError::LocalAddress { .. }), "{err:?}");

        let timeout = Duration::from_millis(300);
        for absent in ["10.77.0.99", "fd00:77::99"] {
            let start = std::time::Instant::now();
            let err = resolver
                .resolve(ip(absent), timeout)
                .await
                .expect_err(absent);
            let took = start.elapsed();
            assert!(
                matches!(&err, NextHopError::Unresolved { addr, ifname, waited }
                    if *addr == ip(absent) && ifname == NODE_IF && *waited >= timeout),
                "{err:?}"
            );
            assert!(
                took >= timeout && took < timeout + Duration::from_secs(2),
                "{absent}: took {took:?}"
            );
            assert!(
                !resolver
                    .neighbours()
                    .await
                    .expect("neighbours")
                    .contains_key(&(expected.ifindex, ip(absent)))
            );
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }
}
