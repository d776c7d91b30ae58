//! What an operator sees: Prometheus counters and machine-readable logs.

mod common;

use common::{connect, read_n, read_to_close, send, start};
use sockline::mode::Ack;
use sockline::{Config, metrics};
use std::sync::Arc;

const REPLY: &[u8] = b" MSG Received\n";

use common::scrape;

/// Scrapes until `ready` holds (or 10 s pass: the assertions then fail).
fn scrape_until(addr: std::net::SocketAddr, ready: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let text = scrape(addr, "/metrics");
        if ready(&text) || std::time::Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Starts `/metrics` for `config`'s counters on 127.0.0.1:0.
fn serve_metrics(config: &Config) -> std::net::SocketAddr {
    let http = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = http.local_addr().unwrap();
    metrics::serve(http, Arc::clone(&config.metrics)).unwrap();
    addr
}

#[test]
fn metrics_show_queued_bytes_and_rate_limiting() {
    let config = Config::default();
    let http_addr = serve_metrics(&config);
    let server = start(Ack, config);
    // Sends without reading: replies back up in the server.
    let mut deaf = connect(server.addr);
    deaf.set_nonblocking(true).unwrap();
    let flood = b"\n".repeat(64 * 1024);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let text = loop {
        let _ = std::io::Write::write(&mut deaf, &flood);
        let text = scrape(http_addr, "/metrics");
        if common::metric(&text, "sockline_queue_bytes") > 0 || std::time::Instant::now() > deadline
        {
            break text;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(common::metric(&text, "sockline_queue_bytes") > 0, "{text}");
    // Gone, its queue goes with it.
    drop(deaf);
    let text = scrape_until(http_addr, |text| text.contains("sockline_queue_bytes 0\n"));
    assert_eq!(common::metric(&text, "sockline_queue_bytes"), 0);

    // Past --max-lines-per-sec, the slowdowns are counted.
    let config = Config {
        max_lines_per_sec: Some(50),
        ..Config::default()
    };
    let http_addr = serve_metrics(&config);
    let server = start(Ack, config);
    let mut fast = connect(server.addr);
    send(&mut fast, &b"x\n".repeat(60));
    let text = scrape_until(http_addr, |text| {
        !text.contains("sockline_rate_limited_total 0\n")
    });
    assert!(
        common::metric(&text, "sockline_rate_limited_total") > 0,
        "{text}"
    );
    assert_eq!(read_n(&mut fast, 60 * REPLY.len()), REPLY.repeat(60));
}

#[test]
fn metrics_count_connections_lines_bytes_and_reasons() {
    let config = Config {
        max_conns: 2,
        max_line: 10,
        ..Config::default()
    };
    let counters = Arc::clone(&config.metrics);
    let server = start(Ack, config);
    let http = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let http_addr = http.local_addr().unwrap();
    metrics::serve(http, counters).unwrap();

    let mut a = connect(server.addr);
    send(&mut a, b"one\ntwo\n");
    assert_eq!(read_n(&mut a, 2 * REPLY.len()), REPLY.repeat(2));
    let mut b = connect(server.addr);
    send(&mut b, b"far too long a line\n");
    assert_eq!(read_to_close(&mut b), b"ERR line too long (max 10 bytes)\n");
    let mut c = connect(server.addr);
    send(&mut c, b"bye\n");
    assert_eq!(read_to_close(&mut c), REPLY);
    // a is still open and c has gone: one slot left, then full.
    let mut d = connect(server.addr);
    send(&mut d, b"x\n");
    assert_eq!(read_n(&mut d, REPLY.len()), REPLY);
    let mut e = connect(server.addr);
    assert_eq!(read_to_close(&mut e), b"ERR server full\n");

    // Each worker publishes its counts at the end of its event-loop round,
    // so wait until all of them are in.
    let text = scrape_until(http_addr, |text| {
        text.contains("sockline_refused_total{reason=\"full\"} 1")
            && text.contains("sockline_lines_in_total 4\n")
            && text.contains("sockline_bytes_in_total 34\n")
            && text.contains("sockline_disconnects_total{reason=\"line_too_long\"} 1")
            && text.contains("sockline_disconnects_total{reason=\"closed_by_protocol\"} 1")
    });
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert_eq!(common::metric(&text, "sockline_connections_open"), 2);
    assert_eq!(common::metric(&text, "sockline_connections_total"), 4);
    assert_eq!(common::metric(&text, "sockline_lines_in_total"), 4);
    assert_eq!(
        common::metric(&text, "sockline_bytes_in_total"),
        8 + 20 + 4 + 2
    );
    let out = 4 * REPLY.len() + b"ERR line too long (max 10 bytes)\n".len();
    assert_eq!(
        common::metric(&text, "sockline_bytes_out_total"),
        out as u64
    );
    assert_eq!(
        common::metric(&text, "sockline_refused_total{reason=\"full\"}"),
        1
    );
    assert_eq!(
        common::metric(&text, "sockline_refused_total{reason=\"denied\"}"),
        0
    );
    assert_eq!(
        common::metric(
            &text,
            "sockline_disconnects_total{reason=\"line_too_long\"}"
        ),
        1
    );
    assert_eq!(
        common::metric(
            &text,
            "sockline_disconnects_total{reason=\"closed_by_protocol\"}"
        ),
        1
    );
    assert!(scrape(http_addr, "/other").starts_with("HTTP/1.1 404"));
    drop((a, d));
}

#[test]
fn json_logs_are_one_object_per_line() {
    let mut server = common::serve_binary(&["--log-format", "json", "-v"]);
    let mut client = connect(server.addr);
    send(&mut client, b"BYE\n");
    assert_eq!(read_to_close(&mut client), REPLY);
    std::process::Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(common::wait_within(&mut server.child, std::time::Duration::from_secs(10)).is_some());
    let log = std::mem::replace(&mut server.stderr, std::thread::spawn(String::new))
        .join()
        .unwrap();
    let opened = log
        .lines()
        .find(|l| l.contains("connection opened"))
        .unwrap_or_else(|| panic!("no open line in {log}"));
    let object: serde_json::Value = serde_json::from_str(opened).unwrap();
    assert_eq!(object["level"], "DEBUG");
    assert_eq!(object["fields"]["message"], "connection opened");
    assert_eq!(
        object["fields"]["peer"],
        client.local_addr().unwrap().to_string()
    );
}
