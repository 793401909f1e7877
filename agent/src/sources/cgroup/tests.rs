use super::*;
use crate::sources::fixture;

const SEC_NS: u64 = 1_000_000_000;

/// A fixture root with a 4-CPU host.
fn host_with_cpus() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    fixture::write(
        dir.path(),
        "proc/stat",
        "cpu  4 0 4 4 0 0 0 0 0 0\ncpu0 1 0 1 1 0 0 0 0 0 0\ncpu1 1 0 1 1 0 0 0 0 0 0\n\
         cpu2 1 0 1 1 0 0 0 0 0 0\ncpu3 1 0 1 1 0 0 0 0 0 0\nctxt 1\nbtime 1\nprocesses 1\n",
    );
    dir
}

fn v2_stat(usage_usec: u64) -> String {
    format!("usage_usec {usage_usec}\nuser_usec 0\nsystem_usec 0\nnr_periods 0\n")
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn v2_usage_over_quota() {
    let root = host_with_cpus();
    let cg = "sys/fs/cgroup/lab/h1";
    fixture::write(root.path(), &format!("{cg}/cpu.stat"), &v2_stat(1_000_000));
    fixture::write(root.path(), &format!("{cg}/cpu.max"), "50000 100000\n");
    let mut cpu = CgroupCpu::v2(root.path().join(cg)).with_root(root.path());
    assert_eq!(cpu.sample(Duration::from_secs(1)).expect("prime"), None);

    // 0.25 s of CPU in 1 s with a 0.5-core quota: half of capacity.
    fixture::write(root.path(), &format!("{cg}/cpu.stat"), &v2_stat(1_250_000));
    let sample = cpu
        .sample(Duration::from_secs(1))
        .expect("sample")
        .expect("some");
    assert!(close(sample.capacity_cores, 0.5), "{sample:?}");
    assert!(close(sample.usage_share_of_capacity, 0.5), "{sample:?}");
}

#[test]
fn v2_unlimited_quota_is_the_host() {
    let root = host_with_cpus();
    let cg = "sys/fs/cgroup/lab/h1";
    fixture::write(root.path(), &format!("{cg}/cpu.stat"), &v2_stat(0));
    fixture::write(root.path(), &format!("{cg}/cpu.max"), "max 100000\n");
    let mut cpu = CgroupCpu::v2(root.path().join(cg)).with_root(root.path());
    assert_eq!(cpu.sample(Duration::from_secs(2)).expect("prime"), None);
    // 2 s of CPU in 2 s on a 4-CPU host: a quarter.
    fixture::write(root.path(), &format!("{cg}/cpu.stat"), &v2_stat(2_000_000));
    let sample = cpu
        .sample(Duration::from_secs(2))
        .expect("sample")
        .expect("some");
    assert!(close(sample.capacity_cores, 4.0), "{sample:?}");
    assert!(close(sample.usage_share_of_capacity, 0.25), "{sample:?}");

    // Without cpu.max (controller not enabled) it is unlimited too.
    std::fs::remove_file(root.path().join(cg).join("cpu.max")).expect("rm");
    assert!(close(cpu.capacity_cores().expect("capacity"), 4.0));
}

#[test]
fn v1_usage_over_quota_and_unlimited() {
    let root = host_with_cpus();
    let cpu_dir = "sys/fs/cgroup/cpu/lab";
    let acct_dir = "sys/fs/cgroup/cpuacct/lab";
    fixture::write(
        root.path(),
        &format!("{cpu_dir}/cpu.cfs_quota_us"),
        "20000\n",
    );
    fixture::write(
        root.path(),
        &format!("{cpu_dir}/cpu.cfs_period_us"),
        "100000\n",
    );
    fixture::write(root.path(), &format!("{acct_dir}/cpuacct.usage"), "5000\n");
    let mut cpu =
        CgroupCpu::v1(root.path().join(cpu_dir), root.path().join(acct_dir)).with_root(root.path());
    assert_eq!(cpu.sample(Duration::from_secs(1)).expect("prime"), None);

    // 0.3 s of CPU in 1 s with a 0.2-core quota: over capacity (1.5).
    let usage = 5000 + 3 * SEC_NS / 10;
    fixture::write(
        root.path(),
        &format!("{acct_dir}/cpuacct.usage"),
        &format!("{usage}\n"),
    );
    let sample = cpu
        .sample(Duration::from_secs(1))
        .expect("sample")
        .expect("some");
    assert!(close(sample.capacity_cores, 0.2), "{sample:?}");
    assert!(close(sample.usage_share_of_capacity, 1.5), "{sample:?}");

    // Quota -1: unlimited, the host's 4 CPUs.
    fixture::write(root.path(), &format!("{cpu_dir}/cpu.cfs_quota_us"), "-1\n");
    let usage = usage + 2 * SEC_NS;
    fixture::write(
        root.path(),
        &format!("{acct_dir}/cpuacct.usage"),
        &format!("{usage}\n"),
    );
    let sample = cpu
        .sample(Duration::from_secs(1))
        .expect("sample")
        .expect("some");
    assert!(close(sample.capacity_cores, 4.0), "{sample:?}");
    assert!(close(sample.usage_share_of_capacity, 0.5), "{sample:?}");

    // A quota above the host is capped at the host.
    fixture::write(
        root.path(),
        &format!("{cpu_dir}/cpu.cfs_quota_us"),
        "800000\n",
    );
    assert!(close(cpu.capacity_cores().expect("capacity"), 4.0));
}

#[test]
fn usage_going_backwards_reprimes() {
    let root = host_with_cpus();
    let dir = root.path().join("cg");
    fixture::write(root.path(), "cg/cpuacct.usage", "900000\n");
    fixture::write(root.path(), "cg/cpu.cfs_quota_us", "-1\n");
    fixture::write(root.path(), "cg/cpu.cfs_period_us", "100000\n");
    let mut cpu = CgroupCpu::v1(&dir, &dir).with_root(root.path());
    assert_eq!(cpu.sample(Duration::from_secs(1)).expect("prime"), None);
    fixture::write(root.path(), "cg/cpuacct.usage", "100\n");
    assert_eq!(cpu.sample(Duration::from_secs(1)).expect("reset"), None);
    fixture::write(
        root.path(),
        "cg/cpuacct.usage",
        &format!("{}\n", 100 + SEC_NS),
    );
    let sample = cpu
        .sample(Duration::from_secs(1))
        .expect("sample")
        .expect("some");
    assert!(close(sample.usage_share_of_capacity, 0.25), "{sample:?}");
}

#[test]
fn discovers_hybrid_v1_quota_and_usage() {
    let root = host_with_cpus();
    // Hybrid host: separate cpu and cpuacct hierarchies and cgroup2.
    fixture::write(
        root.path(),
        "sys/fs/cgroup/unified/cgroup.controllers",
        "\n",
    );
    fixture::write(
        root.path(),
        "sys/fs/cgroup/unified/lab/cpu.stat",
        &v2_stat(7),
    );
    fixture::write(
        root.path(),
        "sys/fs/cgroup/cpu/lab/cpu.cfs_quota_us",
        "10000\n",
    );
    fixture::write(
        root.path(),
        "sys/fs/cgroup/cpu/lab/cpu.cfs_period_us",
        "100000\n",
    );
    fixture::write(
        root.path(),
        "sys/fs/cgroup/cpuacct/lab/cpuacct.usage",
        "0\n",
    );
    let mut cpu = CgroupCpu::discover_under(root.path(), "/lab").expect("discover");
    assert!(close(cpu.capacity_cores().expect("capacity"), 0.1));
    assert_eq!(cpu.sample(Duration::from_secs(1)).expect("prime"), None);
    fixture::write(
        root.path(),
        "sys/fs/cgroup/cpuacct/lab/cpuacct.usage",
        &format!("{}\n", SEC_NS / 20),
    );
    let sample = cpu
        .sample(Duration::from_secs(1))
        .expect("sample")
        .expect("some");
    assert!(close(sample.usage_share_of_capacity, 0.5), "{sample:?}");
}

#[test]
fn discovers_combined_v1_and_pure_v2() {
    let root = host_with_cpus();
    fixture::write(
        root.path(),
        "sys/fs/cgroup/cpu,cpuacct/a/cpu.cfs_quota_us",
        "-1\n",
    );
    fixture::write(
        root.path(),
        "sys/fs/cgroup/cpu,cpuacct/a/cpu.cfs_period_us",
        "1\n",
    );
    fixture::write(
        root.path(),
        "sys/fs/cgroup/cpu,cpuacct/a/cpuacct.usage",
        "1\n",
    );
    let cpu = CgroupCpu::discover_under(root.path(), "a").expect("discover v1");
    assert!(
        matches!(cpu.usage, Usage::V1Cpuacct(ref p) if p.starts_with(root.path().join("sys/fs/cgroup/cpu,cpuacct")))
    );

    let root = host_with_cpus();
    fixture::write(
        root.path(),
        "sys/fs/cgroup/cgroup.controllers",
        "cpu io memory\n",
    );
    fixture::write(root.path(), "sys/fs/cgroup/b/cpu.stat", &v2_stat(1));
    fixture::write(root.path(), "sys/fs/cgroup/b/cpu.max", "150000 100000\n");
    let cpu = CgroupCpu::discover_under(root.path(), "/b").expect("discover v2");
    assert!(close(cpu.capacity_cores().expect("capacity"), 1.5));

    let err = CgroupCpu::discover_under(root.path(), "/missing").expect_err("missing");
    assert!(err.to_string().contains("missing"), "{err}");
}

#[test]
fn malformed_files_are_errors() {
    assert_eq!(parse_cpu_max("max 100000"), Ok(None));
    assert_eq!(parse_cpu_max("max"), Ok(None));
    assert_eq!(parse_cpu_max("20000 100000\n"), Ok(Some((20_000, 100_000))));
    assert!(parse_cpu_max("").is_err());
    assert!(parse_cpu_max("lots 100000").is_err());

    let root = host_with_cpus();
    fixture::write(root.path(), "cg/cpu.stat", "user_usec 5\n");
    let mut cpu = CgroupCpu::v2(root.path().join("cg")).with_root(root.path());
    let err = cpu.sample(Duration::from_secs(1)).expect_err("no usage");
    assert!(err.to_string().contains("usage_usec"), "{err}");
    fixture::write(root.path(), "cg/cpu.stat", &v2_stat(1));
    fixture::write(root.path(), "cg/cpu.max", "1000 0\n");
    assert!(cpu.capacity_cores().is_err());
}

#[test]
fn discovers_this_hosts_root_cgroup() {
    let mut cpu = match CgroupCpu::discover("/") {
        Ok(cpu) => cpu,
        Err(e) => {
            eprintln!("skipped: no cgroup CPU accounting here: {e}");
            return;
        }
    };
    assert!(cpu.capacity_cores().expect("capacity") > 0.0);
    assert_eq!(cpu.sample(Duration::from_millis(10)).expect("prime"), None);
}
