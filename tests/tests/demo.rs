//! The demo (`cargo xtask demo`) in its short mode, as CI runs it: it tells
//! the story (a server allocated, one returned), writes a chart that an XML
//! parser reads and a summary, and leaves nothing behind: no namespace,
//! link, pin, cgroup or process, also when Ctrl-C stops it half-way.

use std::{
    collections::BTreeSet,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use lb_tests::{LabProcess, require_root};
use quick_xml::events::Event;
use serde_json::Value;

const DEMO: &str = env!("CARGO_BIN_EXE_lab-demo");

/// What a lab creates on the host, by name: namespaces, pins, cgroups,
/// links.
fn host_objects() -> BTreeSet<String> {
    let names = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    };
    let mut out = BTreeSet::new();
    for n in names(Path::new("/var/run/netns")) {
        out.insert(format!("netns {n}"));
    }
    for n in names(Path::new("/sys/fs/bpf")) {
        out.insert(format!("pin {n}"));
    }
    for h in names(Path::new("/sys/fs/cgroup")) {
        let dir = Path::new("/sys/fs/cgroup").join(&h);
        for n in names(&dir) {
            if dir.join(&n).is_dir() {
                out.insert(format!("cgroup {h}/{n}"));
            }
        }
    }
    if let Ok(o) = Command::new("ip").args(["-o", "link", "show"]).output() {
        for l in String::from_utf8_lossy(&o.stdout).lines() {
            if let Some(name) = l.split(": ").nth(1) {
                out.insert(format!("link {}", name.split('@').next().unwrap_or(name)));
            }
        }
    }
    out
}

/// The processes orphaned under this one (a child subreaper): what the
/// demo left running.
fn orphans() -> Vec<String> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for pid in children.split_whitespace() {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            out.push(format!(
                "{pid} {}",
                String::from_utf8_lossy(&cmd).replace('\0', " ")
            ));
        }
    }
    out
}

/// The running demo; dropped while it runs (a failed check), it gets
/// Ctrl-C and time to clean up before it is killed.
struct Demo(LabProcess);

impl Drop for Demo {
    fn drop(&mut self) {
        if self.0.try_wait().is_ok_and(|s| s.is_none()) {
            interrupt(&self.0);
            let _ = self.0.wait_timeout(Duration::from_secs(60));
        }
    }
}

impl std::ops::Deref for Demo {
    type Target = LabProcess;
    fn deref(&self) -> &LabProcess {
        &self.0
    }
}

impl std::ops::DerefMut for Demo {
    fn deref_mut(&mut self) -> &mut LabProcess {
        &mut self.0
    }
}

fn demo(dir: &Path, args: &[&str]) -> Result<Demo> {
    let mut cmd = Command::new(DEMO);
    cmd.arg("--short").arg("--dir").arg(dir).args(args);
    Ok(Demo(LabProcess::spawn(cmd, "lab-demo".into())?))
}

fn interrupt(p: &LabProcess) {
    // SAFETY: a signal to our own child, by its pid.
    assert_eq!(
        unsafe { libc::kill(p.pid() as libc::pid_t, libc::SIGINT) },
        0
    );
}

/// A command `--keep` printed, run by the shell; its stdout.
fn shell(line: &str) -> Result<String> {
    let out = Command::new("sh").arg("-c").arg(line.trim()).output()?;
    if !out.status.success() {
        bail!("{line}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `--keep`: the commands it prints work against the running lab; Ctrl-C
/// then ends it normally.
fn check_kept(p: &mut LabProcess) -> Result<()> {
    let mut commands = Vec::new();
    loop {
        let line = p.read_line(Duration::from_secs(120))?;
        if line.contains("Ctrl-C here ends it") {
            break;
        }
        commands.push(line);
    }
    let find = |needle: &str| {
        commands
            .iter()
            .find(|l| l.contains(needle))
            .cloned()
            .with_context(|| format!("no {needle:?} command in {commands:?}"))
    };
    let pool: Value =
        serde_json::from_str(&shell(&find(" top")?.replace(" top", " --json pool"))?)?;
    assert_eq!(pool["pools"][0]["service"], "web", "{pool}");
    let scrape = shell(&find("/metrics")?)?;
    assert!(
        scrape.contains("lb_service_new_flows_total{service=\"web\"}"),
        "{scrape}"
    );
    let answer = shell(&find("curl -s http://10.")?)?;
    assert!(answer.trim().starts_with('s'), "{answer:?}");
    interrupt(p);
    Ok(())
}

/// Every stdout line until the demo exits (bounded).
fn lines_until_exit(p: &mut LabProcess, limit: Duration) -> Result<Vec<String>> {
    let deadline = Instant::now() + limit;
    let mut lines = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("the demo still runs after {limit:?}: {lines:#?}");
        }
        match p.read_line(left) {
            Ok(l) => lines.push(l),
            Err(_) if p.try_wait()?.is_some() => return Ok(lines),
            Err(e) => return Err(e),
        }
    }
}

/// The chart is SVG an XML parser reads whole: three panels' captions, the
/// legends, lines drawn.
fn check_chart(path: &Path) -> Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let mut reader = quick_xml::Reader::from_str(&text);
    let (mut root, mut lines, mut texts) = (None, 0, Vec::new());
    let mut in_text = false;
    loop {
        match reader
            .read_event()
            .context("the chart is not well-formed XML")?
        {
            Event::Start(e) | Event::Empty(e) => {
                let name = e.name().into_inner().to_owned();
                root.get_or_insert(name.clone());
                lines += usize::from(name == "polyline" || name == "line" || name == "path");
                in_text = name == "text";
            }
            Event::Text(t) if in_text => texts.push(t.into_inner().trim().to_owned()),
            Event::End(_) => in_text = false,
            Event::Eof => break,
            _ => {}
        }
    }
    assert_eq!(root.as_deref(), Some("svg"), "{}", path.display());
    assert!(lines > 20, "only {lines} lines drawn");
    for needle in ["offered", "utilization", "servers in the pool", "s1", "s2"] {
        assert!(
            texts.iter().any(|t| t.contains(needle)),
            "no {needle:?} in the chart's text: {texts:?}"
        );
    }
    Ok(())
}

