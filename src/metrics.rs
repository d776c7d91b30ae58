//! Counters an operator watches, served as Prometheus text at `/metrics`.
//!
//! Workers count in plain per-thread fields (see `Counts`) and publish the
//! sums here once per event-loop round, so the per-line path touches no
//! shared memory. The endpoint is a tiny blocking HTTP server on a thread of
//! its own: it answers `GET /metrics` and nothing else.

use crate::admission::Refusal;
use crate::protocol::CloseReason;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Per-worker tallies, published with [`Metrics::add`].
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    /// Complete lines received.
    pub lines_in: u64,
    /// Bytes read from clients.
    pub bytes_in: u64,
    /// Bytes of replies and messages produced for clients.
    pub bytes_out: u64,
    /// Times a connection used up its line budget (`--max-lines-per-sec`).
    pub throttled: u64,
    /// Of `lines_in`, the messages of WebSocket members.
    pub ws_lines_in: u64,
    /// Requests on the web listener, by answer: the page, an upgrade to
    /// WebSocket, an error.
    pub web: [u64; 3],
}

/// Close reasons in the order they are exposed.
const CLOSES: [CloseReason; 12] = [
    CloseReason::Protocol,
    CloseReason::Client,
    CloseReason::Reset,
    CloseReason::TooLong,
    CloseReason::TooSlow,
    CloseReason::Idle,
    CloseReason::Shutdown,
    CloseReason::Error,
    CloseReason::Tls,
    CloseReason::Handshake,
    CloseReason::Malformed,
    CloseReason::Child,
];

/// Refusals in the order they are exposed.
const REFUSALS: [Refusal; 4] = [
    Refusal::Full,
    Refusal::Denied,
    Refusal::PerIp,
    Refusal::Proxy,
];

/// One counter per refusal, found by a match on the reason.
#[derive(Debug, Default)]
struct ByRefusal {
    full: AtomicU64,
    denied: AtomicU64,
    per_ip: AtomicU64,
    proxy: AtomicU64,
}

impl ByRefusal {
    fn of(&self, why: Refusal) -> &AtomicU64 {
        match why {
            Refusal::Full => &self.full,
            Refusal::Denied => &self.denied,
            Refusal::PerIp => &self.per_ip,
            Refusal::Proxy => &self.proxy,
        }
    }
}

/// One counter per close reason, found by a match on the reason.
#[derive(Debug, Default)]
struct ByClose {
    protocol: AtomicU64,
    client: AtomicU64,
    reset: AtomicU64,
    too_long: AtomicU64,
    too_slow: AtomicU64,
    idle: AtomicU64,
    shutdown: AtomicU64,
    error: AtomicU64,
    tls: AtomicU64,
    handshake: AtomicU64,
    malformed: AtomicU64,
    child: AtomicU64,
}

impl ByClose {
    fn of(&self, why: CloseReason) -> &AtomicU64 {
        match why {
            CloseReason::Protocol => &self.protocol,
            CloseReason::Client => &self.client,
            CloseReason::Reset => &self.reset,
            CloseReason::TooLong => &self.too_long,
            CloseReason::TooSlow => &self.too_slow,
            CloseReason::Idle => &self.idle,
            CloseReason::Shutdown => &self.shutdown,
            CloseReason::Error => &self.error,
            CloseReason::Tls => &self.tls,
            CloseReason::Handshake => &self.handshake,
            CloseReason::Malformed => &self.malformed,
            CloseReason::Child => &self.child,
        }
    }
}

/// The server's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Connections open now.
    pub open: AtomicU64,
    accepted: AtomicU64,
    lines_in: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    throttled: AtomicU64,
    queue_bytes: AtomicU64,
    ws_lines_in: AtomicU64,
    web: [AtomicU64; 3],
    websockets: AtomicU64,
    refused: ByRefusal,
    closed: ByClose,
    lingering: AtomicU64,
    lingered: ByClose,
    cut: AtomicU64,
    cut_bytes: AtomicU64,
    children: AtomicU64,
    spawned: AtomicU64,
    spawn_failed: AtomicU64,
    /// Children reaped, by exit status (`0`, `SIGKILL`, ...).
    exits: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
}

impl Metrics {
    /// Publishes a worker's tallies.
    pub fn add(&self, counts: Counts) {
        self.lines_in.fetch_add(counts.lines_in, Relaxed);
        self.bytes_in.fetch_add(counts.bytes_in, Relaxed);
        self.bytes_out.fetch_add(counts.bytes_out, Relaxed);
        self.throttled.fetch_add(counts.throttled, Relaxed);
        self.ws_lines_in.fetch_add(counts.ws_lines_in, Relaxed);
        for (total, n) in self.web.iter().zip(counts.web) {
            total.fetch_add(n, Relaxed);
        }
    }

