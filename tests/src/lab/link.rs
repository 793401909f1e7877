//! Interfaces: MAC addresses, bridges, veth pairs, addresses.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use anyhow::{Context, Result, bail};

use super::netns::{Netns, host_cmd};

/// An Ethernet address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The six bytes.
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for MacAddr {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let p = parts.next().with_context(|| format!("bad MAC {s:?}"))?;
            *byte = u8::from_str_radix(p, 16).with_context(|| format!("bad MAC {s:?}"))?;
        }
        if parts.next().is_some() {
            bail!("bad MAC {s:?}");
        }
        Ok(MacAddr(out))
    }
}

/// An interface as seen inside a namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// Name of the namespace holding it.
    pub netns: String,
    /// Interface name inside that namespace.
    pub name: String,
    pub mac: MacAddr,
    pub ifindex: u32,
}

/// Reads the MAC and ifindex of `ifname` inside `ns` (`ip -j link show`).
pub fn link_info(ns: &Netns, ifname: &str) -> Result<Link> {
    let out = ns.exec_stdout(&["ip", "-j", "link", "show", "dev", ifname])?;
    let v: serde_json::Value =
        serde_json::from_str(&out).with_context(|| format!("parsing `ip -j link`: {out}"))?;
    let entry = v.get(0).with_context(|| format!("no link {ifname}"))?;
    let ifindex = entry
        .get("ifindex")
        .and_then(serde_json::Value::as_u64)
        .with_context(|| format!("no ifindex for {ifname}: {entry}"))?;
    let mac = entry
        .get("address")
        .and_then(serde_json::Value::as_str)
        .with_context(|| format!("no address for {ifname}: {entry}"))?
        .parse()?;
    Ok(Link {
        netns: ns.name().to_owned(),
        name: ifname.to_owned(),
        mac,
        ifindex: u32::try_from(ifindex)?,
    })
}

/// How to set up one end of a veth pair.
#[derive(Clone, Debug, Default)]
pub struct IfConfig {
    /// Name inside its namespace (`eth0`, `eth1`, ...).
    pub name: String,
    /// MAC to set; `None` keeps the kernel's random one (read back).
    pub mac: Option<MacAddr>,
    /// Addresses with prefix length; IPv6 ones are added with `nodad`.
    pub addrs: Vec<(IpAddr, u8)>,
}

impl IfConfig {
    pub fn new(name: &str) -> IfConfig {
        IfConfig {
            name: name.to_owned(),
            ..IfConfig::default()
        }
    }

    pub fn mac(mut self, mac: MacAddr) -> IfConfig {
        self.mac = Some(mac);
        self
    }

    pub fn addr(mut self, addr: impl Into<IpAddr>, prefix: u8) -> IfConfig {
        self.addrs.push((addr.into(), prefix));
        self
    }
}

/// A Linux bridge inside a namespace, either a given one or its own.
#[derive(Debug)]
pub struct Bridge {
    /// Bridge device name.
    pub name: String,
    netns: String,
    // Set by `new_switch`: the namespace is deleted with the bridge.
    owned_ns: Option<Netns>,
}

impl Bridge {
    /// Creates bridge `name` inside `ns` (STP off, multicast snooping off,
    /// up). Deleted together with `ns`.
    pub fn new(ns: &Netns, name: &str) -> Result<Bridge> {
        create_bridge(ns, name)?;
        Ok(Bridge {
            name: name.to_owned(),
            netns: ns.name().to_owned(),
            owned_ns: None,
        })
    }

    /// Creates a "switch" namespace (`lbt-<prefix>-...`) holding only bridge
    /// `name`; the namespace is deleted when the bridge is dropped.
    pub fn new_switch(prefix: &str, name: &str) -> Result<Bridge> {
        let ns = Netns::new(prefix)?;
        create_bridge(&ns, name)?;
        Ok(Bridge {
            name: name.to_owned(),
            netns: ns.name().to_owned(),
            owned_ns: Some(ns),
        })
    }

    /// Name of the namespace holding the bridge.
    pub fn netns_name(&self) -> &str {
        &self.netns
    }

    /// The namespace when the bridge owns it ([`Bridge::new_switch`]).
    pub fn owned_netns(&self) -> Option<&Netns> {
        self.owned_ns.as_ref()
    }
}

fn create_bridge(ns: &Netns, name: &str) -> Result<()> {
    ns.exec(&[
        "ip",
        "link",
        "add",
        name,
        "type",
        "bridge",
        "stp_state",
        "0",
        "forward_delay",
        "0",
        "mcast_snooping",
        "0",
    ])?;
    ns.exec(&["ip", "link", "set", name, "up"])?;
    Ok(())
}

