//! The idle scenario: what a held connection costs the server.
//!
//! Opens every connection, holds them all without a byte sent, then has
//! each send one line and read one reply. With a server pid, RSS is sampled
//! before connecting, while all are held idle, and after each has answered
//! once (its buffers, if the server keeps any, have been touched by then).
//!
//! A WebSocket connection is held once upgraded, and its line is one
//! message: the idle figure is what the server keeps for an upgraded,
//! silent WebSocket.

use super::net::{Conn, open_all};
use super::stats::{
    Monitor, NOT_ECHO, Percentiles, SERVER_ERR, Stats, is_err, nanos, quote, record,
};
use super::ws::{self, Incoming, WsStream};
use super::{Ctx, Report, per_conn, per_op};
use crate::error::describe;
use futures_util::{SinkExt, StreamExt};
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

/// A reply line longer than this is not a reply to a short line.
const MAX_REPLY: usize = 64 * 1024;

pub(super) async fn run(ctx: &Ctx<'_>) -> io::Result<Report> {
    let opts = ctx.opts;
    let rss_base = ctx.rss_kib();
    let cpu_before = ctx.cpu_us();
    let mut opened = open_all(ctx, opts.conns).await?;

    let held = Monitor::start(&ctx.progress, None, {
        let n = opened.count;
        move || format!("holding {n} idle connections")
    });
    tokio::time::sleep(opts.hold).await;
    held.stop().await;
    let rss_idle = ctx.rss_kib();

    let mut line = opts.payload.as_bytes().to_vec();
    line.push(b'\n');
    let line: Arc<[u8]> = line.into();
    let message = Message::text(opts.payload.as_str());
    let monitor = Monitor::start(&ctx.progress, None, {
        let stats = ctx.stats.clone();
        let n = opened.count;
        move || format!("{}/{n} answered", Stats::count(&stats.done))
    });
    let start = Instant::now();
    let mut set = JoinSet::new();
    for conn in std::mem::take(&mut opened.streams) {
        let (line, stats) = (line.clone(), ctx.stats.clone());
        let (verify, timeout) = (opts.verify_echo, opts.timeout);
        match conn {
            Conn::Lines(stream) => set.spawn(async move {
                let exchange = exchange(stream, &line);
                answer(exchange, &line, verify, timeout, &stats)
                    .await
                    .map(Conn::Lines)
            }),
            Conn::Ws(ws) => {
                let message = message.clone();
                set.spawn(async move {
                    let exchange = exchange_ws(ws, message);
                    answer(exchange, &line, verify, timeout, &stats)
                        .await
                        .map(Conn::Ws)
                })
            }
        };
    }
    // Keep every connection open until memory has been sampled.
    let mut alive = Vec::new();
    while let Some(joined) = set.join_next().await {
        alive.extend(joined.ok().flatten());
    }
    let elapsed = start.elapsed();
    monitor.stop().await;
    let rss_answered = ctx.rss_kib();
    let cpu_after = ctx.cpu_us();
    drop(alive);

    let mut report = ctx.report();
    opened.fill(&mut report);
    report.elapsed_s = elapsed.as_secs_f64();
    report.answered = Some(Stats::count(&ctx.stats.done));
    Percentiles::fill(&ctx.stats.latency(), &mut report);
    report.server_cpu_us_per_op = per_op(cpu_before, cpu_after, report.opened);
    report.server_rss_base_kib = rss_base;
    report.server_rss_per_conn_kib = per_conn(rss_base, rss_idle, report.opened);
    report.server_rss_per_conn_answered_kib = per_conn(rss_base, rss_answered, report.opened);
    Ok(report)
}

/// Runs `exchange` (send `line`, read one reply line) and returns the
/// connection when the reply was right, counting an error otherwise.
async fn answer<C>(
    exchange: impl Future<Output = (C, Result<Vec<u8>, String>)>,
    line: &[u8],
    verify: bool,
    timeout: Duration,
    stats: &Stats,
) -> Option<C> {
    let sent = Instant::now();
    let (conn, reply) = match tokio::time::timeout(timeout, exchange).await {
        Err(_) => {
            return lost(
                stats,
                format!("no reply within {:.1} s", timeout.as_secs_f64()),
            );
        }
        Ok((_, Err(e))) => return lost(stats, e),
        Ok((conn, Ok(reply))) => (conn, reply),
    };
    record(&mut stats.latency(), nanos(sent.elapsed()));
    let expected = &line[..line.len() - 1];
    if is_err(&reply) {
        stats.error_kind(SERVER_ERR, || format!("server answered {}", quote(&reply)));
    } else if verify && reply != expected {
        stats.error_kind(NOT_ECHO, || {
            format!("reply {} does not echo {}", quote(&reply), quote(expected))
        });
    } else {
        Stats::add(&stats.done, 1);
    }
    Some(conn)
}

fn lost<C>(stats: &Stats, message: String) -> Option<C> {
    stats.error(|| message);
    None
}

/// Writes `line`, then reads up to the first `\n`; the reply without it.
async fn exchange(mut stream: TcpStream, line: &[u8]) -> (TcpStream, Result<Vec<u8>, String>) {
    let reply = exchange_lines(&mut stream, line).await;
    (stream, reply)
}

async fn exchange_lines(stream: &mut TcpStream, line: &[u8]) -> Result<Vec<u8>, String> {
    stream
        .write_all(line)
        .await
        .map_err(|e| format!("send failed: {}", describe(&e)))?;
    let mut reply = Vec::new();
    let mut chunk = [0; 512];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("receive failed: {}", describe(&e)))?;
        if n == 0 {
            return Err("connection closed by the server before replying".into());
        }
        reply.extend_from_slice(&chunk[..n]);
        if let Some(end) = memchr::memchr(b'\n', &reply) {
            reply.truncate(end);
            if reply.last() == Some(&b'\r') {
                reply.pop();
            }
            return Ok(reply);
        }
        if reply.len() > MAX_REPLY {
            return Err(format!("reply line longer than {MAX_REPLY} bytes"));
        }
    }
}

/// Sends `message`, then reads the first text or binary message back.
async fn exchange_ws(
    mut ws: Box<WsStream>,
    message: Message,
) -> (Box<WsStream>, Result<Vec<u8>, String>) {
    let reply = exchange_message(&mut ws, message).await;
    (ws, reply)
}

async fn exchange_message(ws: &mut WsStream, message: Message) -> Result<Vec<u8>, String> {
    ws.send(message)
        .await
        .map_err(|e| format!("send failed: {}", ws::describe_ws(e)))?;
    loop {
        match ws.next().await {
            None => return Err("connection closed by the server before replying".into()),
            Some(Err(e)) => return Err(format!("receive failed: {}", ws::describe_ws(e))),
            Some(Ok(message)) => match Incoming::from(message) {
                Incoming::Line(line) if line.len() > MAX_REPLY => {
                    return Err(format!("reply line longer than {MAX_REPLY} bytes"));
                }
                Incoming::Line(line) => return Ok(line.to_vec()),
                Incoming::Control => {}
                Incoming::Closed(code) => return Err(ws::closed(code)),
            },
        }
    }
}
