//! The operator's actions (`lbctl server`, `lbctl service`, `lbctl pool`)
//! and the pool report they show.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Instant,
};

use serde::{Deserialize, Serialize};

use super::{Controller, ControllerError, Published, allocate::Asked, state_name};
use crate::{
    config::{Config, ServerConfig, ServerState, ServiceConfig},
    manager::db::{ServerDb, ServerRecord},
    manager::policy::PoolView,
    manager::{
        config_file::{Edit, NewService},
        events::NewEvent,
        weights::WEIGHT_SCALE,
    },
};

/// What `lbctl pool` shows.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Pools {
    pub pools: Vec<PoolReport>,
    /// Servers of the configuration file no pool lists: free ones that
    /// name no service and whose agent has said nothing of a configured
    /// application, or ones in a state without a service.
    pub unassigned: Vec<PoolMember>,
}

/// A free server the policy may allocate.
const FREE: &str = "free";
/// A free server the policy leaves alone: its agent is not connected and
/// monitored, or its application is not up and ready.
const FREE_NOT_FUNCTIONAL: &str = "free (not functional)";
/// A free server the policy leaves alone for a while: its agent gave no
/// usable settings for an allocation.
const FREE_HELD: &str = "free (held: no usable settings)";
/// The monitor column of a server whose agent has not said hello since the
/// manager started.
const NEVER_CONNECTED: &str = "never connected";

/// The monitor column: the manager's view of the server's agent.
fn monitor_name(record: Option<&ServerRecord>) -> String {
    record.map_or_else(
        || NEVER_CONNECTED.to_owned(),
        |r| format!("{:?}", r.monitor).to_lowercase(),
    )
}

/// Free servers of `config` that list `service` but are not among the free
/// servers the policy was `offered` (their agent never connected, or does
/// not say it hosts the service's application).
fn listed_free<'a>(
    config: &'a Config,
    service: &'a str,
    offered: &'a [&str],
) -> impl Iterator<Item = &'a ServerConfig> {
    config.server.iter().filter(move |s| {
        s.state == ServerState::Free && s.serves(service) && !offered.contains(&s.name.as_str())
    })
}

/// Servers of `config` not in `listed`.
fn unlisted<'a>(
    config: &'a Config,
    listed: &'a BTreeSet<String>,
) -> impl Iterator<Item = &'a ServerConfig> {
    config.server.iter().filter(|s| !listed.contains(&s.name))
}

/// A pool as `lbctl pool` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolReport {
    pub service: String,
    pub application: String,
    pub generation: u64,
    pub members: Vec<PoolMember>,
    pub free: Vec<PoolMember>,
    /// The pool size the scaling policy wants for the utilization its
    /// last evaluation saw, within `min_servers..=max_servers` (`None`:
    /// scaling disabled, or no evaluation yet).
    #[serde(default)]
    pub desired_servers: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolMember {
    pub server: String,
    pub state: String,
    pub monitor: String,
    pub health: String,
    pub utilization: Option<f64>,
    pub capacity: f64,
    /// The weight in force on the nodes, in file units (`None`: not in
    /// the table).
    pub weight: Option<f64>,
    /// The file's weight.
    #[serde(default)]
    pub file_weight: Option<u32>,
    pub vip_established: Option<u64>,
}

impl Controller {
    /// `lbctl server allocate NAME [--service S]`.
    pub async fn allocate(
        &self,
        server: &str,
        service: Option<&str>,
    ) -> Result<(), ControllerError> {
        let service = match service {
            Some(s) => s.to_owned(),
            None => self.service_for(server).await?,
        };
        self.allocate_server(
            &service,
            server,
            "operator: lbctl server allocate",
            Asked::Operator,
        )
        .await
    }

    /// `lbctl server drain NAME`: draining until idle or the drain timeout.
    pub async fn drain(&self, server: &str) -> Result<(), ControllerError> {
        let service = self.member_service(server)?;
        let mut ops = self.ops.lock().await;
        self.drain_locked(&mut ops, &service, server, "operator: lbctl server drain")
            .await
    }

