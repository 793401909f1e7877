//! The edits the manager makes to the configuration file, applied with
//! `toml_edit` so that everything around the changed lines keeps its layout.

use std::net::IpAddr;

use toml_edit::{Array, ArrayOfTables, DocumentMut, Item, Table, Value};

use crate::config::{Protocol, ServerState};

/// A service added at run time (`lbctl service add`): what its
/// `[[service]]` table says.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NewService {
    pub name: String,
    pub vip: IpAddr,
    pub port: u16,
    #[serde(default)]
    pub protocol: Protocol,
    /// Default: the file's default table size.
    #[serde(default)]
    pub table_size: Option<u32>,
    /// The application agents host it under (default: the name).
    #[serde(default)]
    pub application: Option<String>,
}

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
    AddService(NewService),
    /// Removes a `[[service]]` table and the service from every server's
    /// `services`.
    RemoveService { name: String },
}

impl Edit {
    /// One line for the event log.
    #[must_use]
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
            Edit::AddService(s) => format!(
                "add service `{}` ({} port {} {})",
                s.name,
                s.vip,
                s.port,
                serde_name(s.protocol)
            ),
            Edit::RemoveService { name } => format!("remove service `{name}`"),
        }
    }

    /// Applies the edit to `doc`, touching only the lines it changes.
    /// Fails on unknown or duplicate names; does not validate the result
    /// (that is [`Config::parse`](crate::config::Config::parse)'s job).
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
                let t = server_table(name, *address, mac.as_deref(), services, *state, *weight);
                append_table(doc, "server", t)
            }
            Edit::JoinService { server, service } => join_service(doc, server, service),
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
            Edit::AddService(service) => {
                if find(tables(doc, "service")?, &service.name).is_some() {
                    return Err(EditError::DuplicateService(service.name.clone()));
                }
                append_table(doc, "service", service_table(service))
            }
            Edit::RemoveService { name } => remove_service(doc, name),
        }
    }
}

/// The `[[service]]` table an `AddService` appends.
fn service_table(service: &NewService) -> Table {
    let mut t = Table::new();
    t.insert("name", Item::Value(Value::from(service.name.as_str())));
    t.insert("vip", Item::Value(Value::from(service.vip.to_string())));
    t.insert("port", Item::Value(Value::from(i64::from(service.port))));
    t.insert(
        "protocol",
        Item::Value(Value::from(serde_name(service.protocol))),
    );
    if let Some(size) = service.table_size {
        t.insert("table_size", Item::Value(Value::from(i64::from(size))));
    }
    if let Some(app) = &service.application {
        t.insert("application", Item::Value(Value::from(app.as_str())));
    }
    t
}

/// The `[[server]]` table an `AddServer` appends.
fn server_table(
    name: &str,
    address: IpAddr,
    mac: Option<&str>,
    services: &[String],
    state: ServerState,
    weight: Option<u32>,
) -> Table {
    let mut t = Table::new();
    t.insert("name", Item::Value(Value::from(name)));
    t.insert("address", Item::Value(Value::from(address.to_string())));
    t.insert(
        "services",
        Item::Value(Value::Array(
            services.iter().map(String::as_str).collect::<Array>(),
        )),
    );
    t.insert("state", Item::Value(Value::from(serde_name(state))));
    if let Some(mac) = mac {
        t.insert("mac", Item::Value(Value::from(mac)));
    }
    if let Some(weight) = weight {
        t.insert("weight", Item::Value(Value::from(i64::from(weight))));
    }
    t
}

/// `JoinService`: `service` added to `server`'s `services` unless there.
fn join_service(doc: &mut DocumentMut, server: &str, service: &str) -> Result<(), EditError> {
    if find(tables(doc, "service")?, service).is_none() {
        return Err(EditError::UnknownService(service.to_owned()));
    }
    let table = server_mut(doc, server)?;
    if let Some(list) = services_mut(table, server)? {
        if !list.iter().any(|v| v.as_str() == Some(service)) {
            push_keeping_layout(list, service);
        }
    } else {
        let list = Array::from_iter([service]);
        table.insert("services", Item::Value(Value::Array(list)));
    }
    Ok(())
}

/// `RemoveService`: its table gone (and `[[service]]` when it was the
/// last), its name out of every server's `services`.
fn remove_service(doc: &mut DocumentMut, name: &str) -> Result<(), EditError> {
    let Some(index) = find(tables(doc, "service")?, name) else {
        return Err(EditError::UnknownService(name.to_owned()));
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
    if let Some(list) = tables_mut(doc, key)? {
        list.push(table);
    } else {
        let mut list = ArrayOfTables::new();
        list.push(table);
        doc.insert(key, Item::ArrayOfTables(list));
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
