//! Real servers with agents: a project CA with the manager's and every
//! server's certificate, each lab server in a cgroup of its own with a CFS
//! quota (its capacity), and `lb-agent` processes streaming to the manager
//! on the lab's node.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result};
use lb_agent::sources::{CgroupHandle, create_v1_cgroup};
use lb_proto::tls::{Pki, Role, SanEntry, Validity};

use crate::{
    balancer::{LAB_SEED, workspace_bin},
    lab::LabProcess,
    topo::Lab,
};

/// Port the manager listens for agents on, in every lab config.
pub const MANAGER_PORT: u16 = 7443;
/// CPU each lab server may use: its application can run hot while the
/// machine has room to spare.
pub const SERVER_QUOTA: f64 = 0.2;

/// The certificates and cgroups of a lab's servers.
pub struct Fleet {
    pub pki_dir: tempfile::TempDir,
    /// Per server, in `lab.servers` order: cgroup name and handle.
    pub cgroups: Vec<(String, CgroupHandle)>,
}

impl Fleet {
    /// Creates the CA, a `manager` certificate (also valid for the node's
    /// address), one client certificate per server, and puts each server's
    /// running `lab-server` into a cgroup of its own.
    pub fn new(lab: &mut Lab) -> Result<Self> {
        let quotas = vec![SERVER_QUOTA; lab.servers.len()];
        Self::with_quotas(lab, &quotas)
    }

    /// [`Fleet::new`] with each server's CPU quota, in `lab.servers` order.
    pub fn with_quotas(lab: &mut Lab, quotas: &[f64]) -> Result<Self> {
        let pki_dir = tempfile::tempdir()?;
        let pki = Pki::new(pki_dir.path());
        let day = Duration::from_secs(86_400);
        pki.init_ca("lab-ca", day, false)?;
        pki.issue(
            "manager",
            Role::Both,
            &[SanEntry::Ip(IpAddr::V4(lab.node.eth0.v4))],
            Validity::from_now(day),
        )?;
        let mut cgroups = Vec::new();
        let hosts: Vec<String> = lab.servers.iter().map(|h| h.name.clone()).collect();
        for (host, &quota) in hosts.into_iter().zip(quotas) {
            pki.issue(&host, Role::Client, &[], Validity::from_now(day))?;
            let name = format!("lbt-{}-{}-{host}", std::process::id(), lab.id);
            let cg = create_v1_cgroup(&name, quota).context("cgroup")?;
            let pid = lab.process(&host).context("server process")?.pid();
            cg.add_pid(pid)?;
            cgroups.push((name, cg));
        }
        Ok(Self { pki_dir, cgroups })
    }

    /// A lab of `quotas.len()` servers, each running `lab-server` on
    /// `port` in a cgroup with its CPU quota, the peer ends of the node's
    /// links passing, and the fleet's certificates.
    pub fn lab(quotas: &[f64], port: u16) -> Result<(Lab, Self)> {
        let mut lab = Lab::builder().servers(quotas.len()).build()?;
        let server = workspace_bin("lab-server")?;
        lab.start_servers(server.to_str().unwrap_or("lab-server"), &[port], &[])?;
        crate::balancer::attach_peer_pass(&mut lab)?;
        let fleet = Self::with_quotas(&mut lab, quotas)?;
        Ok((lab, fleet))
    }

    pub fn pki_dir(&self) -> &Path {
        self.pki_dir.path()
    }

    /// Issues another certificate from the lab CA (e.g. a remote node's).
    pub fn issue(&self, host: &str, role: Role, sans: &[SanEntry]) -> Result<()> {
        Pki::new(self.pki_dir()).issue(
            host,
            role,
            sans,
            Validity::from_now(Duration::from_secs(86_400)),
        )?;
        Ok(())
    }

    /// The agent config of server `i`: cgroup CPU utilization, the `web`
    /// application on `port` at the lab's first VIP, a TCP health probe.
    pub fn agent_config(&self, lab: &Lab, i: usize, port: u16, interval_ms: u64) -> String {
        let probe = format!(
            "{{ kind = \"tcp\", port = {port}, address = \"{}\" }}",
            lab.vip4()
        );
        self.agent_config_probing(lab, i, port, interval_ms, &probe)
    }

