//! `sockline bench`: a load generator for any line server, what
//! redis-benchmark is for Redis. (The module is `loadgen`, not `bench`: in
//! this repository `benches/` is cargo's micro-benchmarks and `perf/` the
//! scripts that compare servers with this generator.)
//!
//! Three scenarios, each a question a line server must answer well:
//!
//! - **rr** (request/reply): how many lines a second, at what latency? `conns`
//!   connections each keep `pipeline` requests in flight; every request is one
//!   line and expects exactly one reply line.
//! - **idle**: what does a held connection cost? Opens `conns` connections,
//!   holds them, then has each say one line, sampling the server's memory in
//!   between.
//! - **fanout**: how fast does a chat room deliver? `senders` members send
//!   stamped lines at `rate` a second and every member measures how many of
//!   the others' lines arrived and how late.
//!
//! Every scenario also runs over WebSocket: a `ws://HOST:PORT/PATH` target
//! is a server whose messages are lines, one line a message without its
//! `\n` (see `ws`). Each connection is either a line connection or a
//! WebSocket one (`net::Conn`), and each scenario drives them with code of
//! their own, so the line path is the same as without WebSocket.
//!
//! With a server pid, the server's CPU time and resident memory are read from
//! `/proc` around the measured phase, so one run gives "µs of server CPU per
//! reply" and "KiB per connection" without a profiler.
//!
//! The generator is tokio on one thread: it is meant to be pinned to its own
//! CPU (`taskset -c 1`) next to a server pinned to another, and one thread
//! keeps its cost predictable. Requests are written in batches and replies
//! parsed straight from the read buffer, so one core drives far more load
//! than a server on one core answers.
//!
//! Built with the `bench` feature (on by default): tokio, tokio-tungstenite,
//! the histograms, the progress line and the plots serve this module only, and the server
//! does without them.

mod fanout;
mod idle;
mod net;
mod output;
mod proc;
mod rr;
mod stats;
mod ws;

pub use output::{plot, write_json, write_table};

use crate::error::describe;
use serde::{Deserialize, Serialize};
use stats::{Progress, Stats};
use std::fmt;
use std::io::{self, IsTerminal};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// What kind of load to generate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Request/reply: every line gets one reply line; measures throughput
    /// and latency.
    #[default]
    Rr,
    /// Open many connections, hold them idle, then have each say one line.
    Idle,
    /// Chat fan-out: some members send stamped lines, all others receive them.
    Fanout,
}

/// How to load the server; [`BenchOptions::default`] matches the CLI's
/// defaults.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Server address: `HOST:PORT` for a line server, or
    /// `ws://HOST:PORT/PATH` for a WebSocket endpoint whose messages are
    /// lines. It may be a comma-separated list for fanout, like `also`.
    pub addr: String,
    /// fanout: more server addresses; members are spread over `addr` and
    /// these round-robin (member `i` on address `i % n`).
    pub also: Vec<String>,
    /// What kind of load.
    pub scenario: Scenario,
    /// Connections (rr, idle) or room members (fanout).
    pub conns: usize,
    /// rr: requests in flight per connection.
    pub pipeline: usize,
    /// rr and fanout: how long to send.
    pub duration: Duration,
    /// rr: total requests to send; when set, it wins over `duration`.
    pub requests: Option<u64>,
    /// The request line (rr, idle), without its `\n`.
    pub payload: String,
    /// rr and idle: a reply must equal its request line, or it is an error.
    pub verify_echo: bool,
    /// idle: how long to hold the connections before each says its line.
    pub hold: Duration,
    /// fanout: how many members send.
    pub senders: usize,
    /// fanout: lines a second per sender.
    pub rate: f64,
    /// fanout: spread the senders evenly over one period instead of having
    /// them all send on the same tick.
    pub stagger: bool,
    /// Process id of the server, to sample its CPU time and memory.
    pub server_pid: Option<u32>,
    /// More processes whose CPU time and memory add to the server's (the
    /// other nodes of a cluster, Redis).
    pub also_pids: Vec<u32>,
    /// How long to wait for a connect, or for a reply while one is owed,
    /// before counting an error.
    pub timeout: Duration,
    /// Show a live progress line on stderr (only when it is a terminal).
    pub progress: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            addr: "127.0.0.1:5000".into(),
            also: Vec::new(),
            scenario: Scenario::Rr,
            conns: 50,
            pipeline: 1,
            duration: Duration::from_secs(10),
            requests: None,
            payload: "hello".into(),
            verify_echo: false,
            hold: Duration::from_secs(1),
            senders: 1,
            rate: 10.0,
            stagger: false,
            server_pid: None,
            also_pids: Vec::new(),
            timeout: Duration::from_secs(10),
            progress: false,
        }
    }
}

