//! `swarm-dl join` as a child process, for swarm tests.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::io::AsyncBufReadExt as _;

/// A running `swarm-dl join` (killed when dropped).
#[derive(Debug)]
pub struct JoinNode {
    /// The process.
    pub child: tokio::process::Child,
    /// Its peer id.
    pub peer_id: String,
    /// Its listen addresses, with `/p2p/<id>`.
    pub listen: Vec<String>,
    /// Its cache dir.
    pub cache: PathBuf,
    /// Its Hub endpoint (`http://…`), on an ephemeral port unless `args` chose one.
    pub hub_endpoint: Option<String>,
    prefix: Vec<String>,
}

impl JoinNode {
    /// Starts `swarm-dl join --cache-dir cache --json` plus `args` under `prefix` (e.g. `ip netns
    /// exec NS`), and waits for its ready line.
    pub async fn start_with(prefix: &[String], home: &Path, cache: &Path, args: &[&str]) -> Self {
        let mut c = crate::run::prefixed(prefix, home, true);
        c.args(["join", "--cache-dir", &cache.display().to_string(), "--json"]).args(args);
        if !args.contains(&"--hub-listen") {
            // Never the fixed default port: tests run side by side.
            c.args(["--hub-listen", "127.0.0.1:0"]);
        }
        c.stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = c.spawn().expect("spawn join");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(std::time::Duration::from_secs(60), lines.next_line())
            .await
            .expect("join is ready within 60 s")
            .expect("read join's stdout")
            .expect("join printed its ready line");
        let v: serde_json::Value = serde_json::from_str(&line).expect("ready line is JSON");
        let listen =
            v["listen"].as_array().expect("listen").iter().map(|a| a.as_str().expect("addr").to_owned()).collect();
        let peer_id = v["peer_id"].as_str().expect("peer_id").to_owned();
        let hub_endpoint = v["hub_endpoint"].as_str().map(str::to_owned);
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self { child, peer_id, listen, cache: cache.to_path_buf(), hub_endpoint, prefix: prefix.to_vec() }
    }

    /// Starts a node on 127.0.0.1 with mDNS off.
    pub async fn loopback(home: &Path, cache: &Path, args: &[&str]) -> Self {
        let mut all = vec!["--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0"];
        all.extend_from_slice(args);
        Self::start_with(&[], home, cache, &all).await
    }

    /// Its first address.
    pub fn addr(&self) -> &str {
        &self.listen[0]
    }

    /// `swarm-dl status --json` of this node (run where it runs).
    pub async fn status(&self, home: &Path) -> serde_json::Value {
        let mut c = crate::run::prefixed(&self.prefix, home, true);
        let o = c.args(["status", "--json", "--cache-dir"]).arg(&self.cache).output().await.expect("run status");
        assert!(o.status.success(), "status: {}", crate::run::stderr(&o));
        serde_json::from_slice(&o.stdout).expect("status JSON")
    }

    /// Kills it at once (SIGKILL).
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}
