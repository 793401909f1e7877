//! Reports built from a fixture `/proc` tree.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use lb_proto::{Health, HealthState};
use tokio::sync::watch;

use super::*;

fn write(root: &Path, relative: &str, contents: &str) {
    let path = root.join(relative);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, contents).expect("write");
}

fn stat(busy: u64, idle: u64) -> String {
    format!(
        "cpu  {busy} 0 0 {idle} 0 0 0 0 0 0\ncpu0 1 0 0 1 0 0 0 0 0 0\n\
         ctxt 1\nbtime 1\nprocesses 1\n"
    )
}

fn net_dev(rx: u64, tx: u64) -> String {
    format!(
        "Inter-|   Receive                            |  Transmit\n \
         face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets\n    \
         lo: 100 1 0 0 0 0 0 0 100 1 0 0 0 0 0 0\n  \
         eth0: {rx} 10 0 0 0 0 0 0 {tx} 10 0 0 0 0 0 0\n"
    )
}

/// One `/proc/net/tcp` line (addresses in host byte order, as the kernel
/// prints them).
fn tcp_line(local: (Ipv4Addr, u16), remote: (Ipv4Addr, u16), state: u8) -> String {
    let addr =
        |(ip, port): (Ipv4Addr, u16)| format!("{:08X}:{port:04X}", u32::from_ne_bytes(ip.octets()));
    format!(
        "   0: {} {} {state:02X} 00000000:00000000 00:00000000 00000000     0        0 1 1\n",
        addr(local),
        addr(remote)
    )
}

fn fixture(root: &Path) {
    write(root, "proc/stat", &stat(100, 900));
    write(root, "proc/loadavg", "0.50 0.40 0.30 1/100 999\n");
    write(
        root,
        "proc/meminfo",
        &format!(
            "MemTotal: 1000 kB\nMemFree: 100 kB\nMemAvailable: 600 kB\nBuffers: 0 kB\n\
             Cached: 0 kB\n{}",
            crate::sources::fixture::MEMINFO_REST
        ),
    );
    write(root, "proc/net/dev", &net_dev(1000, 2000));
    let any = Ipv4Addr::UNSPECIFIED;
    let server: Ipv4Addr = "10.0.0.5".parse().expect("ip");
    let vip: Ipv4Addr = "192.0.2.10".parse().expect("ip");
    let client = |n: u8| Ipv4Addr::new(203, 0, 113, n);
    let mut tcp = String::from(
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n",
    );
    for (local, remote, state) in [
        ((any, 80), (any, 0), 0x0A),
        ((any, 8080), (any, 0), 0x0A),
        ((server, 80), (client(7), 50000), 0x01),
        ((vip, 80), (client(8), 50001), 0x01),
        ((vip, 80), (client(9), 50002), 0x01),
        // The agent's probes: from loopback, and from the VIP itself.
        (
            (Ipv4Addr::LOCALHOST, 80),
            (Ipv4Addr::LOCALHOST, 40000),
            0x01,
        ),
        ((vip, 80), (vip, 40001), 0x01),
        // Another port, and a closing connection.
        ((server, 22), (client(1), 50003), 0x01),
        ((server, 80), (client(2), 50004), 0x06),
        ((server, 8080), (client(3), 50005), 0x01),
    ] {
        tcp.push_str(&tcp_line(local, remote, state));
    }
    write(root, "proc/net/tcp", &tcp);
    write(root, "sys/net/ipv4/conf/all/arp_ignore", "1\n");
    write(root, "sys/net/ipv4/conf/all/arp_announce", "2\n");
}

fn config(utilization: &str) -> AgentConfig {
    AgentConfig::parse(
        &format!(
            r#"
            [agent]
            host = "web-1"
            manager = "127.0.0.1:7400"
            tls_dir = "/pki"
            [utilization]
            {utilization}
            [[application]]
            name = "web"
            protocol = "tcp"
            ports = [80]
            vips = ["192.0.2.10"]
            probe = {{ kind = "tcp", port = 80 }}
            connection_capacity = 4
            [[application]]
            name = "api"
            protocol = "tcp"
            ports = [8080]
            probe = {{ kind = "tcp", port = 8080 }}
            connection_capacity = 1
            "#
        ),
        Path::new("agent.toml"),
    )
    .expect("config")
}

/// Monitors whose probes are set by the test; the senders keep them open.
fn monitors(
    config: &AgentConfig,
) -> (
    Vec<ApplicationMonitor>,
    Vec<watch::Sender<Health>>,
    Vec<watch::Sender<bool>>,
) {
    let (mut monitors, mut health_tx, mut vip_tx) = (Vec::new(), Vec::new(), Vec::new());
    for app in &config.applications {
        let (htx, health) = watch::channel(Health {
            state: HealthState::Up,
            rise: app.rise,
            fall: app.fall,
            ok_streak: 5,
            fail_streak: 0,
            detail: None,
        });
        health_tx.push(htx);
        let vip_probes = app
            .vips
            .iter()
            .map(|&vip| {
                let (tx, rx) = watch::channel(true);
                vip_tx.push(tx);
                (vip, rx)
            })
            .collect();
        monitors.push(ApplicationMonitor { health, vip_probes });
    }
    (monitors, health_tx, vip_tx)
}

fn collector(root: &Path, config: AgentConfig) -> (Collector, impl Sized) {
    let (monitors, h, v) = monitors(&config);
    let collector =
        Collector::new(config, root, Sysctl::new(root.join("sys")), monitors).expect("collector");
    (collector, (h, v))
}

