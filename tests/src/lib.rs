//! # swarm-tests: helpers shared by swarm-dl's integration tests
//!
//! - [`fixture`]: deterministic repos on disk, and checks of a resulting cache.
//! - [`faults`]: an HTTP proxy that injects failures (429, 503 bursts, resets, truncation,
//!   ignored ranges, stalls, corrupted bytes) between a client and the Hub stand-in. It lives
//!   here, not in the product.
//! - [`hub`]: the Hub stand-in (`swarm_node::http`) started in-process, behind fault proxies.
//! - [`netns`]: a multi-host testbed (network namespaces, a bridge, tc) for discovery, partition
//!   and shaped-uplink tests; root only.
//! - [`node`]: `swarm-dl join` as a child process.
//! - [`run`]: the real `swarm-dl` binary (built once per test process) with a clean environment.
//!
//! Tests assert what a user would see: bytes on disk, hashes, exit codes, messages.

pub mod faults;
pub mod fixture;
pub mod hub;
pub mod netns;
pub mod node;
pub mod run;

/// True when running as root (needed to mount small or read-only file systems).
pub fn is_root() -> bool {
    // The workspace denies `unsafe`, so ask `id` rather than calling geteuid.
    std::process::Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// True under CI, where tests that need root or Python must not be skipped.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// The interpreter with the pip packages of the interop tests (`huggingface_hub`,
/// `transformers`, `datasets`): `SWARM_DL_PYTHON`, else `.venv/bin/python` at the repo root.
/// `None` (after saying so) when missing outside CI; under CI a missing one fails the test.
pub fn python() -> Option<std::path::PathBuf> {
    let p = std::env::var_os("SWARM_DL_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"));
    if !p.is_file() {
        let why = "huggingface_hub's Python (SWARM_DL_PYTHON or .venv) is not installed; scripts/test installs it";
        assert!(!in_ci(), "required under CI: {why}");
        eprintln!("SKIPPED: {why}");
        return None;
    }
    Some(p)
}

/// Skips a test (returns from it) with a clear message, except under CI where it fails.
#[macro_export]
macro_rules! require {
    ($cond:expr, $why:expr) => {
        if !$cond {
            if $crate::in_ci() {
                panic!("required under CI: {}", $why);
            }
            eprintln!("SKIPPED: {}", $why);
            return;
        }
    };
}
