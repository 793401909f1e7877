//! The controller's side of the weights (`scaling::weights`): what each
//! service's members look like to them, the weights every push carries,
//! and the publications of the law and of slow start.

use std::{collections::BTreeMap, time::Instant};

use super::{Controller, Ops, ServiceWeightMap};
use crate::{
    config::{Config, ServerState, ServiceConfig},
    manager::db::{Monitor, ServerDb},
    manager::{
        events::NewEvent,
        weights::{MemberInput, ServiceWeights, WEIGHT_SCALE, WeightSettings, display_weight},
    },
};

/// How often the law takes a step, in report intervals (and never more
/// often than every 4 s): long enough for the utilization to answer the
/// last step and for a period's mean to rise above a report's noise (a
/// 0.1-core server carrying a few connections a report is mostly noise in
/// any one report).
const LAW_PERIOD_REPORTS: u32 = 20;

impl Controller {
    fn weight_settings(&self, svc: &ServiceConfig) -> WeightSettings {
        WeightSettings {
            dynamic: svc.scaling.enabled && svc.scaling.dynamic_weights,
            slow_start: svc.scaling.slow_start,
            period: (self.config.report_interval() * LAW_PERIOD_REPORTS)
                .max(std::time::Duration::from_secs(4)),
        }
    }

    /// The allocated members of `service` in `config`, as the weights see
    /// them; reports and capacities from `db` when given.
    fn member_inputs<'a>(
        &self,
        ops: &Ops,
        config: &'a Config,
        service: &'a str,
        db: Option<&ServerDb>,
        now: Instant,
    ) -> Vec<MemberInput<'a>> {
        config
            .members(service)
            .filter(|s| s.state == ServerState::Allocated)
            .map(|s| {
                let name = s.name.as_str();
                let record = db
                    .and_then(|db| db.get(name))
                    .filter(|r| r.monitor == Monitor::Monitored);
                // Entered while the manager watched: since its state last
                // changed; allocated in this very change: now.
                let entered = match ops.observed.since.get(name) {
                    Some((ServerState::Allocated, since)) => {
                        (*since > self.started).then_some(*since)
                    }
                    Some(_) => Some(now),
                    None => ops.watching.then_some(now),
                };
                MemberInput {
                    name,
                    file_weight: s.weight,
                    capacity: record.map_or(1.0, |r| r.hello.cores.max(0.01)),
                    entered,
                    report: record.and_then(|r| {
                        Some((r.last_report_at?, r.last_report.as_ref()?.utilization.value))
                    }),
                }
            })
            .collect()
    }

    /// The weights of `service`, resumed from the state directory the
    /// first time.
    fn service_weights<'o>(ops: &'o mut Ops, service: &str) -> &'o mut ServiceWeights {
        let Ops {
            weights, persisted, ..
        } = ops;
        weights.entry(service.to_owned()).or_insert_with(|| {
            ServiceWeights::resume(
                persisted.factors.get(service).unwrap_or(&BTreeMap::new()),
                persisted
                    .service_weights
                    .get(service)
                    .unwrap_or(&BTreeMap::new()),
            )
        })
    }

    /// The weights in force of `services` as `config` has them: what a
    /// push of that config carries (a member allocated in it enters at the
    /// bottom of its slow start).
    pub(super) fn weights_for(
        &self,
        ops: &mut Ops,
        config: &Config,
        services: &[String],
        now: Instant,
    ) -> ServiceWeightMap {
        let mut out = BTreeMap::new();
        for name in services {
            let Some(svc) = config.service.iter().find(|s| &s.name == name) else {
                continue;
            };
            let settings = self.weight_settings(svc);
            let inputs = self.member_inputs(ops, config, name, None, now);
            let weights = Self::service_weights(ops, name).in_force(&inputs, &settings, now);
            out.insert(name.clone(), weights);
        }
        out
    }

    /// Records that every node has `weights`.
    pub(super) fn sent_weights(&self, ops: &mut Ops, weights: ServiceWeightMap, now: Instant) {
        for (service, w) in weights {
            Self::service_weights(ops, &service).mark_published(w.clone(), now);
            ops.persisted.service_weights.insert(service, w);
        }
        let factors: Vec<(String, BTreeMap<String, f64>)> = ops
            .weights
            .iter()
            .map(|(s, w)| (s.clone(), w.factors()))
            .collect();
        ops.persisted.factors = factors.into_iter().collect();
        self.save(ops);
    }

    /// One evaluation of the weights: new reports, a step of the law when
    /// one is due, slow-start ramps; services whose weights moved enough
    /// are sent again (no file change: weights are runtime state, kept in
    /// the manager's state directory).
    pub(super) async fn weights(&self, ops: &mut Ops) {
        let Ok(snapshot) = self.file.read_cached() else {
            return;
        };
        let config = &snapshot.config;
        let now = Instant::now();
        let mut due = ServiceWeightMap::new();
        {
            let db = self.manager.db.lock().await;
            for svc in &config.service {
                let name = &svc.name;
                let settings = self.weight_settings(svc);
                let inputs = self.member_inputs(ops, config, name, Some(&db), now);
                let state = Self::service_weights(ops, name);
                state.observe(&inputs, &settings, now);
                let weights = state.in_force(&inputs, &settings, now);
                if state.due(&weights, &inputs, &settings, now) {
                    due.insert(name.clone(), weights);
                }
            }
        }
        if due.is_empty() {
            return;
        }
        let services: Vec<String> = due.keys().cloned().collect();
        let Ok(generation) = ops.generations.take_next() else {
            return;
        };
        let detail: Vec<String> = due
            .iter()
            .flat_map(|(service, w)| {
                w.iter().map(move |(server, &weight)| {
                    format!(
                        "{service}/{server}={}",
                        display_weight(weight, WEIGHT_SCALE)
                    )
                })
            })
            .collect();
        let result = self
            .push("weights", config, &services, generation, &due)
            .await;
        // Marked as sent either way: a failed node is not asked again four
        // times a second; the next change or sync carries the weights.
        self.sent_weights(ops, due, now);
        match result {
            Ok(_) => {
                self.events.record(
                    NewEvent::new(
                        "weights",
                        format!("weights in force (file units): {}", detail.join(", ")),
                    )
                    .generation(generation),
                );
            }
            Err(f) => {
                self.events.record(
                    NewEvent::new("weights-failed", super::error::joined(&f))
                        .generation(generation),
                );
            }
        }
    }
}
