//! The next-hop cache: a task subscribed to the kernel's neighbour, link,
//! address and route notifications that re-reads the node interfaces and
//! the neighbour table when one arrives (and every second, in case the
//! kernel dropped some) and publishes the result as a [`Snapshot`].
//!
//! An apply reads a snapshot and asks the kernel only for what it lacks,
//! every missing server at once, before it takes the node lock.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::Arc,
    time::Duration,
};

use futures::StreamExt as _;
use netlink_sys::{AsyncSocket as _, SocketAddr};
use rtnetlink::constants::{
    RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_IFADDR, RTMGRP_IPV6_ROUTE, RTMGRP_LINK,
    RTMGRP_NEIGH,
};
use tokio::sync::watch;
use tracing::{debug, warn};

use super::{Interface, NextHop, NextHopError, Resolver, select_egress};
use crate::model::{NodeModel, ServerSpec};

/// How long a server without a neighbour entry is waited for.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);
/// Re-read even without notifications (they can be lost when the socket's
/// buffer overflows).
const REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// What the kernel said about the node interfaces and their neighbours at
/// one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The node interfaces, or why they cannot be read.
    pub interfaces: Result<Vec<Interface>, NextHopError>,
    /// (ifindex, address) -> MAC of valid entries on the node interfaces.
    pub neighbours: Result<HashMap<(u32, IpAddr), [u8; 6]>, NextHopError>,
}

impl Snapshot {
    async fn read(resolver: &Resolver) -> Self {
        Self {
            interfaces: resolver.interfaces().await,
            neighbours: resolver.neighbours().await,
        }
    }
}

/// The next hops of one model's servers.
#[derive(Debug, Clone)]
pub struct ResolvedHops {
    /// Next hop of every resolved server, by address.
    pub hops: BTreeMap<IpAddr, NextHop>,
    /// Servers without one (the reason is in the log).
    pub unresolved: Vec<String>,
    /// Hops found in the neighbour table (not from a configured MAC): the
    /// ones a neighbour refresh follows.
    pub learned: BTreeMap<IpAddr, NextHop>,
    /// The node interfaces, for the redirect ports.
    pub interfaces: Result<Vec<Interface>, NextHopError>,
}

/// A handle on the next-hop cache; clones share it. The task ends when the
/// last handle is dropped.
#[derive(Debug, Clone)]
pub struct NextHops {
    resolver: Arc<Resolver>,
    snapshot: watch::Receiver<Arc<Snapshot>>,
}

impl NextHops {
    /// The resolver the cache reads the kernel with.
    #[must_use]
    pub fn resolver(&self) -> Arc<Resolver> {
        self.resolver.clone()
    }
}

/// How one server's next hop was found, or why not.
enum Lookup {
    Configured(NextHop),
    Learned(NextHop),
    NoEgress(NextHopError),
    Unresolved(NextHopError),
}

impl NextHops {
    /// Opens the resolver for `interfaces` (see [`Resolver::new`]) and
    /// starts the task that follows the kernel's notifications.
    ///
    /// # Errors
    /// As [`Resolver::new`]; or the notification socket cannot be opened.
    pub async fn start(interfaces: &[String]) -> Result<Self, NextHopError> {
        let resolver = Arc::new(Resolver::new(interfaces).await?);
        let (mut connection, handle, messages) = rtnetlink::new_connection()
            .map_err(|e| NextHopError::Netlink(format!("cannot open an rtnetlink socket: {e}")))?;
        let groups = RTMGRP_NEIGH
            | RTMGRP_LINK
            | RTMGRP_IPV4_IFADDR
            | RTMGRP_IPV6_IFADDR
            | RTMGRP_IPV4_ROUTE
            | RTMGRP_IPV6_ROUTE;
        connection
            .socket_mut()
            .socket_mut()
            .bind(&SocketAddr::new(0, groups))
            .map_err(|e| {
                NextHopError::Netlink(format!("cannot subscribe to rtnetlink notifications: {e}"))
            })?;
        tokio::spawn(connection);
        let (publish, snapshot) = watch::channel(Arc::new(Snapshot::read(&resolver).await));
        let follower = resolver.clone();
        tokio::spawn(async move {
            // The handle keeps the connection (and its notifications) open.
            let _handle = handle;
            follow(&follower, messages, &publish).await;
        });
        Ok(Self { resolver, snapshot })
    }

