//! The configuration file as the manager edits it: the operator's TOML, with
//! the manager's decisions (server states, pool membership, new servers and
//! services) written into it in place.
//!
//! Edits go through `toml_edit`, so comments, key order and layout outside
//! the changed lines stay as the operator wrote them. Writes are a
//! compare-and-swap on the file's content under an advisory lock:
//! [`ConfigFile::update`] re-applies its edits on top of a change the
//! operator made meanwhile instead of overwriting it, and fails with
//! [`ConfigFileError::Conflict`] when they no longer apply.

use std::{
    fs::{File, OpenOptions},
    net::IpAddr,
    path::{Path, PathBuf},
};

use toml_edit::{Array, ArrayOfTables, DocumentMut, Item, Table, Value};

use crate::{
    atomic_file,
    config::{Config, ConfigError, Protocol, ServerState},
};

/// Why an [`Edit`] cannot be applied to a document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    #[error("unknown server `{0}`")]
    UnknownServer(String),
    #[error("unknown service `{0}`")]
    UnknownService(String),
    #[error("server `{0}` already exists")]
    DuplicateServer(String),
    #[error("service `{0}` already exists")]
    DuplicateService(String),
    /// The file says it in a form the editor does not rewrite (an inline
    /// `server = [{ .. }]` array, `services` that is not an array, ...).
    #[error("{0}")]
    Layout(String),
}

/// A change the manager makes to the configuration file.
///
/// Edits that set something (`SetState`, `SetMac`, `JoinService`,
/// `LeaveService`) succeed without a change when the file already says so:
/// re-applied on top of an operator who made the same change, they are not a
/// conflict. Edits that create something fail when it exists, since the
/// existing one may differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// Sets a server's `state`, adding the key when absent.
    SetState { server: String, state: ServerState },
    /// Appends a `[[server]]` table.
    AddServer {
        name: String,
        address: IpAddr,
        mac: Option<String>,
        services: Vec<String>,
        state: ServerState,
        weight: Option<u32>,
    },
    /// Adds `service` to the server's `services`.
    JoinService { server: String, service: String },
    /// Removes `service` from the server's `services`.
    LeaveService { server: String, service: String },
    /// Sets a server's `mac`.
    SetMac { server: String, mac: String },
    /// Sets a server's pinned certificate `fingerprint`.
    SetFingerprint { server: String, fingerprint: String },
    /// Appends a `[[service]]` table.
    AddService {
        name: String,
        vip: IpAddr,
        port: u16,
        protocol: Protocol,
        table_size: Option<u32>,
        /// The application agents host it under (default: the name).
        application: Option<String>,
    },
    /// Removes a `[[service]]` table and the service from every server's
    /// `services`.
    RemoveService { name: String },
}

impl Edit {
    /// One line for the event log.
    pub fn describe(&self) -> String {
        match self {
            Edit::SetState { server, state } => {
                format!("server `{server}`: state = {}", serde_name(*state))
            }
            Edit::AddServer {
                name,
                address,
                services,
                state,
                ..
            } => format!(
                "add server `{name}` ({address}, {}) serving [{}]",
                serde_name(*state),
                services.join(", ")
            ),
            Edit::JoinService { server, service } => {
                format!("server `{server}` joins service `{service}`")
            }
            Edit::LeaveService { server, service } => {
                format!("server `{server}` leaves service `{service}`")
            }
            Edit::SetMac { server, mac } => format!("server `{server}`: mac = {mac}"),
            Edit::SetFingerprint {
                server,
                fingerprint,
            } => format!("server `{server}`: fingerprint = {fingerprint}"),
            Edit::AddService {
                name,
                vip,
                port,
                protocol,
                ..
            } => format!(
                "add service `{name}` ({vip} port {port} {})",
                serde_name(*protocol)
            ),
            Edit::RemoveService { name } => format!("remove service `{name}`"),
        }
    }