    /// [`Fleet::agent_config`] with another health probe (a TOML inline
    /// table).
    pub fn agent_config_probing(
        &self,
        lab: &Lab,
        i: usize,
        port: u16,
        interval_ms: u64,
        probe: &str,
    ) -> String {
        format!(
            "[agent]\nhost = \"{}\"\nmanager = \"{}:{MANAGER_PORT}\"\nmanager_name = \"manager\"\n\
             tls_dir = \"{}\"\nreport_interval_ms = {interval_ms}\ncontrol_port = 7444\n\n\
             [utilization]\nkind = \"cgroup-cpu\"\ncgroup = \"/{}\"\n\n\
             [[application]]\nname = \"web\"\nprotocol = \"tcp\"\nports = [{port}]\nvips = [\"{}\"]\n\
             probe = {probe}\n",
            lab.servers[i].name,
            lab.node.eth0.v4,
            self.pki_dir().display(),
            self.cgroups[i].0,
            lab.vip4(),
        )
    }

    /// Starts `lb-agent` for server `i` in its namespace.
    pub fn start_agent(
        &self,
        lab: &Lab,
        i: usize,
        port: u16,
        interval_ms: u64,
    ) -> Result<LabProcess> {
        self.start_agent_with(lab, i, &self.agent_config(lab, i, port, interval_ms))
    }

    /// Starts `lb-agent` for server `i` with the given config text.
    pub fn start_agent_with(&self, lab: &Lab, i: usize, config: &str) -> Result<LabProcess> {
        self.start_agent_env(lab, i, config, &[])
    }

    /// [`Fleet::start_agent_with`] with extra environment (`NAME=value`),
    /// e.g. the agent's test switches.
    pub fn start_agent_env(
        &self,
        lab: &Lab,
        i: usize,
        config: &str,
        env: &[&str],
    ) -> Result<LabProcess> {
        self.spawn_agent(lab, i, config, env, None)
    }

    /// [`Fleet::start_agent_with`] with the agent's log written to the file
    /// `log` instead of echoed.
    pub fn start_agent_logged(
        &self,
        lab: &Lab,
        i: usize,
        config: &str,
        log: &Path,
    ) -> Result<LabProcess> {
        self.spawn_agent(lab, i, config, &[], Some(log))
    }

    fn spawn_agent(
        &self,
        lab: &Lab,
        i: usize,
        config: &str,
        env: &[&str],
        log: Option<&Path>,
    ) -> Result<LabProcess> {
        let (bin, path) = self.agent_files(lab, i, config)?;
        let mut cmd = vec!["env"];
        cmd.extend_from_slice(env);
        cmd.extend([
            bin.to_str().unwrap_or("lb-agent"),
            "--config",
            path.to_str().unwrap_or_default(),
        ]);
        let ns = &lab.servers[i].ns;
        match log {
            Some(log) => ns.spawn_logged(&cmd, log),
            None => ns.spawn(&cmd),
        }
    }

    /// [`Fleet::start_agent_with`] as user `uid` and group `gid`, the way
    /// a systemd unit's `User=`, empty `CapabilityBoundingSet=` and
    /// `NoNewPrivileges=yes` start it: no supplementary groups, no
    /// capability in any set, the bounding set included, and no way to
    /// gain one. The user must be able to read the fleet's directory and
    /// server `i`'s key.
    pub fn start_agent_as(
        &self,
        lab: &Lab,
        i: usize,
        config: &str,
        uid: u32,
        gid: u32,
    ) -> Result<LabProcess> {
        let (bin, path) = self.agent_files(lab, i, config)?;
        let (reuid, regid) = (format!("--reuid={uid}"), format!("--regid={gid}"));
        let cmd = lab.servers[i].ns.command(&[
            "setpriv",
            &reuid,
            &regid,
            "--clear-groups",
            "--bounding-set=-all",
            "--inh-caps=-all",
            "--ambient-caps=-all",
            "--no-new-privs",
            "--",
            bin.to_str().unwrap_or("lb-agent"),
            "--config",
            path.to_str().unwrap_or_default(),
        ]);
        LabProcess::spawn(cmd, format!("lb-agent@{} as {uid}", lab.servers[i].name))
    }

