//! Opening many connections fast: a bounded number of connects in flight,
//! and for loopback targets a spread over source addresses.
//!
//! One source address has ~28,000 ephemeral ports (Linux's default range),
//! so a loopback target past that needs more addresses. Every 127.x address
//! is local on Linux, so the client binds to 127.0.0.1:0, and moves on to
//! 127.0.0.2 when the kernel runs out of ports, and so on.
//!
//! A connection to a `ws://` target does its WebSocket upgrade here too, so
//! the scenarios get connections ready for lines ([`Conn`]).

use super::stats::{Monitor, Stats, histogram, nanos, record};
use super::ws::{self, WsStream};
use super::{Ctx, Target};
use crate::error::describe;
use hdrhistogram::Histogram;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;

/// Connects in flight at once: enough to fill the server's accept backlog
/// quickly, few enough not to overflow it.
const MAX_CONNECTING: usize = 256;

/// One open connection, ready for lines.
pub(super) enum Conn {
    /// To a line server: lines end in `\n`.
    Lines(TcpStream),
    /// To a WebSocket endpoint, upgraded: one message per line.
    Ws(Box<WsStream>),
}

/// The connections a scenario got, and how long they took.
pub(super) struct Opened {
    pub streams: Vec<Conn>,
    /// How many were opened (`streams` may have been handed out since).
    pub count: u64,
    /// Time of one connect, in ns.
    pub connect: Histogram<u64>,
    /// Time to open them all.
    pub total: Duration,
}

impl Opened {
    /// Fills the report's connection fields.
    pub fn fill(&self, report: &mut super::Report) {
        report.opened = self.count;
        report.connect_total_ms = Some(self.total.as_secs_f64() * 1000.0);
        report.connect_rate = Some(self.count as f64 / self.total.as_secs_f64().max(1e-9));
        report.connect_p99_us = (!self.connect.is_empty())
            .then(|| self.connect.value_at_quantile(0.99) as f64 / 1000.0);
    }
}

/// Opens `n` connections, connection `i` to `ctx.targets[i % len]` (one
/// target: all to it), and hands them out in that order. Failed connects are
/// counted as errors; only a run where none succeeds is an error.
pub(super) async fn open_all(ctx: &Ctx<'_>, n: usize) -> io::Result<Opened> {
    let targets = ctx.targets.clone();
    let timeout = ctx.opts.timeout;
    // Every target is loopback or none is, in practice; the first decides.
    let sources = loopback_sources(ctx.target.addr).map(Arc::new);
    let stats = ctx.stats.clone();
    let monitor = Monitor::start(&ctx.progress, None, {
        let stats = stats.clone();
        move || format!("connecting {}/{n}", Stats::count(&stats.opened))
    });

    let start = Instant::now();
    let mut connect = histogram()?;
    let mut slots: Vec<Option<Conn>> = Vec::with_capacity(n);
    slots.resize_with(n, || None);
    let mut set = JoinSet::new();
    let (mut launched, mut failed, mut count) = (0, 0, 0);
    let mut first_failure: Option<(Target, io::Error)> = None;
    while launched < n || !set.is_empty() {
        // Stop early when nothing ever connects: the server is not there.
        let hopeless = count == 0 && failed >= MAX_CONNECTING.min(n);
        while launched < n && set.len() < MAX_CONNECTING && !hopeless {
            let sources = sources.clone();
            let index = launched;
            let target = targets[index % targets.len()].clone();
            set.spawn(async move {
                let began = Instant::now();
                let result = open_one(&target, sources.as_deref(), timeout).await;
                (index, target, result, began.elapsed())
            });
            launched += 1;
        }
        let Some(joined) = set.join_next().await else {
            break;
        };
        let (index, target, result, took) = joined.map_err(io::Error::other)?;
        match result {
            Ok(stream) => {
                record(&mut connect, nanos(took));
                slots[index] = Some(stream);
                count += 1;
                Stats::add(&stats.opened, 1);
            }
            Err(e) => {
                failed += 1;
                stats.error(|| format!("cannot connect to {target}: {}", describe(&e)));
                first_failure.get_or_insert((target, e));
            }
        }
    }
    let total = start.elapsed();
    monitor.stop().await;
    let streams: Vec<Conn> = slots.into_iter().flatten().collect();
    if streams.is_empty() {
        let (target, e) = first_failure
            .unwrap_or_else(|| (ctx.target.clone(), io::Error::other("no connection")));
        return Err(io::Error::new(
            e.kind(),
            format!("cannot connect to {target}: {}", describe(&e)),
        ));
    }
    Ok(Opened {
        count: streams.len() as u64,
        streams,
        connect,
        total,
    })
}

/// The source address in use, for a 127.x target.
struct Sources {
    /// Last octet of 127.0.0.x.
    host: AtomicU8,
}

fn loopback_sources(target: SocketAddr) -> Option<Sources> {
    match target.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => Some(Sources {
            host: AtomicU8::new(1),
        }),
        _ => None,
    }
}

impl Sources {
    /// Moves past `host` once it is out of ports; false when none are left.
    fn advance(&self, host: u8) -> bool {
        if host >= 254 {
            return false;
        }
        // Several connects may see the same address run out: move once.
        let _ = self
            .host
            .compare_exchange(host, host + 1, Ordering::Relaxed, Ordering::Relaxed);
        true
    }
}

/// One connection to `target`: a connect, and for a WebSocket the upgrade,
/// each with a deadline.
async fn open_one(
    target: &Target,
    sources: Option<&Sources>,
    timeout: Duration,
) -> io::Result<Conn> {
    let stream = connect_one(target.addr, sources, timeout).await?;
    Ok(match &target.ws {
        None => Conn::Lines(stream),
        Some(url) => Conn::Ws(Box::new(ws::handshake(stream, url, timeout).await?)),
    })
}

/// One connect with a deadline, bound to the current source address when
/// there is one.
async fn connect_one(
    target: SocketAddr,
    sources: Option<&Sources>,
    timeout: Duration,
) -> io::Result<TcpStream> {
    loop {
        let socket = match target {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        let mut host = None;
        if let Some(sources) = sources {
            let h = sources.host.load(Ordering::Relaxed);
            host = Some(h);
            let from = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, h), 0);
            if let Err(e) = socket.bind(from.into()) {
                // Binding port 0 fails with EADDRINUSE when no port is left.
                if out_of_ports(&e) && sources.advance(h) {
                    continue;
                }
                return Err(e);
            }
        }
        let stream = match tokio::time::timeout(timeout, socket.connect(target)).await {
            Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out")),
            Ok(Err(e)) => {
                if let (Some(sources), Some(h)) = (sources, host)
                    && out_of_ports(&e)
                    && sources.advance(h)
                {
                    continue;
                }
                return Err(e);
            }
            Ok(Ok(stream)) => stream,
        };
        stream.set_nodelay(true)?;
        return Ok(stream);
    }
}

fn out_of_ports(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::AddrNotAvailable | io::ErrorKind::AddrInUse
    )
}
