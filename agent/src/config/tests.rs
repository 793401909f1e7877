use super::{file::line_of, *};

fn parse(text: &str) -> Result<AgentConfig, ConfigError> {
    AgentConfig::parse(text, Path::new("agent.toml"))
}

/// The error's text, which must name `key` and `line`.
#[track_caller]
fn expect_error(text: &str, key: &str, line: usize) -> String {
    let err = parse(text).expect_err("invalid config");
    let message = err.to_string();
    assert!(message.contains(key), "{message:?} does not name {key:?}");
    assert!(
        message.contains(&format!("agent.toml:{line}:"))
            || message.contains(&format!("at line {line},")),
        "{message:?} does not name line {line}"
    );
    message
}

const MINIMAL: &str = r#"
[agent]
host = "web-1"
manager = "manager.lb:7400"
tls_dir = "/etc/xdplb/pki"
"#;

#[test]
fn minimal_file_takes_defaults() {
    let config = parse(MINIMAL).expect("valid");
    assert_eq!(config.host, "web-1");
    assert_eq!(config.manager, "manager.lb:7400");
    assert_eq!(config.manager_name, "manager.lb");
    assert_eq!(config.report_interval, Duration::from_secs(1));
    assert_eq!(config.tls_dir, Some(PathBuf::from("/etc/xdplb/pki")));
    assert!(!config.insecure_plaintext);
    assert_eq!(config.control_port, None);
    assert!(!config.spare);
    assert_eq!(config.capacity_cores, None);
    assert_eq!(config.utilization, UtilizationConfig::default());
    assert_eq!(config.utilization.kind, SourceKind::HostCpu);
    assert!(config.applications.is_empty());
}

#[test]
fn full_file() {
    let config = parse(
        r#"
        [agent]
        host = "web-1"
        manager = "[2001:db8::1]:7400"
        manager_name = "manager-1"
        report_interval_ms = 500
        tls_dir = "/pki"
        control_port = 7443
        spare = true
        capacity_cores = 2.5

        [utilization]
        kind = "connections"
        capacity = 400

        [[application]]
        name = "web"
        protocol = "tcp"
        ports = [80, 443]
        vips = ["192.0.2.10", "2001:db8::10"]
        probe = { kind = "http", port = 80, path = "/healthz" }
        rise = 3
        fall = 5
        probe_interval_ms = 250
        probe_timeout_ms = 2000
        connection_capacity = 1000

        [[application]]
        name = "dns"
        protocol = "udp"
        ports = [53]
        probe = { kind = "tcp", port = 53 }
        "#,
    )
    .expect("valid");
    assert_eq!(config.manager_name, "manager-1");
    assert_eq!(config.report_interval, Duration::from_millis(500));
    assert_eq!(config.control_port, Some(7443));
    assert!(config.spare);
    assert_eq!(config.capacity_cores, Some(2.5));
    assert_eq!(config.utilization.kind, SourceKind::Connections);
    assert_eq!(config.utilization.connection_capacity, Some(400));
    let web = &config.applications[0];
    assert_eq!(web.protocol, Protocol::Tcp);
    assert_eq!(web.ports, vec![80, 443]);
    assert_eq!(web.vips.len(), 2);
    assert_eq!(
        web.probe,
        ProbeConfig::Http {
            port: 80,
            path: "/healthz".into(),
            expect: 200,
            address: None,
        }
    );
    assert_eq!((web.rise, web.fall), (3, 5));
    assert_eq!(web.probe_interval, Duration::from_millis(250));
    assert_eq!(web.probe_timeout, Duration::from_secs(2));
    assert_eq!(web.connection_capacity, Some(1000));
    let dns = &config.applications[1];
    assert_eq!(dns.protocol, Protocol::Udp);
    assert_eq!((dns.rise, dns.fall), (DEFAULT_RISE, DEFAULT_FALL));
    // The probe interval follows the report interval by default.
    assert_eq!(dns.probe_interval, Duration::from_millis(500));
    // The probe timeout never does: a saturated server answers late.
    assert_eq!(
        dns.probe_timeout,
        Duration::from_millis(DEFAULT_PROBE_TIMEOUT_MS)
    );
}

