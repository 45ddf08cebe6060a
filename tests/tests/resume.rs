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
    let repo = PlainRepo::new(&tmp.path().join("hub"), "", "org/big").random("model.safetensors", 42, GIB);
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
    let mut resumed_args = args.to_vec();
    resumed_args.push("--json");
    let o = swarm(tmp.path(), &resumed_args, &[]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    // What the second run received. (The stand-in's own counter is only a loose check here: after
    // the SIGKILL it may still push bytes into the dead connections' socket buffers.)
    let report: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    let fetched = report["bytes_from_hub"].as_u64().expect("bytes_from_hub");
    let resumed = report["bytes_resumed"].as_u64().expect("bytes_resumed");
    let served = hub.stats().data_bytes.load(std::sync::atomic::Ordering::Relaxed) - before;
    let chunk = swarm_protocol::chunk::chunk_size_for(GIB);
    assert!(resumed >= verified as u64 * chunk, "every chunk verified before the kill is kept ({resumed} bytes)");
    assert!(fetched <= GIB - verified as u64 * chunk, "and not fetched again ({fetched} bytes fetched)");
    assert_eq!(fetched + resumed, GIB, "nothing fetched twice within the second run");
    assert!(served < GIB, "the stand-in served {served} bytes to the second run, less than the file");
    let snap = only_snapshot(&tmp.path().join("cache/models--org--big"));
    assert_eq!(report["path"], snap.display().to_string());
    assert_eq!(sha256_file(&snap.join("model.safetensors")), sha);
    eprintln!(
        "resume: {verified} chunks verified at the kill; second run resumed {resumed}, fetched {fetched} of {GIB} bytes"
    );
}

/// Ctrl-C or SIGTERM in the middle of chunks keeps the bytes written into them: the next run
/// continues each chunk from its watermark. Two interruptions, then a full run: the Hub serves
/// the file once, plus at most what was in flight at each stop (one write buffer and socket
/// buffers per connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_and_sigterm_keep_the_bytes_inside_chunks() {
    const SIZE: u64 = 64 << 20; // 16 chunks of 4 MiB
    const WORKERS: u64 = 8;
    const SLICE: u64 = 1 << 20;
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = PlainRepo::new(&tmp.path().join("hub"), "", "org/m").random("model.safetensors", 9, SIZE);
    let mut cfg = HubServerConfig::loopback(tmp.path().join("hub"));
    cfg.data_rate = Some(1_000_000); // per connection: no chunk completes before the stops
    let hub = TestHub::with(cfg).await;
    let cache = tmp.path().join("cache").display().to_string();
    let args = ["get", "org/m", "--endpoint", &hub.endpoint, "--cache-dir", &cache, "--max-workers", "8"];
    let served = || hub.stats().data_bytes.load(std::sync::atomic::Ordering::Relaxed);
    for (signal, upto) in [("-INT", 12_000_000), ("-TERM", 24_000_000)] {
        let mut child = command(tmp.path()).args(args).spawn().expect("spawn");
        let deadline = Instant::now() + Duration::from_secs(60);
        while served() < upto {
            assert!(Instant::now() < deadline, "the stand-in never served {upto} bytes");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let pid = child.id().expect("pid").to_string();
        assert!(std::process::Command::new("kill").args([signal, &pid]).status().expect("kill").success());
        let status = tokio::time::timeout(Duration::from_secs(20), child.wait()).await.expect("stops").expect("wait");
        assert_eq!(status.code(), Some(130), "{signal}: exit 130 after an interruption");
    }
    let stopped_at = served();
    let o = swarm(tmp.path(), &[&args[..], &["--json"]].concat(), &[]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    let third = served() - stopped_at;
    eprintln!(
        "served before the stops {stopped_at}, resumed {}, last run {third}, in all {}",
        report["bytes_resumed"],
        served()
    );
    assert!(
        report["bytes_resumed"].as_u64().expect("resumed") + SLICE * WORKERS >= stopped_at,
        "what the first two runs received is kept: {report} (served before: {stopped_at})"
    );
    assert!(
        served() <= SIZE + 2 * SLICE * WORKERS,
        "the Hub served {} bytes in all for a file of {SIZE} (the last run {third})",
        served()
    );
    let snap = only_snapshot(&tmp.path().join("cache/models--org--m"));
    assert_eq!(sha256_file(&snap.join("model.safetensors")), repo.files["model.safetensors"]);
}