/// The outcome of one run. Serialized with `--json`; every field below is
/// always present (`null` where it does not apply), and the names are
/// stable:
///
/// | field | scenarios | meaning |
/// | --- | --- | --- |
/// | `scenario` | all | `"rr"`, `"idle"` or `"fanout"` |
/// | `addr` | all | the server address connected to (`ws://IP:PORT/PATH` for a WebSocket); fanout over several: all of them, comma-separated |
/// | `conns` | all | connections asked for |
/// | `opened` | all | connections established |
/// | `elapsed_s` | all | seconds of the measured phase (rr: first request to last reply; idle: all lines sent and answered; fanout: first send to last delivery or the end of the grace period) |
/// | `errors` | all | failed connects, connections lost early, `ERR` replies, wrong or missing replies |
/// | `first_error` | all | the first error's message, or `null` |
/// | `error_counts` | all | every kind of error seen, most frequent first: `[{"error": "reply is not the echo of the request", "count": 3}]` (empty without errors) |
/// | `interrupted` | all | true when Ctrl-C stopped the run: the figures are those so far |
/// | `connect_rate` | all | connections opened per second while opening them all: the server's accept rate (idle) |
/// | `connect_total_ms` | all | milliseconds to open all connections (WebSocket: connect and upgrade) |
/// | `connect_p99_us` | all | 99th percentile of one connect (WebSocket: with its upgrade), µs |
/// | `pipeline` | rr | requests in flight per connection |
/// | `sent` | rr, fanout | requests (rr) or stamped lines (fanout) sent |
/// | `completed` | rr | requests that got their reply line (right or wrong) |
/// | `throughput` | rr, fanout | replies (rr) or deliveries (fanout) per second |
/// | `p50_us`, `p99_us`, `p999_us`, `max_us` | all | latency in µs: rr request to reply; idle line to reply; fanout send to delivery |
/// | `answered` | idle | connections whose one line was answered correctly |
/// | `senders`, `rate` | fanout | sending members and lines/s each |
/// | `expected` | fanout | `sent × (opened − 1)` |
/// | `delivered` | fanout | stamped lines received from other members |
/// | `order_violations` | fanout | stamped lines a receiver got in another relative order than the other receivers did (0: every receiver saw the lines it shares with any other in the same order) |
/// | `server_cpu_us_per_op` | with a server pid | server CPU µs per reply (rr), per connection (idle) or per delivery (fanout); with several pids, their sum |
/// | `server_cpu_us_each` | fanout, with several server pids (only then present) | CPU µs each process spent in the measured phase, in `--server-pid` order |
/// | `server_rss_base_kib` | with a server pid | server RSS before connecting, KiB |
/// | `server_rss_per_conn_kib` | with a server pid | (RSS under load − base) / opened: rr and fanout peak while loaded; idle while all are held idle |
/// | `server_rss_per_conn_answered_kib` | idle, with a server pid | (RSS after every connection answered once − base) / opened |
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// What kind of load ran.
    pub scenario: Scenario,
    /// The server address.
    pub addr: String,
    /// Connections asked for.
    pub conns: usize,
    /// Connections established.
    pub opened: u64,
    /// Seconds of the measured phase.
    pub elapsed_s: f64,
    /// Errors of every kind.
    pub errors: u64,
    /// The first error's message.
    pub first_error: Option<String>,
    /// Every kind of error seen and how many, most frequent first.
    #[serde(default)]
    pub error_counts: Vec<ErrorCount>,
    /// Ctrl-C stopped the run; the figures are those so far.
    #[serde(default)]
    pub interrupted: bool,
    /// Connections opened a second while opening them all.
    #[serde(default)]
    pub connect_rate: Option<f64>,
    /// Milliseconds to open all connections.
    pub connect_total_ms: Option<f64>,
    /// 99th percentile of one connect, µs.
    pub connect_p99_us: Option<f64>,
    /// rr: requests in flight per connection.
    pub pipeline: Option<usize>,
    /// rr: requests sent; fanout: stamped lines sent.
    pub sent: Option<u64>,
    /// rr: requests that got a reply line.
    pub completed: Option<u64>,
    /// rr: replies a second; fanout: deliveries a second.
    pub throughput: Option<f64>,
    /// Median latency, µs.
    pub p50_us: Option<f64>,
    /// 99th percentile latency, µs.
    pub p99_us: Option<f64>,
    /// 99.9th percentile latency, µs.
    pub p999_us: Option<f64>,
    /// Highest latency, µs.
    pub max_us: Option<f64>,
    /// idle: connections answered correctly.
    pub answered: Option<u64>,
    /// fanout: sending members.
    pub senders: Option<usize>,
    /// fanout: lines a second per sender.
    pub rate: Option<f64>,
    /// fanout: deliveries expected.
    pub expected: Option<u64>,
    /// fanout: deliveries received.
    pub delivered: Option<u64>,
    /// fanout: lines received out of the order the other receivers saw.
    #[serde(default)]
    pub order_violations: Option<u64>,
    /// Server CPU µs per reply, connection or delivery.
    pub server_cpu_us_per_op: Option<f64>,
    /// fanout with several server pids: CPU µs each spent in the measured
    /// phase, in the order given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_cpu_us_each: Option<Vec<u64>>,
    /// Server RSS before connecting, KiB.
    pub server_rss_base_kib: Option<u64>,
    /// Server RSS per connection under load (idle: while held), KiB.
    pub server_rss_per_conn_kib: Option<f64>,
    /// idle: server RSS per connection after each answered once, KiB.
    pub server_rss_per_conn_answered_kib: Option<f64>,
}

