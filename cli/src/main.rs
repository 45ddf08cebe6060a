//! # swarm-dl: the command line
//!
//! Parses arguments ([`args`]), resolves them once into settings ([`settings`]), runs the
//! command on `swarm-node`, prints the result on stdout and maps every error to one sentence
//! on stderr and an exit code. Logs go to stderr through `tracing` (`SWARM_DL_LOG`, default
//! `warn`); stdout carries results only.

mod args;
mod commands;
mod config;
mod demo;
mod output;
mod progress;
mod settings;
mod target;

use std::process::ExitCode;

fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let wants_json = argv.iter().any(|a| a == "--json");
    // The config file comes first: its values become the defaults clap parses against.
    let command =
        config::load(&argv).and_then(|file| config::apply(<args::Cli as clap::CommandFactory>::command(), file));
    let command = match command {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            if wants_json {
                let _ = output::line(format_args!("{}", json_error("config", &e.to_string())));
            }
            return ExitCode::FAILURE;
        }
    };
    let parsed =
        command.try_get_matches_from(&argv).and_then(|m| <args::Cli as clap::FromArgMatches>::from_arg_matches(&m));
    let cli = match parsed {
        Ok(cli) => cli,
        Err(e) => {
            // With --json, a usage error is JSON on stdout too (help and version are not errors).
            if e.use_stderr() && wants_json {
                let first = e.to_string().lines().next().unwrap_or_default().trim_start_matches("error: ").to_owned();
                let _ = output::line(format_args!("{}", json_error("usage", &first)));
            }
            e.exit()
        }
    };
    let json = cli.command.json();
    swarm_node::store::direct::set_enabled(!cli.page_cache);
    let filter = tracing_subscriber::EnvFilter::try_from_env("SWARM_DL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,libp2p_kad=error,libp2p_mdns=error"));
    // No ANSI codes in logs that go to a file or a pipe (journald, CI logs).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(ansi)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli.command)) {
        Ok(code) => code,
        // The reader of our output went away: nothing more to say, and nobody to say it to.
        Err(e) if output::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            // One sentence: the outermost context, then its causes on the same line.
            let mut msg = e.to_string();
            for cause in e.chain().skip(1) {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg = format!("{msg}: {c}");
                }
            }
            eprintln!("error: {msg}");
            if json {
                let _ = output::line(format_args!("{}", json_error(commands::error_kind(&e), &msg)));
            }
            ExitCode::FAILURE
        }
    }
}

/// `{"error": {"kind": …, "message": …}}`, what `--json` prints on failure.
fn json_error(kind: &str, message: &str) -> serde_json::Value {
    serde_json::json!({ "error": { "kind": kind, "message": message } })
}