    /// Applies the edit to `doc`, touching only the lines it changes.
    /// Fails on unknown or duplicate names; does not validate the result
    /// (that is [`Config::parse`]'s job).
    pub fn apply(&self, doc: &mut DocumentMut) -> Result<(), EditError> {
        match self {
            Edit::SetState { server, state } => set_value(
                server_mut(doc, server)?,
                "state",
                Value::from(serde_name(*state)),
            ),
            Edit::AddServer {
                name,
                address,
                mac,
                services,
                state,
                weight,
            } => {
                if find(tables(doc, "server")?, name).is_some() {
                    return Err(EditError::DuplicateServer(name.clone()));
                }
                for service in services {
                    if find(tables(doc, "service")?, service).is_none() {
                        return Err(EditError::UnknownService(service.clone()));
                    }
                }
                let mut t = Table::new();
                t.insert("name", Item::Value(Value::from(name.as_str())));
                t.insert("address", Item::Value(Value::from(address.to_string())));
                t.insert(
                    "services",
                    Item::Value(Value::Array(Array::from_iter(
                        services.iter().map(String::as_str),
                    ))),
                );
                t.insert("state", Item::Value(Value::from(serde_name(*state))));
                if let Some(mac) = mac {
                    t.insert("mac", Item::Value(Value::from(mac.as_str())));
                }
                if let Some(weight) = weight {
                    t.insert("weight", Item::Value(Value::from(i64::from(*weight))));
                }
                append_table(doc, "server", t)
            }
            Edit::JoinService { server, service } => {
                if find(tables(doc, "service")?, service).is_none() {
                    return Err(EditError::UnknownService(service.clone()));
                }
                let table = server_mut(doc, server)?;
                match services_mut(table, server)? {
                    Some(list) => {
                        if !list.iter().any(|v| v.as_str() == Some(service)) {
                            push_keeping_layout(list, service);
                        }
                    }
                    None => {
                        let list = Array::from_iter([service.as_str()]);
                        table.insert("services", Item::Value(Value::Array(list)));
                    }
                }
                Ok(())
            }
            Edit::LeaveService { server, service } => {
                if let Some(list) = services_mut(server_mut(doc, server)?, server)? {
                    remove_keeping_layout(list, service);
                }
                Ok(())
            }
            Edit::SetMac { server, mac } => {
                set_value(server_mut(doc, server)?, "mac", Value::from(mac.as_str()))
            }
            Edit::SetFingerprint {
                server,
                fingerprint,
            } => set_value(
                server_mut(doc, server)?,
                "fingerprint",
                Value::from(fingerprint.as_str()),
            ),
            Edit::AddService {
                name,
                vip,
                port,
                protocol,
                table_size,
                application,
            } => {
                if find(tables(doc, "service")?, name).is_some() {
                    return Err(EditError::DuplicateService(name.clone()));
                }
                let mut t = Table::new();
                t.insert("name", Item::Value(Value::from(name.as_str())));
                t.insert("vip", Item::Value(Value::from(vip.to_string())));
                t.insert("port", Item::Value(Value::from(i64::from(*port))));
                t.insert("protocol", Item::Value(Value::from(serde_name(*protocol))));
                if let Some(size) = table_size {
                    t.insert("table_size", Item::Value(Value::from(i64::from(*size))));
                }
                if let Some(app) = application {
                    t.insert("application", Item::Value(Value::from(app.as_str())));
                }
                append_table(doc, "service", t)
            }
            Edit::RemoveService { name } => {
                let Some(index) = find(tables(doc, "service")?, name) else {
                    return Err(EditError::UnknownService(name.clone()));
                };
                if let Some(list) = tables_mut(doc, "service")? {
                    list.remove(index);
                    if list.is_empty() {
                        doc.remove("service");
                    }
                }
                if let Some(servers) = tables_mut(doc, "server")? {
                    for table in servers.iter_mut() {
                        let server = table_name(table).unwrap_or_default().to_owned();
                        if let Some(list) = services_mut(table, &server)? {
                            remove_keeping_layout(list, name);
                        }
                    }
                }
                Ok(())
            }
        }
    }
}

/// The name the file uses for a state or protocol (`"draining"`, `"udp"`):
/// serde's, so a variant added in `config` needs no change here.
fn serde_name<T: serde::Serialize + std::fmt::Debug>(value: T) -> String {
    match serde_json::to_value(&value) {
        Ok(serde_json::Value::String(name)) => name,
        _ => format!("{value:?}").to_lowercase(),
    }
}

fn not_tables(key: &str) -> EditError {
    EditError::Layout(format!(
        "`{key}` is not written as [[{key}]] tables; the manager only edits that form"
    ))
}

/// The `[[key]]` tables, `None` when there are none.
fn tables<'a>(doc: &'a DocumentMut, key: &str) -> Result<Option<&'a ArrayOfTables>, EditError> {
    match doc.get(key) {
        None => Ok(None),
        Some(item) => item
            .as_array_of_tables()
            .map(Some)
            .ok_or_else(|| not_tables(key)),
    }
}

