//! `Config::validate`: what serde cannot check — references between
//! sections, uniqueness, and the limits the maps were sized with. The first
//! problem found is the error, named by its key and line: where each name
//! stands in the text is read here, beside the configuration, so spans stay
//! in the file layer.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    ops::Range,
    path::Path,
};

use lb_common::maglev as lb_maglev;
use serde::Deserialize;
use toml::Spanned;

use super::{Config, ConfigError, Limits, MAX_FLOW_TABLE_SIZE, ServerConfig, ServerState};

/// Where the services' and servers' names stand in the text (other keys
/// are passed over): the `n`th entry is the `n`th `[[service]]` or
/// `[[server]]` of the file.
#[derive(Debug, Default, Deserialize)]
struct Spans {
    #[serde(default)]
    node: NodeAt,
    #[serde(default)]
    service: Vec<ServiceAt>,
    #[serde(default)]
    server: Vec<ServerAt>,
}

#[derive(Debug, Default, Deserialize)]
struct NodeAt {
    debug_xdp: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
struct ServiceAt {
    name: Spanned<String>,
}

#[derive(Debug, Deserialize)]
struct ServerAt {
    name: Spanned<String>,
    #[serde(default)]
    services: Vec<Spanned<String>>,
}

/// Turns a message about a place in the file into its [`ConfigError`].
struct Located<'a> {
    text: &'a str,
    path: &'a Path,
    spans: Spans,
}

impl Located<'_> {
    /// Where service `i`'s name stands (line 1 if the text does not say).
    fn service(&self, i: usize) -> Range<usize> {
        self.spans.service.get(i).map_or(0..0, |s| s.name.span())
    }

    /// Where server `i`'s name stands.
    fn server(&self, i: usize) -> Range<usize> {
        self.spans.server.get(i).map_or(0..0, |s| s.name.span())
    }

    /// Where the `j`th service server `i` lists stands.
    fn server_service(&self, i: usize, j: usize) -> Range<usize> {
        self.spans
            .server
            .get(i)
            .and_then(|s| s.services.get(j))
            .map_or(0..0, Spanned::span)
    }

    fn invalid(&self, span: Range<usize>, message: String) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_owned(),
            line: line_of(self.text, span.start),
            message,
        }
    }

    /// A problem of the file as a whole (line 1).
    fn global(&self, message: String) -> ConfigError {
        self.invalid(0..0, message)
    }
}

/// A flow table holds at least one set.
#[expect(
    clippy::cast_possible_truncation,
    reason = "the ways of a set are a handful"
)]
const FLOW_WAYS: u32 = lb_common::FLOW_WAYS as u32;

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

impl Config {
    /// Checks what serde cannot: references, uniqueness, limits. `text`
    /// (the file the configuration was read from, or empty) places errors
    /// on their lines.
    pub fn validate(&self, text: &str, path: &Path) -> Result<(), ConfigError> {
        let at = Located {
            text,
            path,
            spans: toml::from_str(text).unwrap_or_default(),
        };
        if let Some(m) = &self.manager {
            m.validate().map_err(|e| at.global(e.to_string()))?;
        }
        if self.node.interfaces.is_empty() {
            return Err(at.global(
                "node.interfaces is empty: name at least one interface to attach to".into(),
            ));
        }
        if self.node.debug_xdp && self.node.program.is_some() {
            let span = at.spans.node.debug_xdp.as_ref().map_or(0..0, Spanned::span);
            return Err(at.invalid(
                span,
                "node.debug_xdp selects the built-in debug object, but node.program names another: drop one (an object built with lb-ebpf's `debug-log` feature logs without debug_xdp)".into(),
            ));
        }
        validate_limits(&self.limits).map_err(|m| at.global(m.to_string()))?;
        self.validate_tunnel_sources(&at)?;
        if self.service.len() > self.limits.max_services as usize {
            return Err(at.global(format!(
                "{} services configured but limits.max_services = {}",
                self.service.len(),
                self.limits.max_services
            )));
        }
        self.validate_services(&at)?;
        let mut backends = 0u64;
        let mut names = BTreeSet::new();
        let mut addresses = BTreeMap::new();
        for (i, srv) in self.server.iter().enumerate() {
            let name = &srv.name;
            let canonical = crate::manager::db::canonical(name);
            if *name != canonical {
                return Err(at.invalid(
                    at.server(i),
                    format!(
                        "server `{name}`: host names are matched without case (as TLS matches certificate names); write it `{canonical}`"
                    ),
                ));
            }
            if !names.insert(name.as_str()) {
                return Err(at.invalid(at.server(i), format!("server `{name}` is defined twice")));
            }
            if let Some(other) = addresses.insert(srv.address, name.as_str()) {
                return Err(at.invalid(
                    at.server(i),
                    format!(
                        "server `{name}`: address {} is also server `{other}`",
                        srv.address
                    ),
                ));
            }
            backends += self.validate_server(&at, i, srv)?;
        }
        if backends > u64::from(self.limits.max_backends) {
            return Err(at.global(format!(
                "{backends} (service, server) pairs but limits.max_backends = {}",
                self.limits.max_backends
            )));
        }
        Ok(())
    }

