//! `join --hub-listen`: unmodified clients (pip `huggingface_hub`, its `hf` CLI, `transformers`)
//! download through a node's Hub endpoint. The Python interpreter comes from `SWARM_DL_PYTHON`,
//! else `.venv/bin/python` at the repo root (scripts/test installs both packages there).

use std::path::{Path, PathBuf};
use swarm_node::http::HubServerConfig;
use swarm_tests::fixture::{PlainRepo, only_snapshot, sha256, sha256_file, walk_files};
use swarm_tests::hub::TestHub;
use swarm_tests::node::JoinNode;
use swarm_tests::run::stderr;

/// Runs `program args…` with a clean Hugging Face environment and `HF_ENDPOINT=endpoint`.
async fn client(program: &Path, home: &Path, endpoint: &str, args: &[&str]) -> std::process::Output {
    let mut c = tokio::process::Command::new(program);
    c.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("HF_") || k.starts_with("HUGGING") || k == "TRANSFORMERS_OFFLINE" {
            c.env_remove(k);
        }
    }
    c.env("HF_HOME", home.join("client-home")).env("HF_ENDPOINT", endpoint);
    c.env("HF_HUB_DISABLE_TELEMETRY", "1").env("HF_HUB_DISABLE_PROGRESS_BARS", "1");
    c.output().await.expect("run a Hub client")
}