    /// The agent's binary, and server `i`'s agent file written with
    /// `config` beside the certificates.
    fn agent_files(&self, lab: &Lab, i: usize, config: &str) -> Result<(PathBuf, PathBuf)> {
        let path = self
            .pki_dir()
            .join(format!("{}-agent.toml", lab.servers[i].name));
        std::fs::write(&path, config)?;
        Ok((workspace_bin("lb-agent")?, path))
    }
}

/// A manager's node serving `web` on the lab's first VIP, for [`manager_config`].
#[derive(Debug, Clone)]
pub struct ScaledService<'a> {
    pub port: u16,
    pub interval_ms: u64,
    /// The body of `[service.scaling]`.
    pub scaling: &'a str,
    /// More keys for `[manager]`.
    pub manager_keys: &'a str,
    /// `[[manager.node]]` entries: name, `host:port`.
    pub remote_nodes: &'a [(&'a str, String)],
    /// The first this many servers are allocated, the others free.
    pub allocated: usize,
}

impl<'a> ScaledService<'a> {
    /// A service on this node alone: agents reconnect within 500 ms (so
    /// failure verdicts need not wait out the default backoff).
    pub fn local(port: u16, interval_ms: u64, scaling: &'a str, allocated: usize) -> Self {
        Self {
            port,
            interval_ms,
            scaling,
            manager_keys: "agent_backoff_ms = 500",
            remote_nodes: &[],
            allocated,
        }
    }
}

/// The config of a node that also runs the manager (with comments, which
/// the manager's edits must keep).
pub fn manager_config(lab: &Lab, pki: &Path, s: &ScaledService<'_>) -> String {
    let mut c = format!(
        "[node]\ninterfaces = [\"eth0\"]\npin_dir = \"{{pin_dir}}\"\nsocket = \"{{socket}}\"\nhash_seed = {}\n\n\
         [limits]\nmax_services = 4\nmax_backends = 16\nflow_table_size = 4096\n\n\
         # The manager of this lab.\n\
         [manager]\nlisten = \"{}:{MANAGER_PORT}\"\nname = \"manager\"\ntls_dir = \"{}\"\nreport_interval_ms = {}\n\
         state_dir = \"{{state_dir}}\"\nack_timeout_ms = 3000\n{}\n",
        crate::balancer::LAB_SEED,
        lab.node.eth0.v4,
        pki.display(),
        s.interval_ms,
        s.manager_keys,
    );
    for (name, address) in s.remote_nodes {
        c += &format!("[[manager.node]]\nname = \"{name}\"\naddress = \"{address}\"\n\n");
    }
    c += &format!(
        "[[service]]\nname = \"web\"\nvip = \"{}\"\nport = {}\n[service.scaling]\n{}\n\n",
        lab.vip4(),
        s.port,
        s.scaling
    );
    for (i, h) in lab.servers.iter().enumerate() {
        let state = if i < s.allocated { "allocated" } else { "free" };
        c += &format!(
            "# {} is a lab server.\n[[server]]\nname = \"{}\"\naddress = \"{}\"\nservices = [\"web\"]\nstate = \"{state}\"\n\n",
            h.name, h.name, h.eth0.v4
        );
    }
    c
}

/// The port remote nodes listen on for their manager in the labs.
pub const NODE_PORT: u16 = 7301;

/// A remote node `node2` (`lab.node2`): no services of its own, everything
/// from the manager over mutual TLS on [`NODE_PORT`].
pub fn remote_node_config(lab: &Lab, pki: &Path) -> Result<String> {
    let n2 = lab.node2.as_ref().context("no node2")?;
    Ok(format!(
        "[node]\ninterfaces = [\"eth0\"]\npin_dir = \"{{pin_dir}}\"\nsocket = \"{{socket}}\"\nhash_seed = {LAB_SEED}\n\
         state_dir = \"{{state_dir}}\"\n\n\
         [node.control]\nlisten = \"{}:{NODE_PORT}\"\nname = \"node2\"\ntls_dir = \"{}\"\nmanagers = [\"manager\"]\n\n\
         [limits]\nmax_services = 4\nmax_backends = 16\nflow_table_size = 4096\n",
        n2.eth0.v4,
        pki.display()
    ))
}
