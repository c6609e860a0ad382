//! Progress bars for long transfers: shown on a terminal once an operation has taken
//! more than a second, so quick ones stay quiet.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Clone)]
pub struct Progress {
    bar: ProgressBar,
    start: Instant,
    shown: Arc<AtomicBool>,
    tty: bool,
}

impl Progress {
    /// A byte-count bar for `total` bytes labelled `what`.
    pub fn bytes(total: u64, what: &str) -> Self {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden());
        let style = ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style.progress_chars("=> "));
        bar.set_message(what.to_string());
        Progress { bar, start: Instant::now(), shown: Arc::new(AtomicBool::new(false)), tty: std::io::stderr().is_terminal() }
    }

    pub fn set(&self, pos: u64) {
        self.bar.set_position(pos);
        self.maybe_show();
    }

    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
        self.maybe_show();
    }

    fn maybe_show(&self) {
        if self.tty && self.start.elapsed() > Duration::from_secs(1) && !self.shown.swap(true, Ordering::Relaxed) {
            self.bar.set_draw_target(ProgressDrawTarget::stderr());
        }
    }

    pub fn finish(&self) {
        if self.shown.load(Ordering::Relaxed) {
            self.bar.finish();
        } else {
            self.bar.finish_and_clear();
        }
    }
}
