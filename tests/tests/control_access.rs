//! End-to-end: who may use the control socket, and what a second
//! `lb-control` on the same pins does. Real users (`nobody`, through
//! `setpriv`), a daemon started under umask 000, raw request lines.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    os::unix::{fs::MetadataExt as _, net::UnixStream},
    time::Duration,
};

use anyhow::{Context as _, Result};
use lb_tests::{
    Lab,
    balancer::{Balancer, attach_peer_pass, workspace_bin},
    fleet::{self, Fleet, ScaledService},
    require_root,
};
use serde_json::Value;

const SERVER: &str = env!("CARGO_BIN_EXE_lab-server");
const PORT: u16 = 80;
/// `nobody` and `nogroup` on Debian.
const NOBODY: u32 = 65534;
/// A group `nobody` is not in (`daemon`).
const OTHER_GID: u32 = 1;

/// Two servers (s1 allocated), no agents, a manager with no scaling; the
/// socket's group is `nogroup`, sessions idle out after 2 s.
fn build(umask: Option<libc::mode_t>) -> Result<(Lab, Fleet, Balancer)> {
    let (lab, fleet, config) = lab_and_config()?;
    let bal = match umask {
        Some(mask) => Balancer::start_under_umask(&lab, &config, mask)?,
        None => Balancer::start(&lab, &config)?,
    };
    Ok((lab, fleet, bal))
}

/// [`build`]'s lab and the daemon's file, not started.
fn lab_and_config() -> Result<(Lab, Fleet, String)> {
    let mut lab = Lab::builder().servers(2).build()?;
    lab.start_servers(SERVER, &[PORT], &[])?;
    attach_peer_pass(&mut lab)?;
    let fleet = Fleet::new(&mut lab)?;
    let config = fleet::manager_config(
        &lab,
        fleet.pki_dir(),
        &ScaledService {
            port: PORT,
            interval_ms: 200,
            scaling: "enabled = false\ndynamic_weights = false",
            manager_keys: "",
            remote_nodes: &[],
            allocated: 1,
        },
    )
    .replacen(
        "[node]\n",
        "[node]\ncontrol_group = \"nogroup\"\ncontrol_idle_timeout = 2\n",
        1,
    );
    Ok((lab, fleet, config))
}

