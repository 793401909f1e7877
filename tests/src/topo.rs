//! The standard data-plane topology.
//!
//! ```text
//!                 switch ns: bridge br0 (10.X.0.0/24, fd00:X::/64)
//!     client (.2) ----+---- node eth0 (.1) ----+---- s1 (.11) ... sN (.10+N)
//!
//!   optional second port, bridge br1 (10.X.1.0/24, fd00:X:1::/64):
//!                       node eth1 (10.X.1.1) ----- r1 (10.X.1.11)
//! ```
//!
//! Every server (`s1..sN`, `r1`) holds the VIPs (`10.X.100.k/32`,
//! `fd00:X:100::k/128`) on `lo` with `arp_ignore=1`, `arp_announce=2`. The
//! client routes the VIPs (and its default route) via the node, so
//! client→VIP packets reach the node; servers reply straight to the client
//! over the bridge (direct server return). `r1` is on another segment and
//! replies through the node, which forwards (IP forwarding is on in the
//! node only when the second port exists).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail};

use crate::apps::start_lab_server;
use crate::lab::{
    Bridge, IfConfig, LabProcess, Link, MacAddr, Netns, add_addr, add_route,
    cleanup_stale_namespaces, disable_tx_offload, veth_to_bridge,
};

static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Where the client routes the VIPs (and its default route).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum VipRoute {
    /// Via the node's eth0 addresses: traffic goes through the balancer.
    #[default]
    Node,
    /// Via `servers[i]`'s addresses: the client reaches that server
    /// directly, no balancer involved (to test the harness itself).
    Server(usize),
}

/// One interface of a lab host, plugged into a lab bridge.
#[derive(Clone, Debug)]
pub struct Iface {
    /// Name inside the host's namespace (`eth0`, `eth1`).
    pub name: String,
    pub mac: MacAddr,
    pub ifindex: u32,
    /// Address, prefix length 24.
    pub v4: Ipv4Addr,
    /// Address, prefix length 64.
    pub v6: Ipv6Addr,
    /// The bridge it is plugged into (in `Lab::switch`).
    pub bridge: String,
    /// The veth peer: the bridge port in `Lab::switch`.
    pub port: Link,
}

/// A namespace of the lab with its interfaces.
#[derive(Debug)]
pub struct Host {
    /// `client`, `node`, `s1`.., `r1`; servers greet with this name.
    pub name: String,
    pub ns: Netns,
    pub eth0: Iface,
    /// The node's second port (only with `second_port(true)`).
    pub eth1: Option<Iface>,
}

/// Builder for [`Lab`].
#[derive(Clone, Debug)]
pub struct LabBuilder {
    servers: usize,
    vips: usize,
    second_port: bool,
    vip_route: VipRoute,
    tx_offload: bool,
    second_node: bool,
}

impl Default for LabBuilder {
    fn default() -> Self {
        LabBuilder {
            servers: 2,
            vips: 1,
            second_port: false,
            vip_route: VipRoute::Node,
            tx_offload: false,
            second_node: false,
        }
    }
}

impl LabBuilder {
    /// Number of servers on the main segment (`s1..sN`), 1..=200; default 2.
    pub fn servers(mut self, n: usize) -> Self {
        self.servers = n;
        self
    }

    /// Number of VIPs of each family (`10.X.100.1..`, `fd00:X:100::1..`),
    /// 1..=200; default 1.
    pub fn vip_count(mut self, n: usize) -> Self {
        self.vips = n;
        self
    }

    /// Adds the node's `eth1` on a second bridge with server `r1` behind it.
    pub fn second_port(mut self, on: bool) -> Self {
        self.second_port = on;
        self
    }

    /// Adds a second balancer node `node2` (10.X.0.3, fd00:X::3) on the
    /// main segment; the client's VIP route still points at `node`.
    pub fn second_node(mut self, on: bool) -> Self {
        self.second_node = on;
        self
    }

