//! The fan-out scenario, for chat servers: every line a member sends should
//! reach every other member of the room.
//!
//! Members `0..senders` each send `rate` lines a second of the form
//! `#b SENDER SEQ NANOS`, NANOS being the send time since the bench started.
//! Every member reads everything, counts the stamped lines from the others
//! (whatever prefix the server puts before them, e.g. `NAME: `) and records
//! their delivery latency; other lines (greetings, join notices) are ignored.

use super::net::open_all;
use super::stats::{Monitor, Percentiles, Stats, is_err, nanos, quote, record};
use super::{Ctx, Report, per_conn, per_op};
use crate::error::describe;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::watch;
use tokio::task::JoinSet;

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

    // Deliveries are counted in `stats.done`, lines sent in `stats.sent`.
    let (stop, stopped) = watch::channel(false);
    let mut readers = JoinSet::new();
    let mut writers = Vec::new();
    for (me, stream) in std::mem::take(&mut opened.streams).into_iter().enumerate() {
        let (rd, wr) = stream.into_split();
        readers.spawn(receive(me, rd, epoch, ctx.stats.clone(), stopped.clone()));
        // A dropped write half would shut the connection down: keep all.
        writers.push(wr);
    }
    tokio::time::sleep(SETTLE).await;

    let cpu_before = ctx.cpu_us();
    let start = Instant::now();
    let monitor = Monitor::start(&ctx.progress, ctx.server, {
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
    let per_sender = (opts.rate * opts.duration.as_secs_f64()).round() as u64;
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
    let rss_now = ctx.rss_kib();
    let rss_peak = monitor.stop().await.max(rss_now);
    let _ = stop.send(true);
    let mut alive = Vec::new();
    while let Some(joined) = readers.join_next().await {
        alive.extend(joined.ok().flatten());
    }
    drop((alive, writers));

    let delivered = Stats::count(&ctx.stats.done);
    let mut report = ctx.report();
    opened.fill(&mut report);
    report.elapsed_s = elapsed.as_secs_f64();
    report.senders = Some(senders);
    report.rate = Some(opts.rate);
    report.sent = Some(sent);
    report.expected = Some(expected);
    report.delivered = Some(delivered);
    report.throughput = Some(delivered as f64 / elapsed.as_secs_f64().max(1e-9));
    Percentiles::fill(&ctx.stats.latency(), &mut report);
    report.server_cpu_us_per_op = per_op(cpu_before, cpu_after, delivered);
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

/// Sends the stamped lines on schedule; line `k` is due `k / rate` seconds
/// after the first, so a late line does not shift the rest.
async fn send(mut wr: OwnedWriteHalf, plan: Plan, stats: Arc<Stats>) -> Option<OwnedWriteHalf> {
    let mut line = Vec::with_capacity(64);
    for seq in 0..plan.lines {
        let due = plan.first + Duration::from_secs_f64(seq as f64 / plan.rate);
        tokio::time::sleep_until(due.into()).await;
        line.clear();
        let stamp = nanos(plan.epoch.elapsed());
        line.extend_from_slice(format!("#b {} {seq} {stamp}\n", plan.me).as_bytes());
        if let Err(e) = wr.write_all(&line).await {
            stats.error(|| format!("member {} cannot send: {}", plan.me, describe(&e)));
            return None;
        }
        Stats::add(&stats.sent, 1);
    }
    Some(wr)
}

/// Reads member `me`'s connection until told to stop, counting the stamped
/// lines of other members.
async fn receive(
    me: usize,
    mut rd: OwnedReadHalf,
    epoch: Instant,
    stats: Arc<Stats>,
    mut stop: watch::Receiver<bool>,
) -> Option<OwnedReadHalf> {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        tokio::select! {
            _ = stop.changed() => return Some(rd),
            result = rd.read_buf(&mut buf) => match result {
                Ok(0) => {
                    stats.error(|| format!("member {me}: connection closed by the server"));
                    return None;
                }
                Ok(_) => {
                    let now = nanos(epoch.elapsed());
                    let mut consumed = 0;
                    let (mut delivered, mut latency) = (0, stats.latency());
                    while let Some(end) = memchr::memchr(b'\n', &buf[consumed..]) {
                        let line = &buf[consumed..consumed + end];
                        consumed += end + 1;
                        match stamp(line) {
                            Some((from, _seq, sent)) if from != me => {
                                delivered += 1;
                                record(&mut latency, now.saturating_sub(sent));
                            }
                            Some(_) => {} // Our own line, if the server echoes it.
                            None if is_err(line) => {
                                stats.error(|| format!("member {me}: server sent {}", quote(line)));
                            }
                            None => {} // A greeting, notice or anything else.
                        }
                    }
                    drop(latency);
                    Stats::add(&stats.done, delivered);
                    buf.drain(..consumed);
                    if buf.len() > MAX_LINE {
                        stats.error(|| format!("member {me}: line longer than {MAX_LINE} bytes"));
                        return None;
                    }
                }
                Err(e) => {
                    stats.error(|| format!("member {me}: receive failed: {}", describe(&e)));
                    return None;
                }
            },
        }
    }
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

#[cfg(test)]
mod tests {
    use super::stamp;

    #[test]
    fn parses_stamps_after_any_prefix() {
        assert_eq!(stamp(b"#b 2 17 123"), Some((2, 17, 123)));
        assert_eq!(stamp(b"alice: #b 0 1 5\r"), Some((0, 1, 5)));
        assert_eq!(stamp(b"* alice joined"), None);
        assert_eq!(stamp(b"x#b 0 1 5"), None);
        assert_eq!(stamp(b"#b 0 1 5 extra"), None);
    }
}