#[test]
fn manager_name_defaults_to_the_address_host_part() {
    let with = |manager: &str| {
        parse(&MINIMAL.replace("manager.lb:7400", manager))
            .expect("valid")
            .manager_name
    };
    assert_eq!(with("198.51.100.1:7400"), "198.51.100.1");
    assert_eq!(with("[2001:db8::1]:7400"), "2001:db8::1");
}

#[test]
fn utilization_sources() {
    let with = |section: &str| parse(&format!("{MINIMAL}\n[utilization]\n{section}\n"));
    let cgroup = with("kind = \"cgroup-cpu\"\ncgroup = \"/lab/h1\"").expect("cgroup");
    assert_eq!(cgroup.utilization.kind, SourceKind::CgroupCpu);
    assert_eq!(cgroup.utilization.cgroup.as_deref(), Some("/lab/h1"));
    let command = with("kind = \"command\"\ncommand = [\"/bin/load\", \"-n\"]").expect("command");
    assert_eq!(
        command.utilization.command,
        Some(CommandSource::Command(vec![
            "/bin/load".into(),
            "-n".into()
        ]))
    );
    let file = with("kind = \"command\"\nfile = \"/run/load\"").expect("file");
    assert_eq!(
        file.utilization.command,
        Some(CommandSource::File("/run/load".into()))
    );
    // A cgroup may be watched beside another source.
    let beside = with("kind = \"host-cpu\"\ncgroup = \"/app\"").expect("cgroup beside");
    assert_eq!(beside.utilization.cgroup.as_deref(), Some("/app"));
}

#[test]
fn unknown_keys_name_key_and_line() {
    let message = expect_error(
        &format!("{MINIMAL}report_intervl_ms = 5\n"),
        "report_intervl_ms",
        6,
    );
    assert!(
        message.contains("report_interval_ms"),
        "suggests the known keys: {message}"
    );
    expect_error(
        &format!(
            "{MINIMAL}\n[[application]]\nname = \"web\"\nprotocol = \"tcp\"\nports = [80]\nprobe = {{ kind = \"tcp\", port = 80, timeout = 1 }}\n"
        ),
        "timeout",
        11,
    );
    expect_error(
        &format!("{MINIMAL}\n[utilisation]\nkind = \"host-cpu\"\n"),
        "utilisation",
        7,
    );
}

#[test]
fn bad_values_name_key_and_line() {
    expect_error(
        &MINIMAL.replace("manager.lb:7400", "manager.lb"),
        "agent.manager",
        4,
    );
    expect_error(&MINIMAL.replace(":7400", ":0"), "agent.manager", 4);
    expect_error(
        &MINIMAL.replace("manager.lb:7400", "2001:db8::1:7400"),
        "agent.manager",
        4,
    );
    expect_error(&MINIMAL.replace("\"web-1\"", "\"  \""), "agent.host", 3);
    expect_error(
        &format!("{MINIMAL}report_interval_ms = 10\n"),
        "agent.report_interval_ms",
        6,
    );
    expect_error(
        &format!("{MINIMAL}control_port = 0\n"),
        "agent.control_port",
        6,
    );
    expect_error(
        &format!("{MINIMAL}control_port = 70000\n"),
        "control_port",
        6,
    );
    expect_error(
        &format!("{MINIMAL}capacity_cores = -1.0\n"),
        "agent.capacity_cores",
        6,
    );
    expect_error(&format!("{MINIMAL}spare = \"yes\"\n"), "spare", 6);
    // No TLS directory and no explicit plaintext.
    expect_error(
        &MINIMAL.replace("tls_dir = \"/etc/xdplb/pki\"\n", ""),
        "agent.tls_dir",
        2,
    );
}

#[test]
fn bad_utilization_sections() {
    let with = |section: &str| format!("{MINIMAL}\n[utilization]\n{section}\n");
    expect_error(&with("kind = \"gpu\""), "kind", 8);
    expect_error(&with("kind = \"cgroup-cpu\""), "utilization.cgroup", 7);
    expect_error(&with("kind = \"command\""), "utilization.command", 7);
    expect_error(
        &with("kind = \"command\"\ncommand = [\"a\"]\nfile = \"/b\""),
        "utilization.command",
        9,
    );
    expect_error(
        &with("kind = \"command\"\ncommand = []"),
        "utilization.command",
        9,
    );
    expect_error(
        &with("kind = \"host-cpu\"\ncapacity = 5"),
        "utilization.capacity",
        9,
    );
    expect_error(
        &with("kind = \"host-cpu\"\nfile = \"/x\""),
        "utilization.file",
        9,
    );
    expect_error(
        &with("kind = \"connections\"\ncapacity = 0"),
        "utilization.capacity",
        9,
    );
    // Connections need a TCP application with a capacity.
    expect_error(
        &with("kind = \"connections\"\ncapacity = 10"),
        "utilization.kind",
        7,
    );
    let no_capacity = format!(
        "{}\n[[application]]\nname = \"web\"\nprotocol = \"tcp\"\nports = [80]\nprobe = {{ kind = \"tcp\", port = 80 }}\n",
        with("kind = \"connections\"")
    );
    expect_error(&no_capacity, "application[web].connection_capacity", 11);
}