    /// Where the client routes the VIPs; default [`VipRoute::Node`].
    pub fn vip_route(mut self, route: VipRoute) -> Self {
        self.vip_route = route;
        self
    }

    /// Shortcut for `vip_route(VipRoute::Server(i))`.
    pub fn client_direct_to_server(self, i: usize) -> Self {
        self.vip_route(VipRoute::Server(i))
    }

    /// Keep transmit checksum offload on the client's and servers' eth0
    /// (default: turned off there, see `lab::disable_tx_offload`). The node
    /// is never touched.
    pub fn tx_offload(mut self, on: bool) -> Self {
        self.tx_offload = on;
        self
    }

    /// Creates everything. On error, whatever was created is removed again.
    pub fn build(self) -> Result<Lab> {
        if !(1..=200).contains(&self.servers) || !(1..=200).contains(&self.vips) {
            bail!("servers and vip_count must be in 1..=200");
        }
        if let VipRoute::Server(i) = self.vip_route
            && i >= self.servers
        {
            bail!("VipRoute::Server({i}) but only {} servers", self.servers);
        }
        let stale = cleanup_stale_namespaces();
        if !stale.is_empty() {
            eprintln!("lab: removed stale namespaces {stale:?}");
        }
        let n = LAB_COUNTER.fetch_add(1, Ordering::Relaxed);
        let id = u8::try_from(1 + (std::process::id().wrapping_mul(7).wrapping_add(n)) % 250)?;
        build(&self, id).with_context(|| format!("building lab {id}"))
    }
}

/// `10.X.seg.host`.
pub fn lab_v4(id: u8, seg: u8, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, id, seg, host)
}

/// `fd00:X:seg::host`, the decimal numbers written as hex groups (so
/// `fd00:12::11` is host 11 of lab 12).
pub fn lab_v6(id: u8, seg: u8, host: u8) -> Ipv6Addr {
    let g = |n: u8| u16::from_str_radix(&n.to_string(), 16).unwrap_or(0);
    if seg == 0 {
        Ipv6Addr::new(0xfd00, g(id), 0, 0, 0, 0, 0, g(host))
    } else {
        Ipv6Addr::new(0xfd00, g(id), g(seg), 0, 0, 0, 0, g(host))
    }
}

fn lab_mac(id: u8, seg: u8, host: u8) -> MacAddr {
    MacAddr([0x02, 0x1b, id, seg, 0, host])
}

const SEG_MAIN: u8 = 0;
const SEG_SECOND: u8 = 1;
const VIP_SEG: u8 = 100;
const NODE_HOST: u8 = 1;
const CLIENT_HOST: u8 = 2;
const NODE2_HOST: u8 = 3;
const SERVER_HOST0: u8 = 11;

fn base_sysctls(ns: &Netns) -> Result<()> {
    for fam in ["all", "default"] {
        ns.sysctl(&format!("net.ipv6.conf.{fam}.accept_dad"), "0")?;
        ns.sysctl(&format!("net.ipv4.conf.{fam}.rp_filter"), "0")?;
    }
    Ok(())
}

fn plug(
    ns: &Netns,
    ifname: &str,
    bridge: &Bridge,
    port: &str,
    id: u8,
    seg: u8,
    host: u8,
) -> Result<Iface> {
    let v4 = lab_v4(id, seg, host);
    let v6 = lab_v6(id, seg, host);
    let cfg = IfConfig::new(ifname)
        .mac(lab_mac(id, seg, host))
        .addr(v4, 24)
        .addr(v6, 64);
    let (end, port) = veth_to_bridge(ns, &cfg, bridge, port)?;
    Ok(Iface {
        name: ifname.to_owned(),
        mac: end.mac,
        ifindex: end.ifindex,
        v4,
        v6,
        bridge: bridge.name.clone(),
        port,
    })
}

