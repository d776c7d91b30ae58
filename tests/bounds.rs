//! What a client that does not read may cost: the bounds hold within a small
//! slack, instead of the kernel's send buffer (up to 4 MiB) absorbing the
//! excess unseen.

mod common;

use common::{connect, start};
use sockline::Config;
use sockline::mode::{Ack, Chat};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// What a limit may be exceeded by: the kernel's unsent bytes
/// (`KERNEL_UNSENT`, 16 KiB, plus one segment past it), what is in flight,
/// and the client's own 4 KiB receive buffer (doubled by the kernel).
const SLACK: usize = 192 * 1024;

/// A client with a 4 KiB receive buffer, which it never reads.
fn deaf_client(addr: SocketAddr) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&addr.into()).unwrap();
    socket.into()
}

#[test]
fn a_chat_member_that_never_reads_is_dropped_near_max_queue() {
    const MAX_QUEUE: usize = 64 * 1024;
    let config = Config {
        max_queue: MAX_QUEUE,
        ..Config::default()
    };
    let server = start(Chat::new(0), config);
    let slow = deaf_client(server.addr); // user-1
    let watch = connect(server.addr); // user-2
    let mut watch = BufReader::new(watch);
    let mut line = String::new();
    watch.read_line(&mut line).unwrap();
    assert!(line.starts_with("* welcome user-2"), "{line}");
    let sender = connect(server.addr); // user-3
    let mut writer = sender.try_clone().unwrap();
    let mut replies = sender;
    // The sender's own stream (its welcome) is drained in the background.
    std::thread::spawn(move || {
        let mut buf = [0; 4096];
        while matches!(replies.read(&mut buf), Ok(n) if n > 0) {}
    });
    const LINE: usize = 100; // "user-3: " + text + "\n"
    let text = format!("{}\n", "y".repeat(LINE - "user-3: ".len() - 1));
    std::thread::spawn(move || {
        let batch = text.repeat(100);
        while writer.write_all(batch.as_bytes()).is_ok() {}
    });
    // Every line the watcher sees went to the deaf member too, until the
    // room is told it was dropped.
    let mut lines = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        line.clear();
        assert!(watch.read_line(&mut line).unwrap() > 0, "server closed");
        if line.starts_with("user-3: ") {
            lines += 1;
        } else if line.starts_with("* user-1 left") {
            assert_eq!(line, "* user-1 left (too slow)\n");
            break;
        }
        assert!(Instant::now() < deadline, "not dropped after {lines} lines");
    }
    let bytes = lines * LINE;
    eprintln!("dropped after {bytes} bytes were sent its way (max-queue {MAX_QUEUE})");
    assert!(bytes > MAX_QUEUE, "dropped early, after {bytes} bytes");
    assert!(
        bytes < MAX_QUEUE + SLACK,
        "{bytes} bytes went its way before it was dropped"
    );
    drop(slow);
}

#[test]
fn replies_to_a_client_that_never_reads_stay_near_the_output_cap() {
    let config = Config::default();
    let server = start(Ack, config.clone());
    let mut client = deaf_client(server.addr);
    client
        .set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    // Send until the server stops taking lines (its buffers are full).
    let batch = b"x\n".repeat(4096);
    while client.write(&batch).is_ok() {}
    std::thread::sleep(Duration::from_millis(300));
    let text = config.metrics.render();
    let lines: usize = (text.lines())
        .find_map(|l| l.strip_prefix("sockline_lines_in_total "))
        .unwrap()
        .parse()
        .unwrap();
    let replies = lines * b" MSG Received\n".len();
    eprintln!("{replies} bytes of replies made for a client that reads none");
    assert!(
        replies < sockline::connection::OUTPUT_CAP + SLACK,
        "{replies} bytes of replies made for a client that reads none"
    );
}
