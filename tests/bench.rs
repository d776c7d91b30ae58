//! `sockline bench` against real servers on 127.0.0.1 port 0: in-process
//! sockline servers, small std-thread servers written here (one that answers
//! `ERR`, one chat-like broadcaster), and the real binary.
//!
//! No assertion is about speed; every run is bounded by counts and timeouts.

mod common;

use sockline::loadgen::{self, BenchOptions, Report, Scenario};
use sockline::{Config, mode};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::Duration;

/// Runs `f` on its own thread and fails the test if it takes over `secs`.
fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(value) => value,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("did not finish within {secs} s"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("the bench thread panicked"),
    }
}

/// Options for a short run against `addr`.
fn options(addr: SocketAddr) -> BenchOptions {
    BenchOptions {
        addr: addr.to_string(),
        timeout: Duration::from_secs(5),
        ..BenchOptions::default()
    }
}

fn bench(opts: BenchOptions) -> Report {
    within(60, move || loadgen::run(&opts).expect("bench run"))
}

/// A std-thread server on 127.0.0.1:0 that runs `serve` per connection.
fn tiny_server(serve: fn(TcpStream, usize)) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for (id, stream) in listener.incoming().enumerate() {
            let Ok(stream) = stream else { continue };
            std::thread::spawn(move || serve(stream, id));
        }
    });
    addr
}

/// Answers `ERR nope` to every line.
fn err_server(stream: TcpStream, _id: usize) {
    let mut out = stream.try_clone().unwrap();
    for line in BufReader::new(stream).lines() {
        if line.is_err() || out.write_all(b"ERR nope\n").is_err() {
            return;
        }
    }
}

/// The first connection closes on its first line; the others echo.
fn first_conn_hangs_up(stream: TcpStream, id: usize) {
    let mut out = stream.try_clone().unwrap();
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { return };
        if id == 0 || out.write_all(format!("{line}\n").as_bytes()).is_err() {
            return;
        }
    }
}

/// Every member of one room; what chat mode will do, in a few lines.
static ROOM: Mutex<Vec<(usize, TcpStream)>> = Mutex::new(Vec::new());

/// A chat-like broadcaster: greets, announces joins, and forwards every
/// line to all other connections as `u<id>: line`.
fn broadcast_server(stream: TcpStream, id: usize) {
    let mut greeting = stream.try_clone().unwrap();
    let _ = greeting.write_all(format!("* welcome u{id}, /help lists commands\n").as_bytes());
    {
        let mut room = ROOM.lock().unwrap();
        for (_, other) in room.iter_mut() {
            let _ = other.write_all(format!("* u{id} joined\n").as_bytes());
        }
        room.push((id, stream.try_clone().unwrap()));
    }
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { break };
        let message = format!("u{id}: {line}\n");
        let mut room = ROOM.lock().unwrap();
        for (_, other) in room.iter_mut().filter(|(other, _)| *other != id) {
            let _ = other.write_all(message.as_bytes());
        }
    }
    ROOM.lock().unwrap().retain(|(other, _)| *other != id);
}

/// The room of [`swapping_server`], apart from [`ROOM`] so the tests can
/// run at once.
static SWAP_ROOM: Mutex<Vec<(usize, TcpStream)>> = Mutex::new(Vec::new());
/// The connection that gets two lines swapped, and the line held back.
const SWAPPED: usize = 2;
static HELD: Mutex<(bool, Option<String>)> = Mutex::new((false, None));

