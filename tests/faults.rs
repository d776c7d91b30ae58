//! Faults a network throws at a server: bursts, garbage, half-closes,
//! clients that never read.
//! Each affects only the client concerned, and nothing is lost.

mod common;

use common::{connect, read_n, read_to_close, send, serve_binary, start};
use sockline::Config;
use sockline::mode::{Ack, Echo};
use std::io::{ErrorKind, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

const REPLY: &[u8] = b" MSG Received\n";

#[test]
fn five_thousand_connects_in_one_burst_are_all_served() {
    // Both ends live in this process: 10,000 descriptors.
    sockline::server::raise_fd_limit().unwrap();
    let server = start(Ack, Config::default());
    // Open them all before any says a word: the backlog takes the burst.
    let mut clients: Vec<_> = (0..5000).map(|_| connect(server.addr)).collect();
    for client in &mut clients {
        send(client, b"hi\n");
    }
    for client in &mut clients {
        assert_eq!(read_n(client, REPLY.len()), REPLY);
    }
}

#[test]
fn a_mebibyte_of_random_bytes_is_answered_line_by_line() {
    // A fixed xorshift stream: random-looking, the same on every run.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let data: Vec<u8> = (0..1 << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let server = start(Echo, Config::default());
    let mut client = connect(server.addr);
    let writer = {
        let mut client = client.try_clone().unwrap();
        let data = data.clone();
        std::thread::spawn(move || {
            client.write_all(&data).unwrap();
            client.shutdown(Shutdown::Write).unwrap();
        })
    };
    let got = read_to_close(&mut client);
    writer.join().unwrap();
    // The reference: split on `\n`, strip one `\r`, each line echoed with
    // `\n`; the unterminated tail is answered at EOF. None is a `BYE`.
    let mut want = Vec::new();
    let mut lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    for line in lines {
        assert!(!line.eq_ignore_ascii_case(b"BYE"));
        want.extend_from_slice(line.strip_suffix(b"\r").unwrap_or(line));
        want.push(b'\n');
    }
    assert_eq!(got.len(), want.len());
    assert!(got == want, "echoed bytes differ");
}

#[test]
fn a_half_closed_client_gets_every_reply() {
    let server = start(Ack, Config::default());
    let mut client = connect(server.addr);
    send(&mut client, &b"line\n".repeat(1000));
    client.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_close(&mut client), REPLY.repeat(1000));
}

#[test]
fn a_client_that_sends_forever_and_never_reads_is_bounded_then_dropped() {
    let server = serve_binary(&["-q", "--write-timeout", "1"]);
    let pid = server.child.id();
    let rss_kib = || common::rss_kib(pid);
    let before = rss_kib();
    let mut good = connect(server.addr);
    let mut deaf = connect(server.addr);
    deaf.set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let flood = b"never reading\n".repeat(4096);
    let (mut sent, mut peak) = (0usize, before);
    let deadline = Instant::now() + Duration::from_secs(15);
    // Its replies back up, the server stops reading it (so our writes time
    // out), and after the write timeout it is cut off: a write fails.
    let dropped = loop {
        assert!(
            Instant::now() < deadline,
            "the deaf client was never dropped"
        );
        match deaf.write(&flood) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {}
            Err(e) => break e,
        }
        peak = peak.max(rss_kib());
        // Everyone else is served meanwhile.
        send(&mut good, b"hi\n");
        assert_eq!(read_n(&mut good, REPLY.len()), REPLY);
    };
    assert!(matches!(
        dropped.kind(),
        ErrorKind::ConnectionReset | ErrorKind::BrokenPipe
    ));
    // It got to send far more than the server kept for it.
    assert!(sent > 1 << 20, "only {sent} bytes went out");
    eprintln!("RSS before {before} KiB, peak {peak} KiB, {sent} bytes sent");
    assert!(
        peak - before < 8 * 1024,
        "server RSS grew by {} KiB",
        peak - before
    );
    send(&mut good, b"BYE\n");
    assert_eq!(read_to_close(&mut good), REPLY);
}
