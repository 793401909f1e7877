//! What an agent's connection settings may say. Its host holds an agent
//! certificate, nothing more: the address it gives is where the node will
//! send a share of a VIP's packets, and its MAC where the frames go. So the
//! address must be one the host plausibly owns (the address its stream
//! comes from, or one in `[manager] server_subnets`), never a special
//! address, a VIP, a node's or another server's; the MAC must be unicast.

use std::net::IpAddr;

use lb_proto::MacAddr;

/// Why connection settings are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsRefusal {
    #[error("mac {0} is not a unicast address")]
    Mac(MacAddr),
    #[error("no usable {family} address in its settings ({reasons})")]
    NoAddress {
        family: &'static str,
        reasons: String,
    },
}

/// What the manager knows that an address must not be.
#[derive(Debug, Default)]
pub struct Known<'a> {
    /// The address the server's agent stream comes from.
    pub peer: Option<IpAddr>,
    /// `[manager] server_subnets`: addresses there need not be the peer's.
    pub subnets: &'a [ipnet::IpNet],
    /// Every service's VIP.
    pub vips: Vec<IpAddr>,
    /// The nodes' addresses (the manager's own, the remote nodes').
    pub nodes: Vec<IpAddr>,
    /// Other servers' addresses in the file, with their names.
    pub others: Vec<(IpAddr, &'a str)>,
}

impl Known<'_> {
    /// Why `address` cannot be a server's, if it cannot.
    fn refusal(&self, address: IpAddr) -> Option<String> {
        let special = match address {
            IpAddr::V4(a) => {
                a.is_unspecified() || a.is_loopback() || a.is_multicast() || a.is_broadcast()
            }
            IpAddr::V6(a) => a.is_unspecified() || a.is_loopback() || a.is_multicast(),
        };
        if special {
            return Some(format!("{address} is not a unicast host address"));
        }
        if self.vips.contains(&address) {
            return Some(format!("{address} is a VIP"));
        }
        if self.nodes.contains(&address) {
            return Some(format!("{address} is a node's"));
        }
        if let Some((_, other)) = self.others.iter().find(|(a, _)| *a == address) {
            return Some(format!("{address} is server `{other}`'s"));
        }
        if self.peer != Some(address) && !self.subnets.iter().any(|n| n.contains(&address)) {
            return Some(format!(
                "{address} is neither the address its stream comes from{} nor in manager.server_subnets",
                self.peer.map(|p| format!(" ({p})")).unwrap_or_default()
            ));
        }
        None
    }

    /// The first of `addresses` in the family of `vip` that a server may
    /// have.
    ///
    /// # Errors
    /// None may: each one's reason.
    pub fn usable(&self, addresses: &[IpAddr], vip: IpAddr) -> Result<IpAddr, SettingsRefusal> {
        let mut reasons = Vec::new();
        for &a in addresses.iter().filter(|a| a.is_ipv4() == vip.is_ipv4()) {
            match self.refusal(a) {
                None => return Ok(a),
                Some(r) => reasons.push(r),
            }
        }
        Err(SettingsRefusal::NoAddress {
            family: if vip.is_ipv4() { "IPv4" } else { "IPv6" },
            reasons: if reasons.is_empty() {
                "none of that family".into()
            } else {
                reasons.join("; ")
            },
        })
    }
}

/// A MAC frames may be sent to: unicast (group bit clear), not all zero.
///
/// # Errors
/// Any other.
pub fn check_mac(mac: MacAddr) -> Result<(), SettingsRefusal> {
    if mac.0[0] & 1 == 1 || mac.0 == [0; 6] {
        return Err(SettingsRefusal::Mac(mac));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_an_address_the_host_may_own_is_used() {
        let subnets = [
            "10.1.0.0/24".parse().unwrap(),
            "fd00:1::/64".parse().unwrap(),
        ];
        let known = Known {
            peer: Some(ip("10.0.0.11")),
            subnets: &subnets,
            vips: vec![ip("10.0.0.100")],
            nodes: vec![ip("10.0.0.1")],
            others: vec![(ip("10.0.0.12"), "s2")],
        };
        let vip = ip("10.0.0.100");
        assert_eq!(known.usable(&[ip("10.0.0.11")], vip), Ok(ip("10.0.0.11")));
        assert_eq!(known.usable(&[ip("10.1.0.7")], vip), Ok(ip("10.1.0.7")));
        assert_eq!(
            known.usable(&[ip("127.0.0.1"), ip("10.0.0.11")], vip),
            Ok(ip("10.0.0.11"))
        );
        assert_eq!(
            known.usable(&[ip("fd00:1::5")], ip("fd00::100")),
            Ok(ip("fd00:1::5"))
        );
        for (bad, why) in [
            ("0.0.0.0", "not a unicast"),
            ("127.0.0.1", "not a unicast"),
            ("224.0.0.1", "not a unicast"),
            ("255.255.255.255", "not a unicast"),
            ("10.0.0.100", "is a VIP"),
            ("10.0.0.1", "is a node's"),
            ("10.0.0.12", "server `s2`'s"),
            (
                "10.0.0.13",
                "neither the address its stream comes from (10.0.0.11)",
            ),
        ] {
            let e = known.usable(&[ip(bad)], vip).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let e = known
            .usable(&[ip("::1")], ip("fd00::100"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("IPv6") && e.contains("not a unicast"), "{e}");
        let e = known.usable(&[ip("fd00::1")], vip).unwrap_err().to_string();
        assert!(e.contains("none of that family"), "{e}");
        check_mac(MacAddr([2, 0, 0, 0, 0, 1])).unwrap();
        for bad in [[1, 0, 0x5e, 0, 0, 1], [0xff; 6], [0; 6]] {
            assert_eq!(
                check_mac(MacAddr(bad)),
                Err(SettingsRefusal::Mac(MacAddr(bad)))
            );
        }
    }
}