    /// `lbctl server deallocate NAME`: back to the free pool now (its
    /// remaining flows keep reaching it until its index is reused).
    pub async fn deallocate(&self, server: &str) -> Result<(), ControllerError> {
        let service = self.member_service(server)?;
        let mut ops = self.ops.lock().await;
        self.release(
            &mut ops,
            &service,
            server,
            "operator: lbctl server deallocate",
            false,
        )
        .await
    }

    /// `lbctl server repin`: pins the certificate `server` presented last
    /// against its pin (its hellos were refused since), recorded in the
    /// file. Returns the fingerprint now pinned.
    pub async fn repin(&self, server: &str) -> Result<String, ControllerError> {
        let fingerprint = self
            .manager
            .refused_identity(server)
            .ok_or_else(|| ControllerError::NothingToRepin(server.to_owned()))?;
        let ops = self.ops.lock().await;
        let base = self.file.read()?;
        if !base.config.server.iter().any(|s| s.name == server) {
            return Err(ControllerError::UnknownServer(server.to_owned()));
        }
        let edit = Edit::SetFingerprint {
            server: server.to_owned(),
            fingerprint: fingerprint.clone(),
        };
        let updated = self.update_file(base, std::slice::from_ref(&edit)).await?;
        self.publish_pins(&updated.snapshot.config).await;
        self.publish(&ops);
        self.manager.forget_refused_identity(server);
        self.events.record(
            NewEvent::new(
                "repinned",
                format!("operator: certificate {fingerprint} pinned"),
            )
            .server(server),
        );
        Ok(fingerprint)
    }

    /// `lbctl service add`.
    pub async fn add_service(&self, service: NewService) -> Result<u64, ControllerError> {
        let name = service.name.clone();
        let edit = Edit::AddService(service);
        let mut ops = self.ops.lock().await;
        let t0 = Instant::now();
        let generation = self
            .change(
                &mut ops,
                "service-add",
                std::slice::from_ref(&name),
                std::slice::from_ref(&edit),
            )
            .await?;
        self.events.record(
            NewEvent::new("service-added", edit.describe())
                .service(&name)
                .took(t0.elapsed())
                .generation(generation),
        );
        Ok(generation)
    }

    /// `lbctl service remove`.
    pub async fn remove_service(&self, name: &str) -> Result<u64, ControllerError> {
        let mut ops = self.ops.lock().await;
        let t0 = Instant::now();
        let edit = Edit::RemoveService { name: name.into() };
        // Servers that served this service alone go back to the free pool;
        // the other services of shared ones are sent again as they are.
        let snapshot = self.file.read()?;
        let mut edits = vec![edit.clone()];
        let mut services = vec![name.to_owned()];
        for s in &snapshot.config.server {
            if !s.serves(name) {
                continue;
            }
            let others: Vec<String> = s.services.iter().filter(|&n| n != name).cloned().collect();
            if others.is_empty() && s.state != ServerState::Free {
                edits.push(Edit::SetState {
                    server: s.name.clone(),
                    state: ServerState::Free,
                });
            }
            services.extend(others);
        }
        services.sort();
        services.dedup();
        let generation = self
            .change(&mut ops, "service-remove", &services, &edits)
            .await?;
        ops.policies.remove(name);
        self.events.record(
            NewEvent::new("service-removed", edit.describe())
                .service(name)
                .took(t0.elapsed())
                .generation(generation),
        );
        Ok(generation)
    }

