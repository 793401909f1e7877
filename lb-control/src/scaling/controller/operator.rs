//! The operator's actions (`lbctl server`, `lbctl service`, `lbctl pool`)
//! and the pool report they show.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::{Controller, state_name};
use crate::{
    config::ServerState,
    scaling::{config_file::Edit, events::NewEvent, weights::WEIGHT_SCALE},
};

/// A pool as `lbctl pool` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolReport {
    pub service: String,
    pub application: String,
    pub generation: u64,
    pub members: Vec<PoolMember>,
    pub free: Vec<PoolMember>,
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
    pub async fn allocate(&self, server: &str, service: Option<&str>) -> Result<(), String> {
        let service = match service {
            Some(s) => s.to_owned(),
            None => self.service_for(server).await?,
        };
        let mut ops = self.ops.lock().await;
        self.allocate_locked(
            &mut ops,
            &service,
            server,
            "operator: lbctl server allocate",
        )
        .await
    }

    /// `lbctl server drain NAME`: draining until idle or the drain timeout.
    pub async fn drain(&self, server: &str) -> Result<(), String> {
        let service = self.member_service(server)?;
        let mut ops = self.ops.lock().await;
        self.drain_locked(&mut ops, &service, server, "operator: lbctl server drain")
            .await
    }

    /// `lbctl server deallocate NAME`: back to the free pool now (its
    /// remaining flows keep reaching it until its index is reused).
    pub async fn deallocate(&self, server: &str) -> Result<(), String> {
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

    /// `lbctl service add`.
    pub async fn add_service(&self, edit: Edit) -> Result<u64, String> {
        let Edit::AddService { name, .. } = &edit else {
            return Err("not a service addition".into());
        };
        let name = name.clone();
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
    pub async fn remove_service(&self, name: &str) -> Result<u64, String> {
        let mut ops = self.ops.lock().await;
        let t0 = Instant::now();
        let edit = Edit::RemoveService { name: name.into() };
        // Servers that served this service alone go back to the free pool;
        // the other services of shared ones are sent again as they are.
        let snapshot = self.file.read().map_err(|e| e.to_string())?;
        let mut edits = vec![edit.clone()];
        let mut services = vec![name.to_owned()];
        for s in &snapshot.config.server {
            if !s.services.iter().any(|n| n.get_ref() == name) {
                continue;
            }
            let others: Vec<String> = s
                .services
                .iter()
                .map(|n| n.get_ref().clone())
                .filter(|n| n != name)
                .collect();
            if others.is_empty() && s.state != ServerState::Free {
                edits.push(Edit::SetState {
                    server: s.name.get_ref().clone(),
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
    async fn service_for(&self, server: &str) -> Result<String, String> {
        let snapshot = self.file.read().map_err(|e| e.to_string())?;
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
            .filter(|s| {
                apps.iter().any(|a| a == s.application()) || listed.contains(s.name.get_ref())
            })
            .map(|s| s.name.get_ref().clone())
            .collect();
        match matches.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(format!(
                "server `{server}` hosts no configured service's application; name one with --service"
            )),
            many => Err(format!(
                "server `{server}` could serve {many:?}; name one with --service"
            )),
        }
    }

    fn member_service(&self, server: &str) -> Result<String, String> {
        let snapshot = self.file.read().map_err(|e| e.to_string())?;
        let s = snapshot
            .config
            .server
            .iter()
            .find(|s| s.name.get_ref() == server)
            .ok_or_else(|| format!("no server `{server}` in the configuration"))?;
        if s.state == ServerState::Free {
            return Err(format!("server `{server}` is already free"));
        }
        s.services
            .first()
            .map(|n| n.get_ref().clone())
            .ok_or_else(|| format!("server `{server}` serves no service"))
    }

    /// `lbctl pool`: each service's members and free candidates.
    pub async fn pool(&self) -> Result<Vec<PoolReport>, String> {
        let snapshot = self.file.read().map_err(|e| e.to_string())?;
        let ops = self.ops.lock().await;
        let mut out = Vec::new();
        for svc in &snapshot.config.service {
            let view = self.pool_view(&ops, &snapshot.config, svc).await;
            let db = self.manager.db.lock().await;
            let row = |name: &str, state: String, utilization, capacity| {
                let record = db.get(name);
                let app = record
                    .and_then(|r| r.last_report.as_ref())
                    .and_then(|r| r.applications.iter().find(|a| a.name == svc.application()));
                PoolMember {
                    server: name.to_owned(),
                    state,
                    monitor: record
                        .map_or("none".into(), |r| format!("{:?}", r.monitor).to_lowercase()),
                    health: app.map_or("unknown".into(), |a| {
                        format!("{:?}", a.health.state).to_lowercase()
                    }),
                    utilization,
                    capacity,
                    weight: ops
                        .persisted
                        .service_weights
                        .get(svc.name.get_ref())
                        .and_then(|w| w.get(name))
                        .map(|&w| f64::from(w) / f64::from(WEIGHT_SCALE)),
                    file_weight: snapshot
                        .config
                        .server
                        .iter()
                        .find(|s| s.name.get_ref() == name)
                        .map(|s| s.weight),
                    vip_established: app.map(|a| a.vip_established),
                }
            };
            let mut members: Vec<PoolMember> = Vec::new();
            for s in snapshot.config.members(svc.name.get_ref()) {
                let m = view.members.iter().find(|m| m.name == *s.name.get_ref());
                members.push(row(
                    s.name.get_ref(),
                    state_name(s.state).to_owned(),
                    m.and_then(|m| m.utilization),
                    m.map_or(1.0, |m| m.capacity),
                ));
            }
            let free = view
                .free
                .iter()
                .map(|c| {
                    let mut r = row(
                        &c.name,
                        if c.functional {
                            "free"
                        } else {
                            "free (not functional)"
                        }
                        .into(),
                        c.utilization,
                        c.capacity,
                    );
                    r.weight = None;
                    r
                })
                .collect();
            out.push(PoolReport {
                service: svc.name.get_ref().clone(),
                application: svc.application().to_owned(),
                generation: ops.generations.current(),
                members,
                free,
            });
        }
        Ok(out)
    }
}
