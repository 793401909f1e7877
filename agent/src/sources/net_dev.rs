//! NIC receive/transmit rates from `/proc/net/dev` deltas.
//!
//! `/proc/net/dev` has two header lines, then one line per interface:
//! `  eth0: rx_bytes rx_packets errs drop fifo frame compressed multicast
//! tx_bytes tx_packets ...`. Large counters can run into the colon
//! (`eth0:123456789`), so a line is split at the colon first. Like
//! `/proc/net/tcp`, it lists the interfaces of the reading process's network
//! namespace.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use super::{HOST_ROOT, under};

/// Why a `/proc` file could not be used (shared by the `/proc` sources).
pub type NetDevError = super::ProcFileError;

/// One interface's traffic since the previous sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NicRate {
    /// Bytes received per second.
    pub rx_bytes_per_sec: f64,
    /// Bytes transmitted per second.
    pub tx_bytes_per_sec: f64,
}

/// Cumulative byte counters of one interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counters {
    rx_bytes: u64,
    tx_bytes: u64,
}

/// Samples per-interface byte rates between consecutive calls, leaving out
/// the loopback interface `lo`.
#[derive(Debug)]
pub struct NetDevSampler {
    path: PathBuf,
    previous: Option<BTreeMap<String, Counters>>,
}

impl NetDevSampler {
    /// A sampler reading `<root>/proc/net/dev`; `root` is `/` on a real host.
    pub fn new(root: impl AsRef<Path>) -> Self {
        Self {
            path: under(root.as_ref(), "proc/net/dev"),
            previous: None,
        }
    }

    /// A sampler reading the real `/proc/net/dev`.
    #[must_use]
    pub fn host() -> Self {
        Self::new(HOST_ROOT)
    }

