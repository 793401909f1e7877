//! End-to-end: `[node] debug_xdp` (issue 12, logs). The debug variant of
//! the XDP program logs a real connection's decision, and lb-control
//! writes it into its own log (target `xdp`, the record's fields as
//! fields), as text and as JSON; the production program logs nothing.
//! Turning the flag on or off is a restart that replaces the program in
//! place, as an upgrade does; a restart with it unchanged adopts it.

use std::time::Duration;

use anyhow::{Context as _, Result};
use lb_tests::{
    BurstOpts, Lab,
    balancer::{Balancer, LAB_SEED, attach_peer_pass, wait_until, workspace_bin},
    require_root, run_burst,
};

const SERVER: &str = env!("CARGO_BIN_EXE_lab-server");
const CLIENT: &str = env!("CARGO_BIN_EXE_lab-client");
const PORT: u16 = 80;
/// What the program's new-flow record says first.
const NEW_FLOW: &str = "new flow from maglev";

fn config(lab: &Lab, debug_xdp: bool) -> String {
    let mut c = format!(
        "[node]\ninterfaces = [\"eth0\"]\npin_dir = \"{{pin_dir}}\"\nsocket = \"{{socket}}\"\n\
         hash_seed = {LAB_SEED}\ndebug_xdp = {debug_xdp}\n\n\
         [limits]\nmax_services = 4\nmax_backends = 16\nflow_table_size = 4096\n\n\
         [[service]]\nname = \"web\"\nvip = \"{}\"\nport = {PORT}\ntable_size = 251\n\n",
        lab.vip4()
    );
    for h in &lab.servers {
        c += &format!(
            "[[server]]\nname = \"{}\"\naddress = \"{}\"\nservices = [\"web\"]\n\n",
            h.name, h.eth0.v4
        );
    }
    c
}

/// Connections to the VIP from source ports `first..first + count`; all
/// must be answered.
fn connect(lab: &Lab, first: u16, count: usize) -> Result<()> {
    let opts = BurstOpts::new(lab.vip4_addr(PORT), count).src_port_start(first);
    let burst = run_burst(&lab.client.ns, CLIENT, &opts)?;
    anyhow::ensure!(burst.failed == 0, "{:?}", burst.errors);
    Ok(())
}

fn stderr(bal: &Balancer) -> String {
    bal.process
        .as_ref()
        .map(lb_tests::LabProcess::stderr_output)
        .unwrap_or_default()
}

/// The daemon's text-log line of the program's new-flow record for the
/// connection from `client_port`, once it is there (5 s at most).
fn text_record(bal: &Balancer, client_port: u16) -> Option<String> {
    let port = format!("client_port={client_port}");
    let find = || {
        stderr(bal)
            .lines()
            .find(|l| l.contains(" xdp: ") && l.contains(NEW_FLOW) && l.contains(&port))
            .map(str::to_owned)
    };
    wait_until(Duration::from_secs(5), || find().is_some());
    find()
}

fn adoption(bal: &Balancer) -> Result<String> {
    let status = bal.lbctl(&["status"])?;
    Ok(status["adoption"].as_str().unwrap_or_default().to_owned())
}

