//! Prometheus metrics of a node (`join --metrics-listen ADDR` serves them at `/metrics`),
//! through `prometheus-client`. Counters that the node already keeps for `status` (bytes
//! served, take-overs, endgame duplicates, peers) are brought up to date when scraped; the rest
//! are counted where they happen: bytes received by source ([`crate::fetch::progress`]), Hub
//! requests by kind and status ([`crate::hub::HubClient`]), chunks verified or failed, bans,
//! downloads in flight.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::Mutex;

/// `source="hub"|"peer"|"resumed"`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Source {
    /// Where the bytes came from.
    pub source: String,
}

/// `kind="api"|"resolve"|"data"`, `status="200"|…|"error"`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HubRequest {
    /// API call, resolver (the Hub's `resolve` URL) or file data (the CDN).
    pub kind: String,
    /// The HTTP status, or `error` when no answer came.
    pub status: String,
}

/// `route="resolve"|"relay"`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointRoute {
    /// A file (`resolve`) or a request passed on to the Hub (`relay`).
    pub route: String,
}

/// `version="…"`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Build {
    version: String,
}

/// What was last copied from the node's own counters.
#[derive(Debug, Default)]
struct Synced {
    uploaded: u64,
    takeovers: u64,
    duplicates: u64,
}

/// The node's metrics. Cheap to update (atomics); shared by everything in the node.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    downloaded: Family<Source, Counter>,
    uploaded: Counter,
    peers: Gauge,
    hub_requests: Family<HubRequest, Counter>,
    chunks_verified: Counter,
    verify_failures: Counter,
    bans: Counter,
    takeovers: Counter,
    duplicates: Counter,
    in_flight: Gauge,
    endpoint_requests: Family<EndpointRoute, Counter>,
    endpoint_sent: Counter,
    synced: Mutex<Synced>,
}

impl Default for Metrics {
    fn default() -> Self {
        let m = Self {
            registry: Registry::default(),
            downloaded: Family::default(),
            uploaded: Counter::default(),
            peers: Gauge::default(),
            hub_requests: Family::default(),
            chunks_verified: Counter::default(),
            verify_failures: Counter::default(),
            bans: Counter::default(),
            takeovers: Counter::default(),
            duplicates: Counter::default(),
            in_flight: Gauge::default(),
            endpoint_requests: Family::default(),
            endpoint_sent: Counter::default(),
            synced: Mutex::default(),
        };
        let mut r = Registry::with_prefix("swarm_dl");
        r.register("downloaded_bytes", "Bytes of files downloaded, by source", m.downloaded.clone());
        r.register("uploaded_bytes", "Bytes served to peers", m.uploaded.clone());
        r.register("peers", "Peers connected now", m.peers.clone());
        r.register("hub_requests", "Requests to the Hub and its CDN, by kind and status", m.hub_requests.clone());
        r.register("chunks_verified", "Chunks written after their hash was checked", m.chunks_verified.clone());
        r.register(
            "chunk_verify_failures",
            "Chunks (or whole files) whose bytes did not match their record or ETag",
            m.verify_failures.clone(),
        );
        r.register("peer_bans", "Peers banned for false data", m.bans.clone());
        r.register("takeovers", "Chunks fetched from the Hub for owners that left or stalled", m.takeovers.clone());
        r.register(
            "endgame_duplicates",
            "Chunks asked of a second source because the first was slow",
            m.duplicates.clone(),
        );
        r.register("downloads_in_flight", "Downloads running in this node", m.in_flight.clone());
        r.register(
            "hub_endpoint_requests",
            "Requests of Hub clients to the node's Hub endpoint, by route",
            m.endpoint_requests.clone(),
        );
        r.register(
            "hub_endpoint_sent_bytes",
            "File bytes sent to Hub clients by the endpoint",
            m.endpoint_sent.clone(),
        );
        let build = Family::<Build, Gauge>::default();
        build.get_or_create(&Build { version: env!("CARGO_PKG_VERSION").to_owned() }).set(1);
        r.register("build_info", "The running version (always 1)", build);
        Self { registry: r, ..m }
    }
}

impl Metrics {
    /// `n` bytes of file data received from `source` (`hub`, `peer` or `resumed`).
    pub fn downloaded(&self, source: &str, n: u64) {
        self.downloaded.get_or_create(&Source { source: source.to_owned() }).inc_by(n);
    }

