//! Tests of the lab harness itself, without the balancer: the client
//! reaches the servers directly (or through the node's IP forwarding).

use std::net::SocketAddr;

use lb_tests::lab::{self, IfConfig, Netns};
use lb_tests::{BurstOpts, HoldSession, Lab, require_root, run_burst, run_udp};

const SERVER: &str = env!("CARGO_BIN_EXE_lab-server");
const CLIENT: &str = env!("CARGO_BIN_EXE_lab-client");

#[test]
fn direct_burst_udp_and_hold() {
    if !require_root("direct_burst_udp_and_hold") {
        return;
    }
    let mut lab = Lab::builder()
        .servers(1)
        .client_direct_to_server(0)
        .build()
        .expect("build lab");
    lab.start_servers(SERVER, &[80], &[53])
        .expect("start servers");
    let client = &lab.client.ns;

    // The harness turned tx checksum offload off on the client.
    assert!(!lab::tx_offload_enabled(client, "eth0").unwrap());

    for target in [lab.vip4_addr(80), lab.vip6_addr(80)] {
        let r = run_burst(client, CLIENT, &BurstOpts::new(target, 20)).unwrap();
        assert_eq!((r.ok, r.failed), (20, 0), "burst to {target}: {r:?}");
        assert_eq!(r.by_server.get("s1"), Some(&20), "{r:?}");
    }

    // Explicit source ports, twice in a row (RST close frees them at once).
    for _ in 0..2 {
        let opts = BurstOpts::new(lab.vip4_addr(80), 10).src_port_start(20000);
        let r = run_burst(client, CLIENT, &opts).unwrap();
        assert_eq!(r.ok, 10, "{r:?}");
        assert_eq!(
            r.by_port.keys().copied().collect::<Vec<_>>(),
            (20000..20010).collect::<Vec<_>>()
        );
    }

    for target in [lab.vip4_addr(53), lab.vip6_addr(53)] {
        let r = run_udp(client, CLIENT, &BurstOpts::new(target, 10)).unwrap();
        assert_eq!((r.ok, r.failed), (10, 0), "udp to {target}: {r:?}");
        assert_eq!(r.by_server.get("s1"), Some(&10), "{r:?}");
    }

    let mut hold = HoldSession::start(client, CLIENT, lab.vip6_addr(80), 5, 21000).unwrap();
    assert_eq!(hold.conns.len(), 5);
    assert!(
        hold.conns.iter().all(|c| c.server.as_deref() == Some("s1")),
        "{:?}",
        hold.conns
    );
    assert_eq!(hold.conns[4].port, 21004);
    let ping = hold.ping().unwrap();
    assert_eq!((ping.alive, ping.dead), (5, 0), "{ping:?}");
    assert_eq!(ping.servers, vec![Some("s1".to_owned()); 5]);

    // Killing the server kills the connections.
    assert_eq!(lab.stop_process("s1"), 1);
    let ping = hold.ping().unwrap();
    assert_eq!((ping.alive, ping.dead), (0, 5), "{ping:?}");
    hold.quit().unwrap();
}