fn tables_mut<'a>(
    doc: &'a mut DocumentMut,
    key: &str,
) -> Result<Option<&'a mut ArrayOfTables>, EditError> {
    match doc.get_mut(key) {
        None => Ok(None),
        Some(item) => item
            .as_array_of_tables_mut()
            .map(Some)
            .ok_or_else(|| not_tables(key)),
    }
}

fn table_name(table: &Table) -> Option<&str> {
    table.get("name").and_then(Item::as_str)
}

/// Index of the table named `name`.
fn find(list: Option<&ArrayOfTables>, name: &str) -> Option<usize> {
    list?.iter().position(|t| table_name(t) == Some(name))
}

fn server_mut<'a>(doc: &'a mut DocumentMut, name: &str) -> Result<&'a mut Table, EditError> {
    tables_mut(doc, "server")?
        .and_then(|list| list.iter_mut().find(|t| table_name(t) == Some(name)))
        .ok_or_else(|| EditError::UnknownServer(name.to_owned()))
}

fn services_mut<'a>(
    table: &'a mut Table,
    server: &str,
) -> Result<Option<&'a mut Array>, EditError> {
    match table.get_mut("services") {
        None => Ok(None),
        Some(item) => item.as_array_mut().map(Some).ok_or_else(|| {
            EditError::Layout(format!("server `{server}`: `services` is not an array"))
        }),
    }
}

/// Sets `key`, keeping the decor (spacing, trailing comment) of the value it
/// replaces; a new key goes after the table's last key.
fn set_value(table: &mut Table, key: &str, mut value: Value) -> Result<(), EditError> {
    match table.get_mut(key) {
        Some(Item::Value(old)) => {
            *value.decor_mut() = old.decor().clone();
            *old = value;
        }
        Some(_) => {
            let name = table_name(table).unwrap_or_default();
            return Err(EditError::Layout(format!(
                "`{name}`: `{key}` is a table, not a value"
            )));
        }
        None => {
            table.insert(key, Item::Value(value));
        }
    }
    Ok(())
}

/// Appends a table to `[[key]]`. The writer places a table without a
/// position right after the one before it, so it lands after the last
/// `[[key]]` table (and its sub-tables), ahead of whatever follows them.
fn append_table(doc: &mut DocumentMut, key: &str, mut table: Table) -> Result<(), EditError> {
    table.decor_mut().set_prefix("\n");
    match tables_mut(doc, key)? {
        Some(list) => list.push(table),
        None => {
            let mut list = ArrayOfTables::new();
            list.push(table);
            doc.insert(key, Item::ArrayOfTables(list));
        }
    }
    Ok(())
}

fn raw(s: Option<&toml_edit::RawString>) -> &str {
    s.and_then(toml_edit::RawString::as_str).unwrap_or_default()
}

/// `(up to the first newline, from it)`: a prefix or trailing starts with
/// the comment on the previous element's line.
fn split_line(s: &str) -> (&str, &str) {
    s.split_at(s.find('\n').unwrap_or(s.len()))
}

// In an array the comment after an element's comma is the *next* element's
// prefix (or the array's trailing for the last one); the two helpers below
// move such comments so they stay on the line of the element they follow.

/// Appends `name` with the layout of the elements before it: one per line
/// with their indentation, or on one line.
fn push_keeping_layout(array: &mut Array, name: &str) {
    let mut value = Value::from(name);
    let last_prefix = array
        .iter()
        .last()
        .map(|v| raw(v.decor().prefix()).to_owned());
    match last_prefix {
        Some(prefix) if prefix.contains('\n') => {
            let indent = &prefix[prefix.rfind('\n').unwrap_or(0) + 1..];
            let trailing = raw(Some(array.trailing())).to_owned();
            let (same_line, rest) = split_line(&trailing);
            value
                .decor_mut()
                .set_prefix(format!("{same_line}\n{indent}"));
            array.set_trailing(rest);
        }
        Some(_) => value.decor_mut().set_prefix(" "),
        None => value.decor_mut().set_prefix(""),
    }
    value.decor_mut().set_suffix("");
    array.push_formatted(value);
}