/// Like [`broadcast_server`], but connection [`SWAPPED`] gets the first two
/// lines it is sent in the wrong order: one order violation.
fn swapping_server(stream: TcpStream, id: usize) {
    SWAP_ROOM
        .lock()
        .unwrap()
        .push((id, stream.try_clone().unwrap()));
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { break };
        let message = format!("u{id}: {line}\n");
        let mut room = SWAP_ROOM.lock().unwrap();
        for (other, out) in room.iter_mut().filter(|(other, _)| *other != id) {
            if *other == SWAPPED {
                let mut held = HELD.lock().unwrap();
                match &mut *held {
                    (false, slot @ None) => *slot = Some(message.clone()),
                    (false, slot @ Some(_)) => {
                        let first = slot.take().unwrap();
                        let _ = out.write_all(format!("{message}{first}").as_bytes());
                        held.0 = true;
                    }
                    (true, _) => {
                        let _ = out.write_all(message.as_bytes());
                    }
                }
                continue;
            }
            let _ = out.write_all(message.as_bytes());
        }
    }
    SWAP_ROOM.lock().unwrap().retain(|(other, _)| *other != id);
}

fn assert_ordered_latency(r: &Report) {
    let (p50, p99, max) = (r.p50_us.unwrap(), r.p99_us.unwrap(), r.max_us.unwrap());
    // Nothing crosses a socket and back within a microsecond.
    assert!(p50 >= 1.0, "p50 {p50} µs");
    assert!(p50 <= p99 && p99 <= max, "p50 {p50} p99 {p99} max {max}");
}

#[test]
fn rr_against_echo_completes_every_request() {
    let server = common::start(mode::Echo, Config::default());
    let r = bench(BenchOptions {
        requests: Some(2000),
        conns: 4,
        pipeline: 8,
        verify_echo: true,
        ..options(server.addr)
    });
    assert_eq!(r.scenario, Scenario::Rr);
    assert_eq!(r.opened, 4);
    assert_eq!(r.sent, Some(2000));
    assert_eq!(r.completed, Some(2000));
    assert_eq!(r.errors, 0, "first error: {:?}", r.first_error);
    assert_ordered_latency(&r);
    assert!(r.throughput.unwrap() > 0.0);
    server.stop().unwrap();
}

#[test]
fn rr_verify_echo_counts_wrong_replies() {
    let server = common::start(mode::Ack, Config::default());
    let r = bench(BenchOptions {
        requests: Some(300),
        conns: 3,
        pipeline: 4,
        verify_echo: true,
        ..options(server.addr)
    });
    assert_eq!(r.completed, Some(300));
    assert_eq!(r.errors, 300);
    assert!(r.first_error.unwrap().contains("does not echo"));
    server.stop().unwrap();
}

#[test]
fn rr_counts_err_replies() {
    let addr = tiny_server(err_server);
    let r = bench(BenchOptions {
        requests: Some(100),
        conns: 2,
        pipeline: 2,
        ..options(addr)
    });
    assert_eq!(r.completed, Some(100));
    assert_eq!(r.errors, 100);
    assert!(r.first_error.unwrap().contains("ERR nope"));
}

#[test]
fn rr_counts_a_connection_closed_early_and_goes_on() {
    let addr = tiny_server(first_conn_hangs_up);
    let r = bench(BenchOptions {
        requests: Some(100),
        conns: 2,
        ..options(addr)
    });
    // The first connection's one request is lost; the other sends the rest.
    assert_eq!(r.opened, 2);
    assert_eq!(r.sent, Some(100));
    assert_eq!(r.completed, Some(99));
    assert_eq!(r.errors, 1);
    assert!(r.first_error.unwrap().contains("closed by the server"));
}

#[test]
fn refused_connection_is_a_one_line_error() {
    let (_held, addr) = common::refusing_addr();
    let opts = options(addr);
    let e = within(30, move || loadgen::run(&opts).unwrap_err());
    let message = e.to_string();
    assert_eq!(
        message,
        format!("cannot connect to {addr}: connection refused")
    );
}

#[test]
fn idle_connections_all_answer() {
    let server = common::start(mode::Ack, Config::default());
    let r = bench(BenchOptions {
        scenario: Scenario::Idle,
        conns: 200,
        hold: Duration::from_millis(200),
        ..options(server.addr)
    });
    assert_eq!(r.opened, 200);
    assert_eq!(r.answered, Some(200));
    assert_eq!(r.errors, 0, "first error: {:?}", r.first_error);
    assert!(r.connect_total_ms.is_some() && r.connect_p99_us.is_some());
    assert_ordered_latency(&r);
    server.stop().unwrap();
}

