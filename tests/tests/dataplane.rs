//! End-to-end: the real XDP program in a network-namespace lab, real TCP
//! clients and servers, direct server return.

use std::{fmt::Write as _, net::IpAddr};

use anyhow::Result;
use lb_tests::{
    BurstOpts, HoldSession, Lab,
    balancer::{
        Balancer, LAB_SEED, PoolMember, attach_peer_pass, burst_to_vip, predict_flow, predict_table,
    },
    require_root, run_burst, run_udp,
};

const SERVER: &str = env!("CARGO_BIN_EXE_lab-server");
const CLIENT: &str = env!("CARGO_BIN_EXE_lab-client");
const PORT: u16 = 80;

/// A server entry of a lab config.
struct Srv<'a> {
    name: &'a str,
    addr: IpAddr,
    weight: u32,
    state: &'a str,
    services: &'a [&'a str],
}

fn config(
    lab: &Lab,
    interfaces: &[&str],
    table_size: u32,
    servers: &[Srv<'_>],
    extra: &str,
) -> String {
    let mut c = String::new();
    let ifs: Vec<String> = interfaces.iter().map(|i| format!("\"{i}\"")).collect();
    writeln!(
        c,
        "[node]\ninterfaces = [{}]\npin_dir = \"{{pin_dir}}\"\nsocket = \"{{socket}}\"\nhash_seed = {LAB_SEED}\n{extra}",
        ifs.join(", ")
    )
    .ok();
    writeln!(
        c,
        "[limits]\nmax_services = 8\nmax_backends = 64\nflow_table_size = 65536\n"
    )
    .ok();
    for (name, vip) in [
        ("web", lab.vip4().to_string()),
        ("web6", lab.vip6().to_string()),
    ] {
        writeln!(
            c,
            "[[service]]\nname = \"{name}\"\nvip = \"{vip}\"\nport = {PORT}\ntable_size = {table_size}\n"
        )
        .ok();
    }
    writeln!(
        c,
        "[[service]]\nname = \"dns\"\nvip = \"{}\"\nport = 53\nprotocol = \"udp\"\ntable_size = {table_size}\n",
        lab.vip4()
    )
    .ok();
    for s in servers {
        let svcs: Vec<String> = s.services.iter().map(|x| format!("\"{x}\"")).collect();
        writeln!(
            c,
            "[[server]]\nname = \"{}\"\naddress = \"{}\"\nweight = {}\nstate = \"{}\"\nservices = [{}]\n",
            s.name,
            s.addr,
            s.weight,
            s.state,
            svcs.join(", ")
        )
        .ok();
    }
    c
}

fn v4_servers<'a>(
    lab: &Lab,
    weights: &[u32],
    states: &[&'a str],
) -> Vec<(String, IpAddr, u32, &'a str)> {
    lab.servers
        .iter()
        .zip(weights)
        .zip(states)
        .map(|((h, w), st)| (h.name.clone(), IpAddr::V4(h.eth0.v4), *w, *st))
        .collect()
}

fn srv_list<'a>(
    list: &'a [(String, IpAddr, u32, &'a str)],
    services: &'a [&'a str],
) -> Vec<Srv<'a>> {
    list.iter()
        .map(|(n, a, w, st)| Srv {
            name: n,
            addr: *a,
            weight: *w,
            state: st,
            services,
        })
        .collect()
}

fn pool_members(list: &[(String, IpAddr, u32, &str)]) -> Vec<PoolMember> {
    list.iter()
        .map(|(n, a, w, _)| PoolMember {
            name: n.clone(),
            address: *a,
            weight: *w,
        })
        .collect()
}

/// How many held connections sit in cells that `table` gives to another
/// server than the one they reached (must be some, or the test proves
/// nothing).
fn moved_cells(lab: &Lab, table: &[Option<String>], hold: &HoldSession) -> usize {
    let client = IpAddr::V4(lab.client.eth0.v4);
    let vip = IpAddr::V4(lab.vip4());
    let moved = hold
        .conns
        .iter()
        .filter(|c| predict_flow(table, client, c.port, vip, PORT) != c.server)
        .count();
    assert!(moved > 0, "the new pool must move some held flows' cells");
    moved
}

