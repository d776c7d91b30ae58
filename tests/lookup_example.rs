//! The example protocol in `examples/lookup.rs`: replies made on a thread
//! pool come back through the event loop's mailbox, in order per
//! connection, and the loop serves others while lookups are pending.

mod common;
#[path = "../examples/lookup.rs"]
mod lookup;

use common::{connect, read_n, read_to_close, send, start};
use sockline::Config;
use std::io::{BufRead, BufReader};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

#[test]
fn answers_from_the_pool_come_back_in_order() {
    // Lookups finish out of order: 8 threads, many lines at once.
    let server = start(
        lookup::Lookup::new(8, Duration::from_millis(5)),
        Config::default(),
    );
    let mut client = connect(server.addr);
    let mut lines = Vec::new();
    let mut want = Vec::new();
    for i in 0..200 {
        let line = format!("line {i:03}");
        lines.extend_from_slice(line.as_bytes());
        lines.push(b'\n');
        want.extend(line.bytes().rev());
        want.push(b'\n');
        if i == 100 {
            lines.extend_from_slice(b"PING\n");
            want.extend_from_slice(b"PONG\n");
        }
    }
    lines.extend_from_slice(b"last\nBYE\nnever answered\n");
    want.extend_from_slice(b"tsal\nBYE\n");
    send(&mut client, &lines);
    assert_eq!(read_to_close(&mut client), want);
}

#[test]
fn the_loop_serves_others_while_a_thousand_clients_wait_on_lookups() {
    sockline::server::raise_fd_limit().unwrap();
    let config = Config {
        workers: 1,
        ..Config::default()
    };
    // 1,000 lookups of 20 ms on 4 threads take 5 s in all.
    let server = start(lookup::Lookup::new(4, Duration::from_millis(20)), config);
    let mut waiting: Vec<_> = (0..1000).map(|_| connect(server.addr)).collect();
    for (i, client) in waiting.iter_mut().enumerate() {
        send(client, format!("client {i:04}\n").as_bytes());
    }
    // Count the lookups answered, as they come.
    let answered = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = waiting
        .into_iter()
        .enumerate()
        .map(|(i, client)| {
            let answered = answered.clone();
            std::thread::spawn(move || {
                let mut line = String::new();
                BufReader::new(client).read_line(&mut line).unwrap();
                assert_eq!(
                    line,
                    format!(
                        "{}\n",
                        format!("client {i:04}").chars().rev().collect::<String>()
                    )
                );
                answered.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    // Meanwhile a new client is served at once: its PING is answered while
    // most lookups are still pending.
    let mut other = connect(server.addr);
    send(&mut other, b"PING\n");
    assert_eq!(read_n(&mut other, 5), b"PONG\n");
    let done = answered.load(Ordering::SeqCst);
    assert!(
        done < 900,
        "{done} of 1,000 lookups were answered before a PING was"
    );
    for reader in readers {
        reader.join().unwrap();
    }
    assert_eq!(answered.load(Ordering::SeqCst), 1000);
}