/// One kind of error and how many times it happened.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ErrorCount {
    /// The error, without details that vary from one to the next.
    pub error: String,
    /// How many times.
    pub count: u64,
}

/// Runs one scenario against `opts.addr` and reports what it measured.
///
/// Errors are for runs that cannot start or measure nothing (bad options,
/// an address that does not resolve, no connection at all); anything that
/// goes wrong on some connections is counted in [`Report::errors`].
pub fn run(opts: &BenchOptions) -> io::Result<Report> {
    validate(opts)?;
    let targets = addresses(opts)?
        .iter()
        .map(|addr| Target::parse(addr))
        .collect::<io::Result<Vec<_>>>()?;
    // Thousands of connections need thousands of descriptors; a failure only
    // shows later as connect errors, which are reported.
    let _ = crate::server::raise_fd_limit();
    let pids: Vec<u32> = opts
        .server_pid
        .into_iter()
        .chain(opts.also_pids.iter().copied())
        .collect();
    let server = match pids.is_empty() {
        true => None,
        false => Some(proc::ServerProc::open(&pids)?),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let ctx = Ctx {
        opts,
        target: targets[0].clone(),
        targets,
        server,
        progress: Progress::new(opts.progress),
        stats: Arc::new(Stats::new()?),
    };
    let started = std::time::Instant::now();
    let result = runtime.block_on(async {
        let scenario = async {
            match opts.scenario {
                Scenario::Rr => rr::run(&ctx).await,
                Scenario::Idle => idle::run(&ctx).await,
                Scenario::Fanout => fanout::run(&ctx).await,
            }
        };
        tokio::select! {
            result = scenario => result,
            // Like wrk: Ctrl-C ends the run, and the figures so far are
            // reported. Without the handler it is not caught at all.
            Ok(()) = tokio::signal::ctrl_c() => Ok(ctx.interrupted(started.elapsed())),
        }
    });
    ctx.progress.finish();
    result
}

/// Runs the rr scenario once per connection count in `conns`, in order.
pub fn sweep(opts: &BenchOptions, conns: &[usize]) -> io::Result<Vec<Report>> {
    if opts.scenario != Scenario::Rr {
        return Err(invalid("--sweep works with --scenario rr only"));
    }
    let mut reports = Vec::new();
    for &n in conns {
        let report = run(&BenchOptions {
            conns: n,
            ..opts.clone()
        })?;
        let interrupted = report.interrupted;
        reports.push(report);
        if interrupted {
            break;
        }
    }
    Ok(reports)
}

/// The `bench` command: one run (or a sweep when `sweep` is not empty),
/// printed to stdout as a table or JSON, and for a sweep optionally drawn
/// to an SVG file.
pub fn command(
    opts: &BenchOptions,
    sweep_conns: &[usize],
    json: bool,
    plot_to: Option<&Path>,
) -> io::Result<()> {
    if plot_to.is_some() && sweep_conns.is_empty() {
        return Err(invalid("--plot needs --sweep"));
    }
    let reports = if sweep_conns.is_empty() {
        vec![run(opts)?]
    } else {
        sweep(opts, sweep_conns)?
    };
    if let Some(path) = plot_to {
        plot(&reports, path)?;
    }
    let mut stdout = io::stdout().lock();
    if json {
        write_json(&mut stdout, &reports)?;
    } else {
        write_table(&mut stdout, &reports)?;
    }
    io::Write::flush(&mut stdout)?;
    if reports.iter().any(|r| r.interrupted) {
        // 128 + SIGINT, as a shell reports a command Ctrl-C stopped.
        std::process::exit(130);
    }
    let errors: u64 = reports.iter().map(|r| r.errors).sum();
    if errors > 0 {
        return Err(io::Error::other(format!(
            "{errors} error{} (see above)",
            if errors == 1 { "" } else { "s" }
        )));
    }
    Ok(())
}

/// One server to load: a line server at `HOST:PORT`, or a WebSocket
/// endpoint at `ws://HOST:PORT/PATH` whose messages are lines.
#[derive(Debug, Clone)]
struct Target {
    addr: SocketAddr,
    /// For `ws://`: the URL to upgrade to.
    ws: Option<Arc<ws::WsUrl>>,
}

impl Target {
    fn parse(addr: &str) -> io::Result<Target> {
        Ok(match ws::parse(addr)? {
            Some(url) => Target {
                addr: resolve(&url.authority)?,
                ws: Some(Arc::new(url)),
            },
            None => Target {
                addr: resolve(addr)?,
                ws: None,
            },
        })
    }
}

/// `HOST:PORT` for a line server, `ws://IP:PORT/PATH` for a WebSocket.
impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.ws {
            Some(url) => write!(f, "ws://{}{}", self.addr, url.path),
            None => write!(f, "{}", self.addr),
        }
    }
}