#[test]
fn debug_xdp_logs_a_real_connection_into_the_daemons_log() -> Result<()> {
    if !require_root("debug_xdp_logs_a_real_connection_into_the_daemons_log") {
        return Ok(());
    }
    let mut lab = Lab::builder().servers(2).build()?;
    lab.start_servers(SERVER, &[PORT], &[])?;
    attach_peer_pass(&mut lab)?;
    let client = lab.client.eth0.v4;
    let servers: Vec<String> = lab.servers.iter().map(|h| h.eth0.v4.to_string()).collect();

    // The production program: traffic flows, nothing is logged for it.
    // With only the systemd unit's capabilities, as deployed (the JSON
    // restart below runs with all of root's).
    let caps = lb_tests::util::unit_capabilities()?;
    let mut bal = Balancer::start_with_capabilities(&lab, &config(&lab, false), &caps)?;
    connect(&lab, 31000, 5)?;
    std::thread::sleep(Duration::from_millis(500));
    let log = stderr(&bal);
    assert!(
        !log.contains(" xdp: ") && !log.contains(NEW_FLOW),
        "the production program logs nothing:\n{log}"
    );

    // Turned on: the running program is replaced in place by the debug one.
    let id_production = Balancer::attached_program_id(&lab.node.ns, "eth0")?;
    bal.kill9()?;
    bal.write_config(&config(&lab, true))?;
    bal.launch()?;
    assert_eq!(adoption(&bal)?, "replaced");
    let id_debug = Balancer::attached_program_id(&lab.node.ns, "eth0")?;
    assert_ne!(id_debug, id_production, "the debug object runs now");
    let log = stderr(&bal);
    assert!(
        log.contains("the running XDP program is the other variant")
            && log.contains("forwarding the XDP program's log records"),
        "{log}"
    );
    assert!(
        bal.pin_dir.join("v1/AYA_LOGS").exists(),
        "the ring is pinned"
    );
    connect(&lab, 32000, 5)?;
    let line = text_record(&bal, 32000).with_context(|| {
        format!(
            "no XDP record of the connection from port 32000:\n{}",
            stderr(&bal)
        )
    })?;
    assert!(line.contains(" INFO "), "{line}");
    assert!(line.contains(&format!("client={client}")), "{line}");
    assert!(
        servers
            .iter()
            .any(|s| line.contains(&format!("server={s}"))),
        "a lab server in {line}"
    );
    assert!(
        line.contains("service=") && line.contains("backend="),
        "{line}"
    );

    // A restart with the flag unchanged adopts the running program and
    // reads on from its ring; this time the log is JSON.
    bal.kill9()?;
    let bin = workspace_bin("lb-control")?;
    let config_path = bal.config_path.display().to_string();
    let mut json = lab.node.ns.spawn(&[
        bin.to_str().context("binary path")?,
        "--log-format",
        "json",
        "run",
        "--config",
        &config_path,
    ])?;
    json.wait_for_line("ready", Duration::from_secs(30))?;
    bal.process = Some(json);
    assert_eq!(adoption(&bal)?, "adopted");
    assert_eq!(
        Balancer::attached_program_id(&lab.node.ns, "eth0")?,
        id_debug
    );
    connect(&lab, 33000, 5)?;
    let find = || {
        stderr(&bal).lines().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            let f = &v["fields"];
            (v["target"] == "xdp" && f["message"] == NEW_FLOW && f["client_port"] == 33000)
                .then(|| v.clone())
        })
    };
    wait_until(Duration::from_secs(5), || find().is_some());
    let record = find().with_context(|| format!("no JSON XDP record:\n{}", stderr(&bal)))?;
    let fields = &record["fields"];
    assert_eq!(record["level"], "INFO", "{record}");
    assert_eq!(fields["client"], client.to_string(), "{record}");
    assert!(
        fields["service"].is_u64() && fields["backend"].is_u64(),
        "{record}"
    );
    assert!(
        servers.iter().any(|s| fields["server"] == s.as_str()),
        "{record}"
    );

    // Turned off again: replaced by the production program, silent again,
    // and the debug program's ring is no longer pinned.
    bal.kill9()?;
    bal.write_config(&config(&lab, false))?;
    bal.launch()?;
    assert_eq!(adoption(&bal)?, "replaced");
    assert_ne!(
        Balancer::attached_program_id(&lab.node.ns, "eth0")?,
        id_debug
    );
    connect(&lab, 34000, 5)?;
    std::thread::sleep(Duration::from_millis(500));
    let log = stderr(&bal);
    assert!(
        log.contains("the running XDP program is the other variant"),
        "{log}"
    );
    assert!(!bal.pin_dir.join("v1/AYA_LOGS").exists(), "ring unpinned");
    assert!(
        !log.contains(" xdp: ") && !log.contains(NEW_FLOW),
        "the production program logs nothing:\n{log}"
    );
    Ok(())
}