    /// Each service: a unique name and key, a valid policy, a table size
    /// the maps hold.
    fn validate_services(&self, at: &Located<'_>) -> Result<(), ConfigError> {
        let limits = &self.limits;
        let mut names = BTreeSet::new();
        let mut keys = BTreeSet::new();
        for (i, s) in self.service.iter().enumerate() {
            let span = at.service(i);
            let name = &s.name;
            if !names.insert(name.as_str()) {
                return Err(at.invalid(span, format!("service `{name}` is defined twice")));
            }
            if !keys.insert((s.vip, s.port, s.protocol.number())) {
                return Err(at.invalid(
                    span,
                    format!(
                        "service `{name}`: {} port {} {:?} is already used by another service",
                        s.vip, s.port, s.protocol
                    ),
                ));
            }
            s.scaling
                .validate()
                .map_err(|e| at.invalid(span.clone(), format!("service `{name}`: scaling: {e}")))?;
            if !lb_maglev::is_prime(s.table_size) || s.table_size > limits.max_table_size {
                return Err(at.invalid(
                    span,
                    format!(
                        "service `{name}`: table_size = {} must be a prime ≤ limits.max_table_size ({}); try {}",
                        s.table_size,
                        limits.max_table_size,
                        lb_maglev::next_prime(s.table_size.min(limits.max_table_size))
                    ),
                ));
            }
        }
        Ok(())
    }

    /// One server: its MAC and the services it names. Returns how many
    /// backends it takes (one per service it is not free in).
    /// `[node] tunnel_source`: one address per family, not unspecified;
    /// a GUE port.
    fn validate_tunnel_sources(&self, at: &Located<'_>) -> Result<(), ConfigError> {
        let sources = &self.node.tunnel_source;
        for family_v4 in [true, false] {
            if sources.iter().filter(|a| a.is_ipv4() == family_v4).count() > 1 {
                return Err(at.global(format!(
                    "node.tunnel_source has more than one IPv{} address: give one per family ({sources:?})",
                    if family_v4 { 4 } else { 6 }
                )));
            }
        }
        if let Some(bad) = sources
            .iter()
            .find(|a| a.is_unspecified() || a.is_multicast())
        {
            return Err(at.global(format!(
                "node.tunnel_source {bad} is not a unicast address of this node"
            )));
        }
        if self.node.gue_port == 0 {
            return Err(at.global("node.gue_port must be 1..=65535".into()));
        }
        Ok(())
    }

