//! `lb-agent decap` on lab servers, its pins under a root of the test's
//! own (removed when dropped, also when a test fails).

use std::path::PathBuf;

use anyhow::{Context as _, Result};

use crate::{Lab, Netns, balancer::workspace_bin};

/// The decapsulation's pin root for one test.
pub struct DecapPins {
    pub root: PathBuf,
}

impl DecapPins {
    /// `/sys/fs/bpf/lbt<pid>-<tag>-<lab id>`.
    #[must_use]
    pub fn new(lab: &Lab, tag: &str) -> Self {
        Self {
            root: PathBuf::from(format!(
                "/sys/fs/bpf/lbt{}-{tag}-{}",
                std::process::id(),
                lab.id
            )),
        }
    }

    /// `lb-agent decap ARGS --pin-root ROOT` in `ns`; its stdout.
    pub fn run(&self, ns: &Netns, args: &[&str]) -> Result<String> {
        let bin = workspace_bin("lb-agent")?;
        let mut cmd = vec![bin.to_str().unwrap_or("lb-agent"), "decap"];
        cmd.extend_from_slice(args);
        cmd.extend(["--pin-root", self.root.to_str().unwrap_or_default()]);
        ns.exec_stdout(&cmd)
    }

    /// `decap attach` on `eth0` with these allowed sources and VIPs; its
    /// stdout.
    pub fn attach(
        &self,
        ns: &Netns,
        sources: &[std::net::IpAddr],
        vips: &[std::net::IpAddr],
    ) -> Result<String> {
        let words: Vec<String> = sources
            .iter()
            .map(|a| ("--source", a))
            .chain(vips.iter().map(|a| ("--vip", a)))
            .flat_map(|(flag, a)| [flag.to_owned(), a.to_string()])
            .collect();
        let mut args = vec!["attach", "--interface", "eth0"];
        args.extend(words.iter().map(String::as_str));
        self.run(ns, &args)
    }

    /// One of `decap status`'s counters on `eth0`.
    pub fn counter(&self, ns: &Netns, name: &str) -> Result<u64> {
        let out = self.run(ns, &["status", "--interface", "eth0"])?;
        out.lines()
            .find_map(|l| {
                let (n, v) = l.split_once(' ')?;
                (n == name).then(|| v.trim().parse().ok())?
            })
            .with_context(|| format!("no {name} in {out}"))
    }
}

impl Drop for DecapPins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