fn server_host(
    b: &LabBuilder,
    id: u8,
    name: &str,
    bridge: &Bridge,
    seg: u8,
    host: u8,
) -> Result<Host> {
    let ns = Netns::new(name)?;
    base_sysctls(&ns)?;
    for conf in ["all", "default"] {
        ns.sysctl(&format!("net.ipv4.conf.{conf}.arp_ignore"), "1")?;
        ns.sysctl(&format!("net.ipv4.conf.{conf}.arp_announce"), "2")?;
    }
    let eth0 = plug(&ns, "eth0", bridge, name, id, seg, host)?;
    ns.sysctl("net.ipv4.conf.eth0.arp_ignore", "1")?;
    ns.sysctl("net.ipv4.conf.eth0.arp_announce", "2")?;
    for k in 1..=b.vips {
        let k = u8::try_from(k)?;
        add_addr(&ns, "lo", lab_v4(id, VIP_SEG, k).into(), 32)?;
        add_addr(&ns, "lo", lab_v6(id, VIP_SEG, k).into(), 128)?;
    }
    if !b.tx_offload {
        disable_tx_offload(&ns, "eth0")?;
    }
    Ok(Host {
        name: name.to_owned(),
        ns,
        eth0,
        eth1: None,
    })
}

fn build(b: &LabBuilder, id: u8) -> Result<Lab> {
    let switch = Netns::new("sw")?;
    let br0 = Bridge::new(&switch, "br0")?;
    let br1 = if b.second_port {
        Some(Bridge::new(&switch, "br1")?)
    } else {
        None
    };

    let client_ns = Netns::new("client")?;
    base_sysctls(&client_ns)?;
    let client_eth0 = plug(
        &client_ns,
        "eth0",
        &br0,
        "client",
        id,
        SEG_MAIN,
        CLIENT_HOST,
    )?;
    let client = Host {
        name: "client".to_owned(),
        ns: client_ns,
        eth0: client_eth0,
        eth1: None,
    };

    let node_ns = Netns::new("node")?;
    base_sysctls(&node_ns)?;
    let node_eth0 = plug(&node_ns, "eth0", &br0, "node0", id, SEG_MAIN, NODE_HOST)?;
    let node_eth1 = match &br1 {
        Some(br1) => {
            node_ns.sysctl("net.ipv4.ip_forward", "1")?;
            node_ns.sysctl("net.ipv6.conf.all.forwarding", "1")?;
            Some(plug(
                &node_ns, "eth1", br1, "node1", id, SEG_SECOND, NODE_HOST,
            )?)
        }
        None => None,
    };
    let node = Host {
        name: "node".to_owned(),
        ns: node_ns,
        eth0: node_eth0,
        eth1: node_eth1,
    };

    let node2 = if b.second_node {
        let ns = Netns::new("node2")?;
        base_sysctls(&ns)?;
        let eth0 = plug(&ns, "eth0", &br0, "node2", id, SEG_MAIN, NODE2_HOST)?;
        Some(Host {
            name: "node2".to_owned(),
            ns,
            eth0,
            eth1: None,
        })
    } else {
        None
    };

    let mut servers = Vec::with_capacity(b.servers);
    for i in 0..b.servers {
        let host = SERVER_HOST0 + u8::try_from(i)?;
        servers.push(server_host(
            b,
            id,
            &format!("s{}", i + 1),
            &br0,
            SEG_MAIN,
            host,
        )?);
    }
    let redirect_server = match &br1 {
        Some(br1) => {
            let r = server_host(b, id, "r1", br1, SEG_SECOND, SERVER_HOST0)?;
            let via4 = IpAddr::V4(lab_v4(id, SEG_SECOND, NODE_HOST));
            let via6 = IpAddr::V6(lab_v6(id, SEG_SECOND, NODE_HOST));
            add_route(&r.ns, &format!("{}/24", lab_v4(id, SEG_MAIN, 0)), via4)?;
            add_route(&r.ns, &format!("{}/64", lab_v6(id, SEG_MAIN, 0)), via6)?;
            Some(r)
        }
        None => None,
    };

    let (gw4, gw6) = match b.vip_route {
        VipRoute::Node => (node.eth0.v4, node.eth0.v6),
        VipRoute::Server(i) => (servers[i].eth0.v4, servers[i].eth0.v6),
    };
    let vips_v4: Vec<Ipv4Addr> = (1..=b.vips)
        .map(|k| u8::try_from(k).map(|k| lab_v4(id, VIP_SEG, k)))
        .collect::<Result<_, _>>()?;
    let vips_v6: Vec<Ipv6Addr> = (1..=b.vips)
        .map(|k| u8::try_from(k).map(|k| lab_v6(id, VIP_SEG, k)))
        .collect::<Result<_, _>>()?;
    for vip in &vips_v4 {
        add_route(&client.ns, &format!("{vip}/32"), gw4.into())?;
    }
    for vip in &vips_v6 {
        add_route(&client.ns, &format!("{vip}/128"), gw6.into())?;
    }
    add_route(&client.ns, "default", gw4.into())?;
    add_route(&client.ns, "default", gw6.into())?;
    if !b.tx_offload {
        disable_tx_offload(&client.ns, "eth0")?;
    }

    Ok(Lab {
        procs: Vec::new(),
        server_args: Vec::new(),
        id,
        vips_v4,
        vips_v6,
        net_v4: lab_v4(id, SEG_MAIN, 0),
        net_v6: lab_v6(id, SEG_MAIN, 0),
        vip_route: b.vip_route,
        redirect_server,
        servers,
        node,
        node2,
        client,
        bridge: br0.name,
        bridge2: br1.map(|b| b.name),
        switch,
    })
}

