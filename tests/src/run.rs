//! The real `swarm-dl` binary, built once per test process, run with a clean environment.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

/// Path of the `swarm-dl` binary of this workspace, built with the tests' profile.
pub fn swarm_dl() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        let mut build =
            escargot::CargoBuild::new().manifest_path(manifest).package("swarm-dl").bin("swarm-dl").current_release();
        // A test process has the variables cargo sets for the crate it runs (CARGO_PKG_NAME, …).
        // ring's build script declares some of them (rerun-if-env-changed), so a nested build
        // that kept them would rebuild ring and everything above it (50 s) whenever it
        // alternates with a build from a shell.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_CRATE_", "CARGO_BIN_", "CARGO_PRIMARY_", "CARGO_TARGET_TMPDIR"]
                .iter()
                .any(|p| k.starts_with(p))
            {
                build = build.env_remove(k.as_ref());
            }
        }
        build.run().expect("build swarm-dl").path().to_path_buf()
    })
}

/// A `swarm-dl` command with no inherited Hugging Face settings: `HF_HOME` points into `home`.
///
/// `get` downloads from the Hub alone (`SWARM_DL_NO_SWARM=1`): tests run in parallel, and nodes
/// of unrelated tests would otherwise find each other by mDNS and trade chunks, blurring what
/// each test measures. Swarm tests use [`swarm_command`].
pub fn command(home: &Path) -> tokio::process::Command {
    let mut c = swarm_command(home);
    c.env("SWARM_DL_NO_SWARM", "1");
    c
}

/// Like [`command`], with the swarm on (give nodes `--no-mdns` and `--peer` to keep them apart).
pub fn swarm_command(home: &Path) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(swarm_dl());
    for (k, _) in std::env::vars() {
        if k.starts_with("HF_")
            || k.starts_with("HUGGING")
            || k.starts_with("SWARM_DL")
            || k == "TRANSFORMERS_OFFLINE"
            || k == "XDG_CONFIG_HOME"
        {
            c.env_remove(k);
        }
    }
    c.env("HF_HOME", home.join("hf-home")).env("HOME", home).kill_on_drop(true);
    c
}

/// Runs `swarm-dl args…` to completion.
pub async fn swarm(home: &Path, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut c = command(home);
    c.args(args);
    for (k, v) in envs {
        c.env(k, v);
    }
    c.output().await.expect("run swarm-dl")
}

/// stdout as a trimmed string.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

/// stderr as a string.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Like [`swarm_command`] (or [`command`] when `swarm` is false), run under `prefix` (for
/// example `ip netns exec NS`), with the same clean environment.
pub fn prefixed(prefix: &[String], home: &Path, swarm: bool) -> tokio::process::Command {
    let base = if swarm { swarm_command(home) } else { command(home) };
    let Some((first, rest)) = prefix.split_first() else {
        return base;
    };
    let mut c = tokio::process::Command::new(first);
    c.args(rest).arg(swarm_dl());
    for (k, v) in base.as_std().get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c.kill_on_drop(true);
    c
}
