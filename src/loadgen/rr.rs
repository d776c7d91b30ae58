//! The request/reply scenario: every connection keeps `pipeline` request
//! lines in flight and matches replies to requests in FIFO order.
//!
//! A connection refills its pipeline only after parsing everything one read
//! returned, so a server that answers a batch at once gets the next batch in
//! one write: one syscall each way per batch on both sides.
//!
//! Over WebSocket ([`drive_ws`]) each request is one text message and each
//! message back one reply; the pipeline is refilled once every message that
//! had already arrived is matched, and the batch goes out in one write too.

use super::net::{Conn, open_all};
use super::stats::{
    Monitor, NOT_ECHO, Percentiles, SERVER_ERR, Stats, is_err, nanos, quote, record,
};
use super::ws::{self, Incoming, WsStream};
use super::{Ctx, Report, per_conn, per_op};
use crate::error::describe;
use futures_util::{Sink, Stream};
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

/// A reply line longer than this is not a reply to a short request.
const MAX_REPLY: usize = 1 << 20;

pub(super) async fn run(ctx: &Ctx<'_>) -> io::Result<Report> {
    let opts = ctx.opts;
    let rss_base = ctx.rss_kib();
    let mut opened = open_all(ctx, opts.conns).await?;

    let mut request = opts.payload.as_bytes().to_vec();
    request.push(b'\n');
    let budget = match opts.requests {
        Some(n) => Budget::Count(AtomicU64::new(n)),
        None => Budget::Until(Instant::now() + opts.duration),
    };
    let shared = Arc::new(Shared {
        stats: ctx.stats.clone(),
        budget,
        message: Message::text(opts.payload.as_str()),
        request,
        pipeline: opts.pipeline,
        verify: opts.verify_echo,
        timeout: opts.timeout,
    });

    let cpu_before = ctx.cpu_us();
    let start = Instant::now();
    let monitor = Monitor::start(&ctx.progress, ctx.server.clone(), {
        let stats = ctx.stats.clone();
        move || {
            let done = Stats::count(&stats.done);
            let rate = done as f64 / start.elapsed().as_secs_f64().max(1e-9);
            format!(
                "{done} replies, {rate:.0} req/s, {} errors",
                stats.error_count()
            )
        }
    });
    let mut set = JoinSet::new();
    for conn in std::mem::take(&mut opened.streams) {
        let shared = shared.clone();
        match conn {
            Conn::Lines(stream) => {
                set.spawn(async { drive(stream, shared).await.map(Conn::Lines) })
            }
            Conn::Ws(ws) => set.spawn(async { drive_ws(ws, shared).await.map(Conn::Ws) }),
        };
    }
    // Keep the survivors open until memory has been sampled under load.
    let mut alive = Vec::new();
    while let Some(joined) = set.join_next().await {
        alive.extend(joined.ok().flatten());
    }
    let elapsed = start.elapsed();
    let cpu_after = ctx.cpu_us();
    let rss_now = ctx.rss_kib();
    let rss_peak = monitor.stop().await.max(rss_now);
    drop(alive);

    let stats = &ctx.stats;
    let completed = Stats::count(&stats.done);
    let mut report = ctx.report();
    opened.fill(&mut report);
    report.elapsed_s = elapsed.as_secs_f64();
    report.pipeline = Some(opts.pipeline);
    report.sent = Some(Stats::count(&stats.sent));
    report.completed = Some(completed);
    report.throughput = Some(completed as f64 / elapsed.as_secs_f64().max(1e-9));
    Percentiles::fill(&stats.latency(), &mut report);
    report.server_cpu_us_per_op = per_op(cpu_before, cpu_after, completed);
    report.server_rss_base_kib = rss_base;
    report.server_rss_per_conn_kib = per_conn(rss_base, rss_peak, report.opened);
    Ok(report)
}

/// What every connection task shares.
struct Shared {
    stats: Arc<Stats>,
    budget: Budget,
    /// The request line with its `\n`.
    request: Vec<u8>,
    /// The request as a WebSocket message.
    message: Message,
    pipeline: usize,
    verify: bool,
    timeout: Duration,
}

/// When to stop sending.
enum Budget {
    /// Requests not yet claimed by a connection (`--requests`).
    Count(AtomicU64),
    /// Send until then (`--duration`).
    Until(Instant),
}

impl Budget {
    /// Takes up to `want` requests to send now.
    fn claim(&self, want: usize) -> usize {
        match self {
            Budget::Until(end) => {
                if Instant::now() < *end {
                    want
                } else {
                    0
                }
            }
            Budget::Count(left) => {
                let want = want as u64;
                match left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    (n > 0).then(|| n - n.min(want))
                }) {
                    // Whatever was there, up to `want`, is ours.
                    Ok(before) => before.min(want) as usize,
                    Err(_) => 0,
                }
            }
        }
    }
}

