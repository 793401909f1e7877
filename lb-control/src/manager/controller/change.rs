//! One recorded change: the configuration file first (compare-and-swap),
//! then a new generation to every node, acked by all or rolled back — the
//! file restored and the previous state sent again.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use lb_proto::Reconfigure;

use super::{Controller, ControllerError, NodeFailure, Ops, ServiceWeightMap, error::joined};
use crate::{
    config::Config,
    manager::{
        config_file::{Edit, Snapshot, Updated},
        events::NewEvent,
        failpoint,
        node_link::{NodeLink, desired_service, retired_service},
    },
};

fn described(edits: &[Edit]) -> String {
    edits
        .iter()
        .map(Edit::describe)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Controller {
    /// One recorded change: the file (compare-and-swap), a generation, every
    /// node; on any node's failure the file and the nodes go back.
    pub(super) async fn change(
        &self,
        ops: &mut Ops,
        action: &str,
        services: &[String],
        edits: &[Edit],
    ) -> Result<u64, ControllerError> {
        let base: Snapshot = self.file.read()?;
        failpoint::hit_at(action, "file");
        let updated = self.update_file(base, edits).await?;
        if updated.rebased {
            self.events.record(NewEvent::new(
                "conflict",
                format!(
                    "{} was edited by someone else since it was read; the change ({}) was re-applied on top of that edit",
                    self.file.path().display(),
                    described(edits)
                ),
            ));
        }
        self.events.record(NewEvent::new(
            "recorded",
            format!("{}: {}", self.file.path().display(), described(edits)),
        ));
        failpoint::hit_at(action, "generation");
        let generation = ops.generations.take_next()?;
        failpoint::hit_at(action, "nodes");
        let sent = Instant::now();
        let weights = self.weights_for(ops, &updated.snapshot.config, services, sent);
        let result = match self
            .push(
                action,
                &updated.snapshot.config,
                services,
                generation,
                &weights,
            )
            .await
        {
            Ok(acks) => {
                self.sent_weights(ops, weights, sent);
                self.events.record(
                    NewEvent::new(
                        "acked",
                        format!(
                            "{} applied and read back on every node ({})",
                            services.join(", "),
                            acks.join(", ")
                        ),
                    )
                    .took(sent.elapsed())
                    .generation(generation),
                );
                failpoint::hit_at(action, "done");
                Ok(generation)
            }
            Err(failures) => {
                let back = self.roll_back(ops, &updated, services, sent).await;
                self.events.record(
                    NewEvent::new(
                        "rolled-back",
                        format!(
                            "{} failed on the nodes ({}); {back}",
                            described(edits),
                            joined(&failures)
                        ),
                    )
                    .generation(generation),
                );
                Err(ControllerError::NotApplied {
                    generation,
                    failures,
                })
            }
        };
        self.publish(ops);
        result
    }

    /// [`ConfigFile::update`](crate::manager::config_file::ConfigFile::update)
    /// off the runtime: its lock may be held by another process for a while.
    pub(super) async fn update_file(
        &self,
        base: Snapshot,
        edits: &[Edit],
    ) -> Result<Updated, ControllerError> {
        let (file, edits) = (self.file.clone(), edits.to_vec());
        Ok(
            tokio::task::spawn_blocking(move || file.update(&base, &edits))
                .await
                .map_err(ControllerError::Task)??,
        )
    }

    /// After a change failed on some node: the file back as it was, the
    /// previous state to every node under a new generation. Says how far
    /// both got.
    async fn roll_back(
        &self,
        ops: &mut Ops,
        updated: &Updated,
        services: &[String],
        sent: Instant,
    ) -> String {
        let restored = {
            let (file, previous, written) = (
                self.file.clone(),
                updated.previous.clone(),
                updated.snapshot.clone(),
            );
            tokio::task::spawn_blocking(move || file.restore(&previous, &written)).await
        };
        let file = match restored {
            Ok(Ok(())) => "the file is back as it was".to_owned(),
            Ok(Err(e)) => format!("the file could not be restored: {e}"),
            Err(e) => format!("the file could not be restored: {e}"),
        };
        let previous = self.weights_for(ops, &updated.previous.config, services, sent);
        let nodes = match ops.generations.take_next() {
            Ok(g) => match self
                .push("rollback", &updated.previous.config, services, g, &previous)
                .await
            {
                Ok(_) => format!("every node is back on the previous state (generation {g})"),
                Err(f) => format!(
                    "nodes not all back on the previous state (generation {g}): {}",
                    joined(&f)
                ),
            },
            Err(e) => e.to_string(),
        };
        format!("{file}; {nodes}")
    }

    /// Sends the desired state of `services` in `config` to every node and
    /// waits for every ack (each node retried `ack_retries` times).
    pub(super) async fn push(
        &self,
        action: &str,
        config: &Config,
        services: &[String],
        generation: u64,
        weights: &ServiceWeightMap,
    ) -> Result<Vec<String>, Vec<NodeFailure>> {
        let mut failures = Vec::new();
        let mut acks = Vec::new();
        let none = BTreeMap::new();
        for name in services {
            let service = desired_service(config, name, weights.get(name).unwrap_or(&none))
                .unwrap_or_else(|| retired_service(name));
            let message = Reconfigure {
                seq: 0,
                generation,
                service,
            };
            // The crash test's `<action>.partial` failpoint stops after the
            // first node applied and before the others heard of it.
            let rest = if failpoint::is_armed_at(action, "partial") {
                if let Some(first) = self.nodes.first() {
                    match self.send(first, message.clone()).await {
                        Ok(a) => acks.push(a),
                        Err(e) => failures.push(e),
                    }
                }
                failpoint::hit_at(action, "partial");
                &self.nodes[1..]
            } else {
                &self.nodes[..]
            };
            let results =
                futures::future::join_all(rest.iter().map(|node| self.send(node, message.clone())))
                    .await;
            for r in results {
                match r {
                    Ok(a) => acks.push(a),
                    Err(e) => failures.push(e),
                }
            }
        }
        if failures.is_empty() {
            Ok(acks)
        } else {
            Err(failures)
        }
    }

    /// Sends one reconfiguration to one node, with retries; `Ok` names the
    /// node and how long its ack took; `Err` is the last attempt's failure.
    async fn send(&self, node: &NodeLink, message: Reconfigure) -> Result<String, NodeFailure> {
        let timeout = Duration::from_millis(self.config.ack_timeout_ms);
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            let failure = match node.reconfigure(message.clone(), timeout).await {
                Ok(ack) if ack.status == lb_proto::AckStatus::Ok => {
                    self.latency
                        .observe(node.name(), started.elapsed().as_secs_f64());
                    return Ok(format!(
                        "{} {} ms",
                        node.name(),
                        started.elapsed().as_millis()
                    ));
                }
                Ok(ack) => NodeFailure::Refused {
                    node: node.name().to_owned(),
                    generation: ack.generation,
                    error: ack.error.unwrap_or_default(),
                },
                Err(e) => NodeFailure::Link(e),
            };
            if attempt >= self.config.ack_retries {
                return Err(failure);
            }
            attempt += 1;
            tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
        }
    }
}