/// A built lab. Dropping it kills the processes it owns, then deletes the
/// namespaces (servers, node, client, switch; veths go with them).
#[derive(Debug)]
pub struct Lab {
    procs: Vec<(String, LabProcess)>,
    /// Extra arguments `start_server` gives `lab-server` (e.g.
    /// `--work-us 2000`).
    pub server_args: Vec<String>,
    /// The per-lab number X in `10.X.0.0/24` and `fd00:X::/64`.
    pub id: u8,
    /// `10.X.100.1`, `10.X.100.2`, ...
    pub vips_v4: Vec<Ipv4Addr>,
    /// `fd00:X:100::1`, ...
    pub vips_v6: Vec<Ipv6Addr>,
    /// `10.X.0.0` (prefix 24): client, node eth0, servers.
    pub net_v4: Ipv4Addr,
    /// `fd00:X::` (prefix 64).
    pub net_v6: Ipv6Addr,
    pub vip_route: VipRoute,
    /// `r1` behind the node's eth1 (10.X.1.11, fd00:X:1::11).
    pub redirect_server: Option<Host>,
    /// `s1..sN` (10.X.0.11.., fd00:X::11..).
    pub servers: Vec<Host>,
    /// The balancer's namespace: eth0 10.X.0.1 / fd00:X::1, optional eth1
    /// 10.X.1.1 / fd00:X:1::1.
    pub node: Host,
    /// A second balancer node (`second_node`): 10.X.0.3 / fd00:X::3.
    pub node2: Option<Host>,
    /// 10.X.0.2 / fd00:X::2.
    pub client: Host,
    /// Main bridge (`br0`) in `switch`.
    pub bridge: String,
    /// Second bridge (`br1`) in `switch`, with the second port.
    pub bridge2: Option<String>,
    /// The namespace holding the bridges and every veth's bridge-side end.
    pub switch: Netns,
}

impl Lab {
    /// A builder with the defaults (2 servers, 1 VIP, no second port,
    /// VIPs routed via the node, tx checksum offload off).
    pub fn builder() -> LabBuilder {
        LabBuilder::default()
    }

