//! `[metrics]`: an HTTP endpoint (`GET /metrics`, `OpenMetrics` text) with
//! what the node forwards and what the manager decides. Off unless
//! `listen` is set.
//!
//! Every figure is read when the scrape asks for it — the data plane's
//! per-CPU counters summed then, the manager's state as it stands — and
//! encoded by prometheus-client into a registry made for that scrape, so
//! nothing is copied on a timer and a scrape never shows a stale figure.
//! The endpoint is for a Prometheus on a trusted network: it serves only
//! `GET /metrics`, at most [`LIMITS`] connections, each request's head
//! within [`HEAD_TIMEOUT`] and the whole connection within
//! [`CONNECTION_TIMEOUT`].

mod manager;
mod node;

pub use manager::ReconfigureLatency;

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode, body::Bytes, header, server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    encoding::{EncodeLabelValue, LabelValueEncoder, text::encode},
    registry::Registry,
};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tracing::{debug, info};

use crate::{
    api::Daemon,
    net::{ConnectionLimits, spawn_accept_loop},
};

/// `[metrics]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the HTTP endpoint, e.g. `127.0.0.1:9641`.
    pub listen: SocketAddr,
}

/// Connections to the endpoint at once, in all and from one address.
pub const LIMITS: ConnectionLimits = ConnectionLimits {
    total: 32,
    per_source: 8,
};
/// How long a request's head may take to arrive.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one connection may stay open (a scrape takes milliseconds).
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// The `OpenMetrics` text format prometheus-client writes.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics.listen {addr}: {source} (is another process on it?)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A label value, escaped as the text format asks (`\\`, `\"`, `\n`):
/// prometheus-client 0.24 writes label values as they are, and names come
/// from the file and from agents' certificates.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct Value(String);

impl From<&str> for Value {
    fn from(text: &str) -> Self {
        Self(text.to_owned())
    }
}

impl From<String> for Value {
    fn from(text: String) -> Self {
        Self(text)
    }
}

impl EncodeLabelValue for Value {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write as _;
        for c in self.0.chars() {
            match c {
                '\\' => encoder.write_str("\\\\")?,
                '"' => encoder.write_str("\\\"")?,
                '\n' => encoder.write_str("\\n")?,
                c => encoder.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// Binds `config.listen` (before the daemon starts anything, so a taken
/// port stops nothing half-done).
///
/// # Errors
/// The address cannot be bound.
pub async fn bind(config: &MetricsConfig) -> Result<TcpListener, MetricsError> {
    let addr = config.listen;
    TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })
}

/// Serves scrapes of `daemon` on `listener` until the process ends.
pub fn serve(daemon: Arc<Daemon>, listener: TcpListener) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "metrics endpoint listening");
    }
    spawn_accept_loop("metrics", listener, LIMITS, move |tcp, peer, slot| {
        let daemon = daemon.clone();
        async move {
            let _slot = slot;
            let service = service_fn(move |request| {
                let daemon = daemon.clone();
                async move { Ok::<_, Infallible>(answer(&daemon, &request).await) }
            });
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .keep_alive(true);
            let connection = builder.serve_connection(TokioIo::new(tcp), service);
            match tokio::time::timeout(CONNECTION_TIMEOUT, connection).await {
                Ok(Err(e)) => debug!(%peer, error = %e, "metrics connection ended"),
                Err(_) => debug!(%peer, "metrics connection open too long; closed"),
                Ok(Ok(())) => {}
            }
        }
    });
}

/// The answer to one request: the metrics for `GET /metrics`, else 404
/// or 405.
async fn answer<B>(daemon: &Daemon, request: &Request<B>) -> Response<Full<Bytes>> {
    let status = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => {
            let text = render(daemon).await;
            return Response::builder()
                .header(header::CONTENT_TYPE, CONTENT_TYPE)
                .body(Full::new(Bytes::from(text)))
                .unwrap_or_default();
        }
        (_, "/metrics") => StatusCode::METHOD_NOT_ALLOWED,
        _ => StatusCode::NOT_FOUND,
    };
    Response::builder()
        .status(status)
        .body(Full::new(Bytes::from_static(
            b"only GET /metrics is served\n",
        )))
        .unwrap_or_default()
}

/// Every metric of `daemon` now, as `OpenMetrics` text.
pub async fn render(daemon: &Daemon) -> String {
    let mut registry = Registry::with_prefix("lb");
    let resolver = {
        let node = daemon.node.node.lock().await;
        node::register(&mut registry, &node);
        node.resolver()
    };
    node::register_modes(&mut registry, &resolver.xdp_modes().await);
    if let Some(controller) = &daemon.manager {
        manager::register(&mut registry, controller).await;
    }
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut text, &registry);
    text
}

#[cfg(test)]
mod tests {
    use prometheus_client::{
        encoding::EncodeLabelSet,
        metrics::{family::Family, gauge::Gauge},
    };

    use super::*;

    #[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct Label {
        server: Value,
    }

    /// A name with a quote, a backslash and a newline stays one label value.
    #[test]
    fn label_values_are_escaped() {
        let family = Family::<Label, Gauge>::default();
        family
            .get_or_create(&Label {
                server: "a\"b\\c\nd} 1\nfake 2".into(),
            })
            .set(1);
        let mut registry = Registry::default();
        registry.register("up", "test", family);
        let mut text = String::new();
        encode(&mut text, &registry).expect("encode");
        assert!(
            text.contains(r#"up{server="a\"b\\c\nd} 1\nfake 2"} 1"#),
            "{text}"
        );
        assert!(!text.lines().any(|l| l.starts_with("fake")), "{text}");
    }
}