/// Connects namespaces `a` and `b` with a veth pair, configured per `ca` and
/// `cb` (names, MACs, addresses), both ends up. Returns both ends as read
/// back.
pub fn veth(a: &Netns, ca: &IfConfig, b: &Netns, cb: &IfConfig) -> Result<(Link, Link)> {
    host_cmd(&[
        "ip",
        "link",
        "add",
        &ca.name,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        &cb.name,
        "netns",
        b.name(),
    ])
    .with_context(|| format!("veth {}/{} - {}/{}", a.name(), ca.name, b.name(), cb.name))?;
    configure(a, ca)?;
    configure(b, cb)?;
    Ok((link_info(a, &ca.name)?, link_info(b, &cb.name)?))
}

/// Connects `ns` to `bridge` with a veth pair: `cfg` inside `ns`, and
/// `port_name` (at most 15 bytes, unique in the bridge's namespace) as the
/// bridge port, up. Returns (end in `ns`, bridge port).
pub fn veth_to_bridge(
    ns: &Netns,
    cfg: &IfConfig,
    bridge: &Bridge,
    port_name: &str,
) -> Result<(Link, Link)> {
    veth_to_bridge_in(ns, cfg, bridge.netns_name(), &bridge.name, port_name)
}

/// [`veth_to_bridge`] naming the bridge by namespace and device name.
pub(crate) fn veth_to_bridge_in(
    ns: &Netns,
    cfg: &IfConfig,
    bridge_netns: &str,
    bridge: &str,
    port_name: &str,
) -> Result<(Link, Link)> {
    host_cmd(&[
        "ip",
        "link",
        "add",
        &cfg.name,
        "netns",
        ns.name(),
        "type",
        "veth",
        "peer",
        "name",
        port_name,
        "netns",
        bridge_netns,
    ])
    .with_context(|| format!("veth {}/{} - bridge {bridge}", ns.name(), cfg.name))?;
    let nsarg = format!("{}/{bridge_netns}", super::netns::NETNS_DIR);
    host_cmd(&[
        "nsenter",
        &format!("--net={nsarg}"),
        "--",
        "ip",
        "link",
        "set",
        port_name,
        "master",
        bridge,
        "up",
    ])?;
    configure(ns, cfg)?;
    let port_out = host_cmd(&[
        "nsenter",
        &format!("--net={nsarg}"),
        "--",
        "ip",
        "-j",
        "link",
        "show",
        "dev",
        port_name,
    ])?;
    let v: serde_json::Value = serde_json::from_slice(&port_out.stdout)?;
    let port = Link {
        netns: bridge_netns.to_owned(),
        name: port_name.to_owned(),
        mac: v[0]["address"]
            .as_str()
            .context("bridge port address")?
            .parse()?,
        ifindex: u32::try_from(v[0]["ifindex"].as_u64().context("bridge port ifindex")?)?,
    };
    Ok((link_info(ns, &cfg.name)?, port))
}

/// Sets MAC, addresses (IPv6 with `nodad`) and link up.
fn configure(ns: &Netns, cfg: &IfConfig) -> Result<()> {
    if let Some(mac) = cfg.mac {
        ns.exec(&[
            "ip",
            "link",
            "set",
            "dev",
            &cfg.name,
            "address",
            &mac.to_string(),
        ])?;
    }
    for (addr, prefix) in &cfg.addrs {
        add_addr(ns, &cfg.name, *addr, *prefix)?;
    }
    ns.exec(&["ip", "link", "set", "dev", &cfg.name, "up"])?;
    Ok(())
}

/// Adds `addr/prefix` to `ifname` inside `ns` (IPv6: `nodad`).
pub fn add_addr(ns: &Netns, ifname: &str, addr: IpAddr, prefix: u8) -> Result<()> {
    let cidr = format!("{addr}/{prefix}");
    match addr {
        IpAddr::V4(_) => ns.exec(&["ip", "addr", "add", &cidr, "dev", ifname])?,
        IpAddr::V6(_) => ns.exec(&["ip", "-6", "addr", "add", &cidr, "dev", ifname, "nodad"])?,
    };
    Ok(())
}

/// Adds a route `dest/prefix via gw` inside `ns`.
pub fn add_route(ns: &Netns, dest: &str, gw: IpAddr) -> Result<()> {
    let fam = if gw.is_ipv4() { "-4" } else { "-6" };
    ns.exec(&["ip", fam, "route", "replace", dest, "via", &gw.to_string()])?;
    Ok(())
}