/// Runs one connection until the budget is spent and every request is
/// answered. Returns the stream when it is still usable, so it stays open
/// until the run has sampled the server; `None` after an error.
async fn drive(mut stream: TcpStream, shared: Arc<Shared>) -> Option<TcpStream> {
    let stats = &shared.stats;
    let (mut rd, mut wr) = stream.split();
    // Send times of the requests in flight, oldest first.
    let mut inflight: VecDeque<Instant> = VecDeque::with_capacity(shared.pipeline);
    let mut wbuf: Vec<u8> = Vec::with_capacity(shared.pipeline * shared.request.len());
    let mut written = 0;
    let mut rbuf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let silence = tokio::time::sleep(shared.timeout);
    tokio::pin!(silence);

    loop {
        if written == wbuf.len() {
            wbuf.clear();
            written = 0;
        }
        let n = shared.budget.claim(shared.pipeline - inflight.len());
        if n > 0 {
            for _ in 0..n {
                wbuf.extend_from_slice(&shared.request);
            }
            let now = Instant::now();
            inflight.extend(std::iter::repeat_n(now, n));
            Stats::add(&stats.sent, n as u64);
        }
        if inflight.is_empty() {
            return Some(stream);
        }
        if rbuf.capacity() - rbuf.len() < 4096 {
            rbuf.reserve(16 * 1024);
        }
        tokio::select! {
            biased;
            result = wr.write(&wbuf[written..]), if written < wbuf.len() => match result {
                Ok(0) => return lost(stats, "connection closed while sending".into()),
                Ok(n) => written += n,
                Err(e) => return lost(stats, format!("send failed: {}", describe(&e))),
            },
            result = rd.read_buf(&mut rbuf) => match result {
                Ok(0) => {
                    return lost(stats, format!(
                        "connection closed by the server with {} unanswered",
                        inflight.len()
                    ));
                }
                Ok(_) => {
                    silence.as_mut().reset(tokio::time::Instant::now() + shared.timeout);
                    if !replies(&shared, &mut rbuf, &mut inflight) {
                        return None;
                    }
                }
                Err(e) => return lost(stats, format!("receive failed: {}", describe(&e))),
            },
            () = &mut silence => {
                return lost(stats, format!(
                    "no reply within {:.1} s ({} unanswered)",
                    shared.timeout.as_secs_f64(),
                    inflight.len()
                ));
            }
        }
    }
}

/// Counts a lost connection as one error. Its kind leaves out how many
/// requests were unanswered, so that lost connections count as one kind.
fn lost<T>(stats: &Stats, message: String) -> Option<T> {
    let kind = message.split(" (").next().unwrap_or(&message);
    let kind = kind.split(" with ").next().unwrap_or(kind);
    stats.error_kind(kind, || message.clone());
    None
}

