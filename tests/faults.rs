//! Faults a network throws at a server: bursts, garbage, half-closes.
//! Each affects only the client concerned, and nothing is lost.

mod common;

use common::{connect, read_n, read_to_close, send, start};
use sockline::Config;
use sockline::mode::{Ack, Echo};
use std::io::Write;
use std::net::Shutdown;

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