fn check_clean(before: &BTreeSet<String>, run: &str) {
    let after = host_objects();
    let left: Vec<&String> = after.difference(before).collect();
    assert!(left.is_empty(), "the {run} demo left behind {left:?}");
    let orphans = orphans();
    assert!(
        orphans.is_empty(),
        "the {run} demo left processes: {orphans:?}"
    );
}

#[test]
fn the_demo_tells_the_story_and_leaves_nothing_behind() -> Result<()> {
    if !require_root("the_demo_tells_the_story_and_leaves_nothing_behind") {
        return Ok(());
    }
    // Whatever the demo leaves running is re-parented here, to be seen.
    // SAFETY: prctl with an integer argument touches no memory.
    assert_eq!(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) }, 0);
    let before = host_objects();

    // 1. The short story, to its end.
    let dir = tempfile::tempdir()?;
    let mut p = demo(dir.path(), &[])?;
    let lines = lines_until_exit(&mut p, Duration::from_secs(240))?;
    let status = p.wait_timeout(Duration::from_secs(5))?;
    let out = lines.join("\n");
    assert!(status.success(), "{status}: {out}\n{}", p.stderr_output());
    for step in [
        "the manager hears all three agents",
        "allocated from the free pool in",
        "returned to the free pool",
        "summary",
        "cleaned up",
    ] {
        assert!(out.contains(step), "no {step:?} in the story:\n{out}");
    }
    drop(p);
    check_chart(&dir.path().join("demo.svg"))?;
    let summary: Value = serde_json::from_slice(&std::fs::read(dir.path().join("summary.json"))?)?;
    assert!(
        summary["requests"]["served"].as_u64() > Some(0),
        "{summary}"
    );
    assert_eq!(summary["requests"]["failed"], 0, "{summary}");
    let kinds: Vec<&str> = summary["scaling"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["kind"].as_str())
        .collect();
    assert!(
        kinds.contains(&"allocated") && kinds.contains(&"returned"),
        "{summary}"
    );
    for log in [
        "lb-control.log",
        "agent-s1.log",
        "agent-s2.log",
        "agent-s3.log",
    ] {
        let text = std::fs::read_to_string(dir.path().join("logs").join(log))?;
        assert!(!text.is_empty(), "{log} is empty");
    }
    assert!(
        !out.contains("INFO") && !out.contains("WARN"),
        "daemon logs on the terminal:\n{out}"
    );
    check_clean(&before, "finished");

    // 2. `--keep`: the lab stays for the commands it prints, until Ctrl-C.
    let dir = tempfile::tempdir()?;
    let mut p = demo(dir.path(), &["--keep"])?;
    check_kept(&mut p)?;
    let lines = lines_until_exit(&mut p, Duration::from_secs(60))?;
    let status = p.wait_timeout(Duration::from_secs(5))?;
    assert!(
        status.success(),
        "{status}: {lines:?} {}",
        p.stderr_output()
    );
    drop(p);
    check_clean(&before, "kept");

    // 3. Ctrl-C in the middle of the load: exit 130, everything removed.
    let dir = tempfile::tempdir()?;
    let mut p = demo(dir.path(), &[])?;
    p.wait_for_line("more than one server can carry", Duration::from_secs(90))?;
    interrupt(&p);
    let lines = lines_until_exit(&mut p, Duration::from_secs(60))?;
    let status = p.wait_timeout(Duration::from_secs(5))?;
    assert_eq!(status.code(), Some(130), "{lines:?} {}", p.stderr_output());
    assert!(
        lines.iter().any(|l| l.contains("cleaned up")),
        "{lines:?} {}",
        p.stderr_output()
    );
    drop(p);
    check_clean(&before, "interrupted");
    Ok(())
}
