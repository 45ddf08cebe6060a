//! The binary's argument handling: what a user sees before any network or disk work.

use std::process::Command;

fn swarm_dl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_swarm-dl")).args(args).output().expect("run swarm-dl")
}

#[test]
fn version_and_help() {
    let o = swarm_dl(&["--version"]);
    assert!(o.status.success());
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), format!("swarm-dl {}", env!("CARGO_PKG_VERSION")));
    let o = swarm_dl(&["--help"]);
    let help = String::from_utf8_lossy(&o.stdout);
    for cmd in ["get", "cache", "hub"] {
        assert!(help.contains(cmd), "{help}");
    }
}

#[test]
fn bad_arguments_are_refused_before_any_work() {
    let o = swarm_dl(&["get", "org/m", "--max-download-rate", "fast", "--endpoint", "http://127.0.0.1:9"]);
    assert!(!o.status.success());
    assert_eq!(
        String::from_utf8_lossy(&o.stderr).trim(),
        "error: unknown unit 'fast' in rate 'fast' (use K, M, G, Ki, Mi or Gi)"
    );
    let o = swarm_dl(&["get", "org/m", "--repo-type", "kernel"]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("unknown repo type 'kernel' (expected model, dataset or space)")
    );
    let o = swarm_dl(&["get", "org/m", "--local-dir", "a", "--cache-dir", "b"]);
    assert_eq!(o.status.code(), Some(2), "usage errors exit 2");
    let o = swarm_dl(&["get", "org/m", "--retries", "0"]);
    assert_eq!(o.status.code(), Some(2));
}
