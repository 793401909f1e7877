//! Background probe tasks, one per application for health and one per VIP
//! for readiness. They run whether or not the manager is connected, so the
//! first report after a (re)connection already carries a settled state.
//! Each publishes its latest result on a `watch` channel that the report
//! collector reads; a task ends when its channel has no reader left.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use lb_proto::{Health, HealthState, HealthTracker, ProbeOutcome};
use tokio::{sync::watch, time::MissedTickBehavior};

use crate::{
    config::{ApplicationConfig, ProbeConfig},
    probe::run_probe,
};

/// Where the health probe goes: the application as seen from this host.
/// Where health probes go unless the application's probe names an address.
pub const HEALTH_PROBE_ADDRESS: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// The latest probe results of one application.
#[derive(Debug, Clone)]
pub struct ApplicationMonitor {
    /// The health probe's state.
    pub health: watch::Receiver<Health>,
    /// Per VIP: whether the last probe of VIP:port succeeded.
    pub vip_probes: Vec<(IpAddr, watch::Receiver<bool>)>,
}

impl ApplicationMonitor {
    /// Starts the probe tasks of `app` on the current tokio runtime.
    #[must_use]
    pub fn spawn(app: &ApplicationConfig) -> Self {
        let prober = Prober::of(app);
        let tracker = HealthTracker::new(app.rise, app.fall);
        let (health_tx, health) = watch::channel(tracker.health());
        tokio::spawn(health_task(prober.clone(), tracker, health_tx));
        let vip_probes = app
            .vips
            .iter()
            .map(|&vip| {
                let (tx, rx) = watch::channel(false);
                tokio::spawn(vip_task(prober.clone(), vip, tx));
                (vip, rx)
            })
            .collect();
        Self { health, vip_probes }
    }

    /// The health state now.
    #[must_use]
    pub fn health(&self) -> Health {
        self.health.borrow().clone()
    }

    /// Whether the last probe of `vip` succeeded.
    #[must_use]
    pub fn vip_probe(&self, vip: IpAddr) -> bool {
        self.vip_probes
            .iter()
            .find(|(v, _)| *v == vip)
            .is_some_and(|(_, rx)| *rx.borrow())
    }
}

/// One application's probe, as each of its tasks runs it.
#[derive(Debug, Clone)]
struct Prober {
    application: String,
    probe: ProbeConfig,
    interval: Duration,
    timeout: Duration,
}

impl Prober {
    fn of(app: &ApplicationConfig) -> Self {
        Self {
            application: app.name.clone(),
            probe: app.probe.clone(),
            interval: app.probe_interval,
            timeout: app.probe_timeout,
        }
    }

    fn ticker(&self) -> tokio::time::Interval {
        let mut ticker = tokio::time::interval(self.interval);
        // A slow probe delays the next one rather than firing a burst.
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ticker
    }

    async fn run(&self, addr: SocketAddr) -> ProbeOutcome {
        run_probe(&self.probe, addr, self.timeout).await
    }
}

async fn health_task(prober: Prober, mut tracker: HealthTracker, tx: watch::Sender<Health>) {
    let application = &prober.application;
    let addr = SocketAddr::new(prober.probe.address(), prober.probe.port());
    let mut ticker = prober.ticker();
    while !tx.is_closed() {
        ticker.tick().await;
        let outcome = prober.run(addr).await;
        if let Some(detail) = outcome.detail() {
            tracing::debug!(%application, %addr, %detail, "health probe failed");
        }
        if let Some(state) = tracker.record(outcome) {
            let detail = tracker.health().detail.unwrap_or_default();
            match state {
                HealthState::Down => {
                    tracing::warn!(%application, state = "down", %detail, "application health changed");
                }
                HealthState::Slow => {
                    tracing::warn!(%application, state = "slow", %detail, "application answers probes late");
                }
                _ => tracing::info!(%application, ?state, "application health changed"),
            }
        }
        tx.send_replace(tracker.health());
    }
}

async fn vip_task(prober: Prober, vip: IpAddr, tx: watch::Sender<bool>) {
    let application = &prober.application;
    let addr = SocketAddr::new(vip, prober.probe.port());
    let mut ticker = prober.ticker();
    let mut last: Option<bool> = None;
    while !tx.is_closed() {
        ticker.tick().await;
        let outcome = prober.run(addr).await;
        let ok = outcome == ProbeOutcome::Answered;
        if last != Some(ok) {
            match outcome.detail() {
                None => tracing::info!(%application, %vip, "local probe on the VIP answers"),
                Some(detail) => {
                    tracing::warn!(%application, %vip, %detail, "local probe on the VIP fails");
                }
            }
            last = Some(ok);
        }
        tx.send_replace(ok);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_proto::Protocol;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn probes_publish_their_results() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move { while listener.accept().await.is_ok() {} });
        let app = ApplicationConfig {
            name: "web".into(),
            protocol: Protocol::Tcp,
            ports: vec![port],
            // 127.0.0.2 is loopback too, but nothing listens there.
            vips: vec![
                "127.0.0.1".parse().expect("ip"),
                "127.0.0.2".parse().expect("ip"),
            ],
            probe: ProbeConfig::Tcp {
                port,
                address: None,
            },
            rise: 2,
            fall: 3,
            probe_interval: Duration::from_millis(20),
            probe_timeout: Duration::from_millis(500),
            connection_capacity: None,
        };
        let monitor = ApplicationMonitor::spawn(&app);
        assert_eq!(monitor.health().state, HealthState::Unknown);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while monitor.health().state != HealthState::Up
            || !monitor.vip_probe("127.0.0.1".parse().expect("ip"))
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "probes never passed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!monitor.vip_probe("127.0.0.2".parse().expect("ip")));
        assert!(!monitor.vip_probe("192.0.2.99".parse().expect("ip")));
    }
}