async fn py(pyexe: &Path, home: &Path, endpoint: &str, script: &str, args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python").join(script);
    let mut all = vec![script.to_str().expect("utf-8 path")];
    all.extend_from_slice(args);
    let o = client(pyexe, home, endpoint, &all).await;
    assert!(o.status.success(), "{script:?} {args:?} failed: {}", stderr(&o));
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

/// Whether `module` imports; outside CI a missing one skips that part (scripts/test installs it).
fn has(pyexe: &Path, module: &str) -> bool {
    let ok = std::process::Command::new(pyexe)
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(!swarm_tests::in_ci(), "{module} is required under CI (scripts/test installs it)");
        eprintln!("SKIPPED the {module} part: not installed");
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmodified_clients_download_through_a_nodes_hub_endpoint() {
    let Some(pyexe) = swarm_tests::python() else { return };
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path().join("hub");
    let model = PlainRepo::new(&root, "", "org/model")
        .file("config.json", br#"{"architectures": ["Test"]}"#)
        .file("nested/dir/special chars & more.txt", b"spaces and ampersands in paths")
        .random("model.safetensors", 21, (9 << 20) + 5);
    let data = PlainRepo::new(&root, "datasets", "org/data").file("train.csv", b"a,b\n1,2\n").random(
        "shard.parquet",
        22,
        5 << 20,
    );
    PlainRepo::new(&root, "", "org/gated").file("config.json", b"{}");
    let tiny = root.join("org/tiny");
    let transformers = has(&pyexe, "transformers");
    if transformers {
        py(&pyexe, tmp.path(), "", "endpoint.py", &["make-tiny", tiny.to_str().expect("utf-8")]).await;
    }
    let table = PlainRepo::new(&root, "datasets", "org/table").file("data.csv", b"city,people\nParis,2\nLyon,3\n");
    let mut cfg = HubServerConfig::loopback(&root);
    cfg.page_size = 2; // the tree is paginated, and the Link header must lead back to the node
    cfg.gated = vec!["org/gated".into()];
    cfg.tokens = vec!["hf_good".into()];
    let hub = TestHub::with(cfg).await;
    let node = JoinNode::loopback(tmp.path(), &tmp.path().join("node"), &["--endpoint", &hub.endpoint]).await;
    let ep = node.hub_endpoint.clone().expect("the node serves a Hub endpoint");
    assert_eq!(node.status(tmp.path()).await["hub_endpoint"], ep.as_str(), "status --json reports it");

    // snapshot_download of a model and a dataset, into the client's own cache.
    let cache = tmp.path().join("client-cache").display().to_string();
    for (id, ty, files) in [("org/model", "model", &model.files), ("org/data", "dataset", &data.files)] {
        let snap = PathBuf::from(py(&pyexe, tmp.path(), &ep, "interop.py", &["snapshot", &cache, id, ty]).await);
        for (path, sha) in files.iter() {
            assert_eq!(&sha256_file(&snap.join(path)), sha, "{id}: {path}");
        }
        assert_eq!(walk_files(&snap).len(), files.len());
        py(&pyexe, tmp.path(), &hub.endpoint, "interop.py", &["check-cache", &cache, id, ty]).await;
    }
    let repo_bytes: u64 = [&model, &data]
        .iter()
        .flat_map(|r| r.files.keys().map(|p| std::fs::metadata(r.dir.join(p)).expect("stat").len()))
        .sum();
    assert_eq!(hub.stats().file_bytes(), repo_bytes, "the node fetched each file once");

    // `hf download` into another cache: every byte from the node's cache, none from the Hub.
    let hf = pyexe.with_file_name("hf");
    let other = tmp.path().join("hf-cli-cache").display().to_string();
    let o = client(&hf, tmp.path(), &ep, &["download", "org/model", "--cache-dir", &other]).await;
    assert!(o.status.success(), "hf download: {}", stderr(&o));
    let snap = only_snapshot(&tmp.path().join("hf-cli-cache/models--org--model"));
    assert_eq!(sha256_file(&snap.join("model.safetensors")), model.files["model.safetensors"]);
    assert_eq!(hub.stats().file_bytes(), repo_bytes, "the second client was served from the node's cache");

    // The Hub's errors come through as the client's own exception classes, the same ones the
    // client raises against the Hub itself.
    let errors = |endpoint: String, cache: &str| {
        // Each run its own cache: a file cached by one would answer the other.
        let (pyexe, home, cache) =
            (pyexe.clone(), tmp.path().to_path_buf(), tmp.path().join(cache).display().to_string());
        async move {
            let out = py(&pyexe, &home, &endpoint, "endpoint.py", &["errors", &cache]).await;
            serde_json::from_str::<serde_json::Value>(&out).expect("json")
        }
    };
    let (through_node, direct) =
        (errors(ep.clone(), "errors-node").await, errors(hub.endpoint.clone(), "errors-hub").await);
    assert_eq!(through_node, direct, "the node's errors are the Hub's");
    assert_eq!(through_node["repo_not_found"], "RepositoryNotFoundError", "{through_node}");
    assert_eq!(through_node["revision_not_found"], "RevisionNotFoundError", "{through_node}");
    assert_eq!(through_node["entry_not_found"], "RemoteEntryNotFoundError", "{through_node}");
    assert_eq!(through_node["gated_without_token"], "GatedRepoError", "{through_node}");
    assert_ne!(through_node["gated_with_bad_token"], "ok", "a token the Hub rejects opens nothing: {through_node}");
    assert_eq!(through_node["gated_with_token"], "ok", "a token the Hub accepts opens the gated repo: {through_node}");

    if transformers {
        let out: serde_json::Value = serde_json::from_str(
            &py(&pyexe, tmp.path(), &ep, "endpoint.py", &["transformers", &cache, "org/tiny"]).await,
        )
        .expect("json");
        assert_eq!(out["model_type"], "gpt2", "{out}");
        assert_eq!(out["n_embd"], 8, "{out}");
        assert_eq!(out["ids"], serde_json::json!([1, 2, 3, 4]), "the tokenizer came through whole: {out}");
    }
    if has(&pyexe, "datasets") {
        let out = py(&pyexe, tmp.path(), &ep, "endpoint.py", &["datasets", &cache, "org/table"]).await;
        let out: serde_json::Value = serde_json::from_str(out.lines().last().unwrap_or("")).expect("json");
        assert_eq!(out["rows"], 2, "{out}");
        assert_eq!(out["first"], serde_json::json!({"city": "Paris", "people": 2}), "{out}");
        assert!(!table.files.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sharing_the_nodes_cache_waits_on_its_lock_and_writes_nothing() {
    let Some(pyexe) = swarm_tests::python() else { return };
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path().join("hub");
    let model = PlainRepo::new(&root, "", "org/model")
        .file("config.json", b"{}")
        .random("a.safetensors", 31, 24 << 20)
        .random("b.safetensors", 32, (6 << 20) + 1);
    let hub = TestHub::start(&root).await;
    let shared = tmp.path().join("shared");
    // A seed that never answers: the node's first download waits 3 s for it, and the client must
    // still find the file's lock taken by the node, not take it first.
    let args = ["--endpoint", &hub.endpoint, "--metrics-listen", "127.0.0.1:0", "--peer", "/ip4/127.0.0.1/tcp/9"];
    let node = JoinNode::loopback(tmp.path(), &shared, &args).await;
    let ep = node.hub_endpoint.clone().expect("endpoint");
    let cache = shared.display().to_string();
    let snap = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        py(&pyexe, tmp.path(), &ep, "interop.py", &["snapshot", &cache, "org/model", "model"]),
    )
    .await
    .expect("no deadlock on .locks/");
    for (path, sha) in &model.files {
        assert_eq!(&sha256_file(&Path::new(&snap).join(path)), sha, "{path}");
    }
    py(&pyexe, tmp.path(), &hub.endpoint, "interop.py", &["check-cache", &cache, "org/model", "model"]).await;
    // The node wrote every blob; the client found them under the lock and received no body.
    let metrics_url = node.status(tmp.path()).await["metrics"].as_str().expect("metrics url").to_owned();
    let text = reqwest::get(&metrics_url).await.expect("scrape").text().await.expect("body");
    let sent: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("swarm_dl_hub_endpoint_sent_bytes_total "))
        .expect("the endpoint's byte counter")
        .parse()
        .expect("number");
    assert_eq!(sent, 0.0, "no blob crossed the endpoint to be written a second time:\n{text}");
    assert!(text.contains("swarm_dl_hub_endpoint_requests_total{route=\"resolve\"}"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_streams_before_the_file_is_complete_and_honours_ranges() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path().join("hub");
    // 64 chunks of 4 MiB at 8 MB/s per connection: the first wave of chunks lands about a second
    // before the file can be complete.
    let len: u64 = 256 << 20;
    let model = PlainRepo::new(&root, "", "org/big").random("big.bin", 41, len);
    let mut cfg = HubServerConfig::loopback(&root);
    cfg.data_rate = Some(8_000_000);
    let hub = TestHub::with(cfg).await;
    let cache = tmp.path().join("node");
    let node = JoinNode::loopback(tmp.path(), &cache, &["--endpoint", &hub.endpoint]).await;
    let ep = node.hub_endpoint.clone().expect("endpoint");
    let url = format!("{ep}/org/big/resolve/main/big.bin");
    let http = reqwest::Client::new();

    let head = http.head(&url).send().await.expect("HEAD");
    assert_eq!(head.status(), 200);
    let h = head.headers();
    assert_eq!(h["content-length"], len.to_string().as_str());
    assert_eq!(h["x-linked-size"], len.to_string().as_str());
    assert_eq!(h["x-linked-etag"], format!("\"{}\"", model.files["big.bin"]).as_str());
    assert!(h.contains_key("x-repo-commit") && h.contains_key("etag"));
    assert!(!h.keys().any(|k| k.as_str().starts_with("x-xet-")), "no Xet headers: {h:?}");

    let mut resp = http.get(&url).send().await.expect("GET");
    assert_eq!(resp.status(), 200);
    let blob = cache.join("models--org--big/blobs").join(&model.files["big.bin"]);
    let first = resp.chunk().await.expect("body").expect("a first piece");
    assert!(!blob.exists(), "the first bytes arrived before the node had the whole file");
    let mut body = first.to_vec();
    while let Some(piece) = resp.chunk().await.expect("body") {
        body.extend_from_slice(&piece);
    }
    assert_eq!(sha256(&body), model.files["big.bin"], "the streamed file is the file");
    assert!(blob.is_file(), "and the node keeps it");

    let part = http.get(&url).header("range", "bytes=1000-1999").send().await.expect("range");
    assert_eq!(part.status(), 206);
    assert_eq!(part.headers()["content-range"], format!("bytes 1000-1999/{len}").as_str());
    assert_eq!(part.bytes().await.expect("bytes").as_ref(), &body[1000..2000]);
    let tail = http.get(&url).header("range", format!("bytes={}-", len - 10)).send().await.expect("tail");
    assert_eq!(tail.bytes().await.expect("bytes").as_ref(), &body[body.len() - 10..]);
    let past = http.get(&url).header("range", format!("bytes={len}-")).send().await.expect("past");
    assert_eq!(past.status(), 416);
    assert_eq!(past.headers()["content-range"], format!("bytes */{len}").as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_whose_endpoint_is_its_nodes_hub_endpoint_downloads_from_the_nodes_hub() {
    // HF_ENDPOINT exported for the clients reaches `swarm-dl get` too: the node must not fetch
    // through its own endpoint (that would wait on the lock the get's own download holds).
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path().join("hub");
    let repo = PlainRepo::new(&root, "", "org/model").file("config.json", b"{}").random("w.bin", 71, 6 << 20);
    let hub = TestHub::start(&root).await;
    let cache = tmp.path().join("node");
    let node = JoinNode::loopback(tmp.path(), &cache, &["--endpoint", &hub.endpoint]).await;
    let ep = node.hub_endpoint.clone().expect("endpoint");
    let mut c = swarm_tests::run::swarm_command(tmp.path());
    c.args(["get", "org/model", "--quiet", "--cache-dir"]).arg(&cache).env("HF_ENDPOINT", &ep);
    let o =
        tokio::time::timeout(std::time::Duration::from_secs(60), c.output()).await.expect("no deadlock").expect("run");
    assert!(o.status.success(), "{}", stderr(&o));
    swarm_tests::fixture::assert_snapshot(&only_snapshot(&cache.join("models--org--model")), &repo.files);
    assert_eq!(hub.stats().file_bytes(), (6 << 20) + 2, "each byte once, from the node's Hub");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_download_is_a_5xx_never_a_short_200() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path().join("hub");
    PlainRepo::new(&root, "", "org/model").random("w.bin", 51, 6 << 20);
    let hub = TestHub::start(&root).await;
    // The API answers; the CDN is down (503 to every request, until the node's retries are spent).
    hub.plan.push_n("/lfs/", swarm_tests::faults::Fault::Status(503, Vec::new()), 1000);
    let node =
        JoinNode::loopback(tmp.path(), &tmp.path().join("node"), &["--endpoint", &hub.endpoint, "--retries", "2"])
            .await;
    let ep = node.hub_endpoint.clone().expect("endpoint");
    let resp = reqwest::get(format!("{ep}/org/model/resolve/main/w.bin")).await.expect("GET");
    assert!(resp.status().is_server_error(), "a 5xx the client may retry, not a 200: {}", resp.status());
    assert!(resp.headers().contains_key("x-error-message"), "{:?}", resp.headers());
    // Repo-level errors are the Hub's own.
    let resp = reqwest::get(format!("{ep}/org/nope/resolve/main/w.bin")).await.expect("GET");
    assert_eq!(resp.headers()["x-error-code"], "RepoNotFound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_is_loopback_unless_asked_and_never_its_own_upstream() {
    let tmp = tempfile::tempdir().expect("tmp");
    let o = swarm_tests::run::swarm(
        tmp.path(),
        &["join", "--cache-dir", &tmp.path().join("c").display().to_string(), "--no-mdns", "--hub-listen", "0.0.0.0:0"],
        &[],
    )
    .await;
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--hub-listen-public"), "{}", stderr(&o));
    let o = swarm_tests::run::swarm(
        tmp.path(),
        &[
            "join",
            "--cache-dir",
            &tmp.path().join("c").display().to_string(),
            "--no-mdns",
            "--hub-listen",
            "127.0.0.1:18008",
            "--endpoint",
            "http://localhost:18008",
        ],
        &[],
    )
    .await;
    assert!(!o.status.success());
    assert!(stderr(&o).contains("its own Hub endpoint"), "{}", stderr(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_asking_at_once_cost_one_hub_request_per_token() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path().join("hub");
    PlainRepo::new(&root, "", "org/model").file("config.json", b"{}");
    let mut cfg = HubServerConfig::loopback(&root);
    cfg.tokens = vec!["hf_a".into(), "hf_b".into()];
    let hub = TestHub::with(cfg).await;
    let node = JoinNode::loopback(tmp.path(), &tmp.path().join("node"), &["--endpoint", &hub.endpoint]).await;
    let ep = node.hub_endpoint.clone().expect("endpoint");
    let http = reqwest::Client::new();
    let api = || hub.stats().api_requests.load(std::sync::atomic::Ordering::Relaxed);
    let ask = |token: &'static str| {
        let (http, url) = (http.clone(), format!("{ep}/api/models/org/model"));
        async move {
            let r = http.get(url).bearer_auth(token).send().await.expect("GET");
            assert_eq!(r.status(), 200);
            r.text().await.expect("body")
        }
    };
    let before = api();
    let answers = futures_util::future::join_all((0..16).map(|_| ask("hf_a"))).await;
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "the same answer for all");
    assert_eq!(api() - before, 1, "16 clients with one token at once: one Hub request");
    // Another token is another key: its answer comes from the Hub, never from the first one's.
    futures_util::future::join_all((0..4).map(|_| ask("hf_b"))).await;
    assert_eq!(api() - before, 2, "a second token: one more Hub request");
    // A token the Hub refuses gets the Hub's refusal, not a kept answer.
    let r = http.get(format!("{ep}/api/models/org/model")).bearer_auth("hf_bad").send().await.expect("GET");
    assert_eq!(r.status(), 401, "the Hub's own answer to a bad token");
}