/// Removes every `name` from the array.
fn remove_keeping_layout(array: &mut Array, name: &str) {
    loop {
        let Some(i) = array.iter().position(|v| v.as_str() == Some(name)) else {
            break;
        };
        let prefix = raw(array.get(i).and_then(|v| v.decor().prefix())).to_owned();
        array.remove(i);
        if let Some(next) = array.get_mut(i) {
            let next_prefix = raw(next.decor().prefix()).to_owned();
            let merged = if next_prefix.contains('\n') {
                // Keep the comment on the line before the removed element and
                // the comments above the next one.
                format!("{}{}", split_line(&prefix).0, split_line(&next_prefix).1)
            } else {
                prefix
            };
            next.decor_mut().set_prefix(merged);
        } else if prefix.contains('\n') {
            // Removed the last element: the comment on the line of the new
            // last element was in the removed one's prefix.
            let trailing = raw(Some(array.trailing())).to_owned();
            let rest = split_line(&trailing).1;
            let rest = if rest.is_empty() { "\n" } else { rest };
            array.set_trailing(format!("{}{rest}", split_line(&prefix).0));
        }
    }
    if array.is_empty() {
        array.set_trailing_comma(false);
        if !raw(Some(array.trailing())).contains('#') {
            array.set_trailing("");
        }
    }
}

/// Errors reading or updating the configuration file. Each says whether the
/// file was left as it was.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file as read does not parse or validate.
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    /// An edit does not apply to the file the caller read.
    #[error("{path}: cannot apply \"{edit}\": {source}; file left unchanged")]
    Edit {
        path: PathBuf,
        edit: String,
        source: EditError,
    },
    /// The edits apply but the result does not validate (line numbers are
    /// those of the result, which was not written).
    #[error("the edits would make the configuration invalid; file left unchanged: {0}")]
    Rejected(ConfigError),
    /// The file changed under us in a way the edits cannot follow.
    #[error("{path}: conflict: {message}; file left unchanged")]
    Conflict { path: PathBuf, message: String },
}

/// The file's text and what it says.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The exact text read, compared byte for byte by the next update.
    pub text: String,
    /// The parsed and validated configuration.
    pub config: Config,
}

/// The result of [`ConfigFile::update`].
#[derive(Debug, Clone)]
pub struct Updated {
    /// The file as written.
    pub snapshot: Snapshot,
    /// The file as it was just before the write: the base, or the
    /// operator's version when `rebased`. [`ConfigFile::restore`] rolls back
    /// to it.
    pub previous: Snapshot,
    /// The file had changed since the base was read; the edits were applied
    /// to the changed file.
    pub rebased: bool,
}

/// The operator's configuration file, shared with the manager's edits.
///
/// Writers that go through `ConfigFile` (threads of this process or other
/// processes) serialize on an exclusive `flock` of `.<name>.lock` beside the
/// file and write with [`atomic_file::write`], so readers see the old file
/// or the new one. An editor that ignores the lock can still write between
/// our compare and our rename, and that change is then lost; the window is
/// the few milliseconds it takes to apply the edits and write the file. We
/// compare content rather than mtime so that any change made before the
/// compare is seen: mtime is coarse on some filesystems, and a save within
/// the same tick, or a `touch`, would fool it.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    path: PathBuf,
}