#[test]
fn bad_applications() {
    let app = |body: &str| format!("{MINIMAL}\n[[application]]\n{body}\n");
    let base =
        "name = \"web\"\nprotocol = \"tcp\"\nports = [80]\nprobe = { kind = \"tcp\", port = 80 }";
    parse(&app(base)).expect("base is valid");
    expect_error(
        &app(&base.replace("\"tcp\"\nports", "\"sctp\"\nports")),
        "sctp",
        9,
    );
    expect_error(
        &app(&base.replace("[80]", "[]")),
        "application[web].ports",
        10,
    );
    expect_error(
        &app(&base.replace("[80]", "[80, 0]")),
        "application[web].ports",
        10,
    );
    expect_error(&app(&base.replace("[80]", "[80, 65536]")), "ports", 10);
    expect_error(
        &app(&format!("{base}\nvips = [\"192.0.2.300\"]")),
        "vips",
        12,
    );
    expect_error(
        &app(&format!("{base}\nvips = [\"192.0.2.1\", \"192.0.2.1\"]")),
        "application[web].vips",
        12,
    );
    expect_error(
        &app(&format!("{base}\nrise = 0")),
        "application[web].rise",
        12,
    );
    expect_error(
        &app(&format!("{base}\nfall = 0")),
        "application[web].fall",
        12,
    );
    expect_error(
        &app(&format!("{base}\nprobe_interval_ms = 5")),
        "application[web].probe_interval_ms",
        12,
    );
    expect_error(
        &app(&format!("{base}\nprobe_timeout_ms = 600000")),
        "application[web].probe_timeout_ms",
        12,
    );
    expect_error(
        &app(&base.replace("port = 80 }", "port = 0 }")),
        "application[web].probe.port",
        11,
    );
    expect_error(
        &app(&base.replace(
            "{ kind = \"tcp\", port = 80 }",
            "{ kind = \"http\", port = 80, path = \"healthz\" }",
        )),
        "application[web].probe.path",
        11,
    );
    expect_error(
        &app(&base.replace(
            "{ kind = \"tcp\", port = 80 }",
            "{ kind = \"http\", port = 80, path = \"/\", expect = 42 }",
        )),
        "application[web].probe.expect",
        11,
    );
    expect_error(
        &app(&base.replace(
            "{ kind = \"tcp\", port = 80 }",
            "{ kind = \"http\", port = 80 }",
        )),
        "path",
        11,
    );
    let twice = format!("{}\n[[application]]\n{base}\n", app(base));
    expect_error(&twice, "application.name", 14);
    expect_error(
        &format!("{MINIMAL}\n[[application]]\nname = \"web\"\n"),
        "protocol",
        7,
    );
}

#[test]
fn plaintext_needs_no_tls_dir() {
    let text = MINIMAL.replace("tls_dir = \"/etc/xdplb/pki\"", "insecure_plaintext = true");
    let config = parse(&text).expect("valid");
    assert!(config.insecure_plaintext);
    assert_eq!(config.tls_dir, None);
    // Writing false is the same as leaving it out.
    let text = format!("{MINIMAL}insecure_plaintext = false\n");
    assert!(!parse(&text).expect("valid").insecure_plaintext);
}

#[test]
fn load_reports_a_missing_file() {
    let err = AgentConfig::load(Path::new("/nonexistent/agent.toml")).expect_err("missing");
    assert!(err.to_string().contains("/nonexistent/agent.toml"), "{err}");
}