#[test]
fn idle_reports_server_memory_per_connection() {
    let server = common::serve_binary(&["--quiet"]);
    let r = bench(BenchOptions {
        scenario: Scenario::Idle,
        conns: 200,
        hold: Duration::from_millis(300),
        server_pid: Some(server.child.id()),
        ..options(server.addr)
    });
    assert_eq!(r.answered, Some(200));
    assert!(r.server_rss_base_kib.unwrap() > 0);
    assert!(r.server_rss_per_conn_kib.unwrap().is_finite());
    assert!(r.server_rss_per_conn_answered_kib.unwrap().is_finite());
    assert!(r.server_cpu_us_per_op.unwrap().is_finite());
}

#[test]
fn fanout_delivers_every_line_to_every_other_member() {
    let addr = tiny_server(broadcast_server);
    let r = bench(BenchOptions {
        scenario: Scenario::Fanout,
        conns: 10,
        senders: 3,
        rate: 50.0,
        duration: Duration::from_secs(1),
        ..options(addr)
    });
    assert_eq!(r.opened, 10);
    assert_eq!(r.sent, Some(150));
    assert_eq!(r.expected, Some(150 * 9));
    assert_eq!(r.delivered, r.expected);
    assert_eq!(r.errors, 0, "first error: {:?}", r.first_error);
    assert_ordered_latency(&r);
}

#[test]
fn fanout_counts_lines_a_receiver_got_out_of_order() {
    let addr = tiny_server(swapping_server);
    let r = bench(BenchOptions {
        scenario: Scenario::Fanout,
        conns: 6,
        senders: 2,
        rate: 50.0,
        duration: Duration::from_secs(1),
        ..options(addr)
    });
    assert_eq!(r.opened, 6);
    assert_eq!(r.delivered, r.expected);
    assert_eq!(r.errors, 0, "first error: {:?}", r.first_error);
    assert_eq!(r.order_violations, Some(1));
}

/// Two real chat nodes on one real Redis.
fn two_nodes(redis: &common::RedisServer) -> [common::Binary; 2] {
    ["a", "b"].map(|node| {
        common::serve_binary(&[
            "--mode",
            "chat",
            "-q",
            "--redis",
            &redis.url(),
            "--node",
            node,
        ])
    })
}

#[test]
fn fanout_spreads_members_over_the_nodes_of_a_cluster() {
    let redis = common::RedisServer::start();
    let [a, b] = two_nodes(&redis);
    let r = bench(BenchOptions {
        scenario: Scenario::Fanout,
        also: vec![b.addr.to_string()],
        conns: 10,
        senders: 4,
        rate: 50.0,
        duration: Duration::from_secs(1),
        server_pid: Some(a.child.id()),
        also_pids: vec![b.child.id(), redis.child.id()],
        ..options(a.addr)
    });
    assert_eq!(r.addr, format!("{},{}", a.addr, b.addr));
    assert_eq!(r.opened, 10);
    assert_eq!(r.sent, Some(200));
    // Only members on both nodes hearing each other get every line.
    assert_eq!(r.delivered, r.expected);
    assert_eq!(r.order_violations, Some(0));
    assert_eq!(r.errors, 0, "first error: {:?}", r.first_error);
    assert!(r.server_cpu_us_per_op.unwrap().is_finite());
    assert_eq!(r.server_cpu_us_each.map(|each| each.len()), Some(3));
    assert!(r.server_rss_base_kib.unwrap() > 0);
}

#[test]
fn several_addresses_are_for_fanout_only() {
    let opts = BenchOptions {
        also: vec!["127.0.0.1:1".into()],
        ..options("127.0.0.1:2".parse().unwrap())
    };
    let e = loadgen::run(&opts).unwrap_err();
    assert!(e.to_string().contains("fanout only"), "{e}");
}