#[test]
fn standard_topology_and_second_port() {
    if !require_root("standard_topology_and_second_port") {
        return;
    }
    let mut lab = Lab::builder()
        .servers(2)
        .vip_count(2)
        .second_port(true)
        .build()
        .unwrap();
    let id = lab.id;
    assert_eq!(lab.node.eth0.v4.to_string(), format!("10.{id}.0.1"));
    assert_eq!(lab.node.eth0.v6.to_string(), format!("fd00:{id}::1"));
    assert_eq!(lab.client.eth0.v4.to_string(), format!("10.{id}.0.2"));
    assert_eq!(lab.servers[1].eth0.v4.to_string(), format!("10.{id}.0.12"));
    assert_eq!(lab.vips_v6[1].to_string(), format!("fd00:{id}:100::2"));
    let eth1 = lab.node.eth1.as_ref().expect("node eth1");
    assert_eq!(eth1.v4.to_string(), format!("10.{id}.1.1"));
    let r1 = lab.redirect_server.as_ref().expect("r1");
    assert_eq!(r1.eth0.v6.to_string(), format!("fd00:{id}:1::11"));
    assert_eq!(
        lab::link_info(&lab.node.ns, "eth1").unwrap().ifindex,
        eth1.ifindex
    );
    assert_eq!(lab::link_info(&r1.ns, "eth0").unwrap().mac, r1.eth0.mac);
    assert_eq!(lab.node.eth0.port.netns, lab.switch.name());

    // Client→VIP goes via the node.
    for vip in [lab.vip4().to_string(), lab.vip6().to_string()] {
        let route = lab
            .client
            .ns
            .exec_stdout(&["ip", "route", "get", &vip])
            .unwrap();
        let node = if vip.contains(':') {
            lab.node.eth0.v6.to_string()
        } else {
            lab.node.eth0.v4.to_string()
        };
        assert!(route.contains(&format!("via {node} ")), "{route}");
    }
    // Servers ignore ARP for the VIP.
    assert_eq!(
        lab.servers[0]
            .ns
            .read_sysctl("net.ipv4.conf.eth0.arp_ignore")
            .unwrap(),
        "1"
    );

    // r1's own address is reachable through the node's forwarding, which is
    // the path r1's replies take.
    let r1_addrs: Vec<SocketAddr> = vec![
        SocketAddr::new(r1.eth0.v4.into(), 8080),
        SocketAddr::new(r1.eth0.v6.into(), 8080),
    ];
    let server = lb_tests::start_lab_server(&r1.ns, SERVER, "r1", &r1_addrs, &[], &[]).unwrap();
    lab.adopt("r1-direct", server);
    for target in r1_addrs {
        let r = run_burst(&lab.client.ns, CLIENT, &BurstOpts::new(target, 5)).unwrap();
        assert_eq!(r.by_server.get("r1"), Some(&5), "{target}: {r:?}");
    }
}

#[test]
fn netns_veth_and_cleanup() {
    if !require_root("netns_veth_and_cleanup") {
        return;
    }
    let (a_name, b_name);
    {
        let a = Netns::new("ta").unwrap();
        let b = Netns::new("tb").unwrap();
        a_name = a.name().to_owned();
        b_name = b.name().to_owned();
        let mac: lb_tests::MacAddr = "02:00:00:00:00:0a".parse().unwrap();
        let (ea, eb) = lab::veth(
            &a,
            &IfConfig::new("eth0")
                .mac(mac)
                .addr("192.168.77.1".parse::<std::net::IpAddr>().unwrap(), 24),
            &b,
            &IfConfig::new("eth0").addr("192.168.77.2".parse::<std::net::IpAddr>().unwrap(), 24),
        )
        .unwrap();
        assert_eq!(ea.mac, mac);
        assert_eq!(eb.name, "eth0");
        assert!(a.exec(&["false"]).is_err());
        let err = a.exec(&["ip", "link", "show", "nope0"]).unwrap_err();
        assert!(format!("{err:#}").contains("nope0"), "{err:#}");

        let server = a
            .spawn(&[SERVER, "--name", "a", "--listen", "192.168.77.1:7"])
            .unwrap();
        let mut server = server;
        server
            .wait_for_line("ready", std::time::Duration::from_secs(5))
            .unwrap();
        let r = run_burst(
            &b,
            CLIENT,
            &BurstOpts::new("192.168.77.1:7".parse().unwrap(), 3),
        )
        .unwrap();
        assert_eq!(r.by_server.get("a"), Some(&3), "{r:?}");
        // A bridge in its own namespace, with `a` plugged in as eth1.
        let sw = lab::Bridge::new_switch("tsw", "br0").unwrap();
        let sw_name = sw.netns_name().to_owned();
        let (end, port) = lab::veth_to_bridge(&a, &IfConfig::new("eth1"), &sw, "a1").unwrap();
        assert_eq!((end.name.as_str(), end.netns.as_str()), ("eth1", a.name()));
        assert_eq!(
            (port.name.as_str(), port.netns.as_str()),
            ("a1", sw_name.as_str())
        );
        drop(sw);
        assert!(!Netns::exists(&sw_name));
        // The kernel removes the veth asynchronously (netns cleanup work).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while a.exec(&["ip", "link", "show", "eth1"]).is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "veth outlived the switch"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }

        lab::disable_tx_offload(&b, "eth0").unwrap();
        assert!(!lab::tx_offload_enabled(&b, "eth0").unwrap());
        // Dropped in reverse order: server, then b, then a.
    }
    assert!(!Netns::exists(&a_name));
    assert!(!Netns::exists(&b_name));
}