#[test]
fn lines_are_counted_from_one() {
    assert_eq!(line_of("a\nb\nc", 0), 1);
    assert_eq!(line_of("a\nb\nc", 2), 2);
    assert_eq!(line_of("a\nb\nc", 4), 3);
    assert_eq!(line_of("a", 99), 1);
}

#[test]
fn discovery_is_off_by_default() {
    let config = parse(MINIMAL).expect("valid");
    assert_eq!(config.discovery, DiscoveryConfig::default());
    assert!(!config.discovery.enabled);
    assert_eq!(
        config.discovery.address,
        "255.255.255.255:7445"
            .parse::<std::net::SocketAddr>()
            .expect("addr")
    );
    assert_eq!(config.discovery.interval, Duration::from_secs(5));
}

#[test]
fn discovery_section() {
    let with = |section: &str| parse(&format!("{MINIMAL}\n[discovery]\n{section}\n"));
    let multicast = with("enabled = true\naddress = \"239.255.0.45:7445\"\ninterval_ms = 2000")
        .expect("multicast");
    assert_eq!(
        multicast.discovery,
        DiscoveryConfig {
            enabled: true,
            address: "239.255.0.45:7445".parse().expect("addr"),
            interval: Duration::from_secs(2),
        }
    );
    let v6 = with("enabled = true\naddress = \"[ff02::1:45]:7445\"").expect("ipv6 group");
    assert_eq!(v6.discovery.address.port(), 7445);
    // Configured but off: the values are still checked and kept.
    let off = with("address = \"10.0.0.255:7000\"").expect("off");
    assert!(!off.discovery.enabled);
    assert_eq!(off.discovery.address.port(), 7000);
}

#[test]
fn bad_discovery_values_name_key_and_line() {
    let with = |section: &str| format!("{MINIMAL}\n[discovery]\n{section}\n");
    // `[discovery]` is line 7, its first key line 8.
    for bad in [
        "manager.lb:7445",
        "255.255.255.255",
        "255.255.255.255:0",
        "0.0.0.0:7445",
        "[::]:7445",
        "ff02::1:7445",
    ] {
        let message = expect_error(
            &with(&format!("enabled = true\naddress = \"{bad}\"")),
            "discovery.address",
            9,
        );
        assert!(
            message.contains("255.255.255.255:7445"),
            "says what to write: {message}"
        );
    }
    expect_error(&with("interval_ms = 10"), "discovery.interval_ms", 8);
    expect_error(&with("enabled = \"yes\""), "enabled", 8);
    expect_error(&with("adress = \"255.255.255.255:7445\""), "adress", 8);
    let plaintext =
        "\n[agent]\nhost = \"web-1\"\nmanager = \"manager.lb:7400\"\ninsecure_plaintext = true\n";
    let message = expect_error(
        &format!("{plaintext}\n[discovery]\nenabled = true\n"),
        "discovery.enabled",
        8,
    );
    assert!(message.contains("tls_dir"), "{message}");
}

#[test]
fn check_host_resolves_the_cgroup_like_the_agent() {
    use crate::sources::fixture;
    let root = tempfile::tempdir().expect("tempdir");
    // No cgroup named: nothing to look for.
    parse(MINIMAL)
        .expect("valid")
        .check_host(root.path())
        .expect("no cgroup to check");

    let text = format!("{MINIMAL}\n[utilization]\nkind = \"cgroup-cpu\"\ncgroup = \"/app\"\n");
    let config = parse(&text).expect("valid");
    let message = config
        .check_host(root.path())
        .expect_err("no such cgroup")
        .to_string();
    assert!(
        message.contains("utilization.cgroup = \"/app\""),
        "{message}"
    );
    let cgroups = root.path().join("sys/fs/cgroup");
    for tried in ["cpu,cpuacct", "cpuacct,cpu", "cpuacct", "cpu"] {
        let file = cgroups.join(tried).join("app/cpuacct.usage");
        assert!(
            message.contains(&file.display().to_string()),
            "does not name {}: {message}",
            file.display()
        );
    }
    assert!(message.contains("no cgroup2 mount"), "{message}");

    // A cgroup2 mount without the cgroup: its path is named too.
    fixture::write(
        root.path(),
        "sys/fs/cgroup/unified/cgroup.controllers",
        "cpu\n",
    );
    let message = config
        .check_host(root.path())
        .expect_err("no such cgroup")
        .to_string();
    let v2 = cgroups.join("unified/app/cpu.stat");
    assert!(message.contains(&v2.display().to_string()), "{message}");

    // It exists (v2 on a hybrid host; v1 cpuacct): ok.
    fixture::write(
        root.path(),
        "sys/fs/cgroup/unified/app/cpu.stat",
        "usage_usec 1\n",
    );
    config.check_host(root.path()).expect("v2 cgroup exists");
    let root = tempfile::tempdir().expect("tempdir");
    fixture::write(
        root.path(),
        "sys/fs/cgroup/cpuacct/app/cpuacct.usage",
        "1\n",
    );
    config.check_host(root.path()).expect("v1 cgroup exists");
}