    /// A worker's WebSocket members went from `was` to `now`.
    pub fn websockets(&self, was: u64, now: u64) {
        self.websockets.fetch_add(now.wrapping_sub(was), Relaxed);
    }

    /// A worker's queued bytes went from `was` to `now`.
    pub fn queued(&self, was: u64, now: u64) {
        // Wrapping add of the difference: the sum of all workers' figures.
        self.queue_bytes.fetch_add(now.wrapping_sub(was), Relaxed);
    }

    /// Counts an admitted connection.
    pub fn accepted(&self) {
        self.accepted.fetch_add(1, Relaxed);
    }

    /// Counts a refusal.
    pub fn refused(&self, why: Refusal) {
        self.refused.of(why).fetch_add(1, Relaxed);
    }

    /// Counts a closed connection.
    pub fn closed(&self, why: CloseReason) {
        self.closed.of(why).fetch_add(1, Relaxed);
    }

    /// Counts a connection entering a lingering close.
    pub fn linger(&self) {
        self.lingering.fetch_add(1, Relaxed);
    }

    /// Counts the end of a lingering close: `Client` for the client's EOF,
    /// `Idle` for a linger timeout, `TooLong` for too many bytes, `Shutdown`
    /// for the drain timeout.
    pub fn lingered(&self, why: CloseReason) {
        self.lingering.fetch_sub(1, Relaxed);
        self.lingered.of(why).fetch_add(1, Relaxed);
    }

    /// Counts a connection the drain timeout cut with `unsent` bytes left.
    pub fn cut(&self, unsent: u64) {
        self.cut.fetch_add(1, Relaxed);
        self.cut_bytes.fetch_add(unsent, Relaxed);
    }

    /// Counts a helper process started (`serve --exec`).
    pub fn spawned(&self) {
        self.spawned.fetch_add(1, Relaxed);
        self.children.fetch_add(1, Relaxed);
    }

    /// Counts a helper process that could not be started.
    pub fn spawn_failed(&self) {
        self.spawn_failed.fetch_add(1, Relaxed);
    }

    /// Counts a helper process reaped, with its exit status in a few words
    /// (`0`, `SIGKILL`; see [`crate::exec::describe`]).
    pub fn exited(&self, status: String) {
        self.children.fetch_sub(1, Relaxed);
        let mut exits = self.exits.lock().unwrap_or_else(|e| e.into_inner());
        *exits.entry(status).or_default() += 1;
    }

