//! Resume across restarts: a `get` killed with SIGKILL in the middle of a 1 GiB file, run
//! again, continues from the chunks it had verified instead of starting over.

use std::time::{Duration, Instant};
use swarm_node::http::HubServerConfig;
use swarm_protocol::manifest::ChunkManifest;
use swarm_tests::fixture::{PlainRepo, only_snapshot, sha256_file};
use swarm_tests::hub::TestHub;
use swarm_tests::run::{command, stderr, stdout, swarm};

const GIB: u64 = 1 << 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_file_then_resume_fetches_only_the_rest() {
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = PlainRepo::new(&tmp.path().join("hub"), "", "org/big").file("config.json", b"{}").random(
        "model.safetensors",
        42,
        GIB,
    );
    let sha = repo.files["model.safetensors"].clone();
    let mut cfg = HubServerConfig::loopback(tmp.path().join("hub"));
    cfg.data_rate = Some(16_000_000); // per connection: slow enough to be caught mid-file
    let hub = TestHub::with(cfg).await;
    let cache = tmp.path().join("cache").display().to_string();
    let args = ["get", "org/big", "--endpoint", &hub.endpoint, "--cache-dir", &cache];

    let mut child = command(tmp.path()).args(args).spawn().expect("spawn");
    let state = tmp.path().join(format!("cache/models--org--big/blobs/{sha}.incomplete.chunks.json"));
    let deadline = Instant::now() + Duration::from_secs(120);
    let verified = loop {
        assert!(Instant::now() < deadline, "the first run never got a quarter of the way");
        let known = std::fs::read(&state)
            .ok()
            .and_then(|b| serde_json::from_slice::<ChunkManifest>(&b).ok())
            .map(|m| m.known());
        if let Some(k) = known.filter(|k| *k >= 64) {
            break k;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    child.start_kill().expect("SIGKILL");
    let status = child.wait().await.expect("wait");
    assert!(!status.success(), "killed mid-download");
    assert!(!tmp.path().join(format!("cache/models--org--big/blobs/{sha}")).exists());

    let before = hub.stats().data_bytes.load(std::sync::atomic::Ordering::Relaxed);
    let o = swarm(tmp.path(), &args, &[]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let second = hub.stats().data_bytes.load(std::sync::atomic::Ordering::Relaxed) - before;
    let chunk = swarm_protocol::chunk::chunk_size_for(GIB);
    assert!(second < GIB, "the second run transferred {second} bytes, less than the whole file");
    assert!(second <= GIB - verified as u64 * chunk, "chunks verified before the kill were not fetched again");
    assert!(stderr(&o).contains("resumed"), "{}", stderr(&o));
    let snap = only_snapshot(&tmp.path().join("cache/models--org--big"));
    assert_eq!(stdout(&o), snap.display().to_string());
    assert_eq!(sha256_file(&snap.join("model.safetensors")), sha);
    eprintln!("resume: {verified} chunks kept, second run fetched {second} of {GIB} bytes");
}