/// New connections from known source ports land where `table` says.
fn assert_new_flows_follow(lab: &Lab, table: &[Option<String>], first_port: u16) -> Result<()> {
    let client = IpAddr::V4(lab.client.eth0.v4);
    let vip = IpAddr::V4(lab.vip4());
    let burst = run_burst(
        &lab.client.ns,
        CLIENT,
        &BurstOpts::new(lab.vip4_addr(PORT), 200).src_port_start(first_port),
    )?;
    assert_eq!(burst.failed, 0, "{:?}", burst.errors);
    for (port, server) in &burst.by_port {
        let want = predict_flow(table, client, *port, vip, PORT);
        assert_eq!(Some(server.clone()), want, "new flow from port {port}");
    }
    Ok(())
}

fn lab_with_servers(n: usize, second_port: bool) -> Result<Lab> {
    let mut lab = Lab::builder().servers(n).second_port(second_port).build()?;
    lab.start_servers(SERVER, &[PORT], &[53])?;
    attach_peer_pass(&mut lab)?;
    Ok(lab)
}

#[test]
fn weighted_spread_direct_return_and_host_traffic() -> Result<()> {
    if !require_root("weighted_spread_direct_return_and_host_traffic") {
        return Ok(());
    }
    let lab = lab_with_servers(3, false)?;
    let list = v4_servers(&lab, &[1, 2, 3], &["allocated"; 3]);
    let servers = srv_list(&list, &["web", "dns"]);
    let bal = Balancer::start(&lab, &config(&lab, &["eth0"], 65537, &servers, ""))?;

    let report = run_burst(
        &lab.client.ns,
        CLIENT,
        &BurstOpts::new(lab.vip4_addr(PORT), 3000).concurrency(16),
    )?;
    assert_eq!(report.failed, 0, "failed connections: {:?}", report.errors);
    assert_eq!(report.ok, 3000);
    for (name, weight) in [("s1", 1.0), ("s2", 2.0), ("s3", 3.0)] {
        let got = *report.by_server.get(name).unwrap_or(&0) as f64 / 3000.0;
        let want = weight / 6.0;
        assert!(
            (got - want).abs() <= 0.03,
            "{name}: {:.3} of connections, want {want:.3} ± 0.03 ({:?})",
            got,
            report.by_server
        );
    }

    // Direct server return: the node forwards only client → VIP; it has no
    // route back and does not forward, so every reply went server → client.
    let forwarding = lab.node.ns.read_sysctl("net.ipv4.ip_forward")?;
    assert_eq!(forwarding.trim(), "0");
    assert!(
        bal.counter("tx")? >= 3000 * 3,
        "every connection sends ≥ 3 packets through XDP_TX"
    );
    assert_eq!(bal.counter("drop")?, 0);
    assert_eq!(bal.counter("error")?, 0);
    // 3000 flows in a 65536-flow table: no set overflows.
    assert_eq!(bal.counter("flow_evicted")?, 0);

    // UDP to the same VIP, another service.
    let udp = run_udp(
        &lab.client.ns,
        CLIENT,
        &BurstOpts::new(lab.vip4_addr(53), 200),
    )?;
    assert_eq!(udp.failed, 0, "{:?}", udp.errors);
    assert_eq!(udp.by_server.len(), 3, "{:?}", udp.by_server);

    // The node's own TCP service keeps working with the program attached.
    let node_addr = std::net::SocketAddr::new(IpAddr::V4(lab.node.eth0.v4), 8080);
    let own =
        lb_tests::start_lab_server(&lab.node.ns, SERVER, "node-self", &[node_addr], &[], &[])?;
    let r = run_burst(&lab.client.ns, CLIENT, &BurstOpts::new(node_addr, 50))?;
    drop(own);
    assert_eq!(r.ok, 50, "{:?}", r.errors);
    assert_eq!(r.by_server.get("node-self"), Some(&50));
    assert!(bal.counter("pass")? > 0);
    Ok(())
}