    /// Connections admitted, closed, and refused by reason (in
    /// [`Refusal`] order: full, denied, per address, PROXY header) so far:
    /// for a summary of the churn, where logging each would flood.
    pub fn churn(&self) -> (u64, u64, [(&'static str, u64); 4]) {
        let closed = CLOSES
            .iter()
            .map(|&why| self.closed.of(why).load(Relaxed))
            .sum();
        let refused = REFUSALS.map(|why| (why.reason(), self.refused.of(why).load(Relaxed)));
        (self.accepted.load(Relaxed), closed, refused)
    }

    /// Connections closed on a TLS error so far: most are failed
    /// handshakes (a client speaking plain text, or one that does not trust
    /// the certificate). Of the closed that [`Metrics::churn`] counts.
    pub fn tls_failed(&self) -> u64 {
        self.closed.of(CloseReason::Tls).load(Relaxed)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let get = |a: &AtomicU64| a.load(Relaxed);
        let mut text = Text::default();
        text.one(
            "connections_open",
            "gauge",
            "Connections open now.",
            get(&self.open),
        );
        text.one(
            "connections_total",
            "counter",
            "Connections admitted.",
            get(&self.accepted),
        );
        text.one(
            "lines_in_total",
            "counter",
            "Complete lines received.",
            get(&self.lines_in),
        );
        text.by(
            "lines_in_by_transport_total",
            "counter",
            "Complete lines received, by transport: tcp lines, websocket messages.",
            "transport",
            [
                ("tcp", get(&self.lines_in) - get(&self.ws_lines_in)),
                ("websocket", get(&self.ws_lines_in)),
            ],
        );
        text.one(
            "websocket_members",
            "gauge",
            "WebSocket members connected (updated each second).",
            get(&self.websockets),
        );
        text.by(
            "web_requests_total",
            "counter",
            "Requests on the --web listener, by answer: the page, an upgrade to WebSocket, an HTTP error.",
            "answer",
            ["page", "upgrade", "error"]
                .into_iter()
                .zip(self.web.iter().map(get)),
        );
        text.one(
            "bytes_in_total",
            "counter",
            "Bytes read from clients.",
            get(&self.bytes_in),
        );
        text.one(
            "bytes_out_total",
            "counter",
            "Bytes of replies and messages produced for clients.",
            get(&self.bytes_out),
        );
        text.one(
            "queue_bytes",
            "gauge",
            "Bytes of replies and messages waiting for slow clients (updated each second).",
            get(&self.queue_bytes),
        );
        text.one(
            "rate_limited_total",
            "counter",
            "Times a connection used up its --max-lines-per-sec budget and was read more slowly.",
            get(&self.throttled),
        );
        text.by(
            "refused_total",
            "counter",
            "Connections refused: at accept, or with --proxy-protocol by the client's address once its header is read, or for want of a valid header (proxy_header).",
            "reason",
            REFUSALS.map(|why| (why.label(), get(self.refused.of(why)))),
        );
        text.by(
            "disconnects_total",
            "counter",
            "Connections closed, by reason.",
            "reason",
            CLOSES.map(|why| (why.label(), get(self.closed.of(why)))),
        );
        text.one(
            "connections_lingering",
            "gauge",
            "Connections closed by the server, discarding what the client still sends until its EOF (not counted as open).",
            get(&self.lingering),
        );
        text.by(
            "lingering_closes_total",
            "counter",
            "Lingering closes ended, by how: closed_by_client (its EOF), idle_timeout (5 s quiet or 30 s in all), server_shutdown (drain timeout), connection_reset.",
            "end",
            (CLOSES.iter())
                .map(|&why| (why.label(), get(self.lingered.of(why))))
                .filter(|&(_, n)| n > 0),
        );
        text.one(
            "drain_cut_total",
            "counter",
            "Connections the drain timeout closed with bytes still unsent.",
            get(&self.cut),
        );
        text.one(
            "drain_cut_bytes_total",
            "counter",
            "Bytes left unsent on connections the drain timeout closed.",
            get(&self.cut_bytes),
        );
        if get(&self.spawned) + get(&self.spawn_failed) > 0 {
            self.render_exec(&mut text);
        }
        text.0
    }

    /// The `serve --exec` families, once a child was started (or tried).
    fn render_exec(&self, text: &mut Text) {
        let get = |a: &AtomicU64| a.load(Relaxed);
        text.one(
            "exec_children",
            "gauge",
            "Helper processes (--exec) running or not yet reaped.",
            get(&self.children),
        );
        text.one(
            "exec_started_total",
            "counter",
            "Helper processes started.",
            get(&self.spawned),
        );
        text.one(
            "exec_spawn_failures_total",
            "counter",
            "Helper processes that could not be started (the client got an ERR line).",
            get(&self.spawn_failed),
        );
        let exits = self.exits.lock().unwrap_or_else(|e| e.into_inner()).clone();
        text.by(
            "exec_exits_total",
            "counter",
            "Helper processes reaped, by exit status: the exit code, or the signal that ended it.",
            "status",
            exits.iter().map(|(status, n)| (status.as_str(), *n)),
        );
    }
}

/// Prometheus text, built one metric family at a time.
#[derive(Default)]
struct Text(String);

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(
            self.0,
            "# HELP sockline_{name} {help}\n# TYPE sockline_{name} {kind}"
        );
    }

    /// A metric with one sample and no label.
    fn one(&mut self, name: &str, kind: &str, help: &str, value: u64) {
        self.family(name, kind, help);
        let _ = writeln!(self.0, "sockline_{name} {value}");
    }

    /// A metric with a sample per value of the label `key`.
    fn by<'a>(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        key: &str,
        samples: impl IntoIterator<Item = (&'a str, u64)>,
    ) {
        self.family(name, kind, help);
        for (label, value) in samples {
            let _ = writeln!(self.0, "sockline_{name}{{{key}=\"{label}\"}} {value}");
        }
    }
}

/// Serves `GET /metrics` on `listener` from a background thread.
pub fn serve(listener: TcpListener, metrics: Arc<Metrics>) -> io::Result<()> {
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                // One scrape at a time; a stalled scraper times out.
                let _ = answer(stream, &metrics);
            }
        })?;
    Ok(())
}

fn answer(mut stream: std::net::TcpStream, metrics: &Metrics) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    // The request line is all that matters; it may come in pieces.
    let mut head = [0; 1024];
    let mut n = 0;
    while n < head.len() && !head[..n].contains(&b'\n') {
        match stream.read(&mut head[n..])? {
            0 => break,
            k => n += k,
        }
    }
    let (status, body) = if head[..n].starts_with(b"GET /metrics ") {
        ("200 OK", metrics.render())
    } else {
        (
            "404 Not Found",
            "only /metrics is served here\n".to_string(),
        )
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}
