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

#[test]
fn help_names_environment_variables_without_values() {
    // clap prints `[env: NAME=]` for an unset variable; we print `[env: NAME]`.
    let o = Command::new(env!("CARGO_BIN_EXE_swarm-dl"))
        .args(["get", "--help"])
        .env("SWARM_DL_MAX_WORKERS", "9")
        .output()
        .expect("run swarm-dl");
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(help.contains("[env: SWARM_DL_MAX_WORKERS]"), "{help}");
    assert!(!help.contains("=]") && !help.contains("=9"), "{help}");
}

#[test]
fn zero_workers_is_an_error_and_json_errors_are_json() {
    let o = swarm_dl(&["get", "org/m", "--max-workers", "0"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("0 is not in 1..=4096"));
    let o = swarm_dl(&["get", "org/m", "--max-workers", "0", "--json"]);
    assert_eq!(o.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON on stdout");
    assert_eq!(v["error"]["kind"], "usage");
    assert!(v["error"]["message"].as_str().is_some_and(|m| m.contains("--max-workers")), "{v}");
}

#[test]
fn a_garbage_swarm_key_is_one_plain_sentence() {
    let dir = tempfile::tempdir().expect("tmp");
    for (name, bytes) in [("text", &b"garbage\n"[..]), ("binary", &[0xff, 0xfe, 0x00, 0x9c][..])] {
        let key = dir.path().join(name);
        std::fs::write(&key, bytes).expect("write");
        let k = key.display().to_string();
        let o = Command::new(env!("CARGO_BIN_EXE_swarm-dl"))
            .args(["get", "org/m", "--swarm-key", &k, "--endpoint", "http://127.0.0.1:9", "--retries", "1"])
            .env("HF_HOME", dir.path().join("hf"))
            .output()
            .expect("run swarm-dl");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(
            err.trim(),
            format!(
                "error: cannot use swarm key '{k}': it is not a swarm key file (expected three lines: /key/swarm/psk/1.0.0/, /base16/, then 64 hex digits); make one with `swarm-dl keygen FILE`"
            )
        );
    }
}