impl ConfigFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads, parses and validates the file.
    pub fn read(&self) -> Result<Snapshot, ConfigFileError> {
        let text = self.read_text()?;
        let config = Config::parse(&text, &self.path)?;
        Ok(Snapshot { text, config })
    }

    /// Applies `edits` to the file `base` was read from, as one
    /// compare-and-swap on its content.
    ///
    /// When the file still holds `base.text` the edits are applied to it;
    /// when the operator changed it since, they are applied to the current
    /// text instead (`rebased`). Nothing is written when an edit does not
    /// apply ([`ConfigFileError::Edit`], or [`ConfigFileError::Conflict`]
    /// after a rebase) or the result does not validate
    /// ([`ConfigFileError::Rejected`], or `Conflict` after a rebase). Edits
    /// that change nothing write nothing.
    pub fn update(&self, base: &Snapshot, edits: &[Edit]) -> Result<Updated, ConfigFileError> {
        let _lock = self.lock()?;
        let current = self.read_text()?;
        let rebased = current != base.text;
        let previous = if rebased {
            let config = Config::parse(&current, &self.path).map_err(|e| {
                self.conflict(format!(
                    "it was changed since it was read and no longer validates: {e}"
                ))
            })?;
            Snapshot {
                text: current,
                config,
            }
        } else {
            base.clone()
        };

        let mut doc: DocumentMut =
            previous
                .text
                .parse()
                .map_err(|e: toml_edit::TomlError| ConfigError::Parse {
                    path: self.path.clone(),
                    message: e.to_string(),
                })?;
        for edit in edits {
            edit.apply(&mut doc).map_err(|source| {
                if rebased {
                    self.conflict(format!(
                        "it was changed since it was read and \"{}\" no longer applies: {source}",
                        edit.describe()
                    ))
                } else {
                    ConfigFileError::Edit {
                        path: self.path.clone(),
                        edit: edit.describe(),
                        source,
                    }
                }
            })?;
        }
        let text = doc.to_string();
        let config = Config::parse(&text, &self.path).map_err(|e| {
            if rebased {
                self.conflict(format!(
                    "it was changed since it was read and the edits would make it invalid: {e}"
                ))
            } else {
                ConfigFileError::Rejected(e)
            }
        })?;

        if text != previous.text {
            self.write(&text)?;
        }
        for edit in edits {
            tracing::debug!(path = %self.path.display(), edit = %edit.describe(), "configuration edit");
        }
        tracing::info!(
            path = %self.path.display(),
            edits = edits.len(),
            rebased,
            "configuration file updated"
        );
        Ok(Updated {
            snapshot: Snapshot { text, config },
            previous,
            rebased,
        })
    }

    /// Rolls the file back to `snapshot` (usually [`Updated::previous`]),
    /// but only while it still holds `written` (usually
    /// [`Updated::snapshot`]): a change made after our write is never
    /// overwritten ([`ConfigFileError::Conflict`], file left as it is).
    pub fn restore(&self, snapshot: &Snapshot, written: &Snapshot) -> Result<(), ConfigFileError> {
        let _lock = self.lock()?;
        let current = self.read_text()?;
        if current != written.text {
            return Err(self
                .conflict("it was changed after the update that is being rolled back".to_owned()));
        }
        if current != snapshot.text {
            self.write(&snapshot.text)?;
        }
        tracing::info!(path = %self.path.display(), "configuration file restored");
        Ok(())
    }

    fn io(&self, path: &Path) -> impl FnOnce(std::io::Error) -> ConfigFileError {
        let path = path.to_owned();
        move |source| ConfigFileError::Io { path, source }
    }

    fn conflict(&self, message: String) -> ConfigFileError {
        ConfigFileError::Conflict {
            path: self.path.clone(),
            message,
        }
    }

    fn read_text(&self) -> Result<String, ConfigFileError> {
        std::fs::read_to_string(&self.path).map_err(self.io(&self.path))
    }

    fn write(&self, text: &str) -> Result<(), ConfigFileError> {
        atomic_file::write(&self.path, text.as_bytes()).map_err(self.io(&self.path))
    }

    /// `.<name>.lock` beside the file. It is never removed: removing a lock
    /// file lets a waiter lock the old inode while a newcomer locks a new one.
    fn lock_path(&self) -> PathBuf {
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.path.with_file_name(format!(".{name}.lock"))
    }

    /// Blocks until this `ConfigFile` (or any other writer following the
    /// protocol) holds the lock; released when the returned file is dropped.
    fn lock(&self) -> Result<File, ConfigFileError> {
        let path = self.lock_path();
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(self.io(&path))?;
        file.lock().map_err(self.io(&path))?;
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{Arc, Barrier},
        time::Duration,
    };

    use super::*;

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
        assert_eq!(
            out,
            TEXT.replace(r#"services = ["web"]"#, r#"services = []"#)
        );
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
            &[Edit::AddService {
                name: "dns".into(),
                vip: "10.0.0.53".parse().expect("ip"),
                port: 53,
                protocol: Protocol::Udp,
                table_size: Some(251),
                application: None,
            }],
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
            .replace(r#"services = ["web"]"#, r#"services = []"#);
        assert_eq!(out, expected);
    }

    #[test]
    fn new_table_goes_after_sub_tables() {
        // `[service.scaling]` belongs to the service above it; checked on the
        // document alone so the test does not depend on that key's schema.
        let text = "[[service]]\nname = \"web\"\n\n[service.scaling]\nmin = 1\n\n[[server]]\nname = \"s1\"\n";
        let mut doc: DocumentMut = text.parse().expect("toml");
        Edit::AddService {
            name: "api".into(),
            vip: "10.0.0.101".parse().expect("ip"),
            port: 443,
            protocol: Protocol::Tcp,
            table_size: None,
            application: Some("https".into()),
        }
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
            err(Edit::AddService {
                name: "web".into(),
                vip: "10.0.0.1".parse().expect("ip"),
                port: 1,
                protocol: Protocol::Tcp,
                table_size: None,
                application: None,
            }),
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
        assert_eq!(c.server[2].name.get_ref(), "s3");

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
}
