//! Tests of the edits (layout kept, errors named) and of the file's
//! compare-and-swap updates under the lock.

use std::{
    sync::{Arc, Barrier},
    time::Duration,
};

use super::*;
use crate::config::{Protocol, ServerState};

const TEXT: &str = r#"# Cluster west.
[node]
interfaces = ["eth0"] # uplink

[[service]]
name = "web"   # the shop
vip = "10.0.0.100"
port = 80

[[service]]
name = "api"
vip = "10.0.0.101"
port = 443

# Servers, racked in row 3.
[[server]]
name = "s1"
address = "10.0.0.11"
services = [
    "web", # main
    "api",
]
weight   = 2

[[server]]
name = "s2"
address = "10.0.0.12"
services = ["web"]
state = "free"   # spare
mac = "02:00:00:00:00:12"
"#;

fn edited(text: &str, edits: &[Edit]) -> Result<String, EditError> {
    let mut doc: DocumentMut = text.parse().expect("toml");
    for e in edits {
        e.apply(&mut doc)?;
    }
    let out = doc.to_string();
    Config::parse(&out, Path::new("test.toml")).expect("edited config validates");
    Ok(out)
}

fn set_state(server: &str, state: ServerState) -> Edit {
    Edit::SetState {
        server: server.into(),
        state,
    }
}

fn join(server: &str, service: &str) -> Edit {
    Edit::JoinService {
        server: server.into(),
        service: service.into(),
    }
}

fn leave(server: &str, service: &str) -> Edit {
    Edit::LeaveService {
        server: server.into(),
        service: service.into(),
    }
}

fn add_server(name: &str, address: &str) -> Edit {
    Edit::AddServer {
        name: name.into(),
        address: address.parse().expect("address"),
        mac: None,
        services: vec!["web".into(), "api".into()],
        state: ServerState::Free,
        weight: None,
    }
}

/// A config file in a fresh directory.
fn file(text: &str) -> (tempfile::TempDir, ConfigFile) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("lb.toml");
    std::fs::write(&path, text).expect("write");
    (dir, ConfigFile::new(path))
}

fn on_disk(f: &ConfigFile) -> String {
    std::fs::read_to_string(f.path()).expect("read")
}

#[test]
fn set_state_keeps_layout() {
    let out = edited(TEXT, &[set_state("s2", ServerState::Draining)]).expect("edit");
    assert_eq!(
        out,
        TEXT.replace(
            r#"state = "free"   # spare"#,
            r#"state = "draining"   # spare"#
        )
    );
    // Absent key: added after the table's last key.
    let out = edited(TEXT, &[set_state("s1", ServerState::Down)]).expect("edit");
    assert_eq!(
        out,
        TEXT.replace("weight   = 2\n", "weight   = 2\nstate = \"down\"\n")
    );
    let out = edited(
        TEXT,
        &[Edit::SetMac {
            server: "s2".into(),
            mac: "02:00:00:00:00:22".into(),
        }],
    )
    .expect("edit");
    assert_eq!(out, TEXT.replace("00:00:12", "00:00:22"));
}