/// What every scenario needs while it runs.
struct Ctx<'a> {
    opts: &'a BenchOptions,
    /// The first address.
    target: Target,
    /// Every address, the first included; connection `i` goes to
    /// `targets[i % targets.len()]`.
    targets: Vec<Target>,
    server: Option<proc::ServerProc>,
    progress: Progress,
    stats: Arc<Stats>,
}

impl Ctx<'_> {
    /// A report with the fields every scenario fills the same way.
    fn report(&self) -> Report {
        let (errors, first_error) = self.stats.errors();
        Report {
            scenario: self.opts.scenario,
            addr: self
                .targets
                .iter()
                .map(Target::to_string)
                .collect::<Vec<_>>()
                .join(","),
            conns: self.opts.conns,
            errors,
            first_error,
            error_counts: self
                .stats
                .error_kinds()
                .into_iter()
                .map(|(error, count)| ErrorCount { error, count })
                .collect(),
            ..Report::default()
        }
    }

    /// The report of a run Ctrl-C stopped: the counters so far, over
    /// `elapsed` since the run began (connecting included).
    fn interrupted(&self, elapsed: Duration) -> Report {
        let stats = &self.stats;
        let done = Stats::count(&stats.done);
        let mut report = self.report();
        report.interrupted = true;
        report.opened = Stats::count(&stats.opened);
        report.elapsed_s = elapsed.as_secs_f64();
        match self.opts.scenario {
            Scenario::Rr => {
                report.pipeline = Some(self.opts.pipeline);
                report.sent = Some(Stats::count(&stats.sent));
                report.completed = Some(done);
            }
            Scenario::Idle => report.answered = Some(done),
            Scenario::Fanout => {
                report.sent = Some(Stats::count(&stats.sent));
                report.delivered = Some(done);
            }
        }
        if self.opts.scenario != Scenario::Idle {
            report.throughput = Some(done as f64 / elapsed.as_secs_f64().max(1e-9));
        }
        stats::Percentiles::fill(&stats.latency(), &mut report);
        report
    }

    fn cpu_us(&self) -> Option<u64> {
        self.server.as_ref().and_then(|s| s.cpu_us())
    }

    fn cpu_us_each(&self) -> Option<Vec<u64>> {
        self.server.as_ref().and_then(|s| s.cpu_us_each())
    }

    fn rss_kib(&self) -> Option<u64> {
        self.server.as_ref().and_then(|s| s.rss_kib())
    }
}