/// `lbctl --json ARGS` as `nobody` with primary group `gid` and
/// supplementary groups `groups` (none when empty): whether it succeeded,
/// and what it printed.
fn lbctl_as_nobody(
    bal: &Balancer,
    gid: u32,
    groups: &str,
    args: &[&str],
) -> Result<(bool, String)> {
    let groups = if groups.is_empty() {
        "--clear-groups".to_owned()
    } else {
        format!("--groups={groups}")
    };
    let out = std::process::Command::new("setpriv")
        .arg(format!("--reuid={NOBODY}"))
        .arg(format!("--regid={gid}"))
        .arg(groups)
        .arg(workspace_bin("lbctl")?)
        .arg("--socket")
        .arg(&bal.socket)
        .arg("--json")
        .args(args)
        .output()
        .context("setpriv (util-linux)")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

/// s1's state in `lbctl pool` (as root).
fn s1_state(bal: &Balancer) -> Result<String> {
    let v = bal.lbctl(&["pool"])?;
    v["pools"][0]["members"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["server"] == "s1")
        .and_then(|m| m["state"].as_str())
        .map(str::to_owned)
        .with_context(|| format!("s1 not a member: {v}"))
}

/// Under umask 000 the socket is still `root:nogroup` 0660; `nobody` in
/// `nogroup` (as its primary or a supplementary group) may read but not
/// drain; `nobody` outside it cannot even connect.
#[test]
fn the_control_socket_admits_by_peer_credentials() -> Result<()> {
    if !require_root("the_control_socket_admits_by_peer_credentials") {
        return Ok(());
    }
    let (_lab, _fleet, bal) = build(Some(0))?;
    let meta = std::fs::metadata(&bal.socket)?;
    assert_eq!(meta.mode() & 0o777, 0o660, "socket mode {:o}", meta.mode());
    assert_eq!((meta.uid(), meta.gid()), (0, NOBODY));
    let dir = std::fs::metadata(bal.socket.parent().context("socket dir")?)?;
    assert_eq!(dir.mode() & 0o022, 0, "socket dir {:o}", dir.mode());

    let (ok, text) = lbctl_as_nobody(&bal, NOBODY, "", &["status"])?;
    assert!(ok, "nobody in nogroup: status refused: {text}");
    let (ok, text) = lbctl_as_nobody(&bal, NOBODY, "", &["pool"])?;
    assert!(ok && text.contains("s1"), "pool: {text}");
    let (ok, text) = lbctl_as_nobody(&bal, NOBODY, "", &["server", "drain", "s1"])?;
    assert!(
        !ok && text.contains("only root and the members of node.admin_group"),
        "nobody drained s1: {text}"
    );
    assert_eq!(s1_state(&bal)?, "allocated");
    // Supplementary groups count (SO_PEERGROUPS).
    let (ok, text) = lbctl_as_nobody(&bal, OTHER_GID, &NOBODY.to_string(), &["status"])?;
    assert!(ok, "nobody with nogroup as a supplementary group: {text}");
    // Outside the group: the file's mode keeps it out.
    let (ok, text) = lbctl_as_nobody(&bal, OTHER_GID, "", &["status"])?;
    assert!(
        !ok && text.to_lowercase().contains("permission denied"),
        "{text}"
    );
    // Root may drain.
    bal.lbctl(&["server", "drain", "s1"])?;
    assert_ne!(s1_state(&bal)?, "allocated");
    Ok(())
}

/// One request line over a raw connection, and its response.
fn exchange(stream: &mut UnixStream, line: &[u8]) -> Result<Value> {
    stream.write_all(line)?;
    let mut response = String::new();
    BufReader::new(stream.try_clone()?).read_line(&mut response)?;
    serde_json::from_str(&response).with_context(|| format!("response {response:?}"))
}

/// A request placed after 64 KiB of padding on one line is not executed:
/// the whole line is refused and the next line is served. Idle sessions
/// are closed; sessions over the cap are refused with `busy`.
#[test]
fn control_sessions_are_bounded() -> Result<()> {
    if !require_root("control_sessions_are_bounded") {
        return Ok(());
    }
    let (_lab, _fleet, bal) = build(None)?;
    let mut stream = UnixStream::connect(&bal.socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut line = vec![b' '; 70_000];
    line.extend_from_slice(b"{\"request\":\"server_drain\",\"server\":\"s1\"}\n");
    let r = exchange(&mut stream, &line)?;
    assert_eq!(r["kind"], "bad_request", "{r}");
    assert!(
        r["message"].as_str().unwrap_or("").contains("longer than"),
        "{r}"
    );
    let r = exchange(&mut stream, b"{\"request\":\"status\"}\n")?;
    assert_eq!(r["response"], "status", "{r}");
    assert_eq!(s1_state(&bal)?, "allocated", "the padded drain ran");

    // Idle past control_idle_timeout: the daemon closes the session.
    std::thread::sleep(Duration::from_secs(3));
    let mut rest = Vec::new();
    let n = stream.read_to_end(&mut rest)?;
    assert_eq!(n, 0, "idle session still open: {rest:?}");

    // The cap: 64 open sessions, the next is refused, then all is well.
    let held: Vec<UnixStream> = (0..lb_control::api::MAX_SESSIONS)
        .map(|_| UnixStream::connect(&bal.socket))
        .collect::<std::io::Result<_>>()?;
    std::thread::sleep(Duration::from_millis(300));
    let mut extra = UnixStream::connect(&bal.socket)?;
    extra.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut response = String::new();
    BufReader::new(&mut extra).read_line(&mut response)?;
    let r: Value = serde_json::from_str(&response).with_context(|| response.clone())?;
    assert_eq!(r["kind"], "busy", "{r}");
    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    bal.lbctl(&["status"])?;
    Ok(())
}

/// A second `lb-control` on the same pins refuses to start and names the
/// first's pid; the first keeps its socket.
#[test]
fn a_second_instance_on_the_same_pins_refuses_to_start() -> Result<()> {
    if !require_root("a_second_instance_on_the_same_pins_refuses_to_start") {
        return Ok(());
    }
    let (lab, _fleet, bal) = build(None)?;
    let first = bal.process.as_ref().context("running")?.pid();
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}", lab.node.ns.name()))
        .arg("--")
        .arg(workspace_bin("lb-control")?)
        .args(["run", "--config"])
        .arg(&bal.config_path)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "second instance ran: {stderr}");
    assert!(
        stderr.contains(&format!("another lb-control (pid {first}) drives the pins")),
        "{stderr}"
    );
    let status = bal.lbctl(&["status"])?;
    assert!(status["program_id"].as_u64().is_some(), "{status}");
    Ok(())
}

/// The effective capabilities of process `pid`, as the kernel's bit mask.
fn effective_capabilities(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .context("no CapEff")?;
    Ok(u64::from_str_radix(hex.trim(), 16)?)
}

/// `lb-control` with only the systemd unit's capabilities (root's user
/// id, no CAP_SYS_ADMIN, no CAP_DAC_OVERRIDE): it loads and attaches the
/// program, gives the control socket to its group, answers `lbctl` and
/// forwards connections to the VIP.
#[test]
fn the_daemon_runs_with_only_the_units_capabilities() -> Result<()> {
    if !require_root("the_daemon_runs_with_only_the_units_capabilities") {
        return Ok(());
    }
    let caps = lb_tests::util::unit_capabilities()?;
    let (lab, _fleet, config) = lab_and_config()?;
    let bal = Balancer::start_with_capabilities(&lab, &config, &caps)?;
    let pid = bal.process.as_ref().context("process")?.pid();
    // nsenter and setpriv exec into lb-control: the same process.
    let effective = effective_capabilities(pid)?;
    const CAP_DAC_OVERRIDE: u64 = 1;
    const CAP_SYS_ADMIN: u64 = 21;
    for cap in [CAP_DAC_OVERRIDE, CAP_SYS_ADMIN] {
        assert_eq!(
            effective & (1 << cap),
            0,
            "capability {cap} kept: {effective:#x} ({caps})"
        );
    }
    let status = bal.lbctl(&["status"])?;
    assert!(
        status["program_id"].as_u64().is_some_and(|id| id > 0),
        "{status}"
    );
    let meta = std::fs::metadata(&bal.socket)?;
    assert_eq!(meta.gid(), NOBODY, "the socket's group");
    let burst = lb_tests::balancer::burst_to_vip(&lab, PORT, 20)?;
    assert_eq!(burst.ok, 20, "{:?}", burst.errors);
    Ok(())
}