    /// One request to the Hub answered with `status` (`None`: no answer).
    pub fn hub_request(&self, kind: &str, status: Option<u16>) {
        let status = status.map_or_else(|| "error".to_owned(), |s| s.to_string());
        self.hub_requests.get_or_create(&HubRequest { kind: kind.to_owned(), status }).inc();
    }

    /// A request to the Hub endpoint, for a file (`resolve`) or passed on (`relay`).
    pub fn endpoint_request(&self, route: &str) {
        self.endpoint_requests.get_or_create(&EndpointRoute { route: route.to_owned() }).inc();
    }

    /// `n` file bytes sent by the Hub endpoint.
    pub fn endpoint_sent(&self, n: u64) {
        self.endpoint_sent.inc_by(n);
    }

    /// A chunk checked and written.
    pub fn chunk_verified(&self) {
        self.chunks_verified.inc();
    }

    /// A chunk or file that failed its check.
    pub fn verify_failed(&self) {
        self.verify_failures.inc();
    }

    /// A peer banned.
    pub fn banned(&self) {
        self.bans.inc();
    }

    /// A download started (`+1`) or ended (`-1`) in this node.
    pub fn download_running(&self, delta: i64) {
        self.in_flight.inc_by(delta);
    }

    /// The text exposition, after copying the node's own counters in (`uploaded`,
    /// `takeovers`, `duplicates`: monotonic totals; `peers`: now).
    pub fn render(&self, uploaded: u64, takeovers: u64, duplicates: u64, peers: usize) -> String {
        {
            let mut s = self.synced.lock().unwrap_or_else(|p| p.into_inner());
            self.uploaded.inc_by(uploaded.saturating_sub(s.uploaded));
            self.takeovers.inc_by(takeovers.saturating_sub(s.takeovers));
            self.duplicates.inc_by(duplicates.saturating_sub(s.duplicates));
            *s = Synced {
                uploaded: uploaded.max(s.uploaded),
                takeovers: takeovers.max(s.takeovers),
                duplicates: duplicates.max(s.duplicates),
            };
        }
        self.peers.set(i64::try_from(peers).unwrap_or(i64::MAX));
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        out
    }
}

/// Serves `GET /metrics` of `node` on `addr` until the returned task is aborted. Returns the
/// bound address.
pub async fn serve(
    addr: std::net::SocketAddr,
    node: crate::swarm::NodeHandle,
) -> std::io::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    use axum::response::IntoResponse as _;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let node = node.clone();
            async move {
                let body = tokio::task::spawn_blocking(move || node.render_metrics()).await.unwrap_or_default();
                (
                    [(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
                    body,
                )
                    .into_response()
            }
        }),
    );
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "metrics server stopped");
        }
    });
    Ok((bound, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_every_metric() {
        let m = Metrics::default();
        m.downloaded("hub", 10);
        m.downloaded("peer", 5);
        m.hub_request("api", Some(200));
        m.hub_request("data", None);
        m.chunk_verified();
        let text = m.render(7, 1, 2, 3);
        for line in [
            "swarm_dl_downloaded_bytes_total{source=\"hub\"} 10",
            "swarm_dl_downloaded_bytes_total{source=\"peer\"} 5",
            "swarm_dl_uploaded_bytes_total 7",
            "swarm_dl_peers 3",
            "swarm_dl_hub_requests_total{kind=\"api\",status=\"200\"} 1",
            "swarm_dl_hub_requests_total{kind=\"data\",status=\"error\"} 1",
            "swarm_dl_chunks_verified_total 1",
            "swarm_dl_chunk_verify_failures_total 0",
            "swarm_dl_peer_bans_total 0",
            "swarm_dl_takeovers_total 1",
            "swarm_dl_endgame_duplicates_total 2",
            "swarm_dl_downloads_in_flight 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from:\n{text}");
        }
        assert!(text.contains("swarm_dl_build_info{version=\""), "{text}");
        // Counters copied in are not counted twice.
        let text = m.render(9, 1, 2, 0);
        assert!(text.lines().any(|l| l == "swarm_dl_uploaded_bytes_total 9"), "{text}");
    }
}