const WITH_VIPS: &str = r#"
[agent]
host = "web-1"
manager = "manager.lb:7400"
tls_dir = "/etc/xdplb/pki"

[[application]]
name = "web"
protocol = "tcp"
ports = [80]
vips = ["192.0.2.10", "2001:db8::10"]
probe = { kind = "tcp", port = 80 }

[[application]]
name = "api"
protocol = "tcp"
ports = [81]
vips = ["192.0.2.10"]
probe = { kind = "tcp", port = 81 }
"#;

#[test]
fn decap_section() {
    assert_eq!(parse(WITH_VIPS).expect("valid").decap, None);
    let config = parse(&format!(
        "{WITH_VIPS}\n[decap]\ninterface = \"eth1\"\nsources = [\"10.0.1.2\", \"fd00:1::2\"]\n"
    ))
    .expect("valid");
    let decap = config.decap.expect("[decap]");
    assert_eq!(decap.interface, "eth1");
    assert_eq!(
        decap.sources,
        [
            "10.0.1.2".parse::<IpAddr>().unwrap(),
            "fd00:1::2".parse().unwrap()
        ]
    );
    assert_eq!(decap.gue_port, 6080);
    assert_eq!(decap.pin_root, PathBuf::from(crate::decap::PIN_ROOT));
    // Every application's VIPs, each once.
    assert_eq!(
        decap.vips,
        [
            "192.0.2.10".parse::<IpAddr>().unwrap(),
            "2001:db8::10".parse().unwrap()
        ]
    );
    let config = parse(&format!(
        "{WITH_VIPS}\n[decap]\ninterface = \"eth0\"\ngue_port = 7000\npin_root = \"/sys/fs/bpf/x\"\n"
    ))
    .expect("valid");
    let decap = config.decap.expect("[decap]");
    assert!(decap.sources.is_empty());
    assert_eq!(
        (decap.gue_port, decap.pin_root),
        (7000, PathBuf::from("/sys/fs/bpf/x"))
    );
}

#[test]
fn bad_decap_sections_name_key_and_line() {
    for (body, key, needle) in [
        (
            "interface = \"../x\"",
            "decap.interface",
            "not an interface name",
        ),
        (
            "interface = \"\"",
            "decap.interface",
            "not an interface name",
        ),
        (
            "interface = \"eth0\"\nsources = [\"10.0.1.2\", \"127.0.0.1\"]",
            "decap.sources",
            "127.0.0.1 is not a unicast",
        ),
        (
            "interface = \"eth0\"\nsources = [\"224.0.0.1\"]",
            "decap.sources",
            "not a unicast",
        ),
        (
            "interface = \"eth0\"\ngue_port = 0",
            "decap.gue_port",
            "is 0",
        ),
    ] {
        let text = format!("{WITH_VIPS}\n[decap]\n{body}\n");
        let leaf = key.trim_start_matches("decap.");
        let at = 1 + text
            .lines()
            .position(|l| l.starts_with(leaf))
            .expect("the key's line");
        let message = expect_error(&text, key, at);
        assert!(message.contains(needle), "{message}");
    }
    // Nothing to decapsulate for.
    let message = expect_error(
        &format!("{MINIMAL}\n[decap]\ninterface = \"eth0\"\n"),
        "decap",
        MINIMAL.lines().count() + 2,
    );
    assert!(message.contains("vips"), "{message}");
    let message = parse(&format!(
        "{WITH_VIPS}\n[decap]\ninterface = \"eth0\"\nsource = [\"10.0.1.2\"]\n"
    ))
    .expect_err("unknown key")
    .to_string();
    assert!(message.contains("source"), "{message}");
}
