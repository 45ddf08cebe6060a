//! `swarm-dl preheat`: one command warms every node of a swarm, cooperatively.

use std::path::Path;
use swarm_tests::fixture::{PlainRepo, assert_snapshot, only_snapshot};
use swarm_tests::hub::TestHub;
use swarm_tests::node::JoinNode;
use swarm_tests::run::{stderr, stdout, swarm_command};

async fn preheat(home: &Path, cache: &Path, extra: &[&str]) -> std::process::Output {
    let mut c = swarm_command(home);
    c.args(["preheat", "org/model", "--json", "--cache-dir"]).arg(cache).args(extra);
    tokio::time::timeout(std::time::Duration::from_secs(180), c.output()).await.expect("preheat ends").expect("run")
}

async fn wait_connected(node: &JoinNode, home: &Path, n: usize) {
    for _ in 0..200 {
        if node.status(home).await["peers"].as_array().is_some_and(|p| p.len() >= n) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the seed never saw {n} peers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_preheat_fills_every_node_of_a_private_swarm_pulling_the_repo_about_once() {
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = PlainRepo::new(&tmp.path().join("hub"), "", "org/model").file("config.json", b"{}").random(
        "model.safetensors",
        61,
        40 << 20,
    );
    let hub = TestHub::start(&tmp.path().join("hub")).await;
    let key = tmp.path().join("swarm.key");
    let o = swarm_command(tmp.path()).arg("keygen").arg(&key).output().await.expect("keygen");
    assert!(o.status.success(), "{}", stderr(&o));
    let key = key.display().to_string();
    let caches: Vec<_> = (0..4).map(|i| tmp.path().join(format!("node{i}"))).collect();
    let seed = JoinNode::loopback(tmp.path(), &caches[0], &["--endpoint", &hub.endpoint, "--swarm-key", &key]).await;
    let mut others = Vec::new();
    for cache in &caches[1..] {
        let args = ["--endpoint", &hub.endpoint, "--swarm-key", &key, "--peer", seed.addr()];
        others.push(JoinNode::loopback(tmp.path(), cache, &args).await);
    }
    wait_connected(&seed, tmp.path(), 3).await;

    let o = preheat(tmp.path(), &caches[0], &[]).await;
    assert!(o.status.success(), "preheat: {}\n{}", stderr(&o), stdout(&o));
    let view: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(view["nodes"].as_array().expect("nodes").len(), 4, "this node and its three peers: {view}");
    for cache in &caches {
        assert_snapshot(&only_snapshot(&cache.join("models--org--model")), &repo.files);
    }
    let repo_bytes = (40 << 20) + 2;
    let served = hub.stats().file_bytes();
    eprintln!("the Hub served {served} bytes for a repo of {repo_bytes} ({:.3}x)", served as f64 / repo_bytes as f64);
    assert!(served as f64 <= 1.05 * repo_bytes as f64, "the Hub served {served} for 4 nodes of {repo_bytes}");
    // Every node's status shows the preheat; the seed's shows every node's part.
    let status = seed.status(tmp.path()).await;
    assert_eq!(status["preheats"][0]["nodes"].as_array().expect("nodes").len(), 4, "{status}");
    // Any node's status shows every node's part: it asks the node that started the preheat.
    let status = others[0].status(tmp.path()).await;
    assert_eq!(status["preheats"][0]["asked_by"], seed.peer_id.as_str(), "{status}");
    let parts = status["preheats"][0]["nodes"].as_array().expect("nodes").clone();
    assert_eq!(parts.len(), 4, "{status}");
    assert!(parts.iter().any(|p| p[0] == seed.peer_id.as_str()), "the seed's part is named by its id: {status}");
    assert!(parts.iter().all(|p| p[1]["Progress"]["state"] == "Done"), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_swarm_refuses_preheats_unless_a_node_accepts_them() {
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = PlainRepo::new(&tmp.path().join("hub"), "", "org/model").file("config.json", b"{}");
    let hub = TestHub::start(&tmp.path().join("hub")).await;
    let caches: Vec<_> = (0..3).map(|i| tmp.path().join(format!("node{i}"))).collect();
    let seed = JoinNode::loopback(tmp.path(), &caches[0], &["--endpoint", &hub.endpoint]).await;
    let refuses =
        JoinNode::loopback(tmp.path(), &caches[1], &["--endpoint", &hub.endpoint, "--peer", seed.addr()]).await;
    let accepts = JoinNode::loopback(
        tmp.path(),
        &caches[2],
        &["--endpoint", &hub.endpoint, "--peer", seed.addr(), "--accept-preheat"],
    )
    .await;
    wait_connected(&seed, tmp.path(), 2).await;
    let o = preheat(tmp.path(), &caches[0], &[]).await;
    assert!(!o.status.success(), "a refusal makes the preheat fail: {}", stdout(&o));
    let view = stdout(&o);
    assert!(view.contains("--accept-preheat"), "the refusal says why: {view}");
    assert_snapshot(&only_snapshot(&caches[2].join("models--org--model")), &repo.files);
    assert!(!caches[1].join("models--org--model/snapshots").exists(), "the refusing node fetched nothing");
    // --nodes asks only the nodes named.
    std::fs::remove_dir_all(caches[2].join("models--org--model")).expect("rm");
    let o = preheat(tmp.path(), &caches[0], &["--nodes", &accepts.peer_id]).await;
    assert!(o.status.success(), "{}\n{}", stderr(&o), stdout(&o));
    assert_snapshot(&only_snapshot(&caches[2].join("models--org--model")), &repo.files);
    drop(refuses);
}
