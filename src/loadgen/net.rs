//! Opening many connections fast: a bounded number of connects in flight,
//! and for loopback targets a spread over source addresses.
//!
//! One source address has ~28,000 ephemeral ports (Linux's default range)
//! per destination, so a loopback target past that needs more addresses.
//! Every 127.x address is local on Linux, so connection `i` binds to
//! 127.0.0.(1 + i % 254) from the start, and moves on to the next address
//! when one runs out of ports.
//!
//! The client also picks the source port, counting through the ephemeral
//! range on each address: binding port 0 has the kernel search the range
//! for a port free for every destination, a search that grows with each
//! connection held (15,000 connects took 9.2 s, nearly all of it that search
//! in the client's kernel time), while binding a given port is one lookup.
//! A port in use (by another process, or in TIME_WAIT towards this very
//! target) fails the bind or the connect, and the next one is tried. So
//! `connect time` measures the server's accept rate, not the client's port
//! search. (`IP_BIND_ADDRESS_NO_PORT`, which would leave the port to the
//! connect, is not in socket2 0.6 or rustix, and this crate forbids
//! `unsafe`.)
//!
//! A connection to a `ws://` target does its WebSocket upgrade here too, so
//! the scenarios get connections ready for lines ([`Conn`]).

use super::stats::{Monitor, Stats, histogram, nanos, record};
use super::ws::{self, WsStream};
use super::{Ctx, Target};
use crate::error::describe;
use hdrhistogram::Histogram;
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
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

/// Source addresses and ports for a 127.x target: connect `n` is from
/// 127.0.0.(1 + n % 254), port `FIRST_PORT + (n / 254) % PORTS`.
struct Sources {
    /// Source addresses taken so far.
    next: AtomicUsize,
}

/// How many 127.0.0.x source addresses are used.
const HOSTS: usize = 254;
/// Linux's default ephemeral range, 32768 to 60999.
const FIRST_PORT: usize = 32768;
const PORTS: usize = 60999 - FIRST_PORT + 1;
/// Source addresses one connect tries before giving up.
const TRIES: usize = 1000;

fn loopback_sources(target: SocketAddr) -> Option<Sources> {
    match target.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => Some(Sources {
            next: AtomicUsize::new(0),
        }),
        _ => None,
    }
}

impl Sources {
    /// The next source address.
    fn take(&self) -> SocketAddrV4 {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let host = (1 + n % HOSTS) as u8;
        let port = (FIRST_PORT + (n / HOSTS) % PORTS) as u16;
        SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, host), port)
    }
}

/// A non-blocking socket for `target`, bound to `from` when given.
fn bound_socket(target: SocketAddr, from: Option<SocketAddrV4>) -> io::Result<TcpSocket> {
    let domain = Domain::for_address(target);
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    if let Some(from) = from {
        // Binds over a TIME_WAIT left by an earlier run; the connect then
        // fails only if that was to this very target.
        socket.set_reuse_address(true)?;
        socket.bind(&SocketAddr::from(from).into())?;
    }
    Ok(TcpSocket::from_std_stream(socket.into()))
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

/// One connect with a deadline, from the next source address when there
/// are several.
async fn connect_one(
    target: SocketAddr,
    sources: Option<&Sources>,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let mut tries = 0;
    loop {
        let from = sources.map(Sources::take);
        tries += 1;
        let retry = |e: &io::Error| from.is_some() && out_of_ports(e) && tries < TRIES;
        let socket = match bound_socket(target, from) {
            Err(e) if retry(&e) => continue,
            result => result?,
        };
        let stream = match tokio::time::timeout(timeout, socket.connect(target)).await {
            Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out")),
            Ok(Err(e)) if retry(&e) => continue,
            Ok(Err(e)) => return Err(e),
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
