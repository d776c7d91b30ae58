//! Nothing lost at close: every close the server decides while the client
//! may still be sending (BYE, a line too long, an idle timeout, a refusal,
//! shutdown) is a lingering close, so the replies already written reach the
//! client, followed by a clean end of stream and never a reset.

mod common;

use common::{connect, send, start};
use sockline::Config;
use sockline::mode::Ack;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

const REPLY: &[u8] = b" MSG Received\n";

/// Reads until the server's end of stream, or an error (a reset).
fn read_to_end(stream: &mut TcpStream) -> (Vec<u8>, io::Result<()>) {
    let mut all = Vec::new();
    let mut buf = vec![0; 64 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (all, Ok(())),
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (all, Err(e)),
        }
    }
}

/// Polls `config`'s metrics until `ready` holds (10 s at most).
fn metrics_until(config: &Config, mut ready: impl FnMut(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = config.metrics.render();
        if ready(&text) || Instant::now() > deadline {
            return text;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn lines_after_bye_in_the_same_batch_do_not_reset_the_replies() {
    // The reproduction: more replies than the client's receive
    // buffer holds, and unread lines behind the BYE.
    let server = start(Ack, Config::default());
    let mut client = connect(server.addr);
    let mut batch = b"x\n".repeat(20_000);
    batch.extend_from_slice(b"BYE\n");
    batch.extend_from_slice(&b"after\n".repeat(20_000));
    send(&mut client, &batch);
    thread::sleep(Duration::from_millis(500));
    let (got, end) = read_to_end(&mut client);
    assert_eq!(got.len() / REPLY.len(), 20_001, "ended {end:?}");
    assert!(got == REPLY.repeat(20_001));
    end.expect("a clean end of stream, not a reset");
}

#[test]
fn a_line_too_long_amid_a_flood_is_answered_then_closed_cleanly() {
    let config = Config {
        max_line: 100,
        ..Config::default()
    };
    let server = start(Ack, config);
    let mut client = connect(server.addr);
    let mut batch = b"x\n".repeat(20_000);
    batch.extend_from_slice(&[b'y'; 200]);
    batch.extend_from_slice(&b"\nmore\n".repeat(20_000));
    send(&mut client, &batch);
    thread::sleep(Duration::from_millis(500));
    let (got, end) = read_to_end(&mut client);
    let mut want = REPLY.repeat(20_000);
    want.extend_from_slice(b"ERR line too long (max 100 bytes)\n");
    assert_eq!(got.len(), want.len(), "ended {end:?}");
    assert!(got == want);
    end.expect("a clean end of stream, not a reset");
}

#[test]
fn a_refused_client_that_sends_at_once_reads_its_reason_then_a_clean_end() {
    let config = Config {
        max_conns: 1,
        ..Config::default()
    };
    let server = start(Ack, config);
    let mut first = connect(server.addr);
    send(&mut first, b"hi\n");
    let mut reply = [0; REPLY.len()];
    first.read_exact(&mut reply).unwrap();
    let mut refused = connect(server.addr);
    // Writes that land after the server wrote its refusal: closing on them
    // unread would reset the connection and drop the line.
    for _ in 0..20 {
        send(&mut refused, &b"x\n".repeat(1000));
        thread::sleep(Duration::from_millis(10));
    }
    thread::sleep(Duration::from_millis(200));
    let (got, end) = read_to_end(&mut refused);
    assert_eq!(got, b"ERR server full\n", "ended {end:?}");
    end.expect("a clean end of stream, not a reset");
}

#[test]
fn an_idle_timeout_notice_survives_what_the_client_sends_after_it() {
    let config = Config {
        idle_timeout: Some(Duration::from_millis(300)),
        ..Config::default()
    };
    let server = start(Ack, config);
    let mut client = connect(server.addr);
    send(&mut client, b"no end of line yet");
    // The server gives up on it meanwhile; the client goes on sending.
    thread::sleep(Duration::from_millis(800));
    for _ in 0..10 {
        send(&mut client, b" and more");
        thread::sleep(Duration::from_millis(20));
    }
    let (got, end) = read_to_end(&mut client);
    assert_eq!(
        got, b"ERR idle timeout (no line for 0.3 s)\n",
        "ended {end:?}"
    );
    end.expect("a clean end of stream, not a reset");
}

#[test]
fn a_lingering_connection_is_not_open_is_in_the_metrics_and_is_bounded() {
    let config = Config::default();
    let server = start(Ack, config.clone());
    let mut client = connect(server.addr);
    send(&mut client, b"BYE\n");
    let (got, end) = read_to_end(&mut client);
    assert_eq!(got, REPLY);
    end.unwrap();
    // The client has not closed: the server lingers, reading what comes.
    let text = metrics_until(&config, |t| {
        t.contains("sockline_connections_lingering 1\n")
    });
    assert_eq!(
        common::metric(&text, "sockline_connections_lingering"),
        1,
        "{text}"
    );
    assert_eq!(
        common::metric(&text, "sockline_connections_open"),
        0,
        "{text}"
    );
    // Its EOF ends the lingering.
    drop(client);
    let done = "sockline_lingering_closes_total{end=\"closed_by_client\"} 1\n";
    let text = metrics_until(&config, |t| t.contains(done));
    assert!(text.contains(done), "{text}");
    assert_eq!(
        common::metric(&text, "sockline_connections_lingering"),
        0,
        "{text}"
    );

    // A client that floods after its BYE is read only so fast (TCP
    // backpressure stops it), and dropped after 5 s without a byte.
    let mut client = connect(server.addr);
    send(&mut client, b"BYE\n");
    let (got, end) = read_to_end(&mut client);
    assert_eq!(got, REPLY);
    end.unwrap();
    client
        .set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let chunk = vec![b'z'; 64 * 1024];
    let mut sent = 0usize;
    let stalled = loop {
        match client.write(&chunk) {
            Ok(n) => sent += n,
            Err(e) => break e,
        }
        assert!(sent < 64 << 20, "the server took {sent} bytes after BYE");
    };
    assert!(
        matches!(
            stalled.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ),
        "{stalled}"
    );
    // Gone with a reset, it leaves at once.
    socket2::SockRef::from(&client)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(client);
    let reset = "sockline_lingering_closes_total{end=\"connection_reset\"} 1\n";
    let text = metrics_until(&config, |t| t.contains(reset));
    assert!(text.contains(reset), "{text}");

    // A client that stays silent after its BYE, without closing, is let go
    // once it has sent nothing for 5 s.
    let mut client = connect(server.addr);
    send(&mut client, b"BYE\n");
    let (got, end) = read_to_end(&mut client);
    assert_eq!(got, REPLY);
    end.unwrap();
    let quiet = "sockline_lingering_closes_total{end=\"idle_timeout\"} 1\n";
    let text = metrics_until(&config, |t| t.contains(quiet));
    assert!(text.contains(quiet), "{text}");
    assert_eq!(
        common::metric(&text, "sockline_connections_lingering"),
        0,
        "{text}"
    );
    drop(client);
}

/// A client with a 4 KiB receive buffer, as the issue asks.
fn small_buffer_client(addr: SocketAddr) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&addr.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
}

#[test]
fn shutdown_delivers_every_reply_to_a_slow_reader_then_a_clean_end() {
    let config = Config::default();
    let server = start(Ack, config.clone());
    let client = small_buffer_client(server.addr);
    let done = Arc::new(AtomicBool::new(false));
    let paused = Arc::new(AtomicBool::new(false));
    // It pipelines without pause until it has read the end of stream.
    let writer = {
        let mut stream = client.try_clone().unwrap();
        stream
            .set_write_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let done = done.clone();
        thread::spawn(move || {
            let batch = b"a line of some length\n".repeat(64);
            while !done.load(Ordering::SeqCst) {
                match stream.write(&batch) {
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => return,
                }
            }
        })
    };
    let replies = Arc::new(AtomicU64::new(0));
    let reader = {
        let mut stream = client.try_clone().unwrap();
        let (done, paused, replies) = (done.clone(), paused.clone(), replies.clone());
        thread::spawn(move || {
            let mut buf = vec![0; 4096];
            let mut bytes = 0u64;
            let end = loop {
                if paused.load(Ordering::SeqCst) {
                    thread::sleep(Duration::from_millis(5));
                    continue;
                }
                match stream.read(&mut buf) {
                    Ok(0) => break Ok(()),
                    Ok(n) => {
                        assert!(
                            (0..n).all(|i| buf[i] == REPLY[(bytes as usize + i) % REPLY.len()]),
                            "garbled reply"
                        );
                        bytes += n as u64;
                        replies.store(bytes, Ordering::SeqCst);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(e),
                }
            };
            done.store(true, Ordering::SeqCst);
            end
        })
    };
    // Stop reading from 1 s before the signal to 1 s after it.
    thread::sleep(Duration::from_millis(500));
    paused.store(true, Ordering::SeqCst);
    thread::sleep(Duration::from_secs(1));
    server.shutdown.trigger();
    thread::sleep(Duration::from_secs(1));
    paused.store(false, Ordering::SeqCst);
    let end = reader.join().unwrap();
    writer.join().unwrap();
    drop(client);
    let mut server = server;
    server.thread.take().unwrap().join().unwrap().unwrap();
    let text = config.metrics.render();
    let lines = common::metric(&text, "sockline_lines_in_total");
    let bytes = replies.load(Ordering::SeqCst);
    assert!(lines > 1000, "the test ran no load: {lines} lines");
    assert_eq!(bytes % REPLY.len() as u64, 0, "a reply was cut");
    assert_eq!(
        bytes / REPLY.len() as u64,
        lines,
        "replies vs lines read; ended {end:?}"
    );
    end.expect("a clean end of stream, not a reset");
    assert_eq!(
        common::metric(&text, "sockline_drain_cut_total"),
        0,
        "{text}"
    );
}

#[test]
fn the_drain_timeout_logs_and_counts_what_it_cuts() {
    let config = Config {
        drain_timeout: Duration::from_millis(500),
        ..Config::default()
    };
    let server = start(Ack, config.clone());
    let client = small_buffer_client(server.addr);
    // It sends and never reads: replies back up in the server.
    let mut writer = client.try_clone().unwrap();
    writer
        .set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let batch = b"x\n".repeat(8192);
    while writer.write(&batch).is_ok() {}
    let text = metrics_until(&config, |t| {
        common::metric(t, "sockline_lines_in_total") > 1000
    });
    assert!(
        common::metric(&text, "sockline_lines_in_total") > 1000,
        "{text}"
    );
    let mut server = server;
    server.shutdown.trigger();
    server.thread.take().unwrap().join().unwrap().unwrap();
    let text = config.metrics.render();
    assert_eq!(
        common::metric(&text, "sockline_drain_cut_total"),
        1,
        "{text}"
    );
    assert!(
        common::metric(&text, "sockline_drain_cut_bytes_total") > 0,
        "{text}"
    );
    drop(client);
}
