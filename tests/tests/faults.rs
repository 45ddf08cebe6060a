//! The Hub client and fetch pipeline against the stand-in behind a fault-injecting proxy.
//! Every case must end with a correct cache (or, for failures that cannot be retried away, a
//! clear error and nothing wrong in `blobs/`).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use swarm_node::cache::HubCache;
use swarm_node::fetch::progress::Progress;
use swarm_node::fetch::{FetchError, GetOutcome, GetRequest, get};
use swarm_node::hub::{HubClient, HubConfig, RepoRef, RetryPolicy};
use swarm_protocol::repo::{RepoId, RepoType};
use swarm_tests::faults::Fault;
use swarm_tests::fixture::{PlainRepo, assert_snapshot, only_snapshot, partial_files, random_bytes};
use swarm_tests::hub::TestHub;

const MODEL: &str = "org/model";
const SIZE: u64 = (18 << 20) + 12345; // five chunks, the last one short

fn repo(root: &Path) -> PlainRepo {
    PlainRepo::new(root, "", MODEL)
        .file("config.json", br#"{"model_type": "test"}"#)
        .file("sub/notes.txt", &random_bytes(9, 3000))
        .random("model.safetensors", 1, SIZE)
}

async fn fetch(hub: &TestHub, cache: &Path, attempts: u32) -> Result<GetOutcome, FetchError> {
    let client = HubClient::new(HubConfig {
        endpoint: hub.endpoint.clone(),
        token: None,
        retry: RetryPolicy { max_attempts: attempts, base: Duration::from_millis(20), cap: Duration::from_millis(200) },
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_secs(1),
    })
    .expect("client");
    let req = GetRequest {
        repo: RepoRef { id: RepoId::parse(MODEL).expect("id"), ty: RepoType::Model },
        named: false,
        force: false,
        revision: "main".into(),
        include: vec![],
        exclude: vec![],
        cache: HubCache::new(cache),
        local_dir: None,
        max_workers: 4,
        max_download_rate: None,
        node: None,
        peer_wait: Duration::ZERO,

        lock_held: None,
    };
    get(&req, Some(client), Arc::new(Progress::default())).await
}

/// Runs a download with `faults` queued and checks the cache is exactly the repo.
async fn survives(faults: &[(&str, Fault)]) -> (TestHub, tempfile::TempDir, GetOutcome) {
    let tmp = tempfile::tempdir().expect("tmp");
    let r = repo(&tmp.path().join("hub"));
    let hub = TestHub::start(&tmp.path().join("hub")).await;
    for (prefix, f) in faults {
        hub.plan.push(prefix, f.clone());
    }
    let cache = tmp.path().join("cache");
    let out = fetch(&hub, &cache, 8).await.expect("download survives the faults");
    assert_eq!(hub.plan.pending(), 0, "every fault was met");
    assert_eq!(out.files, 3);
    assert_snapshot(&only_snapshot(&cache.join("models--org--model")), &r.files);
    assert!(partial_files(&cache.join("models--org--model")).is_empty());
    (hub, tmp, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_metadata_waits_for_retry_after() {
    let start = Instant::now();
    survives(&[("/api/", Fault::Status(429, vec![("retry-after", "1".into())]))]).await;
    // Retry-After: 1 means "not before one second" (we add one, like huggingface_hub).
    assert!(start.elapsed() >= Duration::from_secs(2), "the server's hint was honoured");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ratelimit_header_on_data_is_honoured() {
    let start = Instant::now();
    survives(&[("/lfs/", Fault::Status(429, vec![("ratelimit", "\"resolvers\";r=0;t=1".into())]))]).await;
    assert!(start.elapsed() >= Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_503s_on_every_kind_of_request() {
    let mut faults = Vec::new();
    for prefix in ["/api/", "/org/model/resolve/", "/lfs/"] {
        for _ in 0..4 {
            faults.push((prefix, Fault::Status(503, vec![])));
        }
    }
    survives(&faults).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_mid_body_resumes_the_range() {
    survives(&[("/lfs/", Fault::ResetAfter(1 << 20)), ("/org/model/resolve/", Fault::ResetAfter(1000))]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_body_is_noticed_and_completed() {
    survives(&[("/lfs/", Fault::Truncate(100_000)), ("/org/model/resolve/", Fault::Truncate(10))]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_ignoring_range_answers_200() {
    survives(&[("/lfs/", Fault::IgnoreRange), ("/lfs/", Fault::IgnoreRange)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_connection_times_out_and_resumes() {
    survives(&[("/lfs/", Fault::StallAfter(500_000))]).await;
}

/// A node alone gets the endgame too: the last chunk, on a connection that trickles (64 KiB/s,
/// never silent long enough to time out), is asked of the Hub again on another connection, and
/// the first copy to arrive whole is the one written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_connection_at_the_end_is_overtaken_by_a_second_one() {
    let (_hub, _tmp, out) = survives(&[("/lfs/", Fault::Trickle(64 * 1024))]).await;
    assert_eq!(out.chunks_duplicated, 1, "{out:?}");
    assert_eq!(out.chunks_taken_over, 0, "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_bytes_are_caught_and_fetched_again() {
    survives(&[("/lfs/", Fault::Corrupt)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_wrong_twice_fail_clearly_and_never_become_a_blob() {
    let tmp = tempfile::tempdir().expect("tmp");
    repo(&tmp.path().join("hub"));
    let hub = TestHub::start(&tmp.path().join("hub")).await;
    hub.plan.push_n("/lfs/", Fault::Corrupt, 64);
    let cache = tmp.path().join("cache");
    let err = fetch(&hub, &cache, 4).await.expect_err("must fail");
    assert!(matches!(err, FetchError::Integrity { .. }), "{err}");
    assert!(err.to_string().contains("model.safetensors") && err.to_string().contains("did not match"), "{err}");
    let blobs = cache.join("models--org--model/blobs");
    let sha = swarm_tests::fixture::sha256_file(&tmp.path().join("hub/org/model/model.safetensors"));
    assert!(!blobs.join(&sha).exists(), "a wrong file never becomes a blob");
    // The small files were not affected and are kept.
    let snap = only_snapshot(&cache.join("models--org--model"));
    assert!(snap.join("config.json").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_that_stays_down_gives_up_with_one_message() {
    let tmp = tempfile::tempdir().expect("tmp");
    repo(&tmp.path().join("hub"));
    let hub = TestHub::start(&tmp.path().join("hub")).await;
    hub.plan.push_n("/lfs/", Fault::Status(503, vec![]), 1000);
    let cache = tmp.path().join("cache");
    let err = fetch(&hub, &cache, 3).await.expect_err("must give up");
    let msg = err.to_string();
    assert!(msg.starts_with("cannot reach") && msg.contains("after 3 attempts") && msg.contains("503"), "{msg}");
    assert!(hub.stats().api_requests.load(Relaxed) > 0);
}