#[test]
fn ipv6_vip() -> Result<()> {
    if !require_root("ipv6_vip") {
        return Ok(());
    }
    let lab = lab_with_servers(2, false)?;
    let list: Vec<(String, IpAddr, u32, &str)> = lab
        .servers
        .iter()
        .map(|h| (h.name.clone(), IpAddr::V6(h.eth0.v6), 1, "allocated"))
        .collect();
    let servers = srv_list(&list, &["web6"]);
    let _bal = Balancer::start(&lab, &config(&lab, &["eth0"], 65537, &servers, ""))?;
    let report = run_burst(
        &lab.client.ns,
        CLIENT,
        &BurstOpts::new(lab.vip6_addr(PORT), 400),
    )?;
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert_eq!(report.by_server.len(), 2, "{:?}", report.by_server);
    Ok(())
}

#[test]
fn server_behind_second_port_via_redirect() -> Result<()> {
    if !require_root("server_behind_second_port_via_redirect") {
        return Ok(());
    }
    let lab = lab_with_servers(1, true)?;
    let r1 = lab
        .redirect_server
        .as_ref()
        .expect("second port lab has r1");
    let list = vec![("r1".to_string(), IpAddr::V4(r1.eth0.v4), 1, "allocated")];
    let servers = srv_list(&list, &["web"]);
    let bal = Balancer::start(&lab, &config(&lab, &["eth0", "eth1"], 65537, &servers, ""))?;
    let report = burst_to_vip(&lab, PORT, 100)?;
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert_eq!(report.by_server.get("r1"), Some(&100));
    assert!(bal.counter("redirect")? >= 300, "XDP_REDIRECT used");
    Ok(())
}

#[test]
fn pool_changes_keep_established_and_draining_gets_no_new_flows() -> Result<()> {
    if !require_root("pool_changes_keep_established_and_draining_gets_no_new_flows") {
        return Ok(());
    }
    let lab = lab_with_servers(3, false)?;
    let two = v4_servers(&lab, &[1, 1], &["allocated"; 2]);
    let bal = Balancer::start(
        &lab,
        &config(&lab, &["eth0"], 65537, &srv_list(&two, &["web"]), ""),
    )?;

    let mut hold = HoldSession::start(&lab.client.ns, CLIENT, lab.vip4_addr(PORT), 40, 20000)?;
    let first: Vec<Option<String>> = hold.conns.iter().map(|c| c.server.clone()).collect();
    assert!(first.iter().all(Option::is_some), "{:?}", hold.conns);

    // Add s3: existing connections stay where they are.
    let three = v4_servers(&lab, &[1, 1, 1], &["allocated"; 3]);
    bal.reload(&config(
        &lab,
        &["eth0"],
        65537,
        &srv_list(&three, &["web"]),
        "",
    ))?;
    let ping = hold.ping()?;
    assert_eq!(ping.dead, 0, "{ping:?}");
    assert_eq!(ping.servers, first);

    // Remove s2 (down: its flows are re-hashed, they die); the others live on.
    let without_s2 = v4_servers(&lab, &[1, 1, 1], &["allocated", "down", "allocated"]);
    bal.reload(&config(
        &lab,
        &["eth0"],
        65537,
        &srv_list(&without_s2, &["web"]),
        "",
    ))?;
    let ping = hold.ping()?;
    for (i, server) in first.iter().enumerate() {
        if server.as_deref() != Some("s2") {
            assert_eq!(ping.servers[i], *server, "connection {i} moved: {ping:?}");
        }
    }

    // Drain s1: its connections live, new ones avoid it.
    let draining = v4_servers(&lab, &[1, 1, 1], &["draining", "down", "allocated"]);
    bal.reload(&config(
        &lab,
        &["eth0"],
        65537,
        &srv_list(&draining, &["web"]),
        "",
    ))?;
    let ping = hold.ping()?;
    for (i, server) in first.iter().enumerate() {
        if server.as_deref() == Some("s1") {
            assert_eq!(
                ping.servers[i].as_deref(),
                Some("s1"),
                "draining s1 lost connection {i}"
            );
        }
    }
    let burst = burst_to_vip(&lab, PORT, 300)?;
    assert_eq!(burst.failed, 0, "{:?}", burst.errors);
    assert_eq!(
        burst.by_server.get("s1"),
        None,
        "draining server got new flows: {:?}",
        burst.by_server
    );
    assert_eq!(burst.by_server.get("s3"), Some(&300));
    hold.quit()?;
    Ok(())
}

