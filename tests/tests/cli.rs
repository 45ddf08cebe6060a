//! The real `swarm-dl` binary end to end: what a user types, what they see, what lands on disk.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use swarm_node::http::HubServerConfig;
use swarm_tests::fixture::{
    CacheRepo, PlainRepo, assert_local_dir, assert_snapshot, only_snapshot, partial_files, random_bytes, sha256,
};
use swarm_tests::hub::TestHub;
use swarm_tests::require;
use swarm_tests::run::{stderr, stdout, swarm};

fn model(root: &Path) -> PlainRepo {
    PlainRepo::new(root, "", "org/model")
        .file("config.json", br#"{"hidden": 8}"#)
        .file("tokenizer/vocab.txt", b"a\nb\nc\n")
        .file("README.md", b"# test model\n")
        .random("model.safetensors", 7, (9 << 20) + 77)
}

struct Env {
    tmp: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        Self { tmp: tempfile::tempdir().expect("tmp") }
    }
    fn path(&self, p: &str) -> PathBuf {
        self.tmp.path().join(p)
    }
    fn home(&self) -> &Path {
        self.tmp.path()
    }
    fn cache(&self) -> String {
        self.path("cache").display().to_string()
    }
}

/// A model repo served by a stand-in and already downloaded into `env`'s cache.
async fn downloaded_model() -> (Env, PlainRepo, TestHub, std::process::Output) {
    let env = Env::new();
    let repo = model(&env.path("hub"));
    let hub = TestHub::start(&env.path("hub")).await;
    let o =
        swarm(env.home(), &["get", "org/model", "--endpoint", &hub.endpoint, "--cache-dir", &env.cache()], &[]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    (env, repo, hub, o)
}

/// Asserts a failed run: nonzero exit, exactly one line on stderr, saying `needle`.
fn assert_one_clear_error(o: &std::process::Output, needle: &str) {
    let err = stderr(o);
    assert!(!o.status.success(), "must fail; stderr: {err}");
    assert_eq!(err.lines().count(), 1, "one sentence, got: {err}");
    assert!(err.starts_with("error: ") && err.contains(needle), "expected '{needle}' in: {err}");
    assert!(o.stdout.is_empty(), "no result on stdout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_prints_the_snapshot_and_a_second_get_fetches_nothing() {
    let (env, repo, hub, o) = downloaded_model().await;
    let snap = only_snapshot(&env.path("cache/models--org--model"));
    assert_eq!(stdout(&o), snap.display().to_string());
    assert_snapshot(&snap, &repo.files);
    assert!(stderr(&o).contains("4 files"), "summary line: {}", stderr(&o));
    let total: u64 = repo.files.keys().map(|p| std::fs::metadata(repo.dir.join(p)).expect("meta").len()).sum();
    assert_eq!(hub.stats().file_bytes(), total, "each byte served once");
    // One resolver request per file: a GET for each small file, a HEAD for the large one
    // (whose ranges then go straight to the CDN). No HEAD storm.
    assert_eq!(hub.stats().resolve_requests.load(Relaxed), repo.files.len() as u64);
    assert!(env.path("cache/CACHEDIR.TAG").is_file());
    assert!(env.path("cache/.locks/models--org--model").is_dir());
    assert_eq!(std::fs::read_to_string(env.path("cache/models--org--model/refs/main")).expect("ref").len(), 40);

    let (data_before, resolve_before) =
        (hub.stats().data_requests.load(Relaxed), hub.stats().resolve_requests.load(Relaxed));
    let o = swarm(
        env.home(),
        &["get", "org/model", "--endpoint", &hub.endpoint, "--cache-dir", &env.cache(), "--json"],
        &[],
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(v["path"], snap.display().to_string());
    assert_eq!(v["files_fetched"], 0);
    assert_eq!(v["bytes_from_hub"], 0);
    assert_eq!(hub.stats().data_requests.load(Relaxed), data_before, "no data request for a complete snapshot");
    assert_eq!(hub.stats().resolve_requests.load(Relaxed), resolve_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn include_and_exclude_follow_huggingface_hub_patterns() {
    let env = Env::new();
    let repo = model(&env.path("hub"));
    let hub = TestHub::start(&env.path("hub")).await;
    let args = [
        "get",
        "org/model",
        "--endpoint",
        &hub.endpoint,
        "--cache-dir",
        &env.cache(),
        "--include",
        "*.txt",
        "--include",
        "*.json",
        "--exclude",
        "tokenizer/",
    ];
    let o = swarm(env.home(), &args, &[]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let want: BTreeMap<_, _> =
        repo.files.iter().filter(|(p, _)| p.as_str() == "config.json").map(|(a, b)| (a.clone(), b.clone())).collect();
    assert_snapshot(&only_snapshot(&env.path("cache/models--org--model")), &want);
    // The tree cache is complete even for a partial download.
    let commit =
        only_snapshot(&env.path("cache/models--org--model")).file_name().expect("name").to_string_lossy().into_owned();
    let tree: serde_json::Value = serde_json::from_slice(
        &std::fs::read(env.path(&format!("cache/models--org--model/trees/{commit}.json"))).expect("tree"),
    )
    .expect("json");
    assert_eq!(tree["files"].as_object().expect("files").len(), 4);

    let o = swarm(
        env.home(),
        &["get", "org/model", "--endpoint", &hub.endpoint, "--cache-dir", &env.cache(), "--include", "*.gguf"],
        &[],
    )
    .await;
    assert_one_clear_error(&o, "no file of model 'org/model' at 'main' matches");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revisions_branch_tag_short_and_full_commit_and_pr() {
    let env = Env::new();
    let (c1, c2, c3) = ("1".repeat(40), "2".repeat(40), "3".repeat(40));
    let (c1, c2, c3) = (c1.replace('1', "a1"), c2.replace('2', "b2"), c3.replace('3', "c3"));
    let (c1, c2, c3) = (c1[..40].to_owned(), c2[..40].to_owned(), c3[..40].to_owned());
    let w1 = random_bytes(1, 5000);
    let w2 = random_bytes(2, 6000);
    CacheRepo::new(&env.path("hub"), "models--org--revs")
        .commit(&c1, &[("config.json", b"v1"), ("w.safetensors", &w1)])
        .commit(&c2, &[("config.json", b"v2"), ("w.safetensors", &w2)])
        .commit(&c3, &[("config.json", b"pr")])
        .git_ref("main", &c2)
        .git_ref("v1.0", &c1)
        .git_ref("refs/pr/1", &c3);
    let hub = TestHub::start(&env.path("hub")).await;
    let cache = env.cache();
    let get = |rev: String| {
        let (endpoint, cache, home) = (hub.endpoint.clone(), cache.clone(), env.home().to_path_buf());
        async move {
            swarm(&home, &["get", "org/revs", "--endpoint", &endpoint, "--cache-dir", &cache, "--revision", &rev], &[])
                .await
        }
    };
    let repo_dir = env.path("cache/models--org--revs");
    for (rev, commit, config) in [
        ("main".to_owned(), &c2, "v2"),
        ("v1.0".to_owned(), &c1, "v1"),
        (c1[..7].to_owned(), &c1, "v1"),
        (c2.clone(), &c2, "v2"),
        ("refs/pr/1".to_owned(), &c3, "pr"),
    ] {
        let o = get(rev.clone()).await;
        assert!(o.status.success(), "{rev}: {}", stderr(&o));
        let snap = repo_dir.join("snapshots").join(commit);
        assert_eq!(stdout(&o), snap.display().to_string(), "{rev}");
        assert_eq!(std::fs::read_to_string(snap.join("config.json")).expect("config"), config);
        let ref_file = repo_dir.join("refs").join(&rev);
        if rev == *commit {
            assert!(!ref_file.exists(), "no ref for a full commit");
        } else {
            assert_eq!(&std::fs::read_to_string(&ref_file).expect("ref"), commit, "refs/{rev} holds the bare commit");
        }
    }
    assert_eq!(std::fs::read(repo_dir.join("snapshots").join(&c1).join("w.safetensors")).expect("w1"), w1);
    let o = get("nope".into()).await;
    assert_one_clear_error(&o, "revision 'nope' not found in model 'org/revs'");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_dir_gets_plain_files_and_huggingface_metadata() {
    let env = Env::new();
    let repo = model(&env.path("hub"));
    let hub = TestHub::start(&env.path("hub")).await;
    let local = env.path("local");
    let args = ["get", "org/model", "--endpoint", &hub.endpoint, "--local-dir", local.to_str().expect("utf8")];
    let o = swarm(env.home(), &args, &[]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), local.display().to_string());
    assert_local_dir(&local, &repo.files);
    let meta = std::fs::read_to_string(local.join(".cache/huggingface/download/tokenizer/vocab.txt.metadata"))
        .expect("metadata");
    let lines: Vec<&str> = meta.lines().collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[1], swarm_protocol::hash::git_blob_sha1(b"a\nb\nc\n").as_str());
    assert_eq!(std::fs::read_to_string(local.join(".cache/huggingface/.gitignore")).expect("gitignore"), "*");
    let before = hub.stats().file_bytes();
    let o = swarm(env.home(), &args, &[]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(hub.stats().file_bytes(), before, "up-to-date local files are not fetched again");
    assert!(swarm_tests::fixture::walk_files(&local).iter().all(|p| !p.to_string_lossy().ends_with(".incomplete")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_mode_answers_from_the_cache_only() {
    let (env, _repo, hub, _) = downloaded_model().await;
    let (api, resolve) = (hub.stats().api_requests.load(Relaxed), hub.stats().resolve_requests.load(Relaxed));
    let o = swarm(
        env.home(),
        &["get", "org/model", "--endpoint", &hub.endpoint, "--cache-dir", &env.cache()],
        &[("HF_HUB_OFFLINE", "1")],
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), only_snapshot(&env.path("cache/models--org--model")).display().to_string());
    assert_eq!(
        (hub.stats().api_requests.load(Relaxed), hub.stats().resolve_requests.load(Relaxed)),
        (api, resolve),
        "offline means no request"
    );
    let o = swarm(env.home(), &["get", "org/other", "--cache-dir", &env.cache()], &[("HF_HUB_OFFLINE", "1")]).await;
    assert_one_clear_error(&o, "offline mode (HF_HUB_OFFLINE) and model 'org/other' at 'main' is not in the cache");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_ends_in_one_clear_sentence() {
    let env = Env::new();
    model(&env.path("hub"));
    let mut cfg = HubServerConfig::loopback(env.path("hub"));
    cfg.gated = vec!["org/model".into()];
    cfg.tokens = vec!["hf_good".into()];
    let hub = TestHub::with(cfg).await;
    let base = ["--endpoint", &hub.endpoint, "--cache-dir", &env.cache()];
    let run = |args: Vec<&str>| {
        let home = env.home().to_path_buf();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        async move { swarm(&home, &args.iter().map(String::as_str).collect::<Vec<_>>(), &[]).await }
    };
    let with = |extra: &[&'static str], id: &'static str| {
        let mut v = vec!["get", id];
        v.extend_from_slice(&base);
        v.extend_from_slice(extra);
        v
    };
    assert_one_clear_error(&run(with(&[], "org/missing")).await, "model 'org/missing' not found at");
    assert_one_clear_error(&run(with(&["--repo-type", "dataset"], "org/model")).await, "dataset 'org/model' not found");
    assert_one_clear_error(&run(with(&[], "org//bad")).await, "invalid repo id 'org//bad'");
    assert_one_clear_error(&run(with(&[], "org/model")).await, "model 'org/model' is gated: accept its conditions");
    assert_one_clear_error(&run(with(&["--token", "hf_wrong"], "org/model")).await, "rejected the token");
    let no_blobs = partial_files(&env.path("cache/models--org--model"));
    assert!(no_blobs.is_empty());
    let ok = run(with(&["--token", "hf_good"], "org/model")).await;
    assert!(ok.status.success(), "a token with access opens the gated repo: {}", stderr(&ok));
    assert!(!stderr(&ok).contains("hf_good"), "the token never shows");

    // The token file under HF_HOME is the last place a token comes from.
    std::fs::create_dir_all(env.path("hf-home")).expect("mkdir");
    std::fs::write(env.path("hf-home/token"), "hf_good\n").expect("token file");
    let other_cache = env.path("cache2").display().to_string();
    let o =
        swarm(env.home(), &["get", "org/model", "--endpoint", &hub.endpoint, "--cache-dir", &other_cache], &[]).await;
    assert!(o.status.success(), "token from $HF_HOME/token: {}", stderr(&o));
    std::fs::remove_file(env.path("hf-home/token")).expect("rm token");

    // An empty cache cannot stand in for the Hub.
    let empty = env.path("empty-cache").display().to_string();
    let down = ["get", "org/model", "--endpoint", "http://127.0.0.1:9", "--cache-dir", &empty, "--retries", "2"];
    assert_one_clear_error(&swarm(env.home(), &down, &[]).await, "cannot reach http://127.0.0.1:9/");
    let dead_end = ["get", "org/model", "--endpoint", "ftp://example", "--cache-dir", &env.cache()];
    assert_one_clear_error(&swarm(env.home(), &dead_end, &[]).await, "invalid Hub endpoint");
}

/// A small file system mounted for one test (root only), unmounted on drop.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(dir: &Path, opts: &str) -> Self {
        std::fs::create_dir_all(dir).expect("mkdir");
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
            .arg(dir)
            .status()
            .expect("mount");
        assert!(ok.success(), "mount tmpfs");
        Self(dir.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwritable_cache_dir_and_full_disk_keep_completed_files() {
    require!(swarm_tests::is_root(), "mounting a read-only and a tiny file system needs root");
    let env = Env::new();
    let repo = PlainRepo::new(&env.path("hub"), "", "org/big")
        .file("config.json", b"{}")
        .file("notes.txt", b"notes")
        .random("model.safetensors", 3, 40 << 20);
    let hub = TestHub::start(&env.path("hub")).await;

    let ro = Mount::tmpfs(&env.path("ro"), "ro,size=1m");
    let o = swarm(
        env.home(),
        &["get", "org/big", "--endpoint", &hub.endpoint, "--cache-dir", &ro.0.join("cache").display().to_string()],
        &[],
    )
    .await;
    assert_one_clear_error(&o, "cannot write to");
    assert!(stderr(&o).contains("Read-only file system"), "{}", stderr(&o));

    let small = Mount::tmpfs(&env.path("small"), "size=24m");
    let cache = small.0.join("cache");
    let o = swarm(
        env.home(),
        &["get", "org/big", "--endpoint", &hub.endpoint, "--cache-dir", &cache.display().to_string()],
        &[],
    )
    .await;
    assert_one_clear_error(&o, "disk full while writing");
    assert!(stderr(&o).contains("2 of 3 files are complete and were kept"), "{}", stderr(&o));
    let snap = only_snapshot(&cache.join("models--org--big"));
    assert_eq!(std::fs::read(snap.join("config.json")).expect("kept"), b"{}");
    assert_eq!(std::fs::read(snap.join("notes.txt")).expect("kept"), b"notes");
    let big = &repo.files["model.safetensors"];
    assert!(!cache.join("models--org--big/blobs").join(big).exists(), "no half-written blob");
    assert!(!snap.join("model.safetensors").exists());
    drop(small);
    drop(ro);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_ls_verify_and_clean() {
    let (env, _repo, _hub, _) = downloaded_model().await;
    let o = swarm(env.home(), &["cache", "ls", "--cache-dir", &env.cache()], &[]).await;
    assert!(o.status.success() && stdout(&o).contains("org/model") && stdout(&o).contains("main"), "{}", stdout(&o));
    let o = swarm(env.home(), &["cache", "verify", "org/model", "--cache-dir", &env.cache()], &[]).await;
    assert!(o.status.success(), "{}", stderr(&o));

    // A blob changed behind our back is found.
    let blob = env
        .path("cache/models--org--model/blobs")
        .join(swarm_protocol::hash::git_blob_sha1(b"# test model\n").as_str());
    std::fs::write(&blob, b"# tampered\n").expect("tamper");
    let o = swarm(env.home(), &["cache", "verify", "--cache-dir", &env.cache()], &[]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("mismatch") && stdout(&o).contains(blob.to_str().expect("utf8")), "{}", stdout(&o));

    // Clean removes a stale partial download, keeps one whose lock is held.
    let blobs = env.path("cache/models--org--model/blobs");
    let (stale, busy) = (sha256(b"stale"), sha256(b"busy"));
    std::fs::write(blobs.join(format!("{stale}.incomplete")), vec![0u8; 1000]).expect("stale");
    std::fs::write(blobs.join(format!("{stale}.incomplete.chunks.json")), b"{}").expect("state");
    std::fs::write(blobs.join(format!("{busy}.incomplete")), vec![0u8; 10]).expect("busy");
    let _held =
        swarm_node::cache::BlobLock::acquire(&env.path(&format!("cache/.locks/models--org--model/{busy}.lock")))
            .expect("lock");
    let o = swarm(env.home(), &["cache", "ls", "--cache-dir", &env.cache()], &[]).await;
    assert!(stdout(&o).contains("incomplete"), "{}", stdout(&o));
    // The chunk manifest of a blob that is gone; the downloaded blobs keep theirs.
    let manifests = env.path("cache/.locks/swarm-dl/manifests");
    let kept = std::fs::read_dir(&manifests).expect("manifests saved by the download").count();
    assert!(kept > 0);
    let orphan = manifests.join(format!("{}.json", sha256(b"deleted by hand")));
    std::fs::write(&orphan, b"{}").expect("orphan");
    let o = swarm(env.home(), &["cache", "clean", "--dry-run", "--cache-dir", &env.cache()], &[]).await;
    assert!(o.status.success() && blobs.join(format!("{stale}.incomplete")).exists() && orphan.exists());
    let o = swarm(env.home(), &["cache", "clean", "--cache-dir", &env.cache()], &[]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!orphan.exists(), "{}", stdout(&o));
    assert_eq!(std::fs::read_dir(&manifests).expect("manifests").count(), kept);
    assert!(stderr(&o).contains("1 chunk manifests"), "{}", stderr(&o));
    assert!(!blobs.join(format!("{stale}.incomplete")).exists());
    assert!(!blobs.join(format!("{stale}.incomplete.chunks.json")).exists());
    assert!(blobs.join(format!("{busy}.incomplete")).exists(), "in use: kept");
    assert!(stdout(&o).contains("in use, kept"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_gets_share_the_cache_through_its_locks() {
    let env = Env::new();
    let repo = model(&env.path("hub"));
    let hub = TestHub::start(&env.path("hub")).await;
    let args = ["get", "org/model", "--endpoint", &hub.endpoint, "--cache-dir", &env.cache()];
    let (a, b) = tokio::join!(swarm(env.home(), &args, &[]), swarm(env.home(), &args, &[]));
    assert!(a.status.success() && b.status.success(), "{} / {}", stderr(&a), stderr(&b));
    assert_eq!(stdout(&a), stdout(&b));
    assert_snapshot(&only_snapshot(&env.path("cache/models--org--model")), &repo.files);
    let total: u64 = repo.files.keys().map(|p| std::fs::metadata(repo.dir.join(p)).expect("meta").len()).sum();
    assert_eq!(hub.stats().file_bytes(), total, "the blob lock makes the second process wait, then reuse");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_location_follows_hf_hub_cache_then_hf_home() {
    let env = Env::new();
    let repo = PlainRepo::new(&env.path("hub"), "", "Org/Model").file("config.json", b"{}").random(
        "w.safetensors",
        5,
        5 << 20,
    );
    let hub = TestHub::start(&env.path("hub")).await;
    let hub_cache = env.path("hub-cache").display().to_string();
    // A differently-cased id is redirected (relative 307) to the canonical repo; the cache keeps
    // the id as asked, as huggingface_hub does.
    let args = ["get", "org/model", "--endpoint", &hub.endpoint];
    let o = swarm(env.home(), &args, &[("HF_HUB_CACHE", &hub_cache)]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_snapshot(&only_snapshot(&env.path("hub-cache/models--org--model")), &repo.files);
    let home = env.path("other-home").display().to_string();
    let o = swarm(env.home(), &args, &[("HF_HOME", &home)]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with(&format!("{home}/hub/models--org--model/snapshots/")), "{}", stdout(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spaces_and_quiet_output() {
    let env = Env::new();
    let repo = PlainRepo::new(&env.path("hub"), "spaces", "org/app")
        .file("app.py", b"print('hi')\n")
        .file("README.md", b"---\nsdk: static\n---\n");
    let hub = TestHub::start(&env.path("hub")).await;
    let args =
        ["get", "org/app", "--repo-type", "space", "--endpoint", &hub.endpoint, "--cache-dir", &env.cache(), "--quiet"];
    let o = swarm(env.home(), &args, &[]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(o.stderr.is_empty(), "--quiet prints only the result: {}", stderr(&o));
    let snap = only_snapshot(&env.path("cache/spaces--org--app"));
    assert_eq!(String::from_utf8_lossy(&o.stdout), format!("{}\n", snap.display()));
    assert_snapshot(&snap, &repo.files);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_files_like_hf_download() {
    let (env, repo, hub, _) = downloaded_model().await;
    let cache2 = env.path("cache2").display().to_string();
    let one = ["get", "org/model", "tokenizer/vocab.txt", "--endpoint", &hub.endpoint, "--cache-dir", &cache2];
    let o = swarm(env.home(), &one, &[]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let snap = only_snapshot(&env.path("cache2/models--org--model"));
    assert_eq!(stdout(&o), snap.join("tokenizer").join("vocab.txt").display().to_string(), "one file: its own path");
    let o = swarm(
        env.home(),
        &["get", "org/model", "config.json", "tokenizer/", "--endpoint", &hub.endpoint, "--cache-dir", &cache2],
        &[],
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), snap.display().to_string());
    let want: BTreeMap<_, _> = repo
        .files
        .iter()
        .filter(|(p, _)| *p == "config.json" || p.starts_with("tokenizer/"))
        .map(|(a, b)| (a.clone(), b.clone()))
        .collect();
    assert_snapshot(&snap, &want);
    let o =
        swarm(env.home(), &["get", "org/model", "nope.bin", "--endpoint", &hub.endpoint, "--cache-dir", &cache2], &[])
            .await;
    assert_one_clear_error(&o, "file 'nope.bin' not found in model 'org/model' at revision 'main'");
    // One missing among present ones is an error too (hf download raises EntryNotFound).
    let both = ["get", "org/model", "config.json", "nope.bin", "--endpoint", &hub.endpoint, "--cache-dir", &cache2];
    assert_one_clear_error(&swarm(env.home(), &both, &[]).await, "file 'nope.bin' not found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_answers_when_the_hub_is_down() {
    let (env, _repo, _hub, _) = downloaded_model().await;
    let snap = only_snapshot(&env.path("cache/models--org--model"));
    // Nothing listens on port 9: connection refused, as when the Hub or the network is down.
    let down = ["get", "org/model", "config.json", "--endpoint", "http://127.0.0.1:9", "--cache-dir", &env.cache()];
    let o = swarm(env.home(), &down, &[]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), snap.join("config.json").display().to_string());
    let err = stderr(&o);
    let warning: Vec<&str> = err.lines().filter(|l| l.contains("could not be reached")).collect();
    assert_eq!(warning.len(), 1, "one warning line: {}", stderr(&o));
    assert!(warning[0].contains("using the cached commit"), "{}", warning[0]);
    // A file the cache does not have still needs the Hub: that is an error, not a guess.
    std::fs::remove_file(snap.join("README.md")).expect("rm");
    let o = swarm(
        env.home(),
        &["get", "org/model", "--endpoint", "http://127.0.0.1:9", "--cache-dir", &env.cache(), "--retries", "1"],
        &[],
    )
    .await;
    assert_one_clear_error(&o, "cannot reach http://127.0.0.1:9/");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hf_style_ids_and_the_flags_users_expect() {
    let env = Env::new();
    let ds = PlainRepo::new(&env.path("hub"), "datasets", "org/ds")
        .file("data/train.csv", b"a,b\n1,2\n")
        .file("README.md", b"# ds\n");
    model(&env.path("hub"));
    let hub = TestHub::start(&env.path("hub")).await;
    let ep = ["--endpoint", hub.endpoint.as_str(), "--cache-dir", &env.cache()];
    let get = |id: &str, extra: &[&str]| {
        let mut v = vec!["get".to_owned(), id.to_owned()];
        v.extend(ep.iter().chain(extra).map(|s| s.to_string()));
        let home = env.home().to_path_buf();
        async move { swarm(&home, &v.iter().map(String::as_str).collect::<Vec<_>>(), &[]).await }
    };

    // datasets/org/ds and hf://datasets/org/ds@rev/path, as huggingface_hub writes them.
    let o = get("datasets/org/ds", &[]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let snap = only_snapshot(&env.path("cache/datasets--org--ds"));
    assert_snapshot(&snap, &ds.files);
    let o = get("hf://datasets/org/ds@main/data/train.csv", &["--json"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(v["path"].as_str(), Some(snap.join("data/train.csv").to_str().expect("utf8")));
    assert_eq!(v["repo_type"], "dataset");
    assert_one_clear_error(
        &get("datasets/org/ds", &["--repo-type", "model"]).await,
        "names a dataset but --repo-type says model",
    );

    // --json failures are JSON on stdout, with a kind, and the exit code stays nonzero.
    for (id, kind) in [("org/missing", "repo_not_found"), ("org/model@x", "usage")] {
        let o = get(id, &["--json"]).await;
        assert!(!o.status.success());
        let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json error");
        assert_eq!(v["error"]["kind"], kind, "{v}");
    }
    let o = get("org/model", &["nope.bin", "--json"]).await;
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json error");
    assert_eq!(v["error"]["kind"], "entry_not_found", "{v}");

    // --dry-run: what would be fetched, nothing fetched or written.
    let data_before = hub.stats().data_requests.load(Relaxed);
    let listing = |dir: &Path| walk(dir);
    let before = listing(&env.path("cache"));
    let o = get("org/model", &["--dry-run", "--json"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let plan: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("plan");
    let files = plan["files"].as_array().expect("files");
    assert_eq!(files.len(), 4);
    assert!(files.iter().all(|f| f["action"] == "fetch"), "{plan}");
    assert_eq!(plan["bytes_to_fetch"], (9 << 20) + 77 + 13 + 6 + 13);
    assert_eq!(hub.stats().data_requests.load(Relaxed), data_before, "no file data asked for");
    assert_eq!(listing(&env.path("cache")), before, "nothing written");
    let o = get("org/model", &["--dry-run"]).await;
    assert!(stdout(&o).contains("would fetch 4 files of 4 files"), "{}", stdout(&o));

    // --force-download replaces a blob that went bad; without it, the bad blob stays.
    assert!(get("org/model", &[]).await.status.success());
    let snap = only_snapshot(&env.path("cache/models--org--model"));
    let blob = std::fs::canonicalize(snap.join("config.json")).expect("blob");
    std::fs::write(&blob, b"{\"hidden\": 9}").expect("rot");
    let verify = ["cache", "verify", "--cache-dir", &env.cache()];
    assert!(!swarm(env.home(), &verify, &[]).await.status.success(), "verify sees the bad blob");
    let o = get("org/model", &["config.json", "--dry-run"]).await;
    assert!(stdout(&o).contains("present"), "{}", stdout(&o));
    let o = get("org/model", &["config.json", "--force-download"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("1 file ("), "singular: {}", stderr(&o));
    assert_eq!(std::fs::read(snap.join("config.json")).expect("read"), br#"{"hidden": 8}"#);
    assert!(swarm(env.home(), &verify, &[]).await.status.success(), "the blob is whole again");
}

/// Every path under `dir`, sorted.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(e.path());
            }
            out.push(e.path());
        }
    }
    out.sort();
    out
}

/// `swarm-dl … | head`: the reader goes away; swarm-dl stops quietly, without a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_ends_quietly() {
    let (env, _repo, hub, _) = downloaded_model().await;
    for args in [
        vec!["cache", "ls", "--cache-dir", &env.cache()],
        vec!["get", "org/model", "--endpoint", &hub.endpoint, "--cache-dir", &env.cache()],
    ] {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let mut c = swarm_tests::run::command(env.home());
        c.args(&args).stdout(writer);
        let o = c.output().await.expect("run");
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked") && !stderr(&o).contains("Broken pipe"), "{}", stderr(&o));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_file_sits_under_flags_and_environment() {
    let env = Env::new();
    let _repo = model(&env.path("hub"));
    let hub = TestHub::start(&env.path("hub")).await;
    // The user's file ($HOME/.config/swarm-dl/config.toml; HOME is the test's home).
    let dir = env.path(".config/swarm-dl");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let file = dir.join("config.toml");
    let text = format!(
        "endpoint = \"{}\"\ncache-dir = \"{}\"\nmax-workers = 3\nmax-download-rate = \"500M\"\n",
        hub.endpoint,
        env.cache()
    );
    std::fs::write(&file, text).expect("write");
    // The endpoint comes from the file; the cache does not, since HF_HOME (set by the harness)
    // names one and the environment beats the file.
    let o = swarm(env.home(), &["get", "org/model", "config.json", "--quiet"], &[]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with(&env.path("hf-home/hub").display().to_string()), "{}", stdout(&o));
    // `config show` says where each value came from, and never shows the token.
    let mut text = std::fs::read_to_string(&file).expect("read");
    text.push_str("token = \"hf_from_the_file\"\n");
    std::fs::write(&file, text).expect("write");
    let o = swarm(
        env.home(),
        &["config", "show", "--json", "get", "org/model", "--max-workers", "5"],
        &[("SWARM_DL_MAX_DOWNLOAD_RATE", "9M")],
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stdout(&o).contains("hf_from_the_file"), "the token is shown: {}", stdout(&o));
    let shown: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(shown["file"], file.display().to_string());
    let of = |k: &str| {
        let s = shown["settings"].as_array().expect("list").iter().find(|s| s["key"] == k).cloned();
        let s = s.unwrap_or_else(|| panic!("{k} not shown: {shown}"));
        (s["value"].as_str().unwrap_or("unset").to_owned(), s["source"].as_str().unwrap_or_default().to_owned())
    };
    assert_eq!(of("endpoint"), (hub.endpoint.clone(), "file".into()));
    assert_eq!(of("cache-dir"), (env.path("hf-home/hub").display().to_string(), "env HF_HOME".into()));
    assert_eq!(of("max-workers"), ("5".into(), "flag".into()));
    assert_eq!(of("max-download-rate"), ("9M".into(), "env SWARM_DL_MAX_DOWNLOAD_RATE".into()));
    assert_eq!(of("token"), ("(set, not shown)".into(), "file".into()));
    assert_eq!(of("retries"), ("7".into(), "default".into()));
    // The environment beats the file: this endpoint answers nothing, and the cached commit is used.
    let o = swarm(env.home(), &["get", "org/model", "config.json"], &[("HF_ENDPOINT", "http://127.0.0.1:9")]).await;
    assert!(o.status.success() && stderr(&o).contains("http://127.0.0.1:9"), "{}", stderr(&o));
    // A bad value: one sentence naming the file, the key and what is allowed; nothing is done.
    std::fs::write(&file, "max-workers = 0\n").expect("write");
    let o = swarm(env.home(), &["get", "org/other"], &[]).await;
    assert_one_clear_error(
        &o,
        &format!(
            "config file '{}', key 'max-workers': invalid value '0' for '--max-workers <MAX_WORKERS>': 0 is not in 1..=4096",
            file.display()
        ),
    );
    // --config names another file, and `none` reads none.
    let other = env.path("other.toml");
    std::fs::write(&other, "retries = 2\n").expect("write");
    let o = swarm(env.home(), &["config", "show", "--config", &other.display().to_string()], &[]).await;
    assert!(o.status.success() && stdout(&o).contains(&format!("config file: {}", other.display())), "{}", stdout(&o));
    assert!(
        stdout(&o).lines().any(|l| l.starts_with("retries") && l.contains(" 2 ") && l.ends_with("file")),
        "{}",
        stdout(&o)
    );
    let o = swarm(env.home(), &["config", "show"], &[("SWARM_DL_CONFIG", "none")]).await;
    assert!(o.status.success() && stdout(&o).starts_with("config file: none"), "{}", stdout(&o));
}