#[test]
fn join_and_leave_keep_array_layout() {
    let out = edited(TEXT, &[join("s2", "api")]).expect("edit");
    assert_eq!(
        out,
        TEXT.replace(r#"services = ["web"]"#, r#"services = ["web", "api"]"#)
    );
    // Already a member: nothing changes.
    assert_eq!(edited(TEXT, &[join("s1", "web")]).expect("edit"), TEXT);

    // One per line: the comment stays on the line of "web".
    let out = edited(TEXT, &[leave("s1", "api")]).expect("edit");
    assert_eq!(
        out,
        TEXT.replace(
            "    \"web\", # main\n    \"api\",\n",
            "    \"web\", # main\n"
        )
    );
    // Removing "web" drops its comment with it.
    let out = edited(TEXT, &[leave("s1", "web")]).expect("edit");
    assert_eq!(
        out,
        TEXT.replace("    \"web\", # main\n    \"api\",\n", "    \"api\",\n")
    );
    // And adding it back keeps one per line, with the indentation.
    let out = edited(&out, &[join("s1", "web")]).expect("edit");
    assert_eq!(
        out,
        TEXT.replace(
            "    \"web\", # main\n    \"api\",\n",
            "    \"api\",\n    \"web\",\n"
        )
    );
    let out = edited(TEXT, &[leave("s2", "web")]).expect("edit");
    assert_eq!(out, TEXT.replace(r#"services = ["web"]"#, r"services = []"));
}

#[test]
fn join_keeps_comment_on_last_line() {
    let text = TEXT.replace("    \"api\",\n]", "    \"api\", # backup\n]");
    let out = edited(&text, &[join("s1", "db")]).unwrap_err();
    assert_eq!(out, EditError::UnknownService("db".into()));
    let text = text.replace(
        "port = 443\n",
        "port = 443\n\n[[service]]\nname = \"db\"\nvip = \"10.0.0.102\"\nport = 5432\n",
    );
    let out = edited(&text, &[join("s1", "db")]).expect("edit");
    assert_eq!(
        out,
        text.replace(
            "    \"api\", # backup\n]",
            "    \"api\", # backup\n    \"db\",\n]"
        )
    );
}

#[test]
fn add_server_appends_a_table() {
    let out = edited(TEXT, &[add_server("s3", "10.0.0.13")]).expect("edit");
    assert_eq!(
        out,
        format!(
            "{TEXT}\n[[server]]\nname = \"s3\"\naddress = \"10.0.0.13\"\nservices = [\"web\", \"api\"]\nstate = \"free\"\n"
        )
    );
    let c = Config::parse(&out, Path::new("t")).expect("valid");
    assert_eq!(c.server.len(), 3);
    assert_eq!(c.server[2].state, ServerState::Free);
    assert_eq!(c.server[2].services.len(), 2);

    // Ahead of a table that follows the servers.
    let text = format!("{TEXT}\n[limits]\nmax_services = 64\n");
    let out = edited(
        &text,
        &[Edit::AddServer {
            name: "s3".into(),
            address: "10.0.0.13".parse().expect("ip"),
            mac: Some("02:00:00:00:00:13".into()),
            services: vec![],
            state: ServerState::Allocated,
            weight: Some(3),
        }],
    )
    .expect("edit");
    assert_eq!(
        out,
        format!(
            "{TEXT}\n[[server]]\nname = \"s3\"\naddress = \"10.0.0.13\"\nservices = []\nstate = \"allocated\"\nmac = \"02:00:00:00:00:13\"\nweight = 3\n\n[limits]\nmax_services = 64\n"
        )
    );
}

#[test]
fn add_and_remove_service() {
    let out = edited(
        TEXT,
        &[Edit::AddService(NewService {
            name: "dns".into(),
            vip: "10.0.0.53".parse().expect("ip"),
            port: 53,
            protocol: Protocol::Udp,
            table_size: Some(251),
            application: None,
        })],
    )
    .expect("edit");
    assert_eq!(
            out,
            TEXT.replace(
                "port = 443\n",
                "port = 443\n\n[[service]]\nname = \"dns\"\nvip = \"10.0.0.53\"\nport = 53\nprotocol = \"udp\"\ntable_size = 251\n"
            )
        );

    let out = edited(TEXT, &[Edit::RemoveService { name: "web".into() }]).expect("edit");
    let expected = TEXT
        .replace(
            "[[service]]\nname = \"web\"   # the shop\nvip = \"10.0.0.100\"\nport = 80\n\n",
            "",
        )
        .replace("    \"web\", # main\n    \"api\",\n", "    \"api\",\n")
        .replace(r#"services = ["web"]"#, r"services = []");
    assert_eq!(out, expected);
}

#[test]
fn new_table_goes_after_sub_tables() {
    // `[service.scaling]` belongs to the service above it; checked on the
    // document alone so the test does not depend on that key's schema.
    let text =
        "[[service]]\nname = \"web\"\n\n[service.scaling]\nmin = 1\n\n[[server]]\nname = \"s1\"\n";
    let mut doc: DocumentMut = text.parse().expect("toml");
    Edit::AddService(NewService {
        name: "api".into(),
        vip: "10.0.0.101".parse().expect("ip"),
        port: 443,
        protocol: Protocol::Tcp,
        table_size: None,
        application: Some("https".into()),
    })
    .apply(&mut doc)
    .expect("edit");
    assert_eq!(
            doc.to_string(),
            text.replace(
                "min = 1\n",
                "min = 1\n\n[[service]]\nname = \"api\"\nvip = \"10.0.0.101\"\nport = 443\nprotocol = \"tcp\"\napplication = \"https\"\n"
            )
        );
}

#[test]
fn unknown_and_duplicate_names_are_errors() {
    let err = |e: Edit| edited(TEXT, &[e]).unwrap_err().to_string();
    assert_eq!(
        err(set_state("nope", ServerState::Down)),
        "unknown server `nope`"
    );
    assert_eq!(err(leave("nope", "web")), "unknown server `nope`");
    assert_eq!(err(join("s1", "db")), "unknown service `db`");
    assert_eq!(
        err(Edit::RemoveService { name: "db".into() }),
        "unknown service `db`"
    );
    assert_eq!(
        err(add_server("s1", "10.0.0.13")),
        "server `s1` already exists"
    );
    assert_eq!(
        err(Edit::AddService(NewService {
            name: "web".into(),
            vip: "10.0.0.1".parse().expect("ip"),
            port: 1,
            protocol: Protocol::Tcp,
            table_size: None,
            application: None,
        })),
        "service `web` already exists"
    );
    let inline = "server = []\n[node]\ninterfaces = [\"eth0\"]\n";
    let e = edited(inline, &[set_state("s1", ServerState::Down)]).unwrap_err();
    assert!(e.to_string().contains("[[server]]"), "{e}");

    // Through the file, the error names the file and the edit.
    let (_dir, f) = file(TEXT);
    let base = f.read().expect("read");
    let e = f
        .update(&base, &[set_state("nope", ServerState::Down)])
        .unwrap_err();
    assert!(matches!(e, ConfigFileError::Edit { .. }), "{e:?}");
    let e = e.to_string();
    assert!(
        e.contains("lb.toml") && e.contains("server `nope`: state = down"),
        "{e}"
    );
    assert_eq!(on_disk(&f), TEXT);
}

#[test]
fn update_writes_and_returns_the_new_file() {
    let (_dir, f) = file(TEXT);
    let base = f.read().expect("read");
    let u = f
        .update(&base, &[set_state("s2", ServerState::Allocated)])
        .expect("update");
    assert!(!u.rebased);
    assert_eq!(u.previous.text, TEXT);
    assert_eq!(on_disk(&f), u.snapshot.text);
    assert_eq!(u.snapshot.config.server[1].state, ServerState::Allocated);
}

#[test]
fn operator_edit_is_rebased_onto() {
    let (_dir, f) = file(TEXT);
    let base = f.read().expect("read");
    let operator = TEXT.replace("# Cluster west.", "# Cluster west (ticket 42).");
    std::fs::write(f.path(), &operator).expect("operator edit");

    let u = f
        .update(&base, &[set_state("s2", ServerState::Draining)])
        .expect("update");
    assert!(u.rebased);
    assert_eq!(u.previous.text, operator);
    assert_eq!(
        on_disk(&f),
        operator.replace(r#"state = "free""#, r#"state = "draining""#)
    );
}

#[test]
fn conflicting_operator_edit_leaves_file() {
    let (_dir, f) = file(TEXT);
    let base = f.read().expect("read");
    let operator = TEXT.replace(
            "\n[[server]]\nname = \"s2\"\naddress = \"10.0.0.12\"\nservices = [\"web\"]\nstate = \"free\"   # spare\nmac = \"02:00:00:00:00:12\"\n",
            "",
        );
    assert_ne!(operator, TEXT);
    std::fs::write(f.path(), &operator).expect("operator edit");

    let e = f
        .update(&base, &[set_state("s2", ServerState::Allocated)])
        .unwrap_err();
    assert!(matches!(e, ConfigFileError::Conflict { .. }), "{e:?}");
    assert!(e.to_string().contains("unknown server `s2`"), "{e}");
    assert_eq!(on_disk(&f), operator);

    // An operator's file that does not validate is not written over.
    std::fs::write(f.path(), "[node\n").expect("operator edit");
    let e = f
        .update(&base, &[set_state("s1", ServerState::Down)])
        .unwrap_err();
    assert!(matches!(e, ConfigFileError::Conflict { .. }), "{e:?}");
    assert_eq!(on_disk(&f), "[node\n");
}

#[test]
fn invalid_result_leaves_file() {
    let (_dir, f) = file(TEXT);
    let base = f.read().expect("read");
    // s1's address again.
    let e = f
        .update(&base, &[add_server("s3", "10.0.0.11")])
        .unwrap_err();
    assert!(matches!(e, ConfigFileError::Rejected(_)), "{e:?}");
    assert!(e.to_string().contains("also server"), "{e}");
    assert_eq!(on_disk(&f), TEXT);
}

#[test]
fn restore_rolls_back_only_our_write() {
    let (_dir, f) = file(TEXT);
    let base = f.read().expect("read");
    let u = f.update(&base, &[leave("s1", "api")]).expect("update");
    f.restore(&u.previous, &u.snapshot).expect("restore");
    assert_eq!(on_disk(&f), TEXT);

    let u = f.update(&base, &[leave("s1", "api")]).expect("update");
    let operator = u
        .snapshot
        .text
        .replace("# Cluster west.", "# Cluster east.");
    std::fs::write(f.path(), &operator).expect("operator edit");
    let e = f.restore(&u.previous, &u.snapshot).unwrap_err();
    assert!(matches!(e, ConfigFileError::Conflict { .. }), "{e:?}");
    assert_eq!(on_disk(&f), operator);
}

#[test]
fn concurrent_updates_both_land() {
    let (dir, f) = file(TEXT);
    let f = Arc::new(f);
    let base = Arc::new(f.read().expect("read"));
    let start = Arc::new(Barrier::new(2));
    let threads: Vec<_> = [
        set_state("s2", ServerState::Allocated),
        add_server("s3", "10.0.0.13"),
    ]
    .into_iter()
    .map(|edit| {
        let (f, base, start) = (f.clone(), base.clone(), start.clone());
        std::thread::spawn(move || {
            start.wait();
            f.update(&base, &[edit]).expect("update")
        })
    })
    .collect();
    let rebased = threads
        .into_iter()
        .map(|t| t.join().expect("thread").rebased)
        .filter(|r| *r)
        .count();
    assert_eq!(rebased, 1);
    let c = f.read().expect("read").config;
    assert_eq!(c.server[1].state, ServerState::Allocated);
    assert_eq!(&c.server[2].name, "s3");

    // Only the file and its lock are left.
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, [".lb.toml.lock", "lb.toml"]);
}

#[test]
fn update_waits_for_the_lock() {
    let (_dir, f) = file(TEXT);
    let base = f.read().expect("read");
    let held = f.lock().expect("lock");
    let writer = {
        let f = f.clone();
        std::thread::spawn(move || f.update(&base, &[set_state("s1", ServerState::Down)]))
    };
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(on_disk(&f), TEXT, "wrote while the lock was held");
    drop(held);
    writer.join().expect("thread").expect("update");
    assert!(on_disk(&f).contains("state = \"down\""));
}

/// Another process holding the lock keeps a change out for the lock wait
/// only: the change then fails and names the holder. The lock file is the
/// manager's alone, even when someone made it world-writable first.
#[test]
fn a_lock_held_elsewhere_delays_a_change_by_a_bounded_wait() {
    use std::os::unix::fs::PermissionsExt as _;
    let (_dir, f) = file(TEXT);
    let f = f.with_lock_wait(Duration::from_millis(300));
    let lock = f.lock_path();
    std::fs::write(&lock, "").expect("lock file");
    std::fs::set_permissions(&lock, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    // `--no-fork`: the process spawned is the one holding the lock.
    let mut holder = std::process::Command::new("flock")
        .arg("--no-fork")
        .arg(&lock)
        .args(["sleep", "30"])
        .spawn()
        .expect("flock (util-linux)");
    let held = std::time::Instant::now();
    while crate::locks::flock_holder(&std::fs::File::open(&lock).expect("open")).is_none() {
        assert!(
            held.elapsed() < Duration::from_secs(5),
            "flock never took the lock"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let base = f.read().expect("read");
    let started = std::time::Instant::now();
    let e = f
        .update(&base, &[set_state("s1", ServerState::Down)])
        .unwrap_err();
    let waited = started.elapsed();
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(matches!(e, ConfigFileError::Locked { .. }), "{e}");
    assert!(
        e.to_string().contains(&format!("(pid {})", holder.id())),
        "{e}"
    );
    assert!(waited < Duration::from_secs(5), "waited {waited:?}");
    assert_eq!(on_disk(&f), TEXT);
    let mode = std::fs::metadata(&lock).expect("lock").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "lock file mode {mode:o}");
    // Once released, the change goes through.
    f.update(&base, &[set_state("s1", ServerState::Down)])
        .expect("update");
}

#[test]
fn describe_names_the_change() {
    assert_eq!(
        add_server("s3", "10.0.0.13").describe(),
        "add server `s3` (10.0.0.13, free) serving [web, api]"
    );
    assert_eq!(
        leave("s1", "web").describe(),
        "server `s1` leaves service `web`"
    );
}

#[test]
fn cached_read_parses_again_only_after_a_change() {
    let (_dir, f) = file(TEXT);
    let a = f.read_cached().expect("read");
    let b = f.read_cached().expect("read");
    assert!(
        std::sync::Arc::ptr_eq(&a, &b),
        "unchanged file parsed again"
    );
    // Our own write (a rename) and an editor's in-place write both show.
    let base = f.read().expect("read");
    f.update(&base, &[set_state("s1", ServerState::Draining)])
        .expect("update");
    let c = f.read_cached().expect("read");
    assert!(!std::sync::Arc::ptr_eq(&b, &c));
    assert_eq!(c.text, on_disk(&f));
    std::fs::write(f.path(), format!("{}# more\n", on_disk(&f))).expect("write");
    let d = f.read_cached().expect("read");
    assert!(d.text.ends_with("# more\n"));
    // A broken file is an error, and the next good one is read.
    std::fs::write(f.path(), "[node").expect("write");
    assert!(f.read_cached().is_err());
    std::fs::write(f.path(), TEXT).expect("write");
    assert_eq!(f.read_cached().expect("read").text, TEXT);
}