/// Runs the real binary's `bench` with `args`; returns its stdout.
fn run_cli(args: Vec<String>) -> String {
    within(120, move || {
        let out = Command::new(common::bin())
            .arg("bench")
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("run sockline bench");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "bench failed: {stderr}");
        String::from_utf8(out.stdout).unwrap()
    })
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

#[test]
fn cli_prints_json() {
    let server = common::serve_binary(&["--quiet"]);
    let addr = server.addr.to_string();
    let out = run_cli(strings(&[
        &addr,
        "--requests",
        "500",
        "--conns",
        "2",
        "--timeout",
        "5",
        "--json",
    ]));
    let r: Report = serde_json::from_str(&out).expect("one JSON report");
    assert_eq!(r.completed, Some(500));
    assert_eq!(r.errors, 0);
    let raw: serde_json::Value = serde_json::from_str(&out).unwrap();
    for field in [
        "scenario",
        "throughput",
        "p50_us",
        "p99_us",
        "p999_us",
        "max_us",
    ] {
        assert!(raw.get(field).is_some(), "no field {field}");
    }
}

#[test]
fn cli_prints_a_table() {
    let server = common::serve_binary(&["--quiet"]);
    let out = run_cli(strings(&[
        &server.addr.to_string(),
        "--requests",
        "100",
        "--conns",
        "2",
        "--server-pid",
        &server.child.id().to_string(),
    ]));
    for label in [
        "throughput",
        "latency p99",
        "errors",
        "server CPU",
        "server RSS/conn",
    ] {
        assert!(out.contains(label), "no {label} in:\n{out}");
    }
}

#[test]
fn cli_sweep_draws_a_plot() {
    let server = common::serve_binary(&["--quiet"]);
    let svg = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bench-sweep-{}.svg", std::process::id()));
    let _ = std::fs::remove_file(&svg);
    let base = [
        server.addr.to_string(),
        "--requests".into(),
        "200".into(),
        "--sweep".into(),
        "1,4".into(),
        "--timeout".into(),
        "5".into(),
    ];
    let mut json_args = base.to_vec();
    json_args.extend(strings(&["--json", "--plot", svg.to_str().unwrap()]));
    let rows: Vec<Report> = serde_json::from_str(&run_cli(json_args)).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!((rows[0].conns, rows[1].conns), (1, 4));
    assert!(rows.iter().all(|r| r.completed == Some(200)));
    let drawn = std::fs::read_to_string(&svg).expect("the plot file");
    assert!(drawn.starts_with("<svg") || drawn.starts_with("<?xml"));
    let _ = std::fs::remove_file(&svg);

    // The table has a header and one row per connection count.
    let table = run_cli(base.to_vec());
    assert_eq!(table.lines().count(), 3, "{table}");
}

#[test]
fn cli_fanout_takes_a_list_of_addresses_and_several_pids() {
    let redis = common::RedisServer::start();
    let [a, b] = two_nodes(&redis);
    let pids = [a.child.id(), b.child.id(), redis.child.id()].map(|p| p.to_string());
    let list = format!("{},{}", a.addr, b.addr);
    let mut args = strings(&[
        &list,
        "--scenario",
        "fanout",
        "--conns",
        "6",
        "--senders",
        "2",
        "--rate",
        "20",
        "--duration",
        "1",
        "--timeout",
        "5",
    ]);
    for pid in &pids {
        args.extend(strings(&["--server-pid", pid]));
    }
    let table = run_cli(args.clone());
    for label in ["order violations", "server CPU"] {
        assert!(table.contains(label), "no {label} in:\n{table}");
    }
    args.push("--json".into());
    let raw: serde_json::Value = serde_json::from_str(&run_cli(args)).unwrap();
    assert_eq!(raw["order_violations"], 0);
    assert_eq!(raw["delivered"], raw["expected"]);
    assert_eq!(raw["addr"], list.as_str());
}