    /// The one service of the file whose application `server` hosts.
    async fn service_for(&self, server: &str) -> Result<String, ControllerError> {
        let snapshot = self.file.read()?;
        let apps: Vec<String> = {
            let db = self.manager.db.lock().await;
            db.get(server)
                .map(|r| {
                    r.hello
                        .applications
                        .iter()
                        .map(|a| a.name.clone())
                        .collect()
                })
                .unwrap_or_default()
        };
        let listed = snapshot.config.services_of(server);
        let matches: Vec<String> = snapshot
            .config
            .service
            .iter()
            .filter(|s| apps.iter().any(|a| a == s.application()) || listed.contains(&s.name))
            .map(|s| s.name.clone())
            .collect();
        match matches.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(ControllerError::NoApplication(server.to_owned())),
            many => Err(ControllerError::Ambiguous {
                server: server.to_owned(),
                services: many.to_vec(),
            }),
        }
    }

    fn member_service(&self, server: &str) -> Result<String, ControllerError> {
        let snapshot = self.file.read()?;
        let s = snapshot
            .config
            .server
            .iter()
            .find(|s| s.name == server)
            .ok_or_else(|| ControllerError::UnknownServer(server.to_owned()))?;
        if s.state == ServerState::Free {
            return Err(ControllerError::AlreadyFree(server.to_owned()));
        }
        s.services
            .first()
            .cloned()
            .ok_or_else(|| ControllerError::ServesNoService(server.to_owned()))
    }

    /// Each server's pool state in the configuration file now (what
    /// `lbctl pool` says), by name.
    pub fn file_states(&self) -> Result<BTreeMap<String, String>, ControllerError> {
        let snapshot = self.file.read_cached()?;
        Ok(snapshot
            .config
            .server
            .iter()
            .map(|s| (s.name.clone(), state_name(s.state).to_owned()))
            .collect())
    }

    /// `lbctl pool`: each service's members and free servers, and the
    /// servers of the file no pool lists. Every server of the file shows,
    /// whether or not its agent ever connected.
    pub async fn pool(&self) -> Result<Pools, ControllerError> {
        // The file's error, if it has one now; then the file and the
        // loop's state as the last evaluation or change left them. Never
        // `ops`: a change may hold it while the nodes apply it.
        let current = self.file.read_cached()?;
        let published = self.published();
        let snapshot = published.file.clone().unwrap_or(current);
        let now = Instant::now();
        let mut out = Vec::new();
        let mut listed = BTreeSet::new();
        for svc in &snapshot.config.service {
            let view = self
                .pool_view(&published.observed, &snapshot.config, svc, now)
                .await;
            let db = self.manager.db.lock().await;
            let rows = Rows {
                db: &db,
                published: &published,
                config: &snapshot.config,
                svc,
                now,
            };
            let report = rows.report(&view);
            listed.extend(
                report
                    .members
                    .iter()
                    .chain(&report.free)
                    .map(|m| m.server.clone()),
            );
            out.push(report);
        }
        let db = self.manager.db.lock().await;
        let unassigned = unlisted(&snapshot.config, &listed)
            .map(|s| {
                let name = &s.name;
                let record = db.get(name);
                PoolMember {
                    server: name.clone(),
                    state: state_name(s.state).to_owned(),
                    monitor: monitor_name(record),
                    health: "unknown".into(),
                    utilization: record
                        .and_then(|r| r.last_report.as_ref())
                        .map(|r| r.utilization.value),
                    capacity: record.map_or(1.0, |r| r.hello.cores),
                    weight: None,
                    file_weight: Some(s.weight),
                    vip_established: None,
                }
            })
            .collect();
        Ok(Pools {
            pools: out,
            unassigned,
        })
    }
}

/// What one service's pool report is made of: the server database, the
/// weights in force, the file.
struct Rows<'a> {
    db: &'a ServerDb,
    published: &'a Published,
    config: &'a Config,
    svc: &'a ServiceConfig,
    now: Instant,
}

