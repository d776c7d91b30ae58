//! The fan-out scenario, for chat servers: every line a member sends should
//! reach every other member of the room.
//!
//! Members `0..senders` each send `rate` lines a second of the form
//! `#b SENDER SEQ NANOS`, NANOS being the send time since the bench started.
//! Every member reads everything, counts the stamped lines from the others
//! (whatever prefix the server puts before them, e.g. `NAME: `) and records
//! their delivery latency; other lines (greetings, join notices) are ignored.
//!
//! With several server addresses (the nodes of a cluster), member `i`
//! connects to address `i % n`, so senders and receivers are spread evenly.
//!
//! Every receiver also records which stamped lines it got, in order, as
//! (sender, seq). At the end these sequences are checked against each
//! other: in one room every member must see the lines it shares with any
//! other member in the same relative order; each line a receiver got out of
//! that order is an order violation.
//!
//! Over WebSocket every stamped line is one text message, and every message
//! a member receives is one line.

use super::net::{Conn, open_all};
use super::stats::{Monitor, Percentiles, Stats, is_err, nanos, quote, record};
use super::ws::{self, Incoming, WsStream};
use super::{Ctx, Report, per_conn, per_op};
use crate::error::describe;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

/// The marker that starts a stamped line's text.
const MARKER: &[u8] = b"#b ";
/// Quiet time after the last connect, for greetings and join notices.
const SETTLE: Duration = Duration::from_millis(500);
/// How long to wait for stragglers after the last line is sent.
const GRACE: Duration = Duration::from_secs(2);
/// A line longer than this is not from this bench.
const MAX_LINE: usize = 1 << 20;