#[tokio::test]
async fn report_from_fixture_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    fixture(dir.path());
    let (mut collector, _probes) = collector(dir.path(), config("kind = \"host-cpu\""));
    tokio::time::sleep(Duration::from_millis(20)).await;
    write(dir.path(), "proc/stat", &stat(130, 970));
    write(dir.path(), "proc/net/dev", &net_dev(2000, 4000));
    let report = collector.collect().await.expect("report");

    assert_eq!(report.host, "web-1");
    assert!(report.interval_ms >= 20, "{}", report.interval_ms);
    assert!(report.time_ms > 1_600_000_000_000);
    assert_eq!(report.utilization.source, UtilizationSource::HostCpu);
    assert!(
        (report.utilization.value - 0.3).abs() < 1e-9,
        "{}",
        report.utilization.value
    );
    assert_eq!(report.cpu.host, report.utilization.value);
    assert_eq!(report.cpu.cgroup, None);
    assert_eq!(report.load.one, 0.5);
    assert_eq!(report.memory.total_bytes, 1000 * 1024);
    assert_eq!(report.memory.available_bytes, 600 * 1024);
    assert_eq!(report.nics.len(), 1);
    assert_eq!(report.nics[0].name, "eth0");
    assert!(report.nics[0].tx_bps > report.nics[0].rx_bps);

    let web = &report.applications[0];
    assert_eq!(web.name, "web");
    // Two VIP clients and one on the server address; probes left out.
    assert_eq!((web.established, web.vip_established), (3, 2));
    assert_eq!(web.health.state, HealthState::Up);
    assert_eq!(web.readiness.len(), 1);
    let readiness = &web.readiness[0];
    assert_eq!(readiness.vip, "192.0.2.10".parse::<IpAddr>().expect("ip"));
    assert!(readiness.local_probe);
    // The fixture's ARP settings are right whatever the interfaces.
    assert_eq!((readiness.arp_ignore, readiness.arp_announce), (1, 2));
    // 192.0.2.10 is on no loopback interface of the test host.
    assert!(!readiness.vip_on_loopback);
    assert!(!readiness.ready);
    let api = &report.applications[1];
    assert_eq!((api.established, api.vip_established), (1, 0));
    assert!(api.readiness.is_empty());
}

#[tokio::test]
async fn connections_utilization_takes_the_busiest_application() {
    let dir = tempfile::tempdir().expect("tempdir");
    fixture(dir.path());
    let (mut collector, _probes) = collector(dir.path(), config("kind = \"connections\""));
    write(dir.path(), "proc/stat", &stat(130, 970));
    let report = collector.collect().await.expect("report");
    // web: 2 on its VIP over 4 = 0.5; api: 1 over 1 = 1.0.
    assert_eq!(report.utilization.source, UtilizationSource::Connections);
    assert_eq!(report.utilization.value, 1.0);
}

#[tokio::test]
async fn command_file_and_bad_figures() {
    let dir = tempfile::tempdir().expect("tempdir");
    fixture(dir.path());
    let file = dir.path().join("load");
    std::fs::write(&file, "load=0.42\n").expect("write");
    let (mut collector, _probes) = collector(
        dir.path(),
        config(&format!(
            "kind = \"command\"\nfile = {:?}",
            file.display().to_string()
        )),
    );
    write(dir.path(), "proc/stat", &stat(130, 970));
    let report = collector.collect().await.expect("report");
    assert_eq!(report.utilization.source, UtilizationSource::Command);
    assert_eq!(report.utilization.value, 0.42);

    std::fs::write(&file, "-3\n").expect("write");
    write(dir.path(), "proc/stat", &stat(160, 1000));
    let err = collector.collect().await.expect_err("negative");
    assert!(err.to_string().contains("non-negative"), "{err}");

    std::fs::remove_file(&file).expect("rm");
    write(dir.path(), "proc/stat", &stat(190, 1030));
    let err = collector.collect().await.expect_err("missing file");
    assert!(err.to_string().contains("command"), "{err}");
}

#[tokio::test]
async fn missing_proc_files_fail_the_report() {
    let dir = tempfile::tempdir().expect("tempdir");
    fixture(dir.path());
    let (mut collector, _probes) = collector(dir.path(), config("kind = \"host-cpu\""));
    write(dir.path(), "proc/stat", &stat(130, 970));
    std::fs::remove_file(dir.path().join("proc/loadavg")).expect("rm");
    let err = collector.collect().await.expect_err("no loadavg");
    assert!(err.to_string().contains("loadavg"), "{err}");
}

#[tokio::test]
async fn hello_lists_applications_and_capacity() {
    let dir = tempfile::tempdir().expect("tempdir");
    fixture(dir.path());
    let mut config = config("kind = \"host-cpu\"");
    let (collector_default, _p) = collector(dir.path(), config.clone());
    assert!(collector_default.hello().cores >= 1.0);
    config.capacity_cores = Some(0.5);
    config.spare = true;
    let (collector, _probes) = collector(dir.path(), config);
    let hello = collector.hello();
    assert_eq!(hello.cores, 0.5);
    assert!(hello.spare);
    assert_eq!(hello.applications.len(), 2);
    assert_eq!(hello.applications[0].ports, vec![80]);
    assert!(
        hello.applications[0]
            .probe
            .starts_with("tcp connect 127.0.0.1:80")
    );
}

#[test]
fn bits_per_second() {
    assert_eq!(bits(125.0), 1000);
    assert_eq!(bits(-1.0), 0);
    assert_eq!(bits(f64::NAN), 0);
}
