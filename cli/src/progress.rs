//! Progress on a terminal: a total bar and one bar per file in flight, redrawn from the
//! node's counters ten times a second. Nothing is drawn when stderr is not a terminal or with
//! `--quiet`.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::io::IsTerminal as _;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use swarm_node::fetch::progress::Progress;

const MAX_FILE_BARS: usize = 8;

/// Draws until dropped.
#[derive(Debug)]
pub struct Display {
    task: Option<tokio::task::JoinHandle<()>>,
    multi: Option<MultiProgress>,
}

impl Display {
    /// Starts drawing `progress` if stderr is a terminal and not `quiet`.
    pub fn start(progress: Arc<Progress>, quiet: bool) -> Self {
        if quiet || !std::io::stderr().is_terminal() {
            return Self { task: None, multi: None };
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10));
        let total_style = ProgressStyle::with_template(
            "{prefix:>12} [{bar:30.cyan/blue}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        let file_style = ProgressStyle::with_template(
            "{prefix:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        let total = multi.add(ProgressBar::new(0).with_style(total_style).with_prefix("total"));
        let m = multi.clone();
        let task = tokio::spawn(async move {
            let mut bars: HashMap<String, ProgressBar> = HashMap::new();
            loop {
                total.set_length(progress.bytes_total.load(Relaxed));
                total.set_position(progress.bytes_done.load(Relaxed));
                total.set_message(format!(
                    "files {}/{} · Hub {} · peers {}",
                    progress.files_done.load(Relaxed),
                    progress.files_total.load(Relaxed),
                    indicatif::HumanBytes(progress.from_hub.load(Relaxed)),
                    indicatif::HumanBytes(progress.from_peers.load(Relaxed)),
                ));
                let active = progress.active_files();
                bars.retain(|path, bar| {
                    let keep = active.iter().any(|f| &f.path == path);
                    if !keep {
                        bar.finish_and_clear();
                        m.remove(bar);
                    }
                    keep
                });
                for f in active.iter().take(MAX_FILE_BARS) {
                    let bar = bars.entry(f.path.clone()).or_insert_with(|| {
                        let b = m.add(ProgressBar::new(f.size).with_style(file_style.clone()));
                        b.set_prefix("file");
                        b.set_message(short(&f.path));
                        b
                    });
                    bar.set_position(f.done.load(Relaxed));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Self { task: Some(task), multi: Some(multi) }
    }
}

fn short(path: &str) -> String {
    const MAX: usize = 40;
    if path.chars().count() <= MAX {
        return path.to_owned();
    }
    let tail: String = path.chars().rev().take(MAX - 1).collect::<Vec<_>>().into_iter().rev().collect();
    format!("…{tail}")
}

impl Drop for Display {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        if let Some(m) = self.multi.take() {
            let _ = m.clear();
        }
    }
}