#[test]
fn restart_keeps_program_and_flows() -> Result<()> {
    if !require_root("restart_keeps_program_and_flows") {
        return Ok(());
    }
    let lab = lab_with_servers(3, false)?;
    let two = v4_servers(&lab, &[1, 1], &["allocated"; 2]);
    let mut bal = Balancer::start(
        &lab,
        &config(&lab, &["eth0"], 251, &srv_list(&two, &["web"]), ""),
    )?;
    let id_before = Balancer::attached_program_id(&lab.node.ns, "eth0")?;
    assert!(id_before.is_some());

    let mut hold = HoldSession::start(&lab.client.ns, CLIENT, lab.vip4_addr(PORT), 30, 21000)?;
    let first: Vec<Option<String>> = hold.conns.iter().map(|c| c.server.clone()).collect();

    bal.kill9()?;
    assert_eq!(
        Balancer::attached_program_id(&lab.node.ns, "eth0")?,
        id_before
    );
    let ping = hold.ping()?;
    assert_eq!(
        ping.dead, 0,
        "traffic stopped while the daemon was down: {ping:?}"
    );
    let down = burst_to_vip(&lab, PORT, 50)?;
    assert_eq!(down.failed, 0, "{:?}", down.errors);

    // Change the pool while it is down so held flows' cells change owner.
    let three = v4_servers(&lab, &[1, 1, 4], &["allocated"; 3]);
    let new_table = predict_table(&pool_members(&three), 251)?;
    let moved = moved_cells(&lab, &new_table, &hold);
    bal.write_config(&config(
        &lab,
        &["eth0"],
        251,
        &srv_list(&three, &["web"]),
        "",
    ))?;
    bal.launch()?;

    assert_eq!(
        Balancer::attached_program_id(&lab.node.ns, "eth0")?,
        id_before,
        "program replaced on restart"
    );
    let ping = hold.ping()?;
    assert_eq!(ping.dead, 0, "{ping:?}");
    assert_eq!(
        ping.servers, first,
        "{moved} held flows' cells moved; the flows must not"
    );

    assert_new_flows_follow(&lab, &new_table, 22000)?;

    // A new hash seed moves every flow's Maglev cell and flow-table set: the
    // program is replaced, the held flows' entries move to their new sets
    // and the flows stay where they are.
    bal.kill9()?;
    let reseeded = config(&lab, &["eth0"], 251, &srv_list(&three, &["web"]), "").replace(
        &format!("hash_seed = {LAB_SEED}"),
        &format!("hash_seed = {}", LAB_SEED ^ 0x5eed),
    );
    bal.write_config(&reseeded)?;
    bal.launch()?;
    let status = bal.lbctl(&["status"])?;
    assert_eq!(status["adoption"], "replaced", "{status}");
    let ping = hold.ping()?;
    assert_eq!(ping.dead, 0, "{ping:?}");
    assert_eq!(ping.servers, first, "held flows must survive a seed change");
    let burst = burst_to_vip(&lab, PORT, 50)?;
    assert_eq!(burst.failed, 0, "{:?}", burst.errors);
    hold.quit()?;
    Ok(())
}

/// (connections ok, failed, rounds with their start and end).
type TrafficLog = (
    u64,
    u64,
    Vec<(
        std::time::Instant,
        std::time::Instant,
        lb_tests::BurstReport,
    )>,
);

