//! The node's boundary, attacked the way the security review did it: another local user
//! (`nobody`, through `setpriv`), a forged state file in a shared cache, a tokenless peer after a
//! gated repo, a Hub that answers path-traversing revisions and escape sequences, and a node
//! with the wrong swarm key. Each test failed on the code before the fix (see the comments).
//! Root only for the tests that need a second user; CI runs them as root.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;
use swarm_node::http::HubServerConfig;
use swarm_tests::fixture::{PlainRepo, assert_local_dir, assert_snapshot, only_snapshot, walk_files};
use swarm_tests::hub::TestHub;
use swarm_tests::node::JoinNode;
use swarm_tests::require;
use swarm_tests::run::{stderr, stdout, swarm, swarm_command};
use tokio::io::AsyncBufReadExt as _;

const NOBODY: u32 = 65534;

fn model(root: &Path) -> PlainRepo {
    PlainRepo::new(root, "", "org/model").file("config.json", br#"{"hidden": 8}"#).random(
        "model.safetensors",
        5,
        (6 << 20) + 11,
    )
}

fn have(cmd: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn can_switch_user() -> bool {
    swarm_tests::is_root() && have("setpriv") && Path::new("/usr/bin/python3").exists()
}

/// A temp dir that `nobody` can enter (tempfile makes them 0700).
fn shared_tmp() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("tmp");
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    tmp
}