    /// A tunnelled server: a tunnel source of its family on this node and
    /// on every node the manager drives, no MAC, not local.
    fn validate_forward(
        &self,
        at: &Located<'_>,
        i: usize,
        srv: &ServerConfig,
    ) -> Result<(), ConfigError> {
        if !srv.forward.is_tunnel() {
            return Ok(());
        }
        let (name, how) = (&srv.name, srv.forward.name());
        let v4 = srv.address.is_ipv4();
        let family = if v4 { 4 } else { 6 };
        let has_family = |sources: &[IpAddr]| sources.iter().any(|a| a.is_ipv4() == v4);
        let remote_without = self
            .manager
            .iter()
            .flat_map(|m| &m.nodes)
            .find(|n| !has_family(&n.tunnel_source));
        let problem = if !has_family(&self.node.tunnel_source) {
            format!(
                "forward = \"{how}\" needs an IPv{family} node.tunnel_source (this node's address on the path to {})",
                srv.address
            )
        } else if let Some(node) = remote_without {
            format!(
                "forward = \"{how}\" needs an IPv{family} tunnel_source on [[manager.node]] `{}` (the address it tunnels from, its own node.tunnel_source): servers accept tunnelled packets from listed sources only",
                node.name
            )
        } else if srv.mac.is_some() {
            format!("forward = \"{how}\" takes its next hop from the routing table: drop `mac`")
        } else if srv.local {
            format!("forward = \"{how}\" does not go with local = true")
        } else {
            return Ok(());
        };
        Err(at.invalid(at.server(i), format!("server `{name}`: {problem}")))
    }

    fn validate_server(
        &self,
        at: &Located<'_>,
        i: usize,
        srv: &ServerConfig,
    ) -> Result<u64, ConfigError> {
        let name = &srv.name;
        self.validate_forward(at, i, srv)?;
        if let Some(mac) = &srv.mac {
            crate::node::nexthop::parse_mac(mac)
                .map_err(|e| at.invalid(at.server(i), format!("server `{name}`: mac: {e}")))?;
        }
        let mut backends = 0;
        for (j, svc) in srv.services.iter().enumerate() {
            let Some(service) = self.service.iter().find(|s| s.name == *svc) else {
                return Err(at.invalid(
                    at.server_service(i, j),
                    format!("server `{name}`: unknown service `{svc}`"),
                ));
            };
            if service.vip.is_ipv4() != srv.address.is_ipv4() && !srv.forward.is_tunnel() {
                return Err(at.invalid(
                    at.server_service(i, j),
                    format!(
                        "server `{name}` ({}) cannot serve `{svc}` ({}): direct server return at layer 2 keeps the address family (a tunnel, forward = \"ipip\" or \"gue\", carries either)",
                        srv.address, service.vip
                    ),
                ));
            }
            if srv.state != ServerState::Free {
                backends += 1;
            }
        }
        Ok(backends)
    }
}

/// `[limits]` out of what the program and Maglev support.
#[derive(Debug, thiserror::Error)]
enum LimitError {
    #[error("limits.max_table_size = {0} exceeds the Maglev maximum {max}", max = lb_maglev::MAX_SIZE)]
    TableTooLarge(u32),
    #[error("limits.max_table_size = {0} is not a prime (try {next})", next = lb_maglev::next_prime(*.0))]
    TableNotPrime(u32),
    #[error(
        "limits.flow_table_size = {0} must be {ways}..={MAX_FLOW_TABLE_SIZE} flows",
        ways = lb_common::FLOW_WAYS
    )]
    FlowTable(u32),
    #[error("limits.max_backends = {0} must be 1..={max}", max = lb_common::MAX_BACKEND_INDEX + 1)]
    Backends(u32),
}

fn validate_limits(limits: &Limits) -> Result<(), LimitError> {
    if limits.max_table_size > lb_maglev::MAX_SIZE {
        return Err(LimitError::TableTooLarge(limits.max_table_size));
    }
    if !lb_maglev::is_prime(limits.max_table_size) {
        return Err(LimitError::TableNotPrime(limits.max_table_size));
    }
    if !(FLOW_WAYS..=MAX_FLOW_TABLE_SIZE).contains(&limits.flow_table_size) {
        return Err(LimitError::FlowTable(limits.flow_table_size));
    }
    if limits.max_backends == 0 || limits.max_backends > lb_common::MAX_BACKEND_INDEX + 1 {
        return Err(LimitError::Backends(limits.max_backends));
    }
    Ok(())
}
