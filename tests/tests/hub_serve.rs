//! `swarm-dl hub serve` speaks the Hub's protocol (API, resolve, redirects to a CDN origin, error
//! headers): checked here request by request, with a plain HTTP client that follows nothing.

use reqwest::StatusCode;
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, ETAG, LINK, LOCATION, RANGE};
use swarm_node::http::{HubServer, HubServerConfig};
use swarm_tests::fixture::{PlainRepo, random_bytes};

fn client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client")
}

fn header<K: reqwest::header::AsHeaderName>(r: &reqwest::Response, k: K) -> &str {
    r.headers().get(k).and_then(|v| v.to_str().ok()).unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_protocol_surface() {
    let tmp = tempfile::tempdir().expect("tmp");
    let weights = random_bytes(3, 100_000);
    let repo = PlainRepo::new(tmp.path(), "", "org/m")
        .file("config.json", b"{\"x\": 1}")
        .file("a/b/c.txt", b"deep")
        .file("w.safetensors", &weights);
    let mut cfg = HubServerConfig::loopback(tmp.path());
    cfg.page_size = 2;
    cfg.gated = vec!["org/m".into()];
    cfg.tokens = vec!["hf_ok".into()];
    let hub = HubServer::start(cfg).await.expect("start");
    let (ep, c) = (hub.endpoint(), client());

    // Repo info: id, sha, siblings (+ blobs=true metadata).
    let r = c.get(format!("{ep}/api/models/org/m/revision/main?blobs=true")).send().await.expect("info");
    let info: serde_json::Value = serde_json::from_slice(&r.bytes().await.expect("body")).expect("json");
    assert_eq!(info["id"], "org/m");
    let sha = info["sha"].as_str().expect("sha").to_owned();
    assert_eq!(sha.len(), 40);
    assert_eq!(info["siblings"].as_array().expect("siblings").len(), 3);
    let lfs_sib = info["siblings"].as_array().expect("s").iter().find(|s| s["rfilename"] == "w.safetensors").cloned();
    assert_eq!(lfs_sib.expect("lfs")["lfs"]["sha256"], repo.files["w.safetensors"]);

    // Tree: paginated with an absolute Link rel="next"; directories listed too.
    let mut url = format!("{ep}/api/models/org/m/tree/{sha}?recursive=true&expand=false");
    let mut entries = Vec::new();
    loop {
        let r = c.get(&url).send().await.expect("tree");
        let next = header(&r, LINK).to_owned();
        let page: Vec<serde_json::Value> = serde_json::from_slice(&r.bytes().await.expect("body")).expect("json");
        entries.extend(page);
        match next.split_once('<').and_then(|(_, rest)| rest.split_once('>')) {
            Some((u, _)) => url = u.to_owned(),
            None => break,
        }
    }
    let files: Vec<_> = entries.iter().filter(|e| e["type"] == "file").collect();
    let dirs: Vec<_> = entries.iter().filter(|e| e["type"] == "directory").map(|e| e["path"].clone()).collect();
    assert_eq!(files.len(), 3);
    assert_eq!(dirs, vec!["a", "a/b"]);

    // Resolve of a gated repo: 401 GatedRepo anonymously, open with a token.
    let r = c.head(format!("{ep}/org/m/resolve/main/config.json")).send().await.expect("head");
    assert_eq!((r.status(), header(&r, "x-error-code")), (StatusCode::UNAUTHORIZED, "GatedRepo"));
    let auth = |rb: reqwest::RequestBuilder| rb.bearer_auth("hf_ok");
    let r = auth(c.head(format!("{ep}/org/m/resolve/main/config.json"))).send().await.expect("head");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, ETAG), format!("\"{}\"", swarm_protocol::hash::git_blob_sha1(b"{\"x\": 1}")));
    assert_eq!(header(&r, "x-repo-commit"), sha);
    assert_eq!(header(&r, CONTENT_LENGTH), "8");

    // LFS: 302 to another origin, with X-Linked-Etag / X-Linked-Size.
    let r = auth(c.head(format!("{ep}/org/m/resolve/{}/w.safetensors", &sha[..7]))).send().await.expect("head");
    assert_eq!(r.status(), StatusCode::FOUND);
    assert_eq!(header(&r, "x-linked-etag"), format!("\"{}\"", repo.files["w.safetensors"]));
    assert_eq!(header(&r, "x-linked-size"), "100000");
    let cdn = header(&r, LOCATION).to_owned();
    assert!(cdn.starts_with(&format!("http://{}/", hub.data_addr)), "{cdn}");

    // The CDN: single ranges (206 + Content-Range), suffix ranges, 416 when unsatisfiable.
    let r = c.get(&cdn).header(RANGE, "bytes=10-19").send().await.expect("range");
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(header(&r, CONTENT_RANGE), "bytes 10-19/100000");
    assert_eq!(r.bytes().await.expect("body").as_ref(), &weights[10..20]);
    let r = c.get(&cdn).header(RANGE, "bytes=-5").send().await.expect("suffix");
    assert_eq!(r.bytes().await.expect("body").as_ref(), &weights[99_995..]);
    let r = c.get(&cdn).header(RANGE, "bytes=200000-").send().await.expect("416");
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&r, CONTENT_RANGE), "bytes */100000");

    // Errors carry X-Error-Code (HEAD has no body).
    let r = auth(c.head(format!("{ep}/org/m/resolve/main/missing.bin"))).send().await.expect("404");
    assert_eq!((r.status(), header(&r, "x-error-code")), (StatusCode::NOT_FOUND, "EntryNotFound"));
    assert_eq!(header(&r, "x-repo-commit"), sha);
    let r = auth(c.head(format!("{ep}/org/m/resolve/v9/config.json"))).send().await.expect("404");
    assert_eq!(header(&r, "x-error-code"), "RevisionNotFound");
    let r = c.get(format!("{ep}/api/models/org/nope")).send().await.expect("401");
    assert_eq!((r.status(), header(&r, "x-error-code")), (StatusCode::UNAUTHORIZED, "RepoNotFound"));
    let r = auth(c.get(format!("{ep}/api/models/org/nope"))).send().await.expect("404");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = c.get(format!("{ep}/api/models/org/m")).bearer_auth("hf_bad").send().await.expect("bad token");
    assert_eq!(header(&r, "x-error-message"), "Invalid credentials in Authorization header");

    // Another letter case: a relative redirect to the canonical id.
    let r = auth(c.head(format!("{ep}/ORG/M/resolve/main/config.json"))).send().await.expect("307");
    assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(header(&r, LOCATION), "/org/m/resolve/main/config.json");
}