/// `swarm-dl` run as `nobody`, with the swarm on and the tests' clean environment. It runs a
/// copy of the binary in `tmp`: the checkout may sit where `nobody` cannot enter.
fn as_nobody(tmp: &Path) -> tokio::process::Command {
    let bin = tmp.join("swarm-dl");
    if !bin.exists() {
        std::fs::copy(swarm_tests::run::swarm_dl(), &bin).expect("copy the binary");
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let base = swarm_command(tmp);
    let mut c = tokio::process::Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups"]).arg(&bin).kill_on_drop(true);
    for (k, v) in base.as_std().get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c
}

/// Sends one hand-made line to a control socket as `nobody`, and returns what came back.
async fn raw_request_as_nobody(socket: &Path, line: &str) -> String {
    const CLIENT: &str = "import socket, sys\n\
        s = socket.socket(socket.AF_UNIX)\n\
        s.connect(sys.argv[1])\n\
        s.sendall(sys.argv[2].encode() + b'\\n')\n\
        print(s.makefile().read())\n";
    let o = tokio::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c", CLIENT])
        .arg(socket)
        .arg(line)
        .output()
        .await
        .expect("python3");
    assert!(o.status.success(), "raw client: {}", stderr(&o));
    stdout(&o)
}

fn get_request(endpoint: &str, extra: &str) -> String {
    format!(
        r#"{{"op":"get","repo_type":"model","repo_id":"org/model","revision":"main","include":[],"exclude":[],"endpoint":"{endpoint}","token":null,"retries":1,"read_timeout_ms":5000,"max_workers":4,"max_download_rate":null{extra}}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_user_reads_a_root_nodes_status_but_cannot_make_it_write_anything() {
    // Before: the control API was HTTP on a loopback port with no authentication. `nobody`
    // found it with `ss -ltn`, POSTed a /v1/get naming a root-only --local-dir and its own Hub,
    // and the root node replaced an existing 0600 authorized_keys with the attacker's bytes.
    require!(can_switch_user(), "needs root, setpriv and /usr/bin/python3 to act as another user");
    let tmp = shared_tmp();
    model(&tmp.path().join("hub"));
    let hub = TestHub::start(&tmp.path().join("hub")).await;
    let cache = tmp.path().join("cache");
    let node = JoinNode::loopback(tmp.path(), &cache, &[]).await;
    let socket = cache.join(".locks/swarm-dl/control.sock");
    assert_eq!(std::fs::metadata(cache.join(".locks/swarm-dl")).expect("state dir").mode() & 0o777, 0o755);

    let root_only = tmp.path().join("root-only");
    std::fs::create_dir(&root_only).expect("mkdir");
    std::fs::set_permissions(&root_only, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let keys = root_only.join("authorized_keys");
    std::fs::write(&keys, "ssh-ed25519 AAAA original\n").expect("write");
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o600)).expect("chmod");

    // Status is for everyone.
    let o = as_nobody(tmp.path()).args(["status", "--json", "--cache-dir"]).arg(&cache).output().await.expect("status");
    assert!(o.status.success(), "nobody may read status: {}", stderr(&o));
    let st: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(st["peer_id"], node.peer_id.as_str());

    // A download through the node is not.
    let o = as_nobody(tmp.path())
        .args(["get", "org/model", "--no-mdns", "--endpoint", &hub.endpoint, "--cache-dir"])
        .arg(&cache)
        .output()
        .await
        .expect("get");
    assert!(!o.status.success());
    assert!(stderr(&o).contains("uid 65534 may only read this node's status"), "{}", stderr(&o));

    // Nor a hand-made request naming a local dir, nor a plain one.
    let answer = raw_request_as_nobody(
        &socket,
        &get_request(&hub.endpoint, &format!(r#","local_dir":"{}""#, root_only.display())),
    )
    .await;
    assert!(answer.contains("error") && answer.contains("unknown field"), "{answer}");
    let answer = raw_request_as_nobody(&socket, &get_request(&hub.endpoint, "")).await;
    assert!(answer.contains("may only read"), "{answer}");
    let answer = raw_request_as_nobody(&socket, "GET /v1/status HTTP/1.1\r\nHost: evil.example\r\n").await;
    assert!(answer.contains("malformed request"), "HTTP is not spoken here: {answer}");

    assert_eq!(std::fs::read_to_string(&keys).expect("read"), "ssh-ed25519 AAAA original\n");
    assert_eq!(walk_files(&root_only).len(), 1, "nothing written beside it");
    assert!(!cache.join("models--org--model").exists(), "the node downloaded nothing for nobody");
    assert_eq!(hub.stats().api_requests.load(Relaxed), 0, "nor asked the Hub anything");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_group_member_downloads_through_the_node_and_writes_its_local_dir_itself() {
    require!(can_switch_user(), "needs root, setpriv and /usr/bin/python3 to act as another user");
    let tmp = shared_tmp();
    let repo = model(&tmp.path().join("hub"));
    let hub = TestHub::start(&tmp.path().join("hub")).await;
    let cache = tmp.path().join("cache");
    let _node =
        JoinNode::loopback(tmp.path(), &cache, &["--control-group", &NOBODY.to_string(), "--endpoint", &hub.endpoint])
            .await;
    let mine = tmp.path().join("nobody-dir");
    std::fs::create_dir(&mine).expect("mkdir");
    std::os::unix::fs::chown(&mine, Some(NOBODY), Some(NOBODY)).expect("chown");

    let o = as_nobody(tmp.path())
        .args(["get", "org/model", "--json", "--no-mdns", "--endpoint", &hub.endpoint, "--local-dir"])
        .arg(&mine)
        .env("HF_HUB_CACHE", &cache)
        .output()
        .await
        .expect("get");
    assert!(o.status.success(), "{}", stderr(&o));
    let out: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(out["path"], mine.display().to_string());
    assert_local_dir(&mine, &repo.files);
    // The node wrote its cache; the caller wrote its own folder.
    for f in walk_files(&mine) {
        assert_eq!(std::fs::metadata(&f).expect("meta").uid(), NOBODY, "{} written by the caller", f.display());
    }
    for f in walk_files(&cache.join("models--org--model/blobs")) {
        assert_eq!(std::fs::metadata(&f).expect("meta").uid(), 0, "{} written by the node", f.display());
    }

    // A member cannot point the node at another Hub (it could fill the shared cache with anything).
    let o = as_nobody(tmp.path())
        .args(["get", "org/model", "--no-mdns", "--endpoint", "http://127.0.0.1:9", "--cache-dir"])
        .arg(&cache)
        .output()
        .await
        .expect("get");
    assert!(!o.status.success());
    assert!(stderr(&o).contains(&format!("from {} only", hub.endpoint)), "{}", stderr(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_listens_on_no_tcp_port_but_its_peer_port_and_its_loopback_hub_endpoint() {
    // Before: `join --http 0.0.0.0:0` put the unauthenticated control API on the network,
    // although its help said "loopback"; by default it sat on a loopback TCP port. Now the only
    // other port is the Hub endpoint, on loopback, and `--hub-listen off` closes it.
    require!(swarm_tests::is_root() && have("ss"), "needs root and ss to see the node's sockets");
    let tmp = tempfile::tempdir().expect("tmp");
    let listeners = |pid: u32| -> Vec<String> {
        let ss = std::process::Command::new("ss").args(["-H", "-ltnp"]).output().expect("ss");
        String::from_utf8_lossy(&ss.stdout)
            .lines()
            .filter(|l| l.contains(&format!("pid={pid},")))
            .map(str::to_owned)
            .collect()
    };
    let node = JoinNode::loopback(tmp.path(), &tmp.path().join("cache"), &[]).await;
    let mine = listeners(node.child.id().expect("pid"));
    let port = node.addr().split('/').nth(4).expect("port").to_owned();
    let hub = node.hub_endpoint.as_deref().expect("a Hub endpoint").trim_start_matches("http://").to_owned();
    assert!(hub.starts_with("127.0.0.1:"), "the Hub endpoint is on loopback: {hub}");
    assert_eq!(mine.len(), 2, "the peer port and the Hub endpoint: {mine:?}");
    assert!(mine.iter().any(|l| l.contains(&format!("127.0.0.1:{port} "))), "{mine:?} has the peer listener {port}");
    assert!(mine.iter().any(|l| l.contains(&format!("{hub} "))), "{mine:?} has the Hub endpoint {hub}");
    let off = JoinNode::loopback(tmp.path(), &tmp.path().join("cache-off"), &["--hub-listen", "off"]).await;
    let mine = listeners(off.child.id().expect("pid"));
    assert_eq!(mine.len(), 1, "--hub-listen off: the peer port alone: {mine:?}");
    let o = swarm(
        tmp.path(),
        &["join", "--cache-dir", &tmp.path().join("c2").display().to_string(), "--http", "0.0.0.0:0"],
        &[],
    )
    .await;
    assert!(!o.status.success(), "--http no longer exists");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_a_state_dir_that_others_can_write() {
    // Its identity, its saved chunk manifests (which it signs without hashing again) and its
    // socket live there: whoever can write it could make the node sign false records.
    let tmp = tempfile::tempdir().expect("tmp");
    let cache = tmp.path().join("cache");
    let state = cache.join(".locks/swarm-dl");
    std::fs::create_dir_all(&state).expect("mkdir");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let o = swarm(tmp.path(), &["join", "--no-mdns", "--cache-dir", &cache.display().to_string()], &[]).await;
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("refusing to run a node on cache") && err.contains("can be written by other users"), "{err}");
    assert!(err.contains("chmod go-w"), "says what to do: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_node_file_in_a_shared_cache_never_receives_the_token() {
    // Before: in a cache others can write (1777), `get --token` trusted whatever
    // .locks/swarm-dl/node.json said and sent the token to the address it named.
    require!(can_switch_user(), "needs root, setpriv and /usr/bin/python3 to act as another user");
    let tmp = shared_tmp();
    let repo = model(&tmp.path().join("hub"));
    let mut cfg = HubServerConfig::loopback(tmp.path().join("hub"));
    cfg.tokens = vec!["hf_secret_token".into()];
    let hub = TestHub::with(cfg).await;
    let shared = tmp.path().join("shared");
    std::fs::create_dir(&shared).expect("mkdir");
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).expect("chmod");

    // The attacker plants a node: a listening socket and a node.json naming its own live pid.
    const FORGER: &str = "import json, os, socket, sys\n\
        state = os.path.join(sys.argv[1], '.locks', 'swarm-dl')\n\
        os.makedirs(state, mode=0o777)\n\
        sock = os.path.join(state, 'control.sock')\n\
        s = socket.socket(socket.AF_UNIX)\n\
        s.bind(sock)\n\
        os.chmod(sock, 0o777)\n\
        s.listen(8)\n\
        json.dump({'pid': os.getpid(), 'socket': sock, 'peer_id': 'x', 'listen': []}, open(os.path.join(state, 'node.json'), 'w'))\n\
        print('ready', flush=True)\n\
        s.settimeout(60)\n\
        while True:\n\
        \x20   c, _ = s.accept()\n\
        \x20   open(os.path.join(sys.argv[1], 'stolen'), 'ab').write(c.recv(65536) + b'\\n')\n\
        \x20   c.close()\n";
    let mut forger = tokio::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c", FORGER])
        .arg(&shared)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("forger");
    let mut lines = tokio::io::BufReader::new(forger.stdout.take().expect("stdout")).lines();
    let ready = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await.expect("forger ready");
    assert_eq!(ready.expect("read").as_deref(), Some("ready"));

    let o = swarm_command(tmp.path())
        .args([
            "get",
            "org/model",
            "--no-mdns",
            "--token",
            "hf_secret_token",
            "--endpoint",
            &hub.endpoint,
            "--cache-dir",
        ])
        .arg(&shared)
        .output()
        .await
        .expect("get");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("another user may have planted it"), "says why it did not delegate: {}", stderr(&o));
    assert_snapshot(&only_snapshot(&shared.join("models--org--model")), &repo.files);
    let stolen = std::fs::read(shared.join("stolen")).unwrap_or_default();
    assert!(stolen.is_empty(), "nothing reached the forged node: {}", String::from_utf8_lossy(&stolen));
    let _ = forger.kill().await;
}

/// A gated repo behind a Hub that opens it to `hf_good` only.
async fn gated_hub(tmp: &Path) -> (TestHub, PlainRepo) {
    let repo = model(&tmp.join("hub"));
    let mut cfg = HubServerConfig::loopback(tmp.join("hub"));
    cfg.gated = vec!["org/model".into()];
    cfg.tokens = vec!["hf_good".into()];
    (TestHub::with(cfg).await, repo)
}

async fn get_via(home: &Path, hub: &TestHub, cache: &Path, extra: &[&str]) -> std::process::Output {
    let mut c = swarm_command(home);
    c.args(["get", "org/model", "--json", "--no-mdns", "--endpoint", &hub.endpoint, "--cache-dir"]).arg(cache);
    c.args(extra).output().await.expect("get")
}

fn json(o: &std::process::Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", stderr(o));
    serde_json::from_str(&stdout(o)).expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gated_repo_never_reaches_an_open_swarm_and_is_shared_within_a_private_one() {
    // Before: a node with no token ran `get` on a gated repo in an open swarm and got every byte
    // from a peer ("0 B from the Hub, 19.07 MiB from peers"); with --no-swarm it failed.
    let tmp = tempfile::tempdir().expect("tmp");
    let (hub, repo) = gated_hub(tmp.path()).await;
    let holder = tmp.path().join("holder");
    json(&get_via(tmp.path(), &hub, &holder, &["--no-swarm", "--token", "hf_good"]).await);
    let access =
        std::fs::read_to_string(holder.join(".locks/swarm-dl/access/models--org--model.json")).expect("access");
    assert!(access.contains(r#""gated":true"#), "the holder recorded what the Hub said: {access}");

    let mut open = JoinNode::loopback(tmp.path(), &holder, &[]).await;
    let st = open.status(tmp.path()).await;
    assert_eq!(st["files_held"], 0, "an open swarm is offered nothing of a gated repo: {st}");
    let o = get_via(tmp.path(), &hub, &tmp.path().join("tokenless"), &["--peer", open.addr()]).await;
    assert!(!o.status.success());
    assert!(stderr(&o).contains("is gated"), "{}", stderr(&o));
    assert!(walk_files(&tmp.path().join("tokenless/models--org--model/blobs")).is_empty(), "no byte of it");
    // With a token of its own, the Hub serves it, and the open swarm still carries nothing.
    let out = json(
        &get_via(tmp.path(), &hub, &tmp.path().join("tokened"), &["--peer", open.addr(), "--token", "hf_good"]).await,
    );
    assert_eq!(out["bytes_from_peers"], 0, "{out}");
    assert_eq!(out["bytes_from_hub"], out["bytes"], "{out}");
    let st = open.status(tmp.path()).await;
    assert_eq!(st["bytes_out"], 0, "{st}");
    open.kill().await;
    let _ = open.child.wait().await;

    // A private swarm is its members' trust domain: they share it.
    let key = tmp.path().join("swarm.key");
    let o = swarm(tmp.path(), &["keygen", &key.display().to_string()], &[]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let key = key.display().to_string();
    let private = JoinNode::loopback(tmp.path(), &holder, &["--swarm-key", &key]).await;
    let member = tmp.path().join("member");
    let out = json(
        &get_via(tmp.path(), &hub, &member, &["--peer", private.addr(), "--swarm-key", &key, "--token", "hf_good"])
            .await,
    );
    let (bytes, peers) = (out["bytes"].as_u64().expect("bytes"), out["bytes_from_peers"].as_u64().expect("peers"));
    assert!(peers as f64 >= 0.99 * bytes as f64, "from the member: {out}");
    assert_snapshot(&only_snapshot(&member.join("models--org--model")), &repo.files);
}

/// A Hub that answers anything: every revision resolves, and its listing holds a file whose
/// name clears the screen.
async fn lying_hub() -> (String, Arc<AtomicU64>) {
    let asked = Arc::new(AtomicU64::new(0));
    let count = asked.clone();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let count = count.clone();
        async move {
            count.fetch_add(1, Relaxed);
            if uri.path().contains("/tree/") {
                axum::Json(serde_json::json!([
                    {"type": "file", "oid": "b".repeat(40), "size": 3, "path": "\u{1b}[2J\u{1b}]0;pwned\u{7}evil.txt"}
                ]))
            } else {
                axum::Json(
                    serde_json::json!({"id": "org/model", "sha": "a".repeat(40), "private": false, "gated": false}),
                )
            }
        }
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(l, app).await });
    (format!("http://{addr}"), asked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revisions_and_names_from_a_lying_hub_neither_escape_the_cache_nor_reach_the_terminal() {
    // Before: `--revision '../../../../X'`, answered by the Hub, wrote refs/ outside the cache,
    // and names were echoed raw to the terminal.
    let tmp = tempfile::tempdir().expect("tmp");
    let (endpoint, asked) = lying_hub().await;
    let cache = tmp.path().join("a/b/c/cache");
    for rev in ["../../../../X", "main\u{1b}[2J", "refs/../../X"] {
        let o = swarm(
            tmp.path(),
            &[
                "get",
                "org/model",
                "--revision",
                rev,
                "--endpoint",
                &endpoint,
                "--cache-dir",
                &cache.display().to_string(),
            ],
            &[],
        )
        .await;
        assert!(!o.status.success());
        let err = stderr(&o);
        assert!(err.contains("invalid revision"), "{err}");
        assert!(!err.contains('\u{1b}'), "no escape byte reaches the terminal: {err:?}");
    }
    assert_eq!(asked.load(Relaxed), 0, "refused before asking the Hub");
    assert!(!tmp.path().join("X").exists() && !tmp.path().join("a/X").exists(), "nothing written outside the cache");

    let o = swarm(
        tmp.path(),
        &["get", "org/model", "--endpoint", &endpoint, "--cache-dir", &cache.display().to_string()],
        &[],
    )
    .await;
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("unsafe path in repo listing"), "{err}");
    assert!(!err.contains('\u{1b}') && !err.contains('\u{7}'), "escaped: {err:?}");
    assert!(err.contains("\\u{1b}[2J"), "shown escaped: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swarm_key_mismatch_is_explained_in_the_log_and_counted() {
    // Before: a node whose --swarm-key differed from its --peer's connected to nothing and said
    // nothing, even at `info`.
    let tmp = tempfile::tempdir().expect("tmp");
    let keys: Vec<String> = ["k1", "k2"]
        .iter()
        .map(|k| {
            let p = tmp.path().join(k).display().to_string();
            assert!(
                std::process::Command::new(swarm_tests::run::swarm_dl())
                    .args(["keygen", &p])
                    .status()
                    .expect("keygen")
                    .success()
            );
            p
        })
        .collect();
    let seed = JoinNode::loopback(tmp.path(), &tmp.path().join("a"), &["--swarm-key", &keys[0]]).await;
    let cache_b = tmp.path().join("b");
    let mut b = swarm_command(tmp.path());
    b.args([
        "join",
        "--json",
        "--no-mdns",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--swarm-key",
        &keys[1],
        "--peer",
        seed.addr(),
        "--cache-dir",
    ])
    .arg(&cache_b)
    .env("SWARM_DL_LOG", "warn")
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut child = b.spawn().expect("join");
    let mut lines = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(l)) = lines.next_line().await {
            if l.contains("handshake failed (different --swarm-key, or none?)") {
                return Some(l);
            }
        }
        None
    })
    .await
    .expect("warned within 30 s")
    .expect("the warning");
    assert!(found.contains("could not connect to /ip4/127.0.0.1/tcp/"), "{found}");
    assert!(!found.contains('\u{1b}'), "no ANSI codes when stderr is not a terminal: {found:?}");
    // The dial can fail before the node's control socket is up: wait for it.
    let cache = cache_b.display().to_string();
    let o = swarm(tmp.path(), &["status", "--json", "--wait", "10", "--cache-dir", &cache], &[]).await;
    let st: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("status");
    assert!(st["handshake_failures"].as_u64().expect("count") >= 1, "{st}");
    assert!(st["peers"].as_array().expect("peers").is_empty(), "{st}");
    let _ = child.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_finish_a_handshake_cannot_use_up_a_nodes_descriptors() {
    // Before: the node took every inbound connection and held it for the 10 s handshake timeout,
    // with no limit, so anyone who reached the peer port could use up its open files.
    const FLOOD: usize = 300;
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = model(&tmp.path().join("hub"));
    let hub = TestHub::start(&tmp.path().join("hub")).await;
    let cache_a = tmp.path().join("a");
    let a = JoinNode::loopback(tmp.path(), &cache_a, &[]).await;
    json(&get_via(tmp.path(), &hub, &cache_a, &[]).await);
    let pid = a.child.id().expect("pid");
    let descriptors = || std::fs::read_dir(format!("/proc/{pid}/fd")).expect("the node's fds").count();
    let before = descriptors();
    let port: u16 = a.addr().split('/').nth(4).and_then(|p| p.parse().ok()).expect("tcp port in the address");
    let mut flood = Vec::new();
    for _ in 0..FLOOD {
        flood.push(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect"));
    }
    // The connections beyond the handshake limit are closed at once, long before the timeout.
    let limit = swarm_node::swarm::PeerLimits::MAX_PENDING_INCOMING as usize;
    // End of stream or reset: closed by the node. Bytes or nothing yet: still open.
    let closed = |flood: &[tokio::net::TcpStream]| {
        let mut byte = [0u8; 1];
        flood
            .iter()
            .filter(|s| match s.try_read(&mut byte) {
                Ok(n) => n == 0,
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            })
            .count()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while closed(&flood) < FLOOD - limit && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(closed(&flood) >= FLOOD - limit, "{} of {FLOOD} closed within 5 s", closed(&flood));
    let held = descriptors().saturating_sub(before);
    assert!(held <= limit, "the node holds {held} more descriptors than before the flood");
    // Once the flood is gone, a real peer connects and gets the repo from the node.
    drop(flood);
    let cache_b = tmp.path().join("b");
    let out = json(&get_via(tmp.path(), &hub, &cache_b, &["--peer", a.addr()]).await);
    assert_eq!(out["bytes_from_peers"], out["bytes"], "{out}");
    assert_snapshot(&only_snapshot(&cache_b.join("models--org--model")), &repo.files);
}
