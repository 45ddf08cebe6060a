//! Hosts in network namespaces on a bridge: nodes that were told nothing about each other find
//! each other by mDNS and trade chunks. Root only (CI runs as root and must run it).

use std::time::Duration;
use swarm_tests::fixture::{PlainRepo, assert_snapshot, only_snapshot};
use swarm_tests::netns::{self, Testbed};
use swarm_tests::node::JoinNode;
use swarm_tests::require;
use swarm_tests::run::{prefixed, stderr, stdout};
use tokio::io::AsyncBufReadExt as _;

/// Starts `swarm-dl hub serve` on host 0 and returns its endpoint (and the process).
async fn hub_on(tb: &Testbed, home: &std::path::Path, dir: &std::path::Path) -> (String, tokio::process::Child) {
    let a = tb.addr(0);
    let mut c = prefixed(&tb.exec(0), home, false);
    c.args(["hub", "serve", &dir.display().to_string(), "--json"]);
    c.args(["--listen", &format!("{a}:8080"), "--data-listen", &format!("{a}:8081")]);
    c.stdout(std::process::Stdio::piped());
    let mut child = c.spawn().expect("hub serve");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await.expect("ready").expect("read");
    let v: serde_json::Value = serde_json::from_str(&line.expect("line")).expect("json");
    (v["endpoint"].as_str().expect("endpoint").to_owned(), child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_on_a_lan_find_each_other_by_mdns_and_transfer() {
    require!(netns::available(), "network namespaces need root and iproute2");
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = PlainRepo::new(&tmp.path().join("hub"), "", "org/model")
        .file("config.json", br#"{"hidden": 8}"#)
        .random("model.safetensors", 31, 20 << 20);
    let tb = Testbed::new(2).expect("testbed");
    let (endpoint, _hub) = hub_on(&tb, tmp.path(), &tmp.path().join("hub")).await;
    let (cache_a, cache_b) = (tmp.path().join("a"), tmp.path().join("b"));

    let mut seed = prefixed(&tb.exec(1), tmp.path(), false);
    seed.args(["get", "org/model", "--endpoint", &endpoint, "--cache-dir"]).arg(&cache_a);
    let o = seed.output().await.expect("seed");
    assert!(o.status.success(), "{}", stderr(&o));

    let listen = format!("/ip4/{}/tcp/0", tb.addr(1));
    let a = JoinNode::start_with(&tb.exec(1), tmp.path(), &cache_a, &["--listen", &listen]).await;

    // B is told nothing about A: mDNS must find it.
    let mut get = prefixed(&tb.exec(2), tmp.path(), true);
    get.args(["get", "org/model", "--json", "--peer-wait", "10", "--endpoint", &endpoint, "--cache-dir"]).arg(&cache_b);
    let o = get.output().await.expect("get");
    assert!(o.status.success(), "{}", stderr(&o));
    let out: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    let (bytes, peers) = (out["bytes"].as_u64().expect("bytes"), out["bytes_from_peers"].as_u64().expect("peers"));
    assert!(peers as f64 >= 0.99 * bytes as f64, "B took {peers} of {bytes} bytes from A: {out}");
    assert_snapshot(&only_snapshot(&cache_b.join("models--org--model")), &repo.files);
    let st = a.status(tmp.path()).await;
    assert!(st["bytes_out"].as_u64().expect("out") >= peers, "{st}");
}
