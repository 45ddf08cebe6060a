//! `swarm-dl demo`: the swarm at work on one machine, with no network.
//!
//! Starts a Hub stand-in on loopback serving a generated repo, then three nodes, each with its
//! own cache, dialling each other on 127.0.0.1 (no mDNS, so nothing leaves the machine). Node 1
//! downloads first (it is alone: everything comes from the Hub); nodes 2 and 3 then download at
//! the same time and take the chunks from node 1 and from each other. Every blob is hashed again
//! at the end and the Hub's own byte counter is shown, so the figures do not rest on the nodes'
//! word.

use crate::args::DemoArgs;
use crate::output::outln;
use anyhow::{Context as _, anyhow};
use indicatif::DecimalBytes;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use swarm_node::cache::{HubCache, scan};
use swarm_node::fetch::progress::Progress;
use swarm_node::fetch::{self, GetOutcome, GetRequest};
use swarm_node::http::{HubServer, HubServerConfig};
use swarm_node::hub::{HubClient, HubConfig, RepoRef};
use swarm_node::swarm::libp2p::{Multiaddr, identity::Keypair};
use swarm_node::swarm::{Node, NodeConfig};
use swarm_protocol::repo::{RepoId, RepoType};

const REPO: &str = "demo/swarm-model";

/// Runs the demo.
pub async fn run(a: DemoArgs) -> anyhow::Result<ExitCode> {
    if a.size_mib == 0 {
        return Err(anyhow!("--size-mib must be at least 1"));
    }
    let dir = std::env::temp_dir().join(format!("swarm-dl-demo-{}", std::process::id()));
    let result = demo(&dir, a.size_mib).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Deterministic pseudo-random bytes (xorshift), so runs are comparable.
fn generate(path: &Path, len: u64, seed: u64) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut x = seed | 1;
    let mut left = len;
    let mut buf = Vec::with_capacity(1 << 20);
    while left > 0 {
        buf.clear();
        while buf.len() < (1 << 20) && (buf.len() as u64) < left {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            buf.extend_from_slice(&x.to_le_bytes());
        }
        let n = (buf.len() as u64).min(left) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.flush()
}

async fn demo(dir: &Path, size_mib: u64) -> anyhow::Result<ExitCode> {
    let repo_dir = dir.join("hub").join(REPO);
    std::fs::create_dir_all(&repo_dir).with_context(|| format!("cannot create '{}'", repo_dir.display()))?;
    let half = size_mib * (1 << 20) / 2;
    eprintln!("generating a {size_mib} MiB repo '{REPO}' in {}", dir.display());
    std::fs::write(repo_dir.join("config.json"), br#"{"model_type": "demo", "hidden_size": 64}"#)?;
    generate(&repo_dir.join("model-00001-of-00002.safetensors"), half, 1)?;
    generate(&repo_dir.join("model-00002-of-00002.safetensors"), size_mib * (1 << 20) - half, 2)?;

    let hub = HubServer::start(HubServerConfig::loopback(dir.join("hub"))).await?;
    eprintln!("Hub stand-in on {}", hub.endpoint());

    let mut nodes: Vec<Node> = Vec::new();
    let mut addrs: Vec<Multiaddr> = Vec::new();
    for i in 1..=3 {
        let mut cfg = NodeConfig::new(cache_of(dir, i), Keypair::generate_ed25519());
        cfg.listen = vec!["/ip4/127.0.0.1/tcp/0".parse()?];
        cfg.mdns = false;
        cfg.peers = addrs.clone();
        let node = Node::start(cfg).await?;
        addrs.extend(node.handle().listen_addrs());
        eprintln!("node {i}: {} on {}", node.handle().peer_id(), node.handle().listen_addrs()[0]);
        nodes.push(node);
    }

    outln!("node 1 downloads alone:")?;
    let first = download(&hub, dir, 1, &nodes[0]).await?;
    outln!("nodes 2 and 3 download at the same time:")?;
    let (second, third) = tokio::join!(download(&hub, dir, 2, &nodes[1]), download(&hub, dir, 3, &nodes[2]));
    let outcomes = [first, second?, third?];

    outln!()?;
    outln!("{:<6} {:>12} {:>12} {:>8} {:>10}  hashes", "node", "from Hub", "from peers", "time", "rate")?;
    let mut all_ok = true;
    for (i, o) in outcomes.iter().enumerate() {
        let checks = scan::verify(&cache_of(dir, i + 1), Some(REPO))?;
        let ok = !checks.is_empty() && checks.iter().all(|c| c.status == "ok");
        all_ok &= ok;
        let secs = o.elapsed.as_secs_f64().max(1e-3);
        outln!(
            "{:<6} {:>12} {:>12} {:>7.2}s {:>8}/s  {} of {} blobs match their Hub hash",
            i + 1,
            DecimalBytes(o.bytes_from_hub).to_string(),
            DecimalBytes(o.bytes_from_peers).to_string(),
            secs,
            DecimalBytes(((o.bytes_from_hub + o.bytes_from_peers) as f64 / secs) as u64).to_string(),
            checks.iter().filter(|c| c.status == "ok").count(),
            checks.len(),
        )?;
    }
    let served = hub.stats.file_bytes();
    let repo_bytes = outcomes[0].bytes_selected;
    outln!(
        "the Hub served {} of file data for 3 downloads of {} ({:.2}x the repo)",
        DecimalBytes(served),
        DecimalBytes(repo_bytes),
        served as f64 / repo_bytes.max(1) as f64
    )?;
    for n in nodes {
        n.shutdown().await;
    }
    if !all_ok {
        return Err(anyhow!("a blob does not match its Hub hash"));
    }
    Ok(ExitCode::SUCCESS)
}

fn cache_of(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("node{i}")).join("hub")
}

async fn download(hub: &HubServer, dir: &Path, i: usize, node: &Node) -> anyhow::Result<GetOutcome> {
    let client = HubClient::new(HubConfig { endpoint: hub.endpoint(), ..HubConfig::default() })?;
    let req = GetRequest {
        repo: RepoRef { id: RepoId::parse(REPO)?, ty: RepoType::Model },
        revision: "main".into(),
        include: Vec::new(),
        named: false,
        force: false,
        exclude: Vec::new(),
        cache: HubCache::new(cache_of(dir, i)),
        local_dir: None,
        max_workers: 16,
        max_download_rate: None,
        node: Some(node.handle()),
        peer_wait: Duration::from_secs(2),

        lock_held: None,
    };
    let progress = Arc::new(Progress::default());
    let out = fetch::get(&req, Some(client), progress.clone()).await.with_context(|| format!("node {i}"))?;
    outln!(
        "  node {i}: {} from the Hub, {} from peers",
        DecimalBytes(progress.from_hub.load(Relaxed)),
        DecimalBytes(progress.from_peers.load(Relaxed))
    )?;
    Ok(out)
}