impl Rows<'_> {
    /// The service's members (every state but free), then its free
    /// servers: those the policy was offered in `view`, then those the
    /// file lists without a functional agent.
    fn report(&self, view: &PoolView) -> PoolReport {
        let svc = self.svc;
        let members = self
            .config
            .members(&svc.name)
            .map(|s| {
                let m = view.members.iter().find(|m| m.name == s.name);
                self.row(
                    &s.name,
                    state_name(s.state).to_owned(),
                    m.and_then(|m| m.utilization),
                    m.map_or(1.0, |m| m.capacity),
                )
            })
            .collect();
        let mut free: Vec<PoolMember> = view
            .free
            .iter()
            .map(|c| {
                let state = if c.functional {
                    FREE
                } else if self.published.observed.is_held(&c.name, self.now) {
                    FREE_HELD
                } else {
                    FREE_NOT_FUNCTIONAL
                };
                self.free_row(&c.name, c.utilization, c.capacity, state)
            })
            .collect();
        let offered: Vec<&str> = view.free.iter().map(|c| c.name.as_str()).collect();
        for s in listed_free(self.config, &svc.name, &offered) {
            let record = self.db.get(&s.name);
            free.push(
                self.free_row(
                    &s.name,
                    record
                        .and_then(|r| r.last_report.as_ref())
                        .map(|r| r.utilization.value),
                    record.map_or(1.0, |r| r.hello.cores),
                    FREE_NOT_FUNCTIONAL,
                ),
            );
        }
        PoolReport {
            service: svc.name.clone(),
            application: svc.application().to_owned(),
            generation: self.published.generation,
            members,
            free,
            desired_servers: self.published.desired.get(&svc.name).copied(),
        }
    }

    /// A free server's row: no weight in force.
    fn free_row(
        &self,
        name: &str,
        utilization: Option<f64>,
        capacity: f64,
        state: &str,
    ) -> PoolMember {
        PoolMember {
            weight: None,
            ..self.row(name, state.to_owned(), utilization, capacity)
        }
    }

    fn row(
        &self,
        name: &str,
        state: String,
        utilization: Option<f64>,
        capacity: f64,
    ) -> PoolMember {
        let svc = self.svc;
        let record = self.db.get(name);
        let app = record
            .and_then(|r| r.last_report.as_ref())
            .and_then(|r| r.applications.iter().find(|a| a.name == svc.application()));
        PoolMember {
            server: name.to_owned(),
            state,
            monitor: monitor_name(record),
            health: app.map_or("unknown".into(), |a| {
                format!("{:?}", a.health.state).to_lowercase()
            }),
            utilization,
            capacity,
            weight: self
                .published
                .service_weights
                .get(&svc.name)
                .and_then(|w| w.get(name))
                .map(|&w| f64::from(w) / f64::from(WEIGHT_SCALE)),
            file_weight: self
                .config
                .server
                .iter()
                .find(|s| s.name == name)
                .map(|s| s.weight),
            vip_established: app.map(|a| a.vip_established),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const FILE: &str = r#"
[node]
interfaces = ["eth0"]

[[service]]
name = "web"
vip = "10.0.0.100"
port = 80

[[service]]
name = "db"
vip = "10.0.0.101"
port = 5432

[[server]]
name = "s1"
address = "10.0.0.11"
services = ["web"]

[[server]]
name = "s2"
address = "10.0.0.12"
services = ["web"]
state = "free"

[[server]]
name = "s3"
address = "10.0.0.13"
services = ["db"]
state = "free"

[[server]]
name = "spare"
address = "10.0.0.14"
state = "free"
"#;

    fn names<'a>(servers: impl Iterator<Item = &'a ServerConfig>) -> Vec<&'a str> {
        servers.map(|s| s.name.as_str()).collect()
    }

    #[test]
    fn every_server_of_the_file_is_in_the_pool_report() {
        let config = Config::parse(FILE, Path::new("lb.toml")).unwrap();
        // No agent ever connected: the free servers that list a service are
        // in its pool all the same.
        assert_eq!(names(listed_free(&config, "web", &[])), ["s2"]);
        assert_eq!(names(listed_free(&config, "db", &[])), ["s3"]);
        // One the policy was offered (its agent hosts the application) is
        // not listed twice.
        assert!(names(listed_free(&config, "web", &["s2"])).is_empty());
        // What no pool lists is still shown.
        let listed: BTreeSet<String> = ["s1", "s2", "s3"].map(String::from).into();
        assert_eq!(names(unlisted(&config, &listed)), ["spare"]);
        let listed: BTreeSet<String> = ["s1", "s2", "s3", "spare"].map(String::from).into();
        assert!(names(unlisted(&config, &listed)).is_empty());
        assert_eq!(monitor_name(None), "never connected");
    }
}