/// `hub serve` of a folder sees repos and files added after it started: a new repo is found on
/// the first request for it, a new file once the watcher has seen it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repos_and_files_added_after_start_are_served() {
    let tmp = tempfile::tempdir().expect("tmp");
    PlainRepo::new(tmp.path(), "", "org/a").file("config.json", b"{}");
    let hub = HubServer::start(HubServerConfig::loopback(tmp.path())).await.expect("start");
    let (ep, c) = (hub.endpoint(), client());
    let info = |repo: &'static str| {
        let (c, ep) = (c.clone(), ep.clone());
        async move {
            let r = c.get(format!("{ep}/api/{repo}/revision/main")).send().await.expect("info");
            (r.status(), r.json::<serde_json::Value>().await.unwrap_or_default())
        }
    };
    assert_eq!(info("models/org/a").await.0, StatusCode::OK);
    assert_eq!(info("datasets/org/new").await.0, StatusCode::UNAUTHORIZED, "not there yet");

    PlainRepo::new(tmp.path(), "datasets", "org/new").file("data.csv", b"a\n");
    PlainRepo::new(tmp.path(), "", "org/a").file("config.json", b"{}").file("added.txt", b"later");
    // Bounded: the watcher (or, without one, a rescan at most once a second) sees them.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let files = |v: &serde_json::Value| -> Vec<String> {
        v["siblings"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["rfilename"].as_str().map(String::from))
            .collect()
    };
    loop {
        let (new, a) = (info("datasets/org/new").await, info("models/org/a").await);
        if new.0 == StatusCode::OK && files(&a.1).contains(&"added.txt".to_owned()) {
            assert_eq!(files(&new.1), vec!["data.csv".to_owned()]);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not seen within 10 s: {new:?} {a:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // The new file is served.
    let r = c.get(format!("{ep}/org/a/resolve/main/added.txt")).send().await.expect("resolve");
    assert_eq!(r.bytes().await.expect("body").as_ref(), b"later");
}
