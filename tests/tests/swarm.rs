//! The swarm on loopback: real `join` and `get` processes (and in-process nodes where a test
//! needs a deliberately hostile peer), against the Hub stand-in, whose counters show what
//! crossed the "uplink". mDNS is off: peers are given with `--peer`, so parallel tests never meet.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use swarm_node::cache::HubCache;
use swarm_node::fetch::progress::Progress;
use swarm_node::fetch::{self, GetRequest};
use swarm_node::hub::{HubClient, HubConfig, RepoRef};
use swarm_node::swarm::hooks::{Hooks, ServeFault};
use swarm_node::swarm::libp2p::identity::Keypair;
use swarm_node::swarm::{Node, NodeConfig};
use swarm_protocol::repo::{RepoId, RepoType};
use swarm_tests::fixture::{PlainRepo, assert_snapshot, only_snapshot};
use swarm_tests::hub::TestHub;
use swarm_tests::node::JoinNode;
use swarm_tests::run::{stderr, stdout, swarm, swarm_command};

fn model(root: &Path, big: u64) -> PlainRepo {
    PlainRepo::new(root, "", "org/model")
        .file("config.json", br#"{"hidden": 8}"#)
        .file("tokenizer.json", br#"{"vocab": ["a", "b"]}"#)
        .random("model.safetensors", 21, big)
}

fn json(o: &std::process::Output) -> serde_json::Value {
    assert!(o.status.success(), "swarm-dl failed: {}", stderr(o));
    serde_json::from_str(&stdout(o)).expect("JSON result")
}

/// Fills `cache` from the Hub alone (no swarm).
async fn seed(home: &Path, hub: &TestHub, cache: &Path) {
    let o = swarm(
        home,
        &["get", "org/model", "--endpoint", &hub.endpoint, "--cache-dir", &cache.display().to_string()],
        &[],
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
}

/// `get` through the swarm, as a user would type it, with peers given explicitly.
async fn swarm_get(home: &Path, hub: &TestHub, cache: &Path, extra: &[&str]) -> std::process::Output {
    let mut c = swarm_command(home);
    c.args(["get", "org/model", "--json", "--no-mdns", "--endpoint", &hub.endpoint, "--cache-dir"]);
    c.arg(cache).args(extra);
    c.output().await.expect("run get")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_holding_the_repo_serves_it_and_the_hub_sends_only_metadata() {
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = model(&tmp.path().join("hub"), (40 << 20) + 123);
    let hub = TestHub::start(&tmp.path().join("hub")).await;
    let (cache_a, cache_b) = (tmp.path().join("a"), tmp.path().join("b"));
    seed(tmp.path(), &hub, &cache_a).await;
    let a = JoinNode::loopback(tmp.path(), &cache_a, &[]).await;

    let before = hub.stats().file_bytes();
    let api_before = hub.stats().api_requests.load(std::sync::atomic::Ordering::Relaxed);
    let o = swarm_get(tmp.path(), &hub, &cache_b, &["--peer", a.addr()]).await;
    let out = json(&o);
    let bytes = out["bytes"].as_u64().expect("bytes");
    let from_peers = out["bytes_from_peers"].as_u64().expect("from peers");
    assert!(from_peers as f64 >= 0.99 * bytes as f64, "from peers {from_peers} of {bytes}");
    assert_eq!(hub.stats().file_bytes() - before, 0, "the Hub sent no file bytes, only metadata");
    assert!(
        hub.stats().api_requests.load(std::sync::atomic::Ordering::Relaxed) > api_before,
        "B asked the Hub for metadata itself"
    );
    assert!(stderr(&o).contains("from peers"), "summary names peer bytes: {}", stderr(&o));
    assert_snapshot(&only_snapshot(&cache_b.join("models--org--model")), &repo.files);

    // A reports what it served.
    let st = a.status(tmp.path()).await;
    assert!(st["bytes_out"].as_u64().expect("bytes_out") >= from_peers, "{st}");
    assert!(st["files_held"].as_u64().expect("files") >= 3, "{st}");
    assert_eq!(st["open_swarm"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_runs_in_the_join_node_of_its_cache_which_keeps_serving_after() {
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = model(&tmp.path().join("hub"), 9 << 20);
    let hub = TestHub::start(&tmp.path().join("hub")).await;
    let cache = tmp.path().join("c");
    // No node yet: status says so, in one sentence.
    let o = swarm(tmp.path(), &["status", "--cache-dir", &cache.display().to_string()], &[]).await;
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no swarm-dl node is running for cache"), "{}", stderr(&o));

    let node = JoinNode::loopback(tmp.path(), &cache, &[]).await;
    let o = swarm_get(tmp.path(), &hub, &cache, &[]).await;
    let out = json(&o);
    assert_eq!(out["files"], 3);
    assert_snapshot(&only_snapshot(&cache.join("models--org--model")), &repo.files);
    // The download ran in the node: it now holds and serves the files, after `get` exited.
    let st = node.status(tmp.path()).await;
    assert_eq!(st["files_held"], 3, "{st}");
    assert_eq!(st["peer_id"], node.peer_id.as_str());

    // Another node takes the files from it.
    let other = tmp.path().join("d");
    let out = json(&swarm_get(tmp.path(), &hub, &other, &["--peer", node.addr()]).await);
    assert_eq!(out["bytes_from_peers"], out["bytes"]);

    // SIGTERM: a clean stop that withdraws the node's announcement.
    let mut node = node;
    let pid = node.child.id().expect("pid").to_string();
    let kill = std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
    assert!(kill.success());
    let status = tokio::time::timeout(Duration::from_secs(20), node.child.wait()).await.expect("stops").expect("wait");
    assert!(status.success(), "join exits 0 on SIGTERM: {status}");
    assert!(!cache.join(".locks/swarm-dl/node.json").exists(), "node.json removed");
    let o = swarm(tmp.path(), &["status", "--cache-dir", &cache.display().to_string()], &[]).await;
    assert!(!o.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dht_finds_a_holder_the_downloader_was_not_told_about() {
    // A holds the repo; B knows A; C knows only B. C must find A through Kademlia's provider
    // records (mDNS is off) and take the bytes from it.
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = model(&tmp.path().join("hub"), 12 << 20);
    let hub = TestHub::start(&tmp.path().join("hub")).await;
    let cache_a = tmp.path().join("a");
    seed(tmp.path(), &hub, &cache_a).await;
    let a = JoinNode::loopback(tmp.path(), &cache_a, &[]).await;
    let b = JoinNode::loopback(tmp.path(), &tmp.path().join("b"), &["--peer", a.addr()]).await;
    let cache_c = tmp.path().join("c");
    let out = json(&swarm_get(tmp.path(), &hub, &cache_c, &["--peer", b.addr()]).await);
    let (bytes, peers) = (out["bytes"].as_u64().expect("bytes"), out["bytes_from_peers"].as_u64().expect("peers"));
    assert!(peers as f64 >= 0.5 * bytes as f64, "most bytes from A, found through the DHT: {out}");
    assert_snapshot(&only_snapshot(&cache_c.join("models--org--model")), &repo.files);
    let st = a.status(tmp.path()).await;
    assert!(st["bytes_out"].as_u64().expect("out") > 0, "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_holder_dies_mid_transfer_the_others_finish_from_each_other_and_the_hub() {
    let tmp = tempfile::tempdir().expect("tmp");
    let size: u64 = 64 << 20;
    let repo = model(&tmp.path().join("hub"), size);
    let hub = TestHub::start(&tmp.path().join("hub")).await;
    let (cache_a, cache_c) = (tmp.path().join("a"), tmp.path().join("c"));
    seed(tmp.path(), &hub, &cache_a).await;
    // A serves slowly, so that it dies with most of the file still to send.
    let mut a = JoinNode::loopback(tmp.path(), &cache_a, &["--max-upload-rate", "16Mi"]).await;
    let c = JoinNode::loopback(tmp.path(), &cache_c, &["--peer", a.addr()]).await;
    let before = hub.stats().file_bytes();

    let cache_b = tmp.path().join("b");
    let (peer_a, peer_c) = (a.addr().to_owned(), c.addr().to_owned());
    let b = {
        let (home, hub_ep, cache_b) = (tmp.path().to_path_buf(), hub.endpoint.clone(), cache_b.clone());
        tokio::spawn(async move {
            let mut cmd = swarm_command(&home);
            cmd.args(["get", "org/model", "--json", "--no-mdns", "--endpoint", &hub_ep, "--cache-dir"]);
            cmd.arg(&cache_b).args(["--peer", &peer_a, "--peer", &peer_c]);
            cmd.output().await.expect("get b")
        })
    };
    let c_get = {
        let (home, hub_ep, cache_c) = (tmp.path().to_path_buf(), hub.endpoint.clone(), cache_c.clone());
        tokio::spawn(async move {
            let mut cmd = swarm_command(&home);
            cmd.args(["get", "org/model", "--json", "--endpoint", &hub_ep, "--cache-dir"]).arg(&cache_c);
            cmd.output().await.expect("get c")
        })
    };
    // Kill A once it has sent a few MiB (polling its own counter, not sleeping blindly).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let st = a.status(tmp.path()).await;
        if st["bytes_out"].as_u64().unwrap_or(0) >= 8 << 20 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "A never served: {st}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.kill().await;

    let (ob, oc) = (b.await.expect("b"), c_get.await.expect("c"));
    let (jb, jc) = (json(&ob), json(&oc));
    for (cache, j) in [(&cache_b, &jb), (&cache_c, &jc)] {
        assert_snapshot(&only_snapshot(&cache.join("models--org--model")), &repo.files);
        assert!(j["bytes_from_peers"].as_u64().expect("peers") > 0, "{j}");
    }
    let served = hub.stats().file_bytes() - before;
    let repo_bytes = jb["bytes"].as_u64().expect("bytes");
    assert!(served < 2 * repo_bytes, "the Hub served {served} for two downloads of {repo_bytes}");
}

async fn in_process_node(
    cache: &Path,
    peers: Vec<swarm_node::swarm::libp2p::Multiaddr>,
    fault: Option<ServeFault>,
) -> Node {
    let mut cfg = NodeConfig::new(cache.to_path_buf(), Keypair::generate_ed25519());
    cfg.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().expect("addr")];
    cfg.mdns = false;
    cfg.peers = peers;
    cfg.hooks = Hooks { fault };
    Node::start(cfg).await.expect("node starts")
}

/// `org/model` at `main` into `cache`, through `node`.
fn get_request(cache: &std::path::Path, node: &Node) -> GetRequest {
    GetRequest {
        repo: RepoRef { id: RepoId::parse("org/model").expect("id"), ty: RepoType::Model },
        named: false,
        force: false,
        revision: "main".into(),
        include: vec![],
        exclude: vec![],
        cache: HubCache::new(cache.to_path_buf()),
        local_dir: None,
        max_workers: 8,
        max_download_rate: None,
        node: Some(node.handle()),
        peer_wait: Duration::from_secs(5),

        lock_held: None,
    }
}

async fn hostile_case(fault: ServeFault) {
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = model(&tmp.path().join("hub"), 24 << 20);
    let hub = TestHub::start(&tmp.path().join("hub")).await;
    let (cache_h, cache_b) = (tmp.path().join("hostile"), tmp.path().join("b"));
    seed(tmp.path(), &hub, &cache_h).await;
    let hostile = in_process_node(&cache_h, vec![], Some(fault)).await;
    let honest = in_process_node(&cache_b, hostile.handle().listen_addrs(), None).await;
    let client = HubClient::new(HubConfig { endpoint: hub.endpoint.clone(), ..HubConfig::default() }).expect("client");
    let req = get_request(&cache_b, &honest);
    let progress = Arc::new(Progress::default());
    let out = fetch::get(&req, Some(client), progress.clone()).await.expect("the download completes");
    assert!(honest.handle().is_banned(&hostile.handle().peer_id()), "the hostile peer is banned");
    // Nothing wrong in blobs/: every blob hashes to its name and the snapshot is the repo.
    assert_snapshot(&only_snapshot(&cache_b.join("models--org--model")), &repo.files);
    assert!(out.bytes_from_hub >= out.bytes_selected, "every byte came (again) from the Hub: {out:?}");
    hostile.shutdown().await;
    honest.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_serving_wrong_bytes_is_banned_and_nothing_wrong_lands() {
    hostile_case(ServeFault::CorruptBytes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_forging_records_is_banned_and_nothing_wrong_lands() {
    hostile_case(ServeFault::ForgeRecords).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_that_hangs_mid_chunk_loses_its_chunks_to_endgame_copies_from_another() {
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = model(&tmp.path().join("hub"), 24 << 20);
    let hub = TestHub::start(&tmp.path().join("hub")).await;
    let (cache_s, cache_h, cache_d) = (tmp.path().join("stalls"), tmp.path().join("honest"), tmp.path().join("d"));
    seed(tmp.path(), &hub, &cache_s).await;
    seed(tmp.path(), &hub, &cache_h).await;
    let stalls = in_process_node(&cache_s, vec![], Some(ServeFault::Stall)).await;
    let honest = in_process_node(&cache_h, vec![], None).await;
    let peers = [stalls.handle().listen_addrs(), honest.handle().listen_addrs()].concat();
    let me = in_process_node(&cache_d, peers, None).await;
    let before = hub.stats().file_bytes();
    let client = HubClient::new(HubConfig { endpoint: hub.endpoint.clone(), ..HubConfig::default() }).expect("client");
    let req = get_request(&cache_d, &me);
    // Both holders must be known before the first placement, or some chunks start elsewhere.
    me.handle().wait_connected(&[stalls.handle().peer_id(), honest.handle().peer_id()], Duration::from_secs(10)).await;
    let out = fetch::get(&req, Some(client), Arc::new(Progress::default())).await.expect("the download completes");
    assert_snapshot(&only_snapshot(&cache_d.join("models--org--model")), &repo.files);
    // The hanging holder got some chunks first; second copies from the honest one won them.
    assert!(out.chunks_duplicated >= 1, "{out:?}");
    assert_eq!(me.handle().status().await.endgame_duplicates, out.chunks_duplicated);
    assert_eq!(hub.stats().file_bytes() - before, 0, "no chunk went to the Hub: {out:?}");
    // Slow is not dishonest: nobody is banned.
    assert!(!me.handle().is_banned(&stalls.handle().peer_id()));
    for n in [me, stalls, honest] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_that_drops_new_streams_for_a_while_is_asked_again_rather_than_the_hub() {
    // Before: a stream the holder dropped unanswered (its queue of new streams full, as under
    // load at 16 nodes) counted as "does not hold the chunk", and the chunk went to the Hub.
    everything_from_a_faulty_holder(ServeFault::DropStreams).await;
}

/// A download from the only holder of the repo, which misbehaves with `fault` for a while:
/// every byte still comes from it, none from the Hub.
async fn everything_from_a_faulty_holder(fault: ServeFault) {
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = model(&tmp.path().join("hub"), 24 << 20);
    let hub = TestHub::start(&tmp.path().join("hub")).await;
    let (cache_h, cache_d) = (tmp.path().join("holder"), tmp.path().join("d"));
    seed(tmp.path(), &hub, &cache_h).await;
    let holder = in_process_node(&cache_h, vec![], Some(fault)).await;
    let me = in_process_node(&cache_d, holder.handle().listen_addrs(), None).await;
    me.handle().wait_connected(&[holder.handle().peer_id()], Duration::from_secs(10)).await;
    let before = hub.stats().file_bytes();
    let client = HubClient::new(HubConfig { endpoint: hub.endpoint.clone(), ..HubConfig::default() }).expect("client");
    let req = get_request(&cache_d, &me);
    let out = fetch::get(&req, Some(client), Arc::new(Progress::default())).await.expect("the download completes");
    assert_snapshot(&only_snapshot(&cache_d.join("models--org--model")), &repo.files);
    assert_eq!(hub.stats().file_bytes() - before, 0, "no chunk went to the Hub: {out:?}");
    // At least: what a broken stream had brought counts as received too.
    assert!(out.bytes_from_peers >= out.bytes_selected, "{out:?}");
    for n in [me, holder] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_whose_streams_break_mid_chunk_is_asked_again_rather_than_the_hub() {
    // Before: a stream that broke after the holder had begun sending counted as "does not hold
    // the chunk", and after three the holder counted for nothing: its chunks went to the Hub.
    everything_from_a_faulty_holder(ServeFault::CutStreams).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_answers_what_it_holds_holds_no_download_up() {
    // Before: the downloader asked every peer what it held and waited for every answer before
    // it placed a chunk or took one in, so one silent peer held the download for the request
    // timeout (120 s) at every round. Now answers are taken as they come, and the first chunks
    // are placed once the others have answered and FIRST_ANSWERS_WAIT has passed.
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = model(&tmp.path().join("hub"), 24 << 20);
    let hub = TestHub::start(&tmp.path().join("hub")).await;
    let (cache_h, cache_s, cache_d) = (tmp.path().join("holder"), tmp.path().join("silent"), tmp.path().join("d"));
    seed(tmp.path(), &hub, &cache_h).await;
    let holder = in_process_node(&cache_h, vec![], None).await;
    let silent = in_process_node(&cache_s, vec![], Some(ServeFault::WithholdAvailability)).await;
    let mut peers = holder.handle().listen_addrs();
    peers.extend(silent.handle().listen_addrs());
    let me = in_process_node(&cache_d, peers, None).await;
    me.handle().wait_connected(&[holder.handle().peer_id(), silent.handle().peer_id()], Duration::from_secs(10)).await;
    let before = hub.stats().file_bytes();
    let client = HubClient::new(HubConfig { endpoint: hub.endpoint.clone(), ..HubConfig::default() }).expect("client");
    let req = get_request(&cache_d, &me);
    let out =
        tokio::time::timeout(Duration::from_secs(60), fetch::get(&req, Some(client), Arc::new(Progress::default())))
            .await
            .expect("the download does not wait for the silent peer's answers")
            .expect("the download completes");
    assert_snapshot(&only_snapshot(&cache_d.join("models--org--model")), &repo.files);
    assert_eq!(hub.stats().file_bytes() - before, 0, "every chunk came from the holder: {out:?}");
    for n in [me, holder, silent] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_with_different_swarm_keys_exchange_no_byte() {
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = model(&tmp.path().join("hub"), 9 << 20);
    let hub = TestHub::start(&tmp.path().join("hub")).await;
    let (k1, k2) = (tmp.path().join("k1.key"), tmp.path().join("k2.key"));
    for k in [&k1, &k2] {
        let o = swarm(tmp.path(), &["keygen", &k.display().to_string()], &[]).await;
        assert!(o.status.success(), "{}", stderr(&o));
    }
    // keygen refuses to overwrite a key by accident.
    let o = swarm(tmp.path(), &["keygen", &k1.display().to_string()], &[]).await;
    assert!(!o.status.success() && stderr(&o).contains("--force"), "{}", stderr(&o));

    let cache_a = tmp.path().join("a");
    seed(tmp.path(), &hub, &cache_a).await;
    let a = JoinNode::loopback(tmp.path(), &cache_a, &["--swarm-key", &k1.display().to_string()]).await;
    // Another key, then no key: both get everything from the Hub, nothing from A.
    for (i, key) in [Some(&k2), None].into_iter().enumerate() {
        let cache = tmp.path().join(format!("b{i}"));
        let mut extra = vec!["--peer".to_owned(), a.addr().to_owned()];
        if let Some(k) = key {
            extra.extend(["--swarm-key".to_owned(), k.display().to_string()]);
        }
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let out = json(&swarm_get(tmp.path(), &hub, &cache, &extra).await);
        assert_eq!(out["bytes_from_peers"], 0, "{out}");
        assert_snapshot(&only_snapshot(&cache.join("models--org--model")), &repo.files);
    }
    let st = a.status(tmp.path()).await;
    assert_eq!(st["bytes_out"], 0, "{st}");
    assert_eq!(st["open_swarm"], false);
    // Refused in the noise handshake (the key is its prologue), not later.
    assert!(st["handshake_failures"].as_u64().is_some_and(|n| n >= 2), "{st}");
    // The same key: bytes flow.
    let cache = tmp.path().join("same");
    let out = json(
        &swarm_get(tmp.path(), &hub, &cache, &["--peer", a.addr(), "--swarm-key", &k1.display().to_string()]).await,
    );
    assert_eq!(out["bytes_from_peers"], out["bytes"], "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_a_node_finishes_from_peers_alone_trusting_their_metadata_and_saying_so() {
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = model(&tmp.path().join("hub"), 9 << 20);
    let hub = TestHub::start(&tmp.path().join("hub")).await;
    let cache_a = tmp.path().join("a");
    seed(tmp.path(), &hub, &cache_a).await;
    let a = JoinNode::loopback(tmp.path(), &cache_a, &[]).await;
    drop(hub); // the Hub is gone

    let cache_b = tmp.path().join("b");
    let mut c = swarm_command(tmp.path());
    c.args(["get", "org/model", "--json", "--no-mdns", "--peer", a.addr(), "--cache-dir"]).arg(&cache_b);
    let o = c.env("HF_HUB_OFFLINE", "1").output().await.expect("get");
    let out = json(&o);
    assert_eq!(out["bytes_from_peers"], out["bytes"], "{out}");
    assert!(stderr(&o).contains("not checked with the Hub"), "says so: {}", stderr(&o));
    assert_snapshot(&only_snapshot(&cache_b.join("models--org--model")), &repo.files);

    // A revision no peer knows: one clear sentence.
    let mut c = swarm_command(tmp.path());
    c.args(["get", "org/model", "--revision", "v9", "--no-mdns", "--peer", a.addr(), "--offline", "--cache-dir"]);
    let o = c.arg(tmp.path().join("c")).output().await.expect("get");
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("no reachable peer knows this revision"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_private_swarm_metadata_comes_from_a_member_and_the_hub_is_not_asked() {
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = model(&tmp.path().join("hub"), 9 << 20);
    let hub = TestHub::start(&tmp.path().join("hub")).await;
    let key = tmp.path().join("swarm.key");
    let o = swarm(tmp.path(), &["keygen", &key.display().to_string()], &[]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let cache_a = tmp.path().join("a");
    seed(tmp.path(), &hub, &cache_a).await;
    let a = JoinNode::loopback(tmp.path(), &cache_a, &["--swarm-key", &key.display().to_string()]).await;

    let api = || hub.stats().api_requests.load(std::sync::atomic::Ordering::Relaxed);
    let (api0, bytes0) = (api(), hub.stats().file_bytes());
    let cache_b = tmp.path().join("b");
    let out = json(
        &swarm_get(tmp.path(), &hub, &cache_b, &["--peer", a.addr(), "--swarm-key", &key.display().to_string()]).await,
    );
    assert_eq!(out["bytes_from_peers"], out["bytes"], "{out}");
    assert_eq!(api() - api0, 0, "the revision and file list came from the member");
    assert_eq!(hub.stats().file_bytes() - bytes0, 0);
    assert_snapshot(&only_snapshot(&cache_b.join("models--org--model")), &repo.files);
    // An open swarm does not trust peers' metadata: each node asks the Hub itself.
    let cache_c = tmp.path().join("c");
    let open_seed = tmp.path().join("open");
    seed(tmp.path(), &hub, &open_seed).await;
    let open = JoinNode::loopback(tmp.path(), &open_seed, &[]).await;
    let api2 = api();
    let out = json(&swarm_get(tmp.path(), &hub, &cache_c, &["--peer", open.addr()]).await);
    assert_eq!(out["bytes_from_peers"], out["bytes"], "{out}");
    assert!(api() > api2, "open swarm: metadata from the Hub");
}

/// A port free on 127.0.0.1 now (for a node that will listen there later).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_through_a_join_node_waits_for_a_seed_that_comes_up_late() {
    // Before: a `join --peer SEED` node whose seed was not up yet dialled it again only every
    // 5 s, and a `get` through a join node did not wait for peers at all (peer wait zero): it
    // fetched the whole repo from the Hub while the seed, up a second later, held all of it.
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = model(&tmp.path().join("hub"), 12 << 20);
    let hub = TestHub::start(&tmp.path().join("hub")).await;
    let seed_cache = tmp.path().join("seed");
    seed(tmp.path(), &hub, &seed_cache).await;
    let seed_addr = format!("/ip4/127.0.0.1/tcp/{}", free_port());
    let cache_b = tmp.path().join("b");
    let _b = JoinNode::loopback(tmp.path(), &cache_b, &["--peer", &seed_addr]).await;

    let before = hub.stats().file_bytes();
    let get = {
        let (home, endpoint, cache) = (tmp.path().to_path_buf(), hub.endpoint.clone(), cache_b.clone());
        tokio::spawn(async move {
            let mut c = swarm_command(&home);
            c.args(["get", "org/model", "--json", "--no-mdns", "--endpoint", &endpoint, "--cache-dir"]).arg(&cache);
            c.output().await.expect("get")
        })
    };
    // The scenario, not a synchronisation: the seed starts a second after the download.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _seed = JoinNode::loopback(tmp.path(), &seed_cache, &["--listen", &seed_addr]).await;
    let o = get.await.expect("join");
    let out = json(&o);
    assert_eq!(out["bytes_from_peers"], out["bytes"], "all from the late seed: {out}");
    assert_eq!(hub.stats().file_bytes() - before, 0, "the Hub sent no file bytes");
    assert!(!stderr(&o).contains("no --peer could be reached"), "{}", stderr(&o));
    assert_snapshot(&only_snapshot(&cache_b.join("models--org--model")), &repo.files);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_whose_seed_never_answers_says_so_and_goes_on_alone() {
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = model(&tmp.path().join("hub"), 3 << 20);
    let hub = TestHub::start(&tmp.path().join("hub")).await;
    let cache_b = tmp.path().join("b");
    let dead = format!("/ip4/127.0.0.1/tcp/{}", free_port());
    let _b = JoinNode::loopback(tmp.path(), &cache_b, &["--peer", &dead]).await;
    let o = swarm_get(tmp.path(), &hub, &cache_b, &[]).await;
    let out = json(&o);
    assert_eq!(out["bytes_from_hub"], out["bytes"], "{out}");
    // Said by the node, shown by the `get` that asked it.
    assert!(stderr(&o).contains("no --peer could be reached within 3 s"), "{}", stderr(&o));
    assert_snapshot(&only_snapshot(&cache_b.join("models--org--model")), &repo.files);
}

/// `status` names the files in progress (`org/model: path`), with chunks, bytes and a rate over
/// the last seconds, not blob hashes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_names_the_files_in_progress() {
    let tmp = tempfile::tempdir().expect("tmp");
    model(&tmp.path().join("hub"), 24 << 20);
    let mut cfg = swarm_node::http::HubServerConfig::loopback(tmp.path().join("hub"));
    cfg.data_rate = Some(1 << 20); // per connection: the download lasts a few seconds
    let hub = TestHub::with(cfg).await;
    let cache = tmp.path().join("c");
    let node = JoinNode::loopback(tmp.path(), &cache, &[]).await;
    let get = tokio::spawn({
        let (home, endpoint, cache) = (tmp.path().to_path_buf(), hub.endpoint.clone(), cache.clone());
        async move {
            let mut c = swarm_command(&home);
            c.args(["get", "org/model", "--no-mdns", "--max-workers", "2", "--endpoint", &endpoint, "--cache-dir"]);
            c.arg(&cache).output().await.expect("get")
        }
    });
    let mut seen = None;
    for _ in 0..300 {
        let st = node.status(tmp.path()).await;
        let files = st["in_progress"].as_array().cloned().unwrap_or_default();
        if let Some(f) = files.iter().find(|f| f["rate"].as_f64().is_some_and(|r| r > 0.0)) {
            seen = Some(f.clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let f = seen.expect("a file in progress with a rate");
    assert_eq!(f["name"], "org/model: model.safetensors", "{f}");
    assert!(f["bytes"].as_u64().is_some_and(|b| b > 0), "{f}");
    let o = swarm(tmp.path(), &["status", "--cache-dir", &cache.display().to_string()], &[]).await;
    assert!(stdout(&o).contains("org/model: model.safetensors ("), "{}", stdout(&o));
    let o = get.await.expect("join");
    assert!(o.status.success(), "{}", stderr(&o));
}

/// Flips one byte of `blob` at `offset`, as a failing disk would; returns the rotten bytes.
fn rot(blob: &Path, offset: usize) -> Vec<u8> {
    let mut bytes = std::fs::read(blob).expect("blob");
    bytes[offset] ^= 0x5a;
    std::fs::write(blob, &bytes).expect("rot");
    bytes
}

/// Waits (at most 10 s) for `path` to exist.
async fn appears(path: &Path, why: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(std::time::Instant::now() < deadline, "{why}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A holder whose blob rotted on disk finds out the first time it serves the bad chunk: it
/// withdraws the blob and moves it aside, so peers stop getting (and banning it for) bad bytes.
/// `cache verify --repair` then fetches the file again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_with_a_rotten_blob_withdraws_it_and_repair_fetches_it_again() {
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = model(&tmp.path().join("hub"), (12 << 20) + 5);
    let hub = TestHub::start(&tmp.path().join("hub")).await;
    let (cache_a, cache_b) = (tmp.path().join("a"), tmp.path().join("b"));
    seed(tmp.path(), &hub, &cache_a).await;
    let sha = repo.files["model.safetensors"].clone();
    let blob = cache_a.join(format!("models--org--model/blobs/{sha}"));
    let bytes = rot(&blob, (5 << 20) + 3); // chunk 1 of 4 MiB chunks

    let a = JoinNode::loopback(tmp.path(), &cache_a, &[]).await;
    let out = json(&swarm_get(tmp.path(), &hub, &cache_b, &["--peer", a.addr()]).await);
    assert_eq!(out["files"], 3);
    assert_snapshot(&only_snapshot(&cache_b.join("models--org--model")), &repo.files);
    let aside = cache_a.join(format!("models--org--model/blobs/{sha}.corrupt"));
    appears(&aside, "A never moved its rotten blob aside").await;
    assert!(!blob.exists());
    drop(a);

    let cache = cache_a.display().to_string();
    let o = swarm(tmp.path(), &["cache", "verify", "--cache-dir", &cache], &[]).await;
    assert!(!o.status.success(), "the snapshot entry has lost its blob");
    let o =
        swarm(tmp.path(), &["cache", "verify", "--repair", "--endpoint", &hub.endpoint, "--cache-dir", &cache], &[])
            .await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("fetched 1 file of model 'org/model'"), "{}", stderr(&o));
    assert_snapshot(&only_snapshot(&cache_a.join("models--org--model")), &repo.files);
    // Rot found by `verify` itself: the blob is moved aside by --repair, then fetched.
    std::fs::write(&blob, &bytes).expect("rot again");
    std::fs::remove_file(&aside).expect("rm");
    let o =
        swarm(tmp.path(), &["cache", "verify", "--repair", "--endpoint", &hub.endpoint, "--cache-dir", &cache], &[])
            .await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("aside"), "{}", stderr(&o));
    assert_snapshot(&only_snapshot(&cache_a.join("models--org--model")), &repo.files);
    let o = swarm(tmp.path(), &["cache", "clean", "--cache-dir", &cache], &[]).await;
    assert!(o.status.success() && !aside.exists(), "clean removes what was moved aside: {}", stderr(&o));
}

/// Rot after a chunk was checked: the holder serves it unchecked, the receiver finds the
/// mismatch, bans the holder and reports the chunk; the holder hashes it again, withdraws the
/// blob and moves it aside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reported_bad_chunk_makes_the_holder_check_and_withdraw_its_blob() {
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = model(&tmp.path().join("hub"), (12 << 20) + 5);
    let hub = TestHub::start(&tmp.path().join("hub")).await;
    let (cache_a, cache_b, cache_c) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("c"));
    seed(tmp.path(), &hub, &cache_a).await;
    let a = JoinNode::loopback(tmp.path(), &cache_a, &[]).await;
    // B takes everything from A: every chunk is checked on the way out, and good.
    let out = json(&swarm_get(tmp.path(), &hub, &cache_b, &["--peer", a.addr()]).await);
    assert_eq!(out["bytes_from_peers"], out["bytes"]);
    // Now the disk rots.
    let sha = repo.files["model.safetensors"].clone();
    let blob = cache_a.join(format!("models--org--model/blobs/{sha}"));
    rot(&blob, (9 << 20) + 7);
    let out = json(&swarm_get(tmp.path(), &hub, &cache_c, &["--peer", a.addr()]).await);
    assert_eq!(out["files"], 3);
    assert_snapshot(&only_snapshot(&cache_c.join("models--org--model")), &repo.files);
    let aside = cache_a.join(format!("models--org--model/blobs/{sha}.corrupt"));
    appears(&aside, "A was told and did not check its blob").await;
}

/// `join --metrics-listen`: Prometheus text at `/metrics`, where `status` says, counting what a
/// download through the node did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_node_serves_prometheus_metrics() {
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = model(&tmp.path().join("hub"), (9 << 20) + 1);
    let hub = TestHub::start(&tmp.path().join("hub")).await;
    let cache = tmp.path().join("c");
    let node = JoinNode::loopback(tmp.path(), &cache, &["--metrics-listen", "127.0.0.1:0"]).await;
    let url = node.status(tmp.path()).await["metrics"].as_str().expect("metrics url").to_owned();
    let out = json(&swarm_get(tmp.path(), &hub, &cache, &[]).await);
    let bytes = out["bytes"].as_u64().expect("bytes");
    let r = reqwest::get(&url).await.expect("scrape");
    assert!(r.headers()["content-type"].to_str().expect("ct").starts_with("application/openmetrics-text"));
    let text = r.text().await.expect("body");
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("{name} missing from:\n{text}"))
    };
    assert_eq!(value("swarm_dl_downloaded_bytes_total{source=\"hub\"}") as u64, bytes);
    assert!(value("swarm_dl_chunks_verified_total") >= repo.files.len() as f64, "{text}");
    assert!(value("swarm_dl_hub_requests_total{kind=\"api\",status=\"200\"}") >= 2.0, "{text}");
    assert!(value("swarm_dl_hub_requests_total{kind=\"data\",status=\"206\"}") >= 1.0, "{text}");
    assert_eq!(value("swarm_dl_downloads_in_flight"), 0.0);
    assert_eq!(value("swarm_dl_chunk_verify_failures_total"), 0.0);
    assert_eq!(value("swarm_dl_peers"), 0.0);
    assert!(text.contains("swarm_dl_build_info{version=\""), "{text}");
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
}

/// A banned peer's availability questions are refused before anything is answered: answering
/// one that says it downloads the file would count the banned peer among the file's owners.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_banned_peer_asking_about_a_file_is_not_counted_among_its_owners() {
    use swarm_protocol::chunk::ChunkLayout;
    use swarm_protocol::hash::Etag;
    use swarm_protocol::wire::{Bitmap, HaveRequest};
    let tmp = tempfile::tempdir().expect("tmp");
    model(&tmp.path().join("hub"), 9 << 20);
    let hub = TestHub::start(&tmp.path().join("hub")).await;
    let (cache_a, cache_b) = (tmp.path().join("a"), tmp.path().join("b"));
    seed(tmp.path(), &hub, &cache_a).await;
    let blob = std::fs::read_dir(cache_a.join("models--org--model/blobs"))
        .expect("blobs")
        .map(|e| e.expect("entry").path())
        .max_by_key(|p| std::fs::metadata(p).expect("meta").len())
        .expect("a blob");
    let size = std::fs::metadata(&blob).expect("meta").len();
    let etag = Etag::parse(&blob.file_name().expect("name").to_string_lossy()).expect("etag");
    let a = in_process_node(&cache_a, vec![], None).await;
    let b = in_process_node(&cache_b, a.handle().listen_addrs(), None).await;
    let (ha, hb) = (a.handle(), b.handle());
    hb.wait_connected(&[ha.peer_id()], Duration::from_secs(10)).await;
    let _wanted = ha.want(vec![etag.clone()]);
    let req = HaveRequest {
        etag: etag.clone(),
        size,
        known: Bitmap::new(ChunkLayout::for_len(size).count()),
        downloading: true,
        news: false,
    };
    // The first answer reads the blob; the asker says it downloads the file and is an owner.
    let first = hb.have(ha.peer_id(), req.clone()).await.expect("valid").expect("answered");
    assert_eq!(first.chunks.len(), ChunkLayout::for_len(size).count() as usize, "{first:?}");
    assert_eq!(ha.take_askers(&etag), vec![hb.peer_id()]);
    // Banned, it asks again: the answer would now come from memory, but the ban comes first.
    ha.ban(hb.peer_id(), "a test");
    let second = hb.have(ha.peer_id(), req).await.expect("valid");
    assert!(second.as_ref().is_none_or(|s| s.chunks.is_empty()), "a banned peer got an answer: {second:?}");
    assert_eq!(ha.take_askers(&etag), vec![], "a banned peer was counted among the owners");
    b.shutdown().await;
    a.shutdown().await;
}