#[test]
fn cli_rejects_plot_without_sweep() {
    let out = Command::new(common::bin())
        .args(["bench", "127.0.0.1:1", "--plot", "x.svg"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn cli_connect_error_is_one_line() {
    let (_held, addr) = common::refusing_addr();
    let out = within(30, move || {
        Command::new(common::bin())
            .args(["bench", &addr.to_string(), "--requests", "10"])
            .output()
            .unwrap()
    });
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim_end(),
        format!("sockline: cannot connect to {addr}: connection refused")
    );
}

#[test]
fn sweep_runs_rr_once_per_count() {
    let server = common::start(mode::Echo, Config::default());
    let opts = BenchOptions {
        requests: Some(100),
        ..options(server.addr)
    };
    let rows = within(60, move || loadgen::sweep(&opts, &[1, 3]).unwrap());
    assert_eq!(rows.iter().map(|r| r.opened).collect::<Vec<_>>(), [1, 3]);
    server.stop().unwrap();
}

/// `ws://IP:PORT/ws` of a real server started with `--web`, from the
/// `web listening on IP:PORT` line before its "listening on" one.
fn ws_url(server: &common::Binary) -> String {
    const LINE: &str = "web listening on ";
    let line = (server.banner.lines())
        .find(|line| line.contains(LINE))
        .unwrap_or_else(|| panic!("no web address in: {}", server.banner));
    let at = line.find(LINE).unwrap() + LINE.len();
    let addr: SocketAddr = line[at..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    format!("ws://{addr}/ws")
}

#[test]
fn cli_bench_speaks_websocket_rr_and_idle() {
    let server = common::serve_binary(&["--quiet", "--mode", "echo", "--web", "127.0.0.1:0"]);
    let url = ws_url(&server);
    let pid = server.child.id().to_string();
    let common = [
        "--verify-echo",
        "--timeout",
        "5",
        "--json",
        "--server-pid",
        &pid,
    ];

    let mut args = strings(&[
        &url,
        "--requests",
        "2000",
        "--conns",
        "4",
        "--pipeline",
        "8",
    ]);
    args.extend(strings(&common));
    let r: Report = serde_json::from_str(&run_cli(args)).unwrap();
    assert_eq!((r.opened, r.errors), (4, 0), "{:?}", r.first_error);
    assert_eq!(r.completed, Some(2000));
    assert_eq!(r.addr, url);
    assert_ordered_latency(&r);
    assert!(r.server_cpu_us_per_op.is_some());

    let mut args = strings(&[&url, "--scenario", "idle", "--conns", "20", "--hold", "0.2"]);
    args.extend(strings(&common));
    let r: Report = serde_json::from_str(&run_cli(args)).unwrap();
    assert_eq!(
        (r.opened, r.answered, r.errors),
        (20, Some(20), 0),
        "{:?}",
        r.first_error
    );
    assert!(r.server_rss_per_conn_kib.is_some());

    // A path that is no WebSocket: one line, saying what the server said.
    let out = within(30, {
        let url = url.replace("/ws", "/nope");
        move || {
            Command::new(common::bin())
                .args(["bench", &url, "--requests", "10", "--timeout", "5"])
                .output()
                .unwrap()
        }
    });
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("HTTP 404"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
}

#[test]
fn cli_bench_fanout_over_websocket_and_mixed_with_lines() {
    let server = common::serve_binary(&["--quiet", "--mode", "chat", "--web", "127.0.0.1:0"]);
    let url = ws_url(&server);
    let fanout = ["--scenario", "fanout", "--conns", "6", "--senders", "2"];
    let run = [
        "--rate",
        "20",
        "--duration",
        "1",
        "--timeout",
        "5",
        "--json",
    ];
    // All members on WebSocket, then half of them on TCP in the same room.
    for addr in [url.clone(), format!("{url},{}", server.addr)] {
        let mut args = strings(&[&addr]);
        args.extend(strings(&fanout));
        args.extend(strings(&run));
        let r: Report = serde_json::from_str(&run_cli(args)).unwrap();
        assert_eq!((r.opened, r.errors), (6, 0), "{addr}: {:?}", r.first_error);
        assert_eq!(r.sent, Some(40), "{addr}");
        assert_eq!(r.delivered, r.expected, "{addr}");
        assert_eq!(r.order_violations, Some(0), "{addr}");
        assert_eq!(r.addr, addr);
    }
}

/// The first connection closes on its first line; the others answer `ERR`.
fn first_hangs_up_others_err(stream: TcpStream, id: usize) {
    if id == 0 {
        let mut line = String::new();
        let _ = BufReader::new(stream).read_line(&mut line);
        return;
    }
    err_server(stream, id)
}

#[test]
fn every_kind_of_error_is_counted() {
    let addr = tiny_server(first_hangs_up_others_err);
    let r = bench(BenchOptions {
        requests: Some(40),
        conns: 3,
        ..options(addr)
    });
    let kinds: Vec<(&str, u64)> = r
        .error_counts
        .iter()
        .map(|e| (e.error.as_str(), e.count))
        .collect();
    assert_eq!(
        kinds,
        [
            ("server answered ERR", r.errors - 1),
            ("connection closed by the server", 1)
        ],
        "{r:?}"
    );
}

/// Runs the real binary's `bench` with `args`, expecting it to fail.
fn run_cli_failing(args: Vec<String>) -> std::process::Output {
    within(120, move || {
        Command::new(common::bin())
            .arg("bench")
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("run sockline bench")
    })
}

#[test]
fn cli_exits_1_when_requests_erred_and_names_each_error() {
    // The default mode answers " MSG Received", not the line.
    let server = common::serve_binary(&["--quiet"]);
    let addr = server.addr.to_string();
    let out = run_cli_failing(strings(&[
        &addr,
        "--requests",
        "200",
        "--conns",
        "2",
        "--verify-echo",
    ]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    let errors = stdout.lines().find(|l| l.starts_with("errors")).unwrap();
    assert!(
        errors.ends_with(" 200 reply is not the echo of the request"),
        "{stdout}"
    );
    assert_eq!(stderr.trim_end(), "sockline: 200 errors (see above)");

    let out = run_cli_failing(strings(&[
        &addr,
        "--requests",
        "20",
        "--json",
        "--verify-echo",
    ]));
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        json["error_counts"],
        serde_json::json!([{"error": "reply is not the echo of the request", "count": 20}])
    );

    // Without errors, success.
    run_cli(strings(&[&addr, "--requests", "20"]));
}

#[test]
fn cli_ctrl_c_prints_the_figures_so_far() {
    let server = common::serve_binary(&["--quiet"]);
    let addr = server.addr.to_string();
    let child = Command::new(common::bin())
        .args(["bench", &addr, "--duration", "60", "--conns", "2"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = within(20, move || child.wait_with_output().unwrap());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(130),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("interrupted"), "{stdout}");
    let completed: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("completed"))
        .expect("a completed line")
        .trim()
        .parse()
        .unwrap();
    assert!(completed > 0, "{stdout}");
    assert!(stdout.contains("latency p99"), "{stdout}");
}

/// Peer addresses the `peers_server` saw.
static PEERS: Mutex<Vec<SocketAddr>> = Mutex::new(Vec::new());

/// Records the peer's address, then answers `ok` to every line.
fn peers_server(stream: TcpStream, _id: usize) {
    PEERS.lock().unwrap().push(stream.peer_addr().unwrap());
    let mut out = stream.try_clone().unwrap();
    for line in BufReader::new(stream).lines() {
        if line.is_err() || out.write_all(b"ok\n").is_err() {
            return;
        }
    }
}

#[test]
fn idle_spreads_connections_over_source_addresses_from_the_start() {
    let addr = tiny_server(peers_server);
    let r = bench(BenchOptions {
        scenario: Scenario::Idle,
        conns: 40,
        hold: Duration::from_millis(100),
        ..options(addr)
    });
    assert_eq!(r.answered, Some(40), "{r:?}");
    assert!(r.connect_rate.unwrap() > 0.0);
    let peers = PEERS.lock().unwrap();
    let sources: std::collections::HashSet<_> = peers.iter().map(|a| a.ip()).collect();
    assert!(sources.len() > 1, "all from {sources:?}");
}