    /// Reads the counters and returns each interface's rates over `elapsed`,
    /// the wall time since the previous call (the caller measures it, so tests
    /// need not sleep).
    ///
    /// Returns `Ok(None)` on the first call, which only primes the sampler,
    /// and when `elapsed` is zero (the sampler re-primes). An interface that
    /// appeared since the previous call, or whose counters went backwards (it
    /// was re-created or its driver reset them), is left out of this result
    /// and measured from the next call on.
    pub fn sample(
        &mut self,
        elapsed: Duration,
    ) -> Result<Option<BTreeMap<String, NicRate>>, NetDevError> {
        let text = std::fs::read_to_string(&self.path).map_err(|source| NetDevError::Read {
            path: self.path.clone(),
            source,
        })?;
        let now = parse_net_dev(&text).map_err(|e| NetDevError::Parse {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        let previous = self.previous.replace(now.clone());
        let Some(previous) = previous else {
            return Ok(None);
        };
        if elapsed.is_zero() {
            return Ok(None);
        }
        let seconds = elapsed.as_secs_f64();
        let rates = now
            .iter()
            .filter_map(|(name, current)| {
                let before = previous.get(name)?;
                let rx = current.rx_bytes.checked_sub(before.rx_bytes)?;
                let tx = current.tx_bytes.checked_sub(before.tx_bytes)?;
                Some((
                    name.clone(),
                    NicRate {
                        rx_bytes_per_sec: rx as f64 / seconds,
                        tx_bytes_per_sec: tx as f64 / seconds,
                    },
                ))
            })
            .collect();
        Ok(Some(rates))
    }
}

/// What is wrong in a `/proc/net/dev` line.
#[derive(Debug, thiserror::Error)]
enum LineError {
    /// A line that is neither a header nor `name: counters`.
    #[error("line {0:?} has no \"interface:\" prefix")]
    NoInterface(String),
    /// Too few counters.
    #[error("interface {interface} has {found} counters, 16 expected")]
    Counters { interface: String, found: usize },
    /// A counter that is not a number.
    #[error("interface {interface} counter {text:?}: {source}")]
    Counter {
        interface: String,
        text: String,
        #[source]
        source: std::num::ParseIntError,
    },
}

/// Byte counters per interface, without `lo`.
fn parse_net_dev(text: &str) -> Result<BTreeMap<String, Counters>, LineError> {
    let mut counters = BTreeMap::new();
    // The two header lines have a '|' and no interface.
    for line in text
        .lines()
        .filter(|l| !l.contains('|') && !l.trim().is_empty())
    {
        let (name, rest) = line
            .split_once(':')
            .ok_or_else(|| LineError::NoInterface(line.to_owned()))?;
        let name = name.trim();
        if name == "lo" {
            continue;
        }
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() < 16 {
            return Err(LineError::Counters {
                interface: name.to_owned(),
                found: fields.len(),
            });
        }
        let counter = |i: usize| {
            fields[i]
                .parse::<u64>()
                .map_err(|source| LineError::Counter {
                    interface: name.to_owned(),
                    text: fields[i].to_owned(),
                    source,
                })
        };
        counters.insert(
            name.to_owned(),
            Counters {
                rx_bytes: counter(0)?,
                tx_bytes: counter(8)?,
            },
        );
    }
    Ok(counters)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::fixture;

    const HEADER: &str = "Inter-|   Receive                                                |  Transmit\n \
         face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n";

    fn dev(lo: u64, eth0: (u64, u64), eth1: Option<(u64, u64)>) -> String {
        let mut text = HEADER.to_owned();
        text += &format!("    lo: {lo} 545 0 0 0 0 0 0 {lo} 545 0 0 0 0 0 0\n");
        // Counters jammed against the colon, as the kernel prints big ones.
        text += &format!(
            "  eth0:{} 4514 0 0 0 0 0 0 {} 4370 0 0 0 0 0 0\n",
            eth0.0, eth0.1
        );
        if let Some((rx, tx)) = eth1 {
            text += &format!("  eth1: {rx} 1 0 0 0 0 0 0 {tx} 1 0 0 0 0 0 0\n");
        }
        text
    }

    #[test]
    fn rates_per_interface_without_lo() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sampler = NetDevSampler::new(dir.path());
        fixture::write(
            dir.path(),
            "proc/net/dev",
            &dev(100, (1_000_000_000, 5_000), None),
        );
        assert_eq!(sampler.sample(Duration::from_secs(1)).expect("prime"), None);

        fixture::write(
            dir.path(),
            "proc/net/dev",
            &dev(900, (1_000_200_000, 6_000), Some((10, 20))),
        );
        let rates = sampler
            .sample(Duration::from_millis(500))
            .expect("sample")
            .expect("rates");
        // eth1 is new: measured from the next sample on.
        assert_eq!(rates.keys().collect::<Vec<_>>(), ["eth0"]);
        assert_eq!(
            rates["eth0"],
            NicRate {
                rx_bytes_per_sec: 400_000.0,
                tx_bytes_per_sec: 2_000.0,
            }
        );

        // eth0 reset its counters: left out this round.
        fixture::write(
            dir.path(),
            "proc/net/dev",
            &dev(900, (50, 60), Some((110, 20))),
        );
        let rates = sampler
            .sample(Duration::from_secs(2))
            .expect("sample")
            .expect("rates");
        assert_eq!(rates.keys().collect::<Vec<_>>(), ["eth1"]);
        assert_eq!(rates["eth1"].rx_bytes_per_sec, 50.0);
        assert_eq!(rates["eth1"].tx_bytes_per_sec, 0.0);
    }

    #[test]
    fn zero_elapsed_gives_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sampler = NetDevSampler::new(dir.path());
        fixture::write(dir.path(), "proc/net/dev", &dev(1, (1, 1), None));
        assert_eq!(sampler.sample(Duration::ZERO).expect("prime"), None);
        assert_eq!(sampler.sample(Duration::ZERO).expect("zero"), None);
    }

    #[test]
    fn malformed_lines_are_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sampler = NetDevSampler::new(dir.path());
        assert!(sampler.sample(Duration::from_secs(1)).is_err());
        fixture::write(
            dir.path(),
            "proc/net/dev",
            &format!("{HEADER}eth0: 1 2 3\n"),
        );
        let err = sampler.sample(Duration::from_secs(1)).expect_err("short");
        assert!(err.to_string().contains("eth0"), "{err}");
    }

    #[test]
    fn real_proc_net_dev_parses() {
        let mut sampler = NetDevSampler::host();
        assert_eq!(sampler.sample(Duration::from_secs(1)).expect("prime"), None);
        let rates = sampler
            .sample(Duration::from_secs(1))
            .expect("sample")
            .expect("rates");
        assert!(!rates.contains_key("lo"));
    }
}
