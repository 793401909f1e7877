//! Running the real balancer in a lab: `lb-control` in the node namespace,
//! `lbctl` against it, configs written for the lab, and predictions of where
//! a flow lands computed with `lb-common` (the same code the node uses).

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use lb_common::{FlowKey, NO_BACKEND, flow_hash, maglev};

use crate::{
    lab::{LabProcess, Netns},
    topo::Lab,
};

/// Hash seed every lab config uses.
pub const LAB_SEED: u32 = 0x1ab5_eed0;

/// Directory of the workspace's built binaries (next to this test's).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let deps = exe.parent().expect("exe dir");
    if deps.ends_with("deps") {
        deps.parent().expect("target dir").to_path_buf()
    } else {
        deps.to_path_buf()
    }
}

/// Path of a workspace binary; fails with what to run when it is missing.
pub fn workspace_bin(name: &str) -> Result<PathBuf> {
    let path = bin_dir().join(name);
    if !path.exists() {
        bail!(
            "{} not built; run the tests with `cargo xtask test` (it builds every binary first)",
            path.display()
        );
    }
    Ok(path)
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A running `lb-control` in a lab's node namespace. Dropping it kills the
/// process (only it, by pid) and detaches the program, removing every pin.
pub struct Balancer {
    pub process: Option<LabProcess>,
    pub config_path: PathBuf,
    pub socket: PathBuf,
    pub pin_dir: PathBuf,
    pub work: PathBuf,
    ns: String,
    /// The file-mode creation mask `lb-control` starts under (the test
    /// process's when `None`).
    umask: Option<libc::mode_t>,
    /// The only capabilities `lb-control` may have (`setpriv`'s
    /// `--bounding-set` list, e.g. `+bpf,+net_admin`); all of root's when
    /// `None`.
    pub capabilities: Option<String>,
    /// The file `lb-control`'s stderr (its log) goes to; echoed to the
    /// test's stderr when `None`.
    pub log: Option<PathBuf>,
}

impl Balancer {
    /// Writes `config` (TOML) and starts `lb-control run` in the node ns.
    /// `config` may use `{pin_dir}`, `{socket}` and `{state_dir}` (the
    /// manager's and node's state directory, under the work directory)
    /// placeholders.
    pub fn start(lab: &Lab, config: &str) -> Result<Self> {
        Self::start_on(lab, &lab.node, config)
    }

    /// [`Balancer::start`] on another node host (`lab.node2`).
    pub fn start_on(lab: &Lab, host: &crate::topo::Host, config: &str) -> Result<Self> {
        Self::start_with(lab, host, config, None, None)
    }

    /// [`Balancer::start`] with `lb-control` under file-mode creation mask
    /// `umask` (e.g. 0: everything it creates would be world-writable if
    /// it relied on the mask).
    pub fn start_under_umask(lab: &Lab, config: &str, umask: libc::mode_t) -> Result<Self> {
        Self::start_with(lab, &lab.node, config, Some(umask), None)
    }

    /// [`Balancer::start`] with only the capabilities `caps` (a `setpriv
    /// --bounding-set` list such as `+bpf,+net_admin`), as a systemd unit's
    /// `CapabilityBoundingSet` leaves it.
    pub fn start_with_capabilities(lab: &Lab, config: &str, caps: &str) -> Result<Self> {
        Self::start_with(lab, &lab.node, config, None, Some(caps.to_owned()))
    }

    /// [`Balancer::start`] with `lb-control`'s log written to the file
    /// `log` (kept after the balancer is dropped).
    pub fn start_logged(lab: &Lab, config: &str, log: &Path) -> Result<Self> {
        let mut b = Self::prepare(lab, &lab.node, config, None, None)?;
        b.log = Some(log.to_path_buf());
        b.launch()?;
        Ok(b)
    }

    fn start_with(
        lab: &Lab,
        host: &crate::topo::Host,
        config: &str,
        umask: Option<libc::mode_t>,
        capabilities: Option<String>,
    ) -> Result<Self> {
        let mut b = Self::prepare(lab, host, config, umask, capabilities)?;
        b.launch()?;
        Ok(b)
    }

    /// The work directory, pin directory and config file of a balancer
    /// on `host`, not yet started.
    fn prepare(
        lab: &Lab,
        host: &crate::topo::Host,
        config: &str,
        umask: Option<libc::mode_t>,
        capabilities: Option<String>,
    ) -> Result<Self> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tag = format!("lbt{}-{}-{n}", std::process::id(), lab.id);
        let work = std::env::temp_dir().join(&tag);
        std::fs::create_dir_all(&work)?;
        let pin_dir = PathBuf::from("/sys/fs/bpf").join(&tag);
        let socket = work.join("control.sock");
        let b = Self {
            process: None,
            config_path: work.join("lb.toml"),
            socket,
            pin_dir,
            work,
            ns: host.ns.name().to_string(),
            umask,
            capabilities,
            log: None,
        };
        b.write_config(config)?;
        Ok(b)
    }

    /// Replaces the config file (placeholders filled in).
    pub fn write_config(&self, config: &str) -> Result<()> {
        let text = config
            .replace("{pin_dir}", &self.pin_dir.display().to_string())
            .replace("{socket}", &self.socket.display().to_string())
            .replace("{state_dir}", &self.state_dir().display().to_string());
        std::fs::write(&self.config_path, text)?;
        Ok(())
    }

    /// The state directory `{state_dir}` names.
    pub fn state_dir(&self) -> PathBuf {
        self.work.join("state")
    }

    /// Starts `lb-control run` in the node namespace (nsenter: the host's
    /// mount namespace and its bpffs stay) and waits for it to be ready.
    pub fn launch(&mut self) -> Result<()> {
        self.launch_with_env(&[])
    }

    /// [`Balancer::launch`] with extra environment (e.g. `LB_FAILPOINT`).
    pub fn launch_with_env(&mut self, env: &[(&str, &str)]) -> Result<()> {
        let bin = workspace_bin("lb-control")?;
        let mut cmd = std::process::Command::new("nsenter");
        cmd.arg(format!("--net=/var/run/netns/{}", self.ns))
            .arg("--");
        if let Some(caps) = &self.capabilities {
            cmd.arg("setpriv")
                .arg(format!("--bounding-set=-all,{caps}"))
                .arg("--inh-caps=-all")
                .arg("--");
        }
        cmd.arg(bin)
            .args(["run", "--config"])
            .arg(&self.config_path);
        for (k, v) in env {
            cmd.env(k, v);
        }
        if let Some(mask) = self.umask {
            use std::os::unix::process::CommandExt as _;
            // SAFETY: umask is async-signal-safe and touches no memory.
            unsafe {
                cmd.pre_exec(move || {
                    libc::umask(mask);
                    Ok(())
                });
            }
        }
        let mut p = match &self.log {
            Some(log) => LabProcess::spawn_logged(cmd, "lb-control".into(), log)?,
            None => LabProcess::spawn(cmd, "lb-control".into())?,
        };
        p.wait_for_line("ready", Duration::from_secs(30))
            .context("lb-control did not become ready")?;
        self.process = Some(p);
        Ok(())
    }

    /// kill -9 of the daemon (only our child).
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut p) = self.process.take() {
            p.kill()?;
        }
        Ok(())
    }

    /// One request line of the control API (`{"request": ...}`) sent to
    /// the daemon's socket as a script would, and its response line, parsed.
    pub fn request(&self, line: &str) -> Result<serde_json::Value> {
        use std::io::{BufRead as _, Write as _};
        let mut stream = std::os::unix::net::UnixStream::connect(&self.socket)?;
        stream.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
        stream.write_all(format!("{line}\n").as_bytes())?;
        let mut response = String::new();
        std::io::BufReader::new(stream).read_line(&mut response)?;
        Ok(serde_json::from_str(&response)?)
    }

    /// `lbctl --json ARGS...`, parsed.
    pub fn lbctl(&self, args: &[&str]) -> Result<serde_json::Value> {
        let bin = workspace_bin("lbctl")?;
        let out = std::process::Command::new(bin)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--json")
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "lbctl {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// `lbctl ARGS...` as an operator reads it (no `--json`): its stdout.
    pub fn lbctl_text(&self, args: &[&str]) -> Result<String> {
        let bin = workspace_bin("lbctl")?;
        let out = std::process::Command::new(bin)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "lbctl {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Writes a new config and applies it with `lbctl config reload`.
    pub fn reload(&self, config: &str) -> Result<serde_json::Value> {
        self.write_config(config)?;
        self.lbctl(&["config", "reload"])
    }

    /// A global counter by name (`pass`, `drop`, `error`, `tx`, ...).
    pub fn counter(&self, name: &str) -> Result<u64> {
        let stats = self.lbctl(&["stats"])?;
        stats["global"]
            .as_array()
            .and_then(|a| {
                a.iter()
                    .find(|e| e[0].as_str() == Some(name))
                    .and_then(|e| e[1].as_u64())
            })
            .ok_or_else(|| anyhow!("no counter {name} in {stats}"))
    }

    /// Program id attached to an interface in the node namespace.
    pub fn attached_program_id(ns: &Netns, interface: &str) -> Result<Option<u32>> {
        let out = ns.exec_stdout(&["ip", "-j", "link", "show", "dev", interface])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        Ok(v[0]["xdp"]["prog"]["id"].as_u64().map(|id| id as u32))
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.kill9();
        if let Ok(bin) = workspace_bin("lb-control") {
            let path = PathBuf::from("/var/run/netns").join(&self.ns);
            let _ = std::process::Command::new("nsenter")
                .arg(format!("--net={}", path.display()))
                .arg("--")
                .arg(bin)
                .args(["detach", "--config"])
                .arg(&self.config_path)
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

/// One server in a predicted pool.
#[derive(Debug, Clone)]
pub struct PoolMember {
    pub name: String,
    pub address: IpAddr,
    pub weight: u32,
}

/// The Maglev table a node builds for `members` (owner names per cell).
pub fn predict_table(members: &[PoolMember], size: u32) -> Result<Vec<Option<String>>> {
    let ids: Vec<Vec<u8>> = members
        .iter()
        .map(|m| match m.address {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        })
        .collect();
    let list: Vec<maglev::Member<'_>> = members
        .iter()
        .zip(&ids)
        .map(|(m, id)| maglev::Member {
            identity: id,
            weight: m.weight,
        })
        .collect();
    let table = maglev::build_table(&list, size).map_err(|e| anyhow!("maglev: {e:?}"))?;
    Ok(table
        .into_iter()
        .map(|c| (c != NO_BACKEND).then(|| members[c as usize].name.clone()))
        .collect())
}

/// The server a new client → VIP TCP flow lands on.
pub fn predict_flow(
    table: &[Option<String>],
    client: IpAddr,
    sport: u16,
    vip: IpAddr,
    dport: u16,
) -> Option<String> {
    let key = match (client, vip) {
        (IpAddr::V4(c), IpAddr::V4(v)) => {
            FlowKey::new(&c.octets(), sport, &v.octets(), dport, lb_common::PROTO_TCP)
        }
        (IpAddr::V6(c), IpAddr::V6(v)) => {
            FlowKey::new(&c.octets(), sport, &v.octets(), dport, lb_common::PROTO_TCP)
        }
        _ => return None,
    };
    let h = flow_hash(&key, LAB_SEED);
    table[(h % table.len() as u32) as usize].clone()
}

/// `count` fresh TCP connections from the lab's client to its first IPv4
/// VIP on `port`, with the workspace's `lab-client`.
pub fn burst_to_vip(lab: &Lab, port: u16, count: usize) -> Result<crate::BurstReport> {
    let client = workspace_bin("lab-client")?;
    crate::run_burst(
        &lab.client.ns,
        client.to_str().unwrap_or("lab-client"),
        &crate::BurstOpts::new(lab.vip4_addr(port), count),
    )
}

/// Polls `f` until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// Attaches the bare `xdp_pass` program to the lab's switch-side ports of
/// the node (needed for `XDP_TX` / redirect on veth to reach the bridge).
pub fn attach_peer_pass(lab: &mut Lab) -> Result<()> {
    let bin = workspace_bin("lab-xdp-pass")?;
    let mut ports = vec![lab.node.eth0.port.name.clone()];
    if let Some(e1) = &lab.node.eth1 {
        ports.push(e1.port.name.clone());
    }
    let mut args: Vec<&str> = vec![bin.to_str().unwrap_or("lab-xdp-pass")];
    args.extend(ports.iter().map(String::as_str));
    let mut p = lab.switch.spawn(&args)?;
    p.wait_for_line("ready", Duration::from_secs(20))?;
    lab.adopt("xdp-pass", p);
    Ok(())
}

/// `Path` of a file in the balancer's work dir.
pub fn work_file(b: &Balancer, name: &str) -> PathBuf {
    Path::new(&b.work).join(name)
}
