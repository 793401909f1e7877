use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::*;
use crate::sources::{CpuSampler, fixture};

#[test]
fn rejects_bad_names_and_quotas() {
    let dir = tempfile::tempdir().expect("tempdir");
    for name in ["", ".", "..", "a/b", "/abs"] {
        let err = create_v1_cgroup_in(dir.path(), name, 0.2).expect_err(name);
        assert!(matches!(err, CgroupV1Error::BadName(_)), "{name}: {err}");
    }
    for quota in [0.0, -1.0, 0.001, f64::NAN, f64::INFINITY] {
        let err = create_v1_cgroup_in(dir.path(), "lab", quota).expect_err("quota");
        assert!(matches!(err, CgroupV1Error::BadQuota(_)), "{quota}: {err}");
    }
}

#[test]
fn missing_hierarchy_says_what_to_mount() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = create_v1_cgroup_in(dir.path(), "lab", 0.2).expect_err("no hierarchy");
    assert!(err.to_string().contains("mount -t cgroup -o cpu"), "{err}");

    // cpu mounted alone, cpuacct nowhere.
    fixture::write(dir.path(), "sys/fs/cgroup/cpu/cpu.cfs_quota_us", "-1\n");
    let err = create_v1_cgroup_in(dir.path(), "lab", 0.2).expect_err("no cpuacct");
    assert!(
        matches!(
            err,
            CgroupV1Error::NoHierarchy {
                controller: "cpuacct",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn fixture_cgroup_gets_its_quota() {
    // A plain directory tree stands in for cgroupfs: the files written are
    // checked, and removal fails quietly there (the fixture directories hold
    // regular files, which cgroupfs directories never do).
    let dir = tempfile::tempdir().expect("tempdir");
    fixture::write(
        dir.path(),
        "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us",
        "-1\n",
    );
    fixture::write(dir.path(), "sys/fs/cgroup/cpu,cpuacct/cpuacct.usage", "0\n");
    let handle = create_v1_cgroup_in(dir.path(), "lab-h1", 0.25).expect("create");
    let cg = dir.path().join("sys/fs/cgroup/cpu,cpuacct/lab-h1");
    assert_eq!(handle.cpu_dir(), cg);
    assert_eq!(handle.cpuacct_dir(), cg);
    let read = |f: &str| std::fs::read_to_string(cg.join(f)).expect("read");
    assert_eq!(read("cpu.cfs_quota_us"), "25000");
    assert_eq!(read("cpu.cfs_period_us"), "100000");
    handle.add_pid(42).expect("add");
    assert_eq!(handle.pids().expect("pids"), [42]);
    std::mem::forget(handle);
}

/// Kills and reaps the child on drop, so a failing assertion leaves no
/// burner running.
struct Burner(Child);

impl Drop for Burner {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn real_cgroup_quota_caps_a_burner() {
    if !is_root() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "this test needs root in CI"
        );
        eprintln!("skipped: creating a cgroup needs root");
        return;
    }
    let name = format!("lb-agent-test-{}", std::process::id());
    // Declared before the burner, so dropped after it: the cgroup is removed
    // once the burner is dead.
    let handle = create_v1_cgroup(&name, 0.2).expect("create cgroup");
    let burner = Burner(
        Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn burner"),
    );
    handle.add_pid(burner.0.id()).expect("move burner");
    assert_eq!(handle.pids().expect("pids"), [burner.0.id()]);

    let mut cgroup = handle.cpu();
    let mut host = CpuSampler::host();
    let start = Instant::now();
    assert_eq!(cgroup.sample(Duration::ZERO).expect("prime"), None);
    assert_eq!(host.sample().expect("prime"), None);
    std::thread::sleep(Duration::from_secs(1));
    let sample = cgroup
        .sample(start.elapsed())
        .expect("sample")
        .expect("some");
    let host_share = host.sample().expect("host").expect("host share");
    eprintln!("cgroup {sample:?}, host busy share {host_share:.3}");
    assert!((sample.capacity_cores - 0.2).abs() < 1e-9, "{sample:?}");
    assert!(sample.usage_share_of_capacity > 0.5, "{sample:?}");
    // The quota holds the burner near 0.2 cores, a small part of the host.
    // The host's own share also carries whatever else runs on the machine
    // (builds, other tests), so it is checked against the burner's part
    // rather than against a fixed bound.
    let host_cpus = crate::sources::host_cpu_count(std::path::Path::new("/")).expect("cpus");
    let burner_part_of_host =
        sample.usage_share_of_capacity * sample.capacity_cores / host_cpus as f64;
    assert!(burner_part_of_host < 0.5, "{burner_part_of_host}");
    assert!(
        host_share >= burner_part_of_host * 0.8,
        "host {host_share} < burner {burner_part_of_host}"
    );

    drop(burner);
    let cpu_dir = handle.cpu_dir().to_owned();
    handle.remove().expect("remove cgroup");
    assert!(!cpu_dir.exists());
}