/// Under continuous traffic, switch 1000 times between three pools that
/// reuse backend indexes for different servers and differ in table size.
/// Every connection must land on its flow's owner under one of the pools in
/// force while it ran, none may fail, and nothing may be dropped.
#[test]
fn atomic_pool_switches_under_traffic() -> Result<()> {
    if !require_root("atomic_pool_switches_under_traffic") {
        return Ok(());
    }
    use std::{
        sync::{
            Arc, Mutex,
            atomic::{AtomicBool, Ordering},
        },
        time::Instant,
    };
    let lab = lab_with_servers(6, false)?;
    let all: Vec<(String, IpAddr)> = lab
        .servers
        .iter()
        .map(|h| (h.name.clone(), IpAddr::V4(h.eth0.v4)))
        .collect();
    // Pool k: servers 2k and 2k+1, table size sizes[k].
    let sizes = [251u32, 257, 263];
    let pool_config = |k: usize| -> String {
        let list: Vec<(String, IpAddr, u32, &str)> = all
            .iter()
            .enumerate()
            .map(|(i, (n, a))| {
                (
                    n.clone(),
                    *a,
                    1,
                    if i / 2 == k { "allocated" } else { "free" },
                )
            })
            .collect();
        config(&lab, &["eth0"], sizes[k], &srv_list(&list, &["web"]), "")
            .replace("max_backends = 64", "max_backends = 4")
    };
    let tables: Vec<Vec<Option<String>>> = (0..3)
        .map(|k| {
            let members: Vec<PoolMember> = all[2 * k..2 * k + 2]
                .iter()
                .map(|(n, a)| PoolMember {
                    name: n.clone(),
                    address: *a,
                    weight: 1,
                })
                .collect();
            predict_table(&members, sizes[k])
        })
        .collect::<Result<_>>()?;
    let bal = Balancer::start(&lab, &pool_config(0))?;

    // Pool history: (time it took effect, pool).
    let history = Arc::new(Mutex::new(vec![(Instant::now(), 0usize)]));
    let stop = Arc::new(AtomicBool::new(false));
    let client = IpAddr::V4(lab.client.eth0.v4);
    let vip = IpAddr::V4(lab.vip4());
    let target = lab.vip4_addr(PORT);
    let ns_name = lab.client.ns.name().to_string();
    let traffic = {
        let stop = stop.clone();
        std::thread::spawn(move || -> Result<TrafficLog> {
            let mut rounds = Vec::new();
            let (mut ok, mut failed) = (0, 0);
            let mut port = 10000u16;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let out = std::process::Command::new("nsenter")
                    .arg(format!("--net=/var/run/netns/{ns_name}"))
                    .args([
                        "--",
                        CLIENT,
                        "burst",
                        "--target",
                        &target.to_string(),
                        "--count",
                        "200",
                        "--concurrency",
                        "8",
                        "--timeout-ms",
                        "3000",
                        "--src-port-start",
                        &port.to_string(),
                    ])
                    .output()?;
                let report: lb_tests::BurstReport = serde_json::from_slice(&out.stdout)?;
                ok += report.ok;
                failed += report.failed;
                rounds.push((started, Instant::now(), report));
                port = if port > 30000 { 10000 } else { port + 200 };
            }
            Ok((ok, failed, rounds))
        })
    };

    let switches = 1000;
    let mut reused = 0;
    for i in 1..=switches {
        let k = i % 3;
        let report = bal.reload(&pool_config(k))?;
        reused += report["backends_reused"].as_u64().unwrap_or(0);
        history
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .push((Instant::now(), k));
    }
    stop.store(true, Ordering::Relaxed);
    let (ok, failed, rounds) = traffic
        .join()
        .map_err(|_| anyhow::anyhow!("traffic thread panicked"))??;
    let history = history
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();

    assert_eq!(failed, 0, "connections failed during pool switches");
    assert!(ok > 1000, "too little traffic during the switches: {ok}");
    let mut checked = 0;
    for (start, end, report) in &rounds {
        // Pools in force at any time during this round (the one before it
        // started included: the reload ack comes after the flip).
        let first = history.iter().rposition(|(t, _)| t <= start).unwrap_or(0);
        let last = history.iter().rposition(|(t, _)| t <= end).unwrap_or(0);
        let pools: Vec<usize> = history
            [first.saturating_sub(1)..=(last + 1).min(history.len() - 1)]
            .iter()
            .map(|(_, k)| *k)
            .collect();
        for (port, server) in &report.by_port {
            let owners: Vec<Option<String>> = pools
                .iter()
                .map(|k| predict_flow(&tables[*k], client, *port, vip, PORT))
                .collect();
            assert!(
                owners.contains(&Some(server.clone())),
                "port {port} reached {server}; owners under pools {pools:?} are {owners:?}"
            );
            checked += 1;
        }
    }
    assert!(checked > 1000);
    assert!(
        reused >= switches as u64,
        "indexes must be reused for other servers ({reused} reuses)"
    );
    assert_eq!(bal.counter("drop")?, 0);
    assert_eq!(bal.counter("error")?, 0);
    eprintln!("{switches} switches, {ok} connections checked against lb-common, 0 failed");
    Ok(())
}