/// CPU µs spent between two samples, per `ops` operations.
fn per_op(before: Option<u64>, after: Option<u64>, ops: u64) -> Option<f64> {
    let spent = after?.checked_sub(before?)?;
    (ops > 0).then(|| spent as f64 / ops as f64)
}

/// KiB of RSS growth over `base`, per connection.
fn per_conn(base: Option<u64>, now: Option<u64>, conns: u64) -> Option<f64> {
    let (base, now) = (base? as f64, now? as f64);
    (conns > 0).then(|| (now - base) / conns as f64)
}

fn validate(opts: &BenchOptions) -> io::Result<()> {
    if opts.conns == 0 {
        return Err(invalid("--conns must be at least 1"));
    }
    if opts.pipeline == 0 {
        return Err(invalid("--pipeline must be at least 1"));
    }
    if opts.payload.contains(['\n', '\r']) {
        return Err(invalid("--payload must be one line"));
    }
    if opts.scenario == Scenario::Fanout {
        if opts.senders == 0 || opts.senders > opts.conns {
            return Err(invalid(format!(
                "--senders must be between 1 and --conns ({})",
                opts.conns
            )));
        }
        if !(opts.rate.is_finite() && opts.rate > 0.0) {
            return Err(invalid("--rate must be a positive number"));
        }
    }
    Ok(())
}

/// Every server address: the comma-separated `addr`, then `also`. More than
/// one only for fanout.
fn addresses(opts: &BenchOptions) -> io::Result<Vec<String>> {
    let all: Vec<String> = opts
        .addr
        .split(',')
        .chain(opts.also.iter().map(String::as_str))
        .map(str::trim)
        .map(String::from)
        .collect();
    if all.iter().any(String::is_empty) {
        return Err(invalid(format!("empty address in {:?}", opts.addr)));
    }
    if all.len() > 1 && opts.scenario != Scenario::Fanout {
        return Err(invalid(
            "several addresses (--also, or a comma-separated list) work with --scenario fanout only",
        ));
    }
    Ok(all)
}

/// Resolves `HOST:PORT`, preferring IPv4 as servers here listen on it.
fn resolve(addr: &str) -> io::Result<SocketAddr> {
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot resolve {addr}: {}", describe(&e))))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| invalid(format!("cannot resolve {addr}: no address")))
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.into())
}

/// True when stderr is a terminal a person watches.
fn stderr_is_terminal() -> bool {
    io::stderr().is_terminal()
}
