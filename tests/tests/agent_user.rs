//! End-to-end: `lb-agent` as its systemd unit runs it — a user of its
//! own (here `nobody`), no supplementary groups, no capability in any set
//! (`CapabilityBoundingSet=` empty), `NoNewPrivileges=yes` — on a lab
//! server, streaming to a real manager: it connects, reports from its
//! cgroup, probes its application, finds its server ready, answers the
//! settings requests of an allocation, and counts the connections the
//! server then serves.

use std::{
    ffi::CString,
    os::unix::fs::{PermissionsExt as _, chown},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use lb_tests::{
    HoldSession,
    balancer::{Balancer, wait_until},
    fleet::{self, Fleet, ScaledService},
    require_root,
    scaling::{member, monitor},
};

const PORT: u16 = 80;
const INTERVAL_MS: u64 = 200;
/// Connections held to the VIP once s2 is allocated.
const HELD: usize = 20;
/// The unprivileged user the agent runs as.
const USER: &str = "nobody";

/// The user id and primary group of `name`.
fn user(name: &str) -> Result<(u32, u32)> {
    let c = CString::new(name)?;
    // SAFETY: getpwnam reads the password database; the record is copied
    // out at once, before any other call could reuse it.
    let pw = unsafe { libc::getpwnam(c.as_ptr()) };
    if pw.is_null() {
        bail!("no user {name}");
    }
    // SAFETY: non-null, as getpwnam returned it.
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Ok((uid, gid))
}

/// What `/proc/PID/status` says of `field` (`Uid`, `CapEff`, ...).
fn status_field(pid: u32, field: &str) -> Result<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_owned())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

#[test]
fn the_agent_runs_as_an_unprivileged_user_without_capabilities() -> Result<()> {
    if !require_root("the_agent_runs_as_an_unprivileged_user_without_capabilities") {
        return Ok(());
    }
    let (uid, gid) = user(USER)?;
    let (lab, fleet) = Fleet::lab(&[fleet::SERVER_QUOTA; 2], PORT)?;
    let config = fleet::manager_config(
        &lab,
        fleet.pki_dir(),
        &ScaledService::local(PORT, INTERVAL_MS, "enabled = false", 1),
    );
    let bal = Balancer::start(&lab, &config)?;

    // The directory open (the agent's file is in it too) but the key as
    // `lbctl certs` leaves it (0600, root's): the agent stops at once and
    // says what to change.
    let pki = fleet.pki_dir();
    std::fs::set_permissions(pki, std::fs::Permissions::from_mode(0o755))?;
    let agent_config = fleet.agent_config(&lab, 1, PORT, INTERVAL_MS);
    let mut refused = fleet.start_agent_as(&lab, 1, &agent_config, uid, gid)?;
    let status = refused.wait_timeout(Duration::from_secs(10))?;
    assert!(!status.success(), "started with root's key");
    let wanted = [
        format!("cannot read {}", pki.join("s2.key").display()),
        format!("runs as uid {uid}"),
        "chown the key".to_owned(),
    ];
    // Its stderr is read by a thread of its own.
    let said = wait_until(Duration::from_secs(5), || {
        let stderr = refused.stderr_output();
        wanted.iter().all(|w| stderr.contains(w))
    });
    assert!(said, "not {wanted:?}: {}", refused.stderr_output());
    drop(refused);

    // As the unit's comment says to install it: the directory open, the
    // host's key (still 0600) owned by the agent's user; every other key
    // stays root's.
    chown(pki.join("s2.key"), Some(uid), Some(gid))?;
    let agent = fleet.start_agent_as(&lab, 1, &agent_config, uid, gid)?;

    // nsenter and setpriv exec into lb-agent: the same process, once they
    // did.
    let pid = agent.pid();
    let comm = || std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(5), || comm().trim() == "lb-agent"),
        "process {pid} is {:?}, not lb-agent",
        comm()
    );
    let ids = format!("{uid}\t{uid}\t{uid}\t{uid}");
    assert_eq!(
        status_field(pid, "Uid")?,
        ids,
        "real, effective, saved, fs uid"
    );
    assert_eq!(status_field(pid, "Groups")?, "", "supplementary groups");
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(pid, set)?, "0000000000000000", "{set}");
    }
    assert_eq!(status_field(pid, "NoNewPrivs")?, "1");

    // A free server the policy may take: its agent monitored, its
    // application up, its VIP ready for direct server return.
    let functional = wait_until(Duration::from_secs(20), || {
        member(&bal, "s2").is_some_and(|m| {
            m["state"] == "free"
                && m["monitor"] == "monitored"
                && m["health"] == "up"
                && m["utilization"].is_number()
        })
    });
    assert!(
        functional,
        "s2 not functional: {:?}; agent: {}",
        bal.lbctl(&["pool"]),
        agent.stderr_output()
    );
    let m = monitor(&bal, "s2").context("no monitor for s2")?;
    assert_eq!(m["ready"], true, "{m}");
    assert_eq!(m["connected"], true, "{m}");
    assert_eq!(m["source"], "cgroup-cpu", "{m}");

    // The utilization is its cgroup's: a busy loop in it shows.
    let burner = lab.servers[1]
        .ns
        .spawn(&["sh", "-c", "while :; do :; done"])?;
    fleet.cgroups[1].1.add_pid(burner.pid())?;
    let busy = wait_until(Duration::from_secs(20), || {
        member(&bal, "s2").is_some_and(|m| m["utilization"].as_f64().is_some_and(|u| u > 0.5))
    });
    assert!(busy, "s2's load not seen: {:?}", member(&bal, "s2"));
    drop(burner);

    // An allocation asks the agent for its settings; then s2 serves.
    bal.lbctl(&["server", "allocate", "s2"])?;
    let allocated = wait_until(Duration::from_secs(20), || {
        member(&bal, "s2").is_some_and(|m| m["state"] == "allocated")
    });
    assert!(allocated, "s2 not allocated: {:?}", bal.lbctl(&["pool"]));
    // s2 serves, and its agent counts its connections to the VIP.
    let client = lb_tests::balancer::workspace_bin("lab-client")?;
    let held = HoldSession::start(
        &lab.client.ns,
        client.to_str().unwrap_or("lab-client"),
        lab.vip4_addr(PORT),
        HELD,
        24000,
    )?;
    assert!(
        held.conns.iter().all(|c| c.server.is_some()),
        "{:?}",
        held.conns
    );
    let on_s2 = held
        .conns
        .iter()
        .filter(|c| c.server.as_deref() == Some("s2"))
        .count() as u64;
    assert!(on_s2 > 0, "s2 served none of {HELD}: {:?}", held.conns);
    let counted = wait_until(Duration::from_secs(10), || {
        member(&bal, "s2").is_some_and(|m| m["vip_established"].as_u64() == Some(on_s2))
    });
    assert!(
        counted,
        "s2 holds {on_s2} connections, its agent says {:?}",
        member(&bal, "s2")
    );
    held.quit()?;
    Ok(())
}
