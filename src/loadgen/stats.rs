//! Counters shared by a scenario's tasks, the latency histogram, the live
//! progress line, and what counts as an error in a reply (`is_err`, with
//! `quote` to show the line). Every scenario and the connection opener use
//! these; this module uses none of theirs.
//!
//! The runtime has one thread, so the mutexes here are never contended;
//! they only make the state `Send` for `tokio::spawn`. One histogram serves
//! all connections: per-connection ones would cost ~100 KiB each.

use super::proc::ServerProc;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::task::JoinHandle;

/// What the tasks of one run count.
pub(super) struct Stats {
    /// Connections established.
    pub opened: AtomicU64,
    /// rr: requests sent; fanout: stamped lines sent.
    pub sent: AtomicU64,
    /// rr: replies; idle: correct answers; fanout: deliveries.
    pub done: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
    /// Every kind of error seen and how many times, in order of first sight.
    kinds: Mutex<Vec<(String, u64)>>,
    /// Latency in nanoseconds.
    latency: Mutex<Histogram<u64>>,
}

impl Stats {
    pub fn new() -> io::Result<Self> {
        Ok(Stats {
            opened: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            done: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            first_error: Mutex::new(None),
            kinds: Mutex::new(Vec::new()),
            latency: Mutex::new(histogram()?),
        })
    }

    /// Counts one error of the kind `message` says; the first one's
    /// message is kept for the report.
    pub fn error(&self, message: impl FnOnce() -> String) {
        let message = message();
        self.error_kind(&message.clone(), || message);
    }

    /// Counts one error of `kind` (a message without the details that vary
    /// from one error to the next); `detail` is the full message, kept when
    /// it is the first error.
    pub fn error_kind(&self, kind: &str, detail: impl FnOnce() -> String) {
        if self.errors.fetch_add(1, Relaxed) == 0 {
            let mut first = lock(&self.first_error);
            if first.is_none() {
                *first = Some(detail());
            }
        }
        let mut kinds = lock(&self.kinds);
        match kinds.iter_mut().find(|(k, _)| k == kind) {
            Some((_, n)) => *n += 1,
            None => kinds.push((kind.to_string(), 1)),
        }
    }

    /// Every kind of error and its count, most frequent first.
    pub fn error_kinds(&self) -> Vec<(String, u64)> {
        let mut kinds = lock(&self.kinds).clone();
        kinds.sort_by_key(|k| std::cmp::Reverse(k.1));
        kinds
    }

    /// Errors so far and the first one's message.
    pub fn errors(&self) -> (u64, Option<String>) {
        (self.errors.load(Relaxed), lock(&self.first_error).clone())
    }

    pub fn error_count(&self) -> u64 {
        self.errors.load(Relaxed)
    }

    /// The latency histogram, to record a batch under one lock.
    pub fn latency(&self) -> MutexGuard<'_, Histogram<u64>> {
        lock(&self.latency)
    }

    pub fn count(counter: &AtomicU64) -> u64 {
        counter.load(Relaxed)
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }
}

/// An auto-resizing histogram with 3 significant figures.
pub(super) fn histogram() -> io::Result<Histogram<u64>> {
    Histogram::new(3).map_err(|e| io::Error::other(format!("histogram: {e}")))
}

/// Records `value`, growing the histogram as needed. (`saturating_record`
/// would clamp to the current, initially tiny, highest trackable value.)
pub(super) fn record(h: &mut Histogram<u64>, value: u64) {
    if h.record(value).is_err() {
        h.saturating_record(value);
    }
}

/// The kind of error of a reply that is not its request, with --verify-echo.
pub(super) const NOT_ECHO: &str = "reply is not the echo of the request";

/// The kind of error of an `ERR ...` reply.
pub(super) const SERVER_ERR: &str = "server answered ERR";

/// An `ERR ...` line, the convention of sockline's protocols.
pub(super) fn is_err(line: &[u8]) -> bool {
    line == b"ERR" || line.starts_with(b"ERR ")
}

/// A line for an error message: quoted, escaped and cut short.
pub(super) fn quote(line: &[u8]) -> String {
    const MAX: usize = 60;
    let text = String::from_utf8_lossy(&line[..line.len().min(MAX)]);
    let more = if line.len() > MAX { "..." } else { "" };
    format!("{:?}{more}", text)
}

/// A duration in ns, as the histograms record it.
pub(super) fn nanos(d: Duration) -> u64 {
    d.as_nanos().try_into().unwrap_or(u64::MAX)
}

/// p50, p99, p99.9 and max of a nanosecond histogram, in µs.
pub(super) struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Option<Self> {
        let us = |ns: u64| ns as f64 / 1000.0;
        (!h.is_empty()).then(|| Percentiles {
            p50: us(h.value_at_quantile(0.5)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
        })
    }

    /// Fills the report's latency fields.
    pub fn fill(h: &Histogram<u64>, report: &mut super::Report) {
        if let Some(p) = Percentiles::of(h) {
            report.p50_us = Some(p.p50);
            report.p99_us = Some(p.p99);
            report.p999_us = Some(p.p999);
            report.max_us = Some(p.max);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking task cannot leave these half-updated in a harmful way.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The live progress line: a spinner and a message on stderr, or nothing
/// when stderr is not a terminal.
#[derive(Clone)]
pub(super) struct Progress(Option<ProgressBar>);

impl Progress {
    pub fn new(enabled: bool) -> Self {
        if !(enabled && super::stderr_is_terminal()) {
            return Progress(None);
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template("{spinner} {elapsed} {msg}") {
            bar.set_style(style);
        }
        Progress(Some(bar))
    }

    pub fn set(&self, message: String) {
        if let Some(bar) = &self.0 {
            bar.set_message(message);
            bar.tick();
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }

    fn enabled(&self) -> bool {
        self.0.is_some()
    }
}

/// A background task that refreshes the progress line and samples the
/// server's RSS while the load runs, keeping the peak.
pub(super) struct Monitor {
    task: JoinHandle<()>,
    peak_rss: Arc<AtomicU64>,
}

/// How often the monitor wakes.
const MONITOR_EVERY: Duration = Duration::from_millis(100);

impl Monitor {
    /// Starts the monitor; `message` renders the progress line.
    pub fn start(
        progress: &Progress,
        server: Option<ServerProc>,
        message: impl Fn() -> String + Send + 'static,
    ) -> Self {
        let peak_rss = Arc::new(AtomicU64::new(0));
        let peak = peak_rss.clone();
        let progress = progress.clone();
        let task = tokio::spawn(async move {
            if !progress.enabled() && server.is_none() {
                return;
            }
            let mut tick = tokio::time::interval(MONITOR_EVERY);
            loop {
                tick.tick().await;
                if let Some(rss) = server.as_ref().and_then(|s| s.rss_kib()) {
                    peak.fetch_max(rss, Relaxed);
                }
                progress.set(message());
            }
        });
        Monitor { task, peak_rss }
    }

    /// Stops the monitor; returns the peak RSS it saw, in KiB.
    pub async fn stop(self) -> Option<u64> {
        self.task.abort();
        let _ = self.task.await;
        Some(self.peak_rss.load(Relaxed)).filter(|&kib| kib > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognizes_err_lines() {
        assert!(is_err(b"ERR nope"));
        assert!(is_err(b"ERR"));
        assert!(!is_err(b"ERROR"));
        assert!(!is_err(b" MSG Received"));
    }
}