    /// The latest snapshot.
    #[must_use]
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    /// The next hop of every server of `model`: a local server delivers
    /// locally; one with a configured MAC needs only its egress interface;
    /// the others come from the neighbour table, and those the snapshot
    /// lacks are resolved by the kernel (up to 2 s), all at once. Failures
    /// are logged and listed as unresolved.
    pub async fn resolve(&self, model: &NodeModel) -> ResolvedHops {
        let snapshot = self.snapshot();
        // A tunnelled server's next hop is the FIB's, at each packet; the
        // kernel is asked to know its neighbour.
        let (tunnelled, servers): (Vec<_>, Vec<_>) = model
            .servers()
            .into_iter()
            .partition(|s| s.forward.is_tunnel());
        for s in tunnelled {
            super::trigger_routed_resolution(s.address);
        }
        let lookups = servers.iter().map(|s| self.lookup(&snapshot, s));
        let found = futures::future::join_all(lookups).await;
        let mut out = ResolvedHops {
            hops: BTreeMap::new(),
            unresolved: Vec::new(),
            learned: BTreeMap::new(),
            interfaces: match &snapshot.interfaces {
                Ok(list) => Ok(list.clone()),
                Err(_) => self.resolver.interfaces().await,
            },
        };
        for (server, lookup) in servers.iter().zip(found) {
            let hop = match lookup {
                Lookup::Configured(hop) => hop,
                Lookup::Learned(hop) => {
                    out.learned.insert(server.address, hop);
                    hop
                }
                Lookup::NoEgress(e) => {
                    warn!(server = %server.name, error = %e, "no egress interface");
                    out.unresolved.push(server.name.clone());
                    continue;
                }
                Lookup::Unresolved(e) => {
                    warn!(server = %server.name, error = %e, "cannot resolve server");
                    out.unresolved.push(server.name.clone());
                    continue;
                }
            };
            out.hops.insert(server.address, hop);
        }
        out
    }

    async fn lookup(&self, snapshot: &Snapshot, server: &ServerSpec) -> Lookup {
        if server.local {
            return Lookup::Configured(NextHop {
                ifindex: 0,
                src_mac: [0; 6],
                dst_mac: [0; 6],
            });
        }
        let addr = server.address;
        let cached = snapshot.interfaces.as_ref().ok().and_then(|list| {
            // An own address is refused by the resolver, with the reason.
            let own = list
                .iter()
                .any(|i| i.prefixes.iter().any(|&(a, _)| a == addr));
            (!own).then(|| select_egress(list, addr)).flatten()
        });
        if let Some(mac) = server.mac {
            // The egress port still comes from the interfaces' prefixes.
            let egress = match cached {
                Some(i) => Ok((i.ifindex, i.mac)),
                None => self.resolver.egress(addr).await,
            };
            return match egress {
                Ok((ifindex, src_mac)) => Lookup::Configured(NextHop {
                    ifindex,
                    src_mac,
                    dst_mac: mac.0,
                }),
                Err(e) => Lookup::NoEgress(e),
            };
        }
        let known = cached.and_then(|egress| {
            let neighbours = snapshot.neighbours.as_ref().ok()?;
            let dst_mac = neighbours.get(&(egress.ifindex, addr))?;
            Some(NextHop {
                ifindex: egress.ifindex,
                src_mac: egress.mac,
                dst_mac: *dst_mac,
            })
        });
        if let Some(hop) = known {
            return Lookup::Learned(hop);
        }
        match self.resolver.resolve(addr, RESOLVE_TIMEOUT).await {
            Ok(hop) => Lookup::Learned(hop),
            Err(e) => Lookup::Unresolved(e),
        }
    }
}

/// Re-reads and publishes on every notification (a burst counts once) and
/// every second, until no handle is left.
async fn follow<M>(
    resolver: &Resolver,
    messages: futures::channel::mpsc::UnboundedReceiver<M>,
    publish: &watch::Sender<Arc<Snapshot>>,
) {
    let mut messages = Some(messages);
    let mut refresh = tokio::time::interval(REFRESH_INTERVAL);
    loop {
        tokio::select! {
            message = next_notification(&mut messages) => {
                if let (Some(_), Some(pending)) = (message, &mut messages) { while pending.try_recv().is_ok() {} } else {
                    debug!("rtnetlink notifications ended; next hops are re-read every second");
                    messages = None;
                }
            }
            _ = refresh.tick() => {}
            () = publish.closed() => return,
        }
        let next = Snapshot::read(resolver).await;
        publish.send_if_modified(|current| {
            let changed = **current != next;
            if changed {
                *current = Arc::new(next);
            }
            changed
        });
    }
}

/// The next notification; never, once they ended.
async fn next_notification<M>(
    messages: &mut Option<futures::channel::mpsc::UnboundedReceiver<M>>,
) -> Option<M> {
    match messages {
        Some(stream) => stream.next().await,
        None => std::future::pending().await,
    }
}
