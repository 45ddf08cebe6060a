//! Interop with the real `huggingface_hub` (pip, pinned by .ci/run): it must accept the cache
//! and local dirs swarm-dl writes, and download from `swarm-dl hub serve`.
//! The Python interpreter comes from `SWARM_DL_PYTHON`, else `.venv/bin/python` at the repo root.

use std::path::{Path, PathBuf};
use swarm_tests::fixture::{PlainRepo, only_snapshot, sha256_file, walk_files};
use swarm_tests::hub::TestHub;
use swarm_tests::run::{stderr, stdout, swarm};

async fn py(py: &Path, home: &Path, endpoint: &str, offline: bool, args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/interop.py");
    let mut c = tokio::process::Command::new(py);
    c.arg(script).args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("HF_") || k.starts_with("HUGGING") {
            c.env_remove(k);
        }
    }
    c.env("HF_HOME", home.join("py-home")).env("HF_ENDPOINT", endpoint).env("HF_HUB_DISABLE_XET", "1");
    c.env("HF_HUB_DISABLE_TELEMETRY", "1").env("HF_HUB_DISABLE_PROGRESS_BARS", "1");
    if offline {
        c.env("HF_HUB_OFFLINE", "1").env("LOCAL_ONLY", "1");
    }
    let o = c.output().await.expect("run python");
    assert!(o.status.success(), "huggingface_hub {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

fn repos(root: &Path) -> (PlainRepo, PlainRepo) {
    let model = PlainRepo::new(root, "", "org/model")
        .file("config.json", br#"{"architectures": ["Test"]}"#)
        .file("nested/dir/special chars & more.txt", b"spaces and ampersands in paths")
        .file(".gitattributes", b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
        .random("model.safetensors", 11, (13 << 20) + 3);
    let data = PlainRepo::new(root, "datasets", "org/data").file("train.csv", b"a,b\n1,2\n").random(
        "shard-0.parquet",
        12,
        5 << 20,
    );
    (model, data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huggingface_hub_accepts_our_cache_and_local_dir() {
    let Some(pyexe) = swarm_tests::python() else { return };
    let tmp = tempfile::tempdir().expect("tmp");
    let (model, data) = repos(&tmp.path().join("hub"));
    let hub = TestHub::start(&tmp.path().join("hub")).await;
    let cache = tmp.path().join("cache").display().to_string();
    for (id, ty, files) in [("org/model", "model", &model.files), ("org/data", "dataset", &data.files)] {
        let o =
            swarm(tmp.path(), &["get", id, "--repo-type", ty, "--endpoint", &hub.endpoint, "--cache-dir", &cache], &[])
                .await;
        assert!(o.status.success(), "{}", stderr(&o));
        let ours = stdout(&o);
        py(&pyexe, tmp.path(), &hub.endpoint, false, &["check-cache", &cache, id, ty]).await;
        let theirs = py(&pyexe, tmp.path(), &hub.endpoint, true, &["snapshot", &cache, id, ty]).await;
        assert_eq!(theirs, ours, "offline snapshot_download returns our snapshot");
        assert_eq!(walk_files(Path::new(&ours)).len(), files.len());

        let local = tmp.path().join(format!("local-{ty}")).display().to_string();
        let local_cache = tmp.path().join(format!("local-cache-{ty}")).display().to_string();
        let o = swarm(
            tmp.path(),
            &["get", id, "--repo-type", ty, "--endpoint", &hub.endpoint, "--local-dir", &local],
            &[("HF_HUB_CACHE", &local_cache)],
        )
        .await;
        assert!(o.status.success(), "{}", stderr(&o));
        py(&pyexe, tmp.path(), &hub.endpoint, false, &["check-local", &local, id, ty]).await;
        let theirs =
            py(&pyexe, tmp.path(), &hub.endpoint, true, &["snapshot-local", &local, id, ty, &local_cache]).await;
        assert_eq!(theirs, local, "offline snapshot_download(local_dir=…) accepts our local dir");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huggingface_hub_downloads_from_hub_serve() {
    let Some(pyexe) = swarm_tests::python() else { return };
    let tmp = tempfile::tempdir().expect("tmp");
    let (model, data) = repos(&tmp.path().join("hub"));
    let mut cfg = swarm_node::http::HubServerConfig::loopback(tmp.path().join("hub"));
    cfg.page_size = 2; // make the client follow tree pagination
    let hub = TestHub::with(cfg).await;
    let cache = tmp.path().join("pycache").display().to_string();
    for (id, ty, files) in [("org/model", "model", &model.files), ("org/data", "dataset", &data.files)] {
        let snap = PathBuf::from(py(&pyexe, tmp.path(), &hub.endpoint, false, &["snapshot", &cache, id, ty]).await);
        for (path, sha) in files.iter() {
            assert_eq!(&sha256_file(&snap.join(path)), sha, "{id}: {path}");
        }
        assert_eq!(walk_files(&snap).len(), files.len());
        py(&pyexe, tmp.path(), &hub.endpoint, false, &["check-cache", &cache, id, ty]).await;
    }
    // And swarm-dl reads the cache huggingface_hub wrote: nothing left to fetch.
    let before = hub.stats().file_bytes();
    let o = swarm(tmp.path(), &["get", "org/model", "--endpoint", &hub.endpoint, "--cache-dir", &cache], &[]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), only_snapshot(&tmp.path().join("pycache/models--org--model")).display().to_string());
    assert_eq!(hub.stats().file_bytes(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huggingface_hub_accepts_files_fetched_from_peers() {
    let Some(pyexe) = swarm_tests::python() else { return };
    let tmp = tempfile::tempdir().expect("tmp");
    let (model, _) = repos(&tmp.path().join("hub"));
    let hub = TestHub::start(&tmp.path().join("hub")).await;
    let (holder, cache) = (tmp.path().join("holder"), tmp.path().join("cache"));
    let o = swarm(
        tmp.path(),
        &["get", "org/model", "--endpoint", &hub.endpoint, "--cache-dir", &holder.display().to_string()],
        &[],
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    let node = swarm_tests::node::JoinNode::loopback(tmp.path(), &holder, &[]).await;
    let mut c = swarm_tests::run::swarm_command(tmp.path());
    c.args([
        "get",
        "org/model",
        "--json",
        "--no-mdns",
        "--peer",
        node.addr(),
        "--endpoint",
        &hub.endpoint,
        "--cache-dir",
    ]);
    let o = c.arg(&cache).output().await.expect("get");
    assert!(o.status.success(), "{}", stderr(&o));
    let out: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(out["bytes_from_peers"], out["bytes"], "every file came from the peer: {out}");
    let cache = cache.display().to_string();
    py(&pyexe, tmp.path(), &hub.endpoint, false, &["check-cache", &cache, "org/model", "model"]).await;
    let theirs = py(&pyexe, tmp.path(), &hub.endpoint, true, &["snapshot", &cache, "org/model", "model"]).await;
    assert_eq!(walk_files(Path::new(&theirs)).len(), model.files.len());
}