    /// The first IPv4 VIP.
    pub fn vip4(&self) -> Ipv4Addr {
        self.vips_v4[0]
    }

    /// The first IPv6 VIP.
    pub fn vip6(&self) -> Ipv6Addr {
        self.vips_v6[0]
    }

    /// `vip4():port`.
    pub fn vip4_addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.vip4().into(), port)
    }

    /// `[vip6()]:port`.
    pub fn vip6_addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.vip6().into(), port)
    }

    /// `servers` then `redirect_server`.
    pub fn all_servers(&self) -> impl Iterator<Item = &Host> {
        self.servers.iter().chain(self.redirect_server.as_ref())
    }

    /// Any host by name (`client`, `node`, `s1`, `r1`).
    pub fn host(&self, name: &str) -> Option<&Host> {
        [&self.client, &self.node]
            .into_iter()
            .chain(self.node2.as_ref())
            .chain(self.all_servers())
            .find(|h| h.name == name)
    }

    /// Starts `lab-server` (path `server_bin`) in every server namespace,
    /// named after the host, listening on every VIP (both families) on each
    /// TCP and UDP port; waits for each to be ready. The lab owns them.
    pub fn start_servers(
        &mut self,
        server_bin: &str,
        tcp_ports: &[u16],
        udp_ports: &[u16],
    ) -> Result<()> {
        let names: Vec<String> = self.all_servers().map(|h| h.name.clone()).collect();
        for name in names {
            self.start_server(&name, server_bin, tcp_ports, udp_ports)?;
        }
        Ok(())
    }

    /// [`Lab::start_servers`] for one server (e.g. to restart it after
    /// [`Lab::stop_process`]).
    pub fn start_server(
        &mut self,
        name: &str,
        server_bin: &str,
        tcp_ports: &[u16],
        udp_ports: &[u16],
    ) -> Result<()> {
        let host = self.host(name).with_context(|| format!("no host {name}"))?;
        let vips: Vec<IpAddr> = self
            .vips_v4
            .iter()
            .map(|&v| IpAddr::V4(v))
            .chain(self.vips_v6.iter().map(|&v| IpAddr::V6(v)))
            .collect();
        let tcp: Vec<SocketAddr> = vips
            .iter()
            .flat_map(|&v| tcp_ports.iter().map(move |&p| SocketAddr::new(v, p)))
            .collect();
        let udp: Vec<SocketAddr> = vips
            .iter()
            .flat_map(|&v| udp_ports.iter().map(move |&p| SocketAddr::new(v, p)))
            .collect();
        let proc = start_lab_server(&host.ns, server_bin, name, &tcp, &udp, &self.server_args)?;
        self.adopt(name, proc);
        Ok(())
    }

    /// Hands a process to the lab: it is killed before the namespaces are
    /// deleted. `key` names it for [`Lab::stop_process`] and
    /// [`Lab::process`].
    pub fn adopt(&mut self, key: &str, proc: LabProcess) {
        self.procs.push((key.to_owned(), proc));
    }

    /// The (first) adopted process under `key`.
    pub fn process(&mut self, key: &str) -> Option<&mut LabProcess> {
        self.procs
            .iter_mut()
            .find(|(k, _)| k == key)
            .map(|(_, p)| p)
    }

    /// Kills and forgets every adopted process under `key` (a server is
    /// adopted under its host name). Returns how many there were.
    pub fn stop_process(&mut self, key: &str) -> usize {
        let before = self.procs.len();
        self.procs.retain(|(k, _)| k != key);
        before - self.procs.len()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Processes first (reverse start order); the namespaces are then
        // dropped field by field: servers, node, client, switch.
        while let Some((_, mut p)) = self.procs.pop() {
            if let Err(e) = p.kill() {
                eprintln!("lab: {e:#}");
            }
        }
    }
}