pub(super) async fn run(ctx: &Ctx<'_>) -> io::Result<Report> {
    let opts = ctx.opts;
    let epoch = Instant::now();
    let rss_base = ctx.rss_kib();
    let mut opened = open_all(ctx, opts.conns).await?;
    let members = opened.count;
    let senders = opts.senders.min(opened.streams.len());
    let per_sender = (opts.rate * opts.duration.as_secs_f64()).round() as u64;
    let ids = Ids {
        senders: senders as u64,
        per_sender,
    };

    // Deliveries are counted in `stats.done`, lines sent in `stats.sent`.
    let (stop, stopped) = watch::channel(false);
    let mut readers = JoinSet::new();
    let mut writers = Vec::new();
    for (me, conn) in std::mem::take(&mut opened.streams).into_iter().enumerate() {
        let reader = Reader {
            me,
            epoch,
            ids,
            stats: ctx.stats.clone(),
            stop: stopped.clone(),
        };
        // A dropped write half would shut the connection down: keep all.
        match conn {
            Conn::Lines(stream) => {
                let (rd, wr) = stream.into_split();
                readers.spawn(receive(reader, rd));
                writers.push(Tx::Lines(wr));
            }
            Conn::Ws(ws) => {
                let (wr, rd) = (*ws).split();
                readers.spawn(receive_ws(reader, rd));
                writers.push(Tx::Ws(wr));
            }
        }
    }
    tokio::time::sleep(SETTLE).await;

    let cpu_before = ctx.cpu_us();
    let each_before = ctx.cpu_us_each();
    let start = Instant::now();
    let monitor = Monitor::start(&ctx.progress, ctx.server.clone(), {
        let stats = ctx.stats.clone();
        move || {
            format!(
                "{} sent, {} delivered, {} errors",
                Stats::count(&stats.sent),
                Stats::count(&stats.done),
                stats.error_count()
            )
        }
    });
    let mut sending = JoinSet::new();
    for (me, wr) in writers.drain(..senders).enumerate() {
        // Senders tick together, as people answering the same message do;
        // --stagger spreads them evenly over one period instead.
        let offset = match opts.stagger {
            true => Duration::from_secs_f64(me as f64 / senders as f64 / opts.rate),
            false => Duration::ZERO,
        };
        let plan = Plan {
            me,
            lines: per_sender,
            rate: opts.rate,
            first: start + offset,
            epoch,
        };
        sending.spawn(send(wr, plan, ctx.stats.clone()));
    }
    while let Some(joined) = sending.join_next().await {
        writers.extend(joined.ok().flatten());
    }

    let sent = Stats::count(&ctx.stats.sent);
    let expected = sent * members.saturating_sub(1);
    let grace_end = Instant::now() + GRACE;
    while Stats::count(&ctx.stats.done) < expected && Instant::now() < grace_end {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = start.elapsed();
    let cpu_after = ctx.cpu_us();
    let each_after = ctx.cpu_us_each();
    let rss_now = ctx.rss_kib();
    let rss_peak = monitor.stop().await.max(rss_now);
    let _ = stop.send(true);
    let mut alive = Vec::new();
    let mut received = Vec::new();
    while let Some(joined) = readers.join_next().await {
        if let Ok(Received { seen, rd }) = joined {
            received.push(seen);
            alive.extend(rd);
        }
    }
    drop((alive, writers));
    let order_violations = order_violations(&received, ids.total());
    drop(received);

    let delivered = Stats::count(&ctx.stats.done);
    let mut report = ctx.report();
    opened.fill(&mut report);
    report.elapsed_s = elapsed.as_secs_f64();
    report.senders = Some(senders);
    report.rate = Some(opts.rate);
    report.sent = Some(sent);
    report.expected = Some(expected);
    report.delivered = Some(delivered);
    report.order_violations = Some(order_violations);
    report.throughput = Some(delivered as f64 / elapsed.as_secs_f64().max(1e-9));
    Percentiles::fill(&ctx.stats.latency(), &mut report);
    report.server_cpu_us_per_op = per_op(cpu_before, cpu_after, delivered);
    report.server_cpu_us_each = each_before.zip(each_after).map(|(before, after)| {
        before
            .iter()
            .zip(after)
            .map(|(b, a)| a.saturating_sub(*b))
            .collect()
    });
    report.server_rss_base_kib = rss_base;
    report.server_rss_per_conn_kib = per_conn(rss_base, rss_peak, members);
    Ok(report)
}

/// When and what one sender sends.
struct Plan {
    me: usize,
    lines: u64,
    rate: f64,
    first: Instant,
    epoch: Instant,
}

/// A member's sending half: a line connection's write half, or a
/// WebSocket's sink.
enum Tx {
    Lines(OwnedWriteHalf),
    Ws(SplitSink<WsStream, Message>),
}

/// A member's receiving half, kept open until the run is measured.
enum Rx {
    Lines(#[allow(dead_code)] OwnedReadHalf),
    Ws(#[allow(dead_code)] SplitStream<WsStream>),
}

/// Sends the stamped lines on schedule; line `k` is due `k / rate` seconds
/// after the first, so a late line does not shift the rest. Over
/// WebSocket each line is one text message, without its `\n`.
async fn send(mut wr: Tx, plan: Plan, stats: Arc<Stats>) -> Option<Tx> {
    let mut line = String::with_capacity(64);
    for seq in 0..plan.lines {
        let due = plan.first + Duration::from_secs_f64(seq as f64 / plan.rate);
        tokio::time::sleep_until(due.into()).await;
        line.clear();
        let stamp = nanos(plan.epoch.elapsed());
        line.push_str(&format!("#b {} {seq} {stamp}", plan.me));
        let sent = match &mut wr {
            Tx::Lines(wr) => {
                line.push('\n');
                wr.write_all(line.as_bytes())
                    .await
                    .map_err(|e| describe(&e))
            }
            Tx::Ws(wr) => {
                let message = Message::text(line.as_str());
                wr.send(message).await.map_err(ws::describe_ws)
            }
        };
        if let Err(e) = sent {
            member_error(&stats, plan.me, format!("cannot send: {e}"));
            return None;
        }
        Stats::add(&stats.sent, 1);
    }
    Some(wr)
}

/// Numbers every stamped line this run sends: `sender * per_sender + seq`.
#[derive(Debug, Clone, Copy)]
struct Ids {
    senders: u64,
    per_sender: u64,
}

impl Ids {
    /// How many lines are numbered, or 0 when they do not fit a `u32` (then
    /// the order is not checked).
    fn total(self) -> usize {
        let total = self.senders.saturating_mul(self.per_sender);
        match u32::try_from(total) {
            Ok(total) if total < u32::MAX => total as usize,
            _ => 0,
        }
    }

    /// The number of sender `from`'s line `seq`, if it is one of this run's.
    fn id(self, from: usize, seq: u64) -> Option<u32> {
        let from = from as u64;
        if from >= self.senders || seq >= self.per_sender || self.total() == 0 {
            return None;
        }
        u32::try_from(from * self.per_sender + seq).ok()
    }
}

/// What one receiving member needs.
struct Reader {
    me: usize,
    epoch: Instant,
    ids: Ids,
    stats: Arc<Stats>,
    stop: watch::Receiver<bool>,
}

/// What one receiving member got: the stamped lines of others, in the
/// order they came, and its read half if the connection is still open.
struct Received {
    seen: Vec<u32>,
    rd: Option<Rx>,
}

impl Reader {
    /// Counts one line received at `now`: a delivery when it is another
    /// member's stamped line.
    fn take(
        &self,
        line: &[u8],
        now: u64,
        latency: &mut Histogram<u64>,
        seen: &mut Vec<u32>,
    ) -> u64 {
        match stamp(line) {
            Some((from, seq, sent)) if from != self.me => {
                record(latency, now.saturating_sub(sent));
                seen.extend(self.ids.id(from, seq));
                1
            }
            Some(_) => 0, // Our own line, if the server echoes it.
            None if is_err(line) => {
                let me = self.me;
                self.stats.error_kind("server sent ERR", || {
                    format!("member {me}: server sent {}", quote(line))
                });
                0
            }
            None => 0, // A greeting, notice or anything else.
        }
    }
}

/// Reads member `me`'s connection until told to stop, counting the stamped
/// lines of other members and recording their order.
async fn receive(mut reader: Reader, mut rd: OwnedReadHalf) -> Received {
    let (me, epoch, stats) = (reader.me, reader.epoch, reader.stats.clone());
    let mut seen = Vec::new();
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        tokio::select! {
            _ = reader.stop.changed() => return Received { seen, rd: Some(Rx::Lines(rd)) },
            result = rd.read_buf(&mut buf) => match result {
                Ok(0) => {
                    member_error(&stats, me, "connection closed by the server".into());
                    return Received { seen, rd: None };
                }
                Ok(_) => {
                    let now = nanos(epoch.elapsed());
                    let mut consumed = 0;
                    let (mut delivered, mut latency) = (0, stats.latency());
                    while let Some(end) = memchr::memchr(b'\n', &buf[consumed..]) {
                        let line = &buf[consumed..consumed + end];
                        consumed += end + 1;
                        delivered += reader.take(line, now, &mut latency, &mut seen);
                    }
                    drop(latency);
                    Stats::add(&stats.done, delivered);
                    buf.drain(..consumed);
                    if buf.len() > MAX_LINE {
                        member_error(&stats, me, format!("line longer than {MAX_LINE} bytes"));
                        return Received { seen, rd: None };
                    }
                }
                Err(e) => {
                    member_error(&stats, me, format!("receive failed: {}", describe(&e)));
                    return Received { seen, rd: None };
                }
            },
        }
    }
}

/// [`receive`] for a WebSocket member: every message is one line.
async fn receive_ws(mut reader: Reader, mut rd: SplitStream<WsStream>) -> Received {
    let (me, epoch, stats) = (reader.me, reader.epoch, reader.stats.clone());
    let mut seen = Vec::new();
    loop {
        tokio::select! {
            _ = reader.stop.changed() => return Received { seen, rd: Some(Rx::Ws(rd)) },
            next = rd.next() => {
                let failure = match next.map(|r| r.map(Incoming::from)) {
                    Some(Ok(Incoming::Line(line))) => {
                        let now = nanos(epoch.elapsed());
                        let delivered = reader.take(&line, now, &mut stats.latency(), &mut seen);
                        Stats::add(&stats.done, delivered);
                        continue;
                    }
                    Some(Ok(Incoming::Control)) => continue,
                    Some(Ok(Incoming::Closed(code))) => ws::closed(code),
                    Some(Err(e)) => format!("receive failed: {}", ws::describe_ws(e)),
                    None => "connection closed by the server".into(),
                };
                member_error(&stats, me, failure);
                return Received { seen, rd: None };
            }
        }
    }
}

/// How many lines receivers got out of the one order of the room.
///
/// Three receivers are references: any two lines are both missing from at
/// most two receivers (their senders), so some reference has both whenever
/// two receivers do. Each receiver is walked against each reference: a line
/// the reference has that comes before the latest such line already seen is
/// out of order. A receiver counts the most it has against any one
/// reference; the result is the sum over receivers: 0 exactly when every
/// receiver saw every pair of lines it shares with another in the same
/// order (given the references got those lines). So that one receiver that
/// got lines out of order counts once rather than making everyone else
/// wrong, the references are the three of the five longest receivers that
/// the others disagree with least. `total` bounds the line numbers.
fn order_violations(seen: &[Vec<u32>], total: usize) -> u64 {
    if total == 0 || seen.len() < 2 {
        return 0;
    }
    let mut position = vec![u32::MAX; total];
    let mut by_length: Vec<usize> = (0..seen.len()).collect();
    by_length.sort_by_key(|&i| std::cmp::Reverse(seen[i].len()));
    let mut candidates: Vec<(u64, Vec<u64>)> = by_length
        .iter()
        .take(5)
        .map(|&r| {
            let each = against(seen, r, &mut position);
            (each.iter().sum(), each)
        })
        .collect();
    candidates.sort_by_key(|(sum, _)| *sum);
    let mut worst = vec![0u64; seen.len()];
    for (_, each) in candidates.iter().take(3) {
        for (w, &v) in worst.iter_mut().zip(each) {
            *w = (*w).max(v);
        }
    }
    worst.iter().sum()
}

/// Each receiver's lines out of reference `r`'s order (0 for `r` itself).
/// `position` is scratch space, one slot per line number.
fn against(seen: &[Vec<u32>], r: usize, position: &mut [u32]) -> Vec<u64> {
    position.fill(u32::MAX);
    for (at, &id) in seen[r].iter().enumerate() {
        let slot = &mut position[id as usize];
        if *slot == u32::MAX {
            *slot = u32::try_from(at).unwrap_or(u32::MAX - 1);
        }
    }
    seen.iter()
        .enumerate()
        .map(|(x, lines)| {
            if x == r {
                return 0;
            }
            let (mut latest, mut violations) = (None, 0);
            for &id in lines {
                let at = position[id as usize];
                if at == u32::MAX {
                    continue;
                }
                match latest {
                    Some(latest) if at < latest => violations += 1,
                    _ => latest = Some(at),
                }
            }
            violations
        })
        .collect()
}

/// Sender, sequence number and send time of a stamped line, wherever the
/// marker appears after a prefix (`NAME: #b 2 17 123456`).
fn stamp(line: &[u8]) -> Option<(usize, u64, u64)> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let at = memchr::memmem::rfind(line, MARKER)?;
    if at > 0 && line[at - 1] != b' ' {
        return None;
    }
    let text = std::str::from_utf8(&line[at + MARKER.len()..]).ok()?;
    let mut fields = text.split(' ');
    let from = fields.next()?.parse().ok()?;
    let seq = fields.next()?.parse().ok()?;
    let sent = fields.next()?.parse().ok()?;
    fields.next().is_none().then_some((from, seq, sent))
}

/// Counts an error of member `me`; its kind leaves out the member.
fn member_error(stats: &Stats, me: usize, what: String) {
    stats.error_kind(&what, || format!("member {me}: {what}"));
}

#[cfg(test)]
mod tests {
    use super::{order_violations, stamp};

    #[test]
    fn one_order_has_no_violations() {
        // Three senders 0, 1, 2 (one line each: ids 0, 1, 2) and two
        // listeners; each sender misses its own line.
        let seen = [
            vec![1, 2],
            vec![0, 2],
            vec![0, 1],
            vec![0, 1, 2],
            vec![0, 1, 2],
        ];
        assert_eq!(order_violations(&seen, 3), 0);
    }

    #[test]
    fn a_swapped_pair_is_a_violation() {
        let seen = [
            vec![0, 1, 2, 3],
            vec![0, 1, 2, 3],
            vec![0, 2, 1, 3],
            vec![0, 1, 2, 3],
        ];
        assert_eq!(order_violations(&seen, 4), 1);
        // Disagreeing only on a line a listener shares with the others.
        let seen = [vec![1, 2], vec![2, 0], vec![0, 1], vec![0, 1, 2]];
        assert!(order_violations(&seen, 3) > 0);
    }

    #[test]
    fn missing_lines_are_not_violations() {
        let seen = [vec![0, 1, 2, 3], vec![0, 3], vec![2], vec![]];
        assert_eq!(order_violations(&seen, 4), 0);
    }

    #[test]
    fn parses_stamps_after_any_prefix() {
        assert_eq!(stamp(b"#b 2 17 123"), Some((2, 17, 123)));
        assert_eq!(stamp(b"alice: #b 0 1 5\r"), Some((0, 1, 5)));
        assert_eq!(stamp(b"* alice joined"), None);
        assert_eq!(stamp(b"x#b 0 1 5"), None);
        assert_eq!(stamp(b"#b 0 1 5 extra"), None);
    }
}
