//! The Hub stand-in, in-process, behind fault proxies on both listeners.

use crate::faults::{self, FaultPlan};
use std::path::Path;
use std::sync::Arc;
use swarm_node::http::{HubServer, HubServerConfig, Stats};

/// A running stand-in. Clients use [`TestHub::endpoint`]; LFS redirects point at the data
/// proxy. Faults pushed on [`TestHub::plan`] apply to both.
#[derive(Debug)]
pub struct TestHub {
    /// The server.
    pub server: HubServer,
    /// Faults to inject.
    pub plan: Arc<FaultPlan>,
    /// What clients use as `HF_ENDPOINT`.
    pub endpoint: String,
    proxies: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for TestHub {
    fn drop(&mut self) {
        for p in &self.proxies {
            p.abort();
        }
    }
}

impl TestHub {
    /// Serves `dir` with default settings.
    pub async fn start(dir: &Path) -> Self {
        Self::with(HubServerConfig::loopback(dir)).await
    }

    /// Serves with a given config (its `data_public_url` is replaced by the proxy's).
    pub async fn with(mut cfg: HubServerConfig) -> Self {
        let plan = Arc::new(FaultPlan::default());
        let (data_l, data_a) = faults::bind().await;
        let (api_l, api_a) = faults::bind().await;
        cfg.data_public_url = Some(format!("http://{data_a}"));
        let server = HubServer::start(cfg).await.expect("hub stand-in starts");
        let proxies = vec![
            faults::spawn(data_l, format!("http://{}", server.data_addr), plan.clone()),
            faults::spawn(api_l, server.endpoint(), plan.clone()),
        ];
        Self { server, plan, endpoint: format!("http://{api_a}"), proxies }
    }

    /// The server's counters.
    pub fn stats(&self) -> &Stats {
        &self.server.stats
    }
}
