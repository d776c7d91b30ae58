//! Who may connect, how many at once from one address, and how long a
//! connection may stay silent: each refusal is one line to that client alone.

mod common;

use common::{connect, read_n, read_to_close, send, start};
use sockline::Config;
use sockline::mode::Ack;
use sockline::server::Access;
use std::time::{Duration, Instant};

const REPLY: &[u8] = b" MSG Received\n";

fn with_access(allow: &[&str], deny: &[&str]) -> Config {
    let nets = |list: &[&str]| list.iter().map(|n| n.parse().unwrap()).collect();
    Config {
        access: Access {
            allow: nets(allow),
            deny: nets(deny),
        },
        ..Config::default()
    }
}

fn answered(server: &common::InProcess) -> bool {
    let mut client = connect(server.addr);
    send(&mut client, b"hi\n");
    let got = read_to_close_or(&mut client, REPLY.len());
    got == REPLY
}

/// Reads `n` bytes, or what arrives before the server closes.
fn read_to_close_or(client: &mut std::net::TcpStream, n: usize) -> Vec<u8> {
    use std::io::Read;
    let mut got = Vec::new();
    let mut buf = [0; 256];
    while got.len() < n {
        match client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(k) => got.extend_from_slice(&buf[..k]),
        }
    }
    got
}

#[test]
fn deny_and_allow_lists_decide_who_is_served() {
    let denied = start(Ack, with_access(&[], &["127.0.0.0/8"]));
    let mut client = connect(denied.addr);
    assert_eq!(read_to_close(&mut client), b"ERR access denied\n");

    let elsewhere = start(Ack, with_access(&["10.0.0.0/8", "::1/128"], &[]));
    let mut client = connect(elsewhere.addr);
    assert_eq!(read_to_close(&mut client), b"ERR access denied\n");

    let allowed = start(Ack, with_access(&["127.0.0.1/32"], &[]));
    assert!(answered(&allowed));

    // Deny wins over allow.
    let both = start(Ack, with_access(&["127.0.0.0/8"], &["127.0.0.1/32"]));
    let mut client = connect(both.addr);
    assert_eq!(read_to_close(&mut client), b"ERR access denied\n");
}

#[test]
fn access_matches_ipv4_mapped_addresses_and_ipv6() {
    let access = Access {
        allow: vec![
            "192.0.2.0/24".parse().unwrap(),
            "2001:db8::/32".parse().unwrap(),
        ],
        deny: vec![],
    };
    assert!(access.permits("192.0.2.7".parse().unwrap()));
    assert!(access.permits("::ffff:192.0.2.7".parse().unwrap()));
    assert!(access.permits("2001:db8::1".parse().unwrap()));
    assert!(!access.permits("198.51.100.1".parse().unwrap()));
    assert!(!access.permits("2001:db9::1".parse().unwrap()));
}

#[test]
fn one_address_may_hold_only_so_many_connections() {
    let config = Config {
        max_conns_per_ip: 2,
        ..Config::default()
    };
    let server = start(Ack, config);
    let mut held: Vec<_> = (0..2).map(|_| connect(server.addr)).collect();
    for client in &mut held {
        send(client, b"hi\n");
        assert_eq!(read_n(client, REPLY.len()), REPLY);
    }
    let mut third = connect(server.addr);
    assert_eq!(
        read_to_close(&mut third),
        b"ERR too many connections from your address\n"
    );
    // The held ones are unaffected, and a slot frees when one leaves.
    send(&mut held[0], b"bye\n");
    assert_eq!(read_to_close(&mut held[0]), REPLY);
    send(&mut held[1], b"still\n");
    assert_eq!(read_n(&mut held[1], REPLY.len()), REPLY);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !answered(&server) {
        assert!(Instant::now() < deadline, "the freed slot never came back");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_silent_or_slowloris_connection_is_closed_with_a_notice() {
    let config = Config {
        idle_timeout: Some(Duration::from_millis(400)),
        ..Config::default()
    };
    let server = start(Ack, config);
    let mut silent = connect(server.addr);
    let mut slowloris = connect(server.addr);
    let mut talker = connect(server.addr);
    let started = Instant::now();
    // The slowloris sends bytes but never a whole line; the talker sends
    // lines more often than the timeout.
    for round in 0..8 {
        if round < 3 {
            send(&mut slowloris, b"x");
        }
        send(&mut talker, b"hi\n");
        assert_eq!(read_n(&mut talker, REPLY.len()), REPLY);
        std::thread::sleep(Duration::from_millis(150));
    }
    let notice = b"ERR idle timeout (no line for 0.4 s)\n";
    assert_eq!(read_to_close(&mut silent), notice);
    assert_eq!(read_to_close(&mut slowloris), notice);
    assert!(started.elapsed() >= Duration::from_millis(400));
    send(&mut talker, b"hi\n");
    assert_eq!(read_n(&mut talker, REPLY.len()), REPLY);
}

#[test]
fn a_fast_sender_is_read_more_slowly_and_loses_nothing() {
    let config = Config {
        max_lines_per_sec: Some(50),
        ..Config::default()
    };
    let server = start(sockline::mode::Echo, config);
    let mut fast = connect(server.addr);
    let mut other = connect(server.addr);
    let lines: Vec<u8> = (0..150)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect();
    let started = Instant::now();
    send(&mut fast, &lines);
    // Another client is not slowed by it.
    send(&mut other, b"hello\n");
    assert_eq!(read_n(&mut other, 6), b"hello\n");
    // All 150 come back, in order, at 50 a second: two refills at least.
    assert_eq!(read_n(&mut fast, lines.len()), lines);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "150 lines at 50/s answered in {:?}",
        started.elapsed()
    );
}