/// A node running the first release's build (older flow-entry layout) is
/// upgraded to this build while connections are open: the program is
/// replaced in place through its pinned link and the flow table migrated,
/// so connections whose Maglev cells changed owner keep their server.
#[test]
fn upgrade_migrates_flow_table() -> Result<()> {
    if !require_root("upgrade_migrates_flow_table") {
        return Ok(());
    }
    let legacy = lb_control::node::dataplane::LEGACY_PROGRAM_PATH;
    assert!(
        std::path::Path::new(legacy).exists(),
        "legacy XDP object missing at {legacy}; lb-control's build script builds it"
    );
    let lab = lab_with_servers(3, false)?;
    let two = v4_servers(&lab, &[1, 1], &["allocated"; 2]);
    let old_build = format!("program = \"{legacy}\"\n");
    let mut bal = Balancer::start(
        &lab,
        &config(&lab, &["eth0"], 251, &srv_list(&two, &["web"]), &old_build),
    )?;
    let id_old = Balancer::attached_program_id(&lab.node.ns, "eth0")?;
    let mut hold = HoldSession::start(&lab.client.ns, CLIENT, lab.vip4_addr(PORT), 30, 24000)?;
    let first: Vec<Option<String>> = hold.conns.iter().map(|c| c.server.clone()).collect();

    let three = v4_servers(&lab, &[1, 1, 4], &["allocated"; 3]);
    let table = predict_table(&pool_members(&three), 251)?;
    let moved = moved_cells(&lab, &table, &hold);

    bal.kill9()?;
    bal.write_config(&config(
        &lab,
        &["eth0"],
        251,
        &srv_list(&three, &["web"]),
        "",
    ))?;
    bal.launch()?;
    let id_new = Balancer::attached_program_id(&lab.node.ns, "eth0")?;
    assert_ne!(id_new, id_old, "the new build must replace the old program");
    let status = bal.lbctl(&["status"])?;
    assert_eq!(status["adoption"], "replaced", "{status}");

    let ping = hold.ping()?;
    assert_eq!(ping.dead, 0, "{ping:?}");
    assert_eq!(
        ping.servers, first,
        "{moved} connections' cells moved; their flows must not"
    );
    assert_new_flows_follow(&lab, &table, 25000)?;
    hold.quit()?;
    Ok(())
}