/// Matches the complete lines in `rbuf` to the oldest requests in flight
/// and removes them from `rbuf`. False when the connection is unusable.
fn replies(shared: &Shared, rbuf: &mut Vec<u8>, inflight: &mut VecDeque<Instant>) -> bool {
    let stats = &shared.stats;
    let expected = &shared.request[..shared.request.len() - 1];
    let now = Instant::now();
    let mut consumed = 0;
    let mut answered = 0;
    let mut latency = stats.latency();
    while let Some(end) = memchr::memchr(b'\n', &rbuf[consumed..]) {
        let line = &rbuf[consumed..consumed + end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        consumed += end + 1;
        let Some(sent) = inflight.pop_front() else {
            stats.error_kind("unexpected line", || {
                format!("unexpected line {}", quote(line))
            });
            continue;
        };
        answered += 1;
        record(&mut latency, nanos(now - sent));
        if is_err(line) {
            stats.error_kind(SERVER_ERR, || format!("server answered {}", quote(line)));
        } else if shared.verify && line != expected {
            stats.error_kind(NOT_ECHO, || {
                format!("reply {} does not echo {}", quote(line), quote(expected))
            });
        }
    }
    drop(latency);
    Stats::add(&stats.done, answered);
    rbuf.drain(..consumed);
    if rbuf.len() > MAX_REPLY {
        stats.error(|| format!("reply line longer than {MAX_REPLY} bytes"));
        return false;
    }
    true
}

/// [`drive`] for a WebSocket: `pipeline` messages in flight, matched to
/// the messages back in FIFO order.
async fn drive_ws(mut ws: Box<WsStream>, shared: Arc<Shared>) -> Option<Box<WsStream>> {
    let stats = &shared.stats;
    let mut inflight: VecDeque<Instant> = VecDeque::with_capacity(shared.pipeline);
    let mut out = Outgoing::default();
    let silence = tokio::time::sleep(shared.timeout);
    tokio::pin!(silence);

    loop {
        let n = shared.budget.claim(shared.pipeline - inflight.len());
        if n > 0 {
            out.unsent += n;
            inflight.extend(std::iter::repeat_n(Instant::now(), n));
            Stats::add(&stats.sent, n as u64);
        }
        if inflight.is_empty() {
            return Some(ws);
        }
        let first = tokio::select! {
            biased;
            event = std::future::poll_fn(|cx| out.step(&mut ws, &shared.message, cx)) => event,
            () = &mut silence => Err(format!(
                "no reply within {:.1} s ({} unanswered)",
                shared.timeout.as_secs_f64(),
                inflight.len()
            )),
        };
        silence
            .as_mut()
            .reset(tokio::time::Instant::now() + shared.timeout);
        // This message, then every one already here, before the refill.
        let now = Instant::now();
        let mut next = Some(first);
        let mut answered = 0;
        let mut latency = stats.latency();
        let mut failed = None;
        while let Some(event) = next.take() {
            let line = match event.map(Incoming::from) {
                Ok(Incoming::Line(line)) => line,
                Ok(Incoming::Control) => {
                    next = ready_message(&mut ws);
                    continue;
                }
                Ok(Incoming::Closed(code)) => {
                    failed = Some(format!(
                        "{} with {} unanswered",
                        ws::closed(code),
                        inflight.len()
                    ));
                    break;
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            };
            let Some(sent) = inflight.pop_front() else {
                stats.error_kind("unexpected line", || {
                    format!("unexpected line {}", quote(&line))
                });
                next = ready_message(&mut ws);
                continue;
            };
            answered += 1;
            record(&mut latency, nanos(now - sent));
            let expected = &shared.request[..shared.request.len() - 1];
            if is_err(&line) {
                stats.error_kind(SERVER_ERR, || format!("server answered {}", quote(&line)));
            } else if shared.verify && *line != *expected {
                stats.error_kind(NOT_ECHO, || {
                    format!("reply {} does not echo {}", quote(&line), quote(expected))
                });
            }
            next = ready_message(&mut ws);
        }
        drop(latency);
        Stats::add(&stats.done, answered);
        if let Some(message) = failed {
            return lost(stats, message);
        }
    }
}

/// Requests claimed for a WebSocket but not yet written out.
#[derive(Default)]
struct Outgoing {
    /// Claimed, not yet handed to tungstenite.
    unsent: usize,
    /// Handed to tungstenite, maybe not yet written.
    unflushed: bool,
}

impl Outgoing {
    /// Hands the claimed requests to tungstenite, writes them out in one
    /// flush, and waits for the next message from the server.
    fn step(
        &mut self,
        ws: &mut WsStream,
        request: &Message,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Message, String>> {
        let failed = |e| Poll::Ready(Err(format!("send failed: {}", ws::describe_ws(e))));
        while self.unsent > 0 {
            match Pin::new(&mut *ws).poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return failed(e),
                Poll::Pending => break,
            }
            if let Err(e) = Pin::new(&mut *ws).start_send(request.clone()) {
                return failed(e);
            }
            self.unsent -= 1;
            self.unflushed = true;
        }
        if self.unflushed {
            match Pin::new(&mut *ws).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(e)) => return failed(e),
                Poll::Pending => {}
            }
        }
        Pin::new(ws).poll_next(cx).map(received)
    }
}

/// The next message if it is already here (read, or in tungstenite's
/// buffer), without waiting.
fn ready_message(ws: &mut WsStream) -> Option<Result<Message, String>> {
    let mut cx = Context::from_waker(Waker::noop());
    match Pin::new(ws).poll_next(&mut cx) {
        Poll::Ready(next) => Some(received(next)),
        Poll::Pending => None,
    }
}

/// A message from the stream, or why there is none.
fn received(
    next: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
) -> Result<Message, String> {
    match next {
        Some(Ok(message)) => Ok(message),
        Some(Err(e)) => Err(format!("receive failed: {}", ws::describe_ws(e))),
        None => Err("connection closed by the server".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_never_exceed_the_budget() {
        let budget = Budget::Count(AtomicU64::new(10));
        assert_eq!(budget.claim(4), 4);
        assert_eq!(budget.claim(4), 4);
        assert_eq!(budget.claim(4), 2);
        assert_eq!(budget.claim(4), 0);
    }
}