/// SIGHUP and `lbctl config reload` apply a good file and refuse a bad one
/// without touching the running state.
#[test]
fn reload_refuses_bad_config() -> Result<()> {
    if !require_root("reload_refuses_bad_config") {
        return Ok(());
    }
    let lab = lab_with_servers(2, false)?;
    let one = v4_servers(&lab, &[1, 0], &["allocated", "free"]);
    let bal = Balancer::start(
        &lab,
        &config(&lab, &["eth0"], 65537, &srv_list(&one, &["web"]), ""),
    )?;
    let good = config(&lab, &["eth0"], 65537, &srv_list(&one, &["web"]), "");

    bal.write_config(&good.replace("weight = 1", "wieght = 1"))?;
    let err = bal
        .lbctl(&["config", "reload"])
        .expect_err("bad config must be refused");
    assert!(err.to_string().contains("wieght"), "{err}");
    // A script reads the same refusal from the socket, with a stable kind.
    let refused = bal.request(r#"{"request":"reload"}"#)?;
    assert_eq!(refused["response"], "error", "{refused}");
    assert_eq!(refused["kind"], "invalid_config", "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .is_some_and(|m| m.contains("wieght")),
        "{refused}"
    );
    let unknown = bal.request(r#"{"request":"no_such_request"}"#)?;
    assert_eq!(unknown["kind"], "bad_request", "{unknown}");
    let burst = burst_to_vip(&lab, PORT, 50)?;
    assert_eq!(
        burst.by_server.get("s1"),
        Some(&50),
        "still serving the good config"
    );

    // Both servers by SIGHUP.
    let both = v4_servers(&lab, &[1, 1], &["allocated", "allocated"]);
    bal.write_config(&config(
        &lab,
        &["eth0"],
        65537,
        &srv_list(&both, &["web"]),
        "",
    ))?;
    let pid = bal.process.as_ref().map(|p| p.pid()).unwrap_or_default();
    // SAFETY: signalling our own child by pid.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGHUP) }, 0);
    assert!(lb_tests::balancer::wait_until(
        std::time::Duration::from_secs(10),
        || {
            bal.lbctl(&["server", "list"]).is_ok_and(|v| {
                v["servers"].as_array().is_some_and(|a| {
                    a.iter()
                        .all(|s| s["services"].as_array().is_some_and(|x| !x.is_empty()))
                })
            })
        }
    ));
    let burst = burst_to_vip(&lab, PORT, 200)?;
    assert_eq!(burst.by_server.len(), 2, "{:?}", burst.by_server);
    Ok(())
}

/// A server whose MAC changes (new NIC, failover) is re-programmed from the
/// node's neighbour table without any config change.
#[test]
fn follows_neighbour_table_changes() -> Result<()> {
    if !require_root("follows_neighbour_table_changes") {
        return Ok(());
    }
    let lab = lab_with_servers(1, false)?;
    let one = v4_servers(&lab, &[1], &["allocated"]);
    let bal = Balancer::start(
        &lab,
        &config(&lab, &["eth0"], 65537, &srv_list(&one, &["web"]), ""),
    )?;
    let burst = burst_to_vip(&lab, PORT, 20)?;
    assert_eq!(burst.ok, 20, "{:?}", burst.errors);

    // New MAC on s1; it announces itself (gratuitous ARP updates the node's
    // existing neighbour entry).
    let s1 = &lab.servers[0];
    s1.ns.sysctl("net.ipv4.conf.eth0.arp_notify", "1")?;
    s1.ns.exec(&[
        "ip",
        "link",
        "set",
        "dev",
        "eth0",
        "address",
        "02:1b:00:00:99:01",
    ])?;
    s1.ns.exec(&["ip", "link", "set", "dev", "eth0", "down"])?;
    s1.ns.exec(&["ip", "link", "set", "dev", "eth0", "up"])?;
    let moved = lb_tests::balancer::wait_until(std::time::Duration::from_secs(15), || {
        bal.lbctl(&["server", "list"]).is_ok_and(|v| {
            v["servers"][0]["services"][0]["mac"].as_str() == Some("02:1b:00:00:99:01")
        })
    });
    assert!(moved, "the node did not follow the server's new MAC");
    let burst = burst_to_vip(&lab, PORT, 20)?;
    assert_eq!(burst.ok, 20, "{:?}", burst.errors);
    Ok(())
}

/// Pinned maps of another size than the config asks for: the restart is
/// refused with a message that says what to do, and the running program is
/// left alone.
#[test]
fn restart_with_other_limits_is_refused() -> Result<()> {
    if !require_root("restart_with_other_limits_is_refused") {
        return Ok(());
    }
    let lab = lab_with_servers(1, false)?;
    let one = v4_servers(&lab, &[1], &["allocated"]);
    let text = config(&lab, &["eth0"], 65537, &srv_list(&one, &["web"]), "");
    let mut bal = Balancer::start(&lab, &text)?;
    let id = Balancer::attached_program_id(&lab.node.ns, "eth0")?;
    bal.kill9()?;
    bal.write_config(&text.replace("max_services = 8", "max_services = 16"))?;
    let err = bal.launch().expect_err("must refuse");
    let msg = format!("{err:#}");
    assert!(msg.contains("SERVICES") && msg.contains("detach"), "{msg}");
    assert_eq!(Balancer::attached_program_id(&lab.node.ns, "eth0")?, id);
    let burst = burst_to_vip(&lab, PORT, 20)?;
    assert_eq!(burst.ok, 20, "still serving: {:?}", burst.errors);
    Ok(())
}
