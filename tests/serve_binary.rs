//! The real `sockline serve` process: startup line, logs, signals, limits.

mod common;

use common::{connect, read_n, read_to_close, send, serve_binary};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

const REPLY: &[u8] = b" MSG Received\n";

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits for the child to exit, failing the test after `limit`.
fn wait_exit(server: &mut common::Binary, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "server did not exit in time");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_drains_every_received_line_then_exits_zero() {
    let mut server = serve_binary(&["-q"]);
    let mut clients: Vec<_> = (0..50).map(|_| connect(server.addr)).collect();
    let mut batch = Vec::new();
    for i in 0..200 {
        batch.extend_from_slice(format!("line {i}\n").as_bytes());
    }
    for client in &mut clients {
        send(client, b"first\n");
        assert_eq!(read_n(client, REPLY.len()), REPLY);
        send(client, &batch);
    }
    // Every byte is now in the server's socket buffers (loopback delivers
    // synchronously); the signal must not lose any of those lines.
    signal(server.child.id(), "-TERM");
    for client in &mut clients {
        assert_eq!(read_to_close(client), REPLY.repeat(200));
    }
    assert!(wait_exit(&mut server, Duration::from_secs(10)).success());
    // Accepting stopped.
    assert!(std::net::TcpStream::connect(server.addr).is_err());
}

/// Send and receive queue bytes (`tx_queue`, `rx_queue`) of every
/// established IPv4 TCP socket, by (local port, remote port).
fn tcp_queues() -> HashMap<(u16, u16), (u64, u64)> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let hex = |s: &str| u64::from_str_radix(s, 16).ok();
    let port = |addr: &str| u16::from_str_radix(addr.split_once(':')?.1, 16).ok();
    table
        .lines()
        .skip(1)
        .filter_map(|row| {
            let f: Vec<&str> = row.split_whitespace().collect();
            if f.get(3) != Some(&"01") {
                return None; // not ESTABLISHED
            }
            let (tx, rx) = f[4].split_once(':')?;
            Some(((port(f[1])?, port(f[2])?), (hex(tx)?, hex(rx)?)))
        })
        .collect()
}

/// Bytes of each numbered line a load client sends (all the same length,
/// so a byte count says how many complete lines it holds).
const LOAD_LINE: u64 = 30;
/// Lines per write.
const LOAD_BATCH: u64 = 64;
/// Bytes each load client sends while the server is frozen: more than one
/// drain round reads (4 reads of 16 KiB), and about what a loopback socket
/// takes in by default (the rest waits in our send buffer).
const FROZEN_EXTRA: u64 = 96 * 1024;

/// One load client's sender: numbered lines in batches, at most two
/// batches ahead of the replies (`replied`, in bytes), until `frozen`;
/// then `FROZEN_EXTRA` more bytes without waiting, ending early (maybe
/// mid-line) at a write the kernel does not take within the write timeout.
/// Returns the bytes the kernel took.
fn send_load(
    mut stream: TcpStream,
    client: usize,
    replied: &AtomicU64,
    frozen: &AtomicBool,
) -> u64 {
    let (mut sent, mut limit) = (0, None);
    let (mut batch, mut at) = (Vec::new(), 0);
    loop {
        if limit.is_none() && frozen.load(Ordering::SeqCst) {
            limit = Some(sent + FROZEN_EXTRA);
        }
        let room = limit.map_or(u64::MAX, |limit| limit - sent);
        if room == 0 {
            return sent;
        }
        if at == batch.len() {
            let answered = replied.load(Ordering::SeqCst) / REPLY.len() as u64;
            if limit.is_none() && (sent / LOAD_LINE).saturating_sub(answered) > LOAD_BATCH {
                thread::sleep(Duration::from_micros(100));
                continue;
            }
            batch.clear();
            at = 0;
            for n in sent / LOAD_LINE..sent / LOAD_LINE + LOAD_BATCH {
                writeln!(batch, "client {client:04} line {n:012}").unwrap();
            }
            debug_assert_eq!(batch.len() as u64, LOAD_BATCH * LOAD_LINE);
        }
        let end = at + room.min((batch.len() - at) as u64) as usize;
        match stream.write(&batch[at..end]) {
            Ok(n) => {
                at += n;
                sent += n as u64;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if limit.is_some() {
                    return sent;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("client {client}: {e}"),
        }
    }
}

/// Reads `REPLY`s until the server closes, counting their bytes in
/// `replied`; returns how the stream ended (an error for a reset, a
/// timeout, or a byte that is not part of `REPLY` repeated).
fn count_replies(mut stream: TcpStream, replied: &AtomicU64) -> io::Result<()> {
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let total = replied.load(Ordering::SeqCst);
        for (i, &byte) in buf[..n].iter().enumerate() {
            if byte != REPLY[((total + i as u64) % REPLY.len() as u64) as usize] {
                replied.fetch_add(i as u64, Ordering::SeqCst);
                return Err(io::Error::new(io::ErrorKind::InvalidData, "garbled reply"));
            }
        }
        replied.fetch_add(n as u64, Ordering::SeqCst);
    }
}

/// Whether every thread of process `pid` is stopped (by SIGSTOP).
fn is_stopped(pid: u32) -> bool {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .map(|task| task.unwrap().path().join("stat"))
        .all(|stat| {
            let stat = std::fs::read_to_string(stat).unwrap_or_default();
            stat.rfind(')')
                .is_some_and(|at| stat[at..].starts_with(") T"))
        })
}

#[test]
fn sigterm_under_load_answers_every_line_that_reached_the_server() {
    const CLIENTS: usize = 32;
    let mut server = serve_binary(&["-q"]);
    let pid = server.child.id();
    let frozen = Arc::new(AtomicBool::new(false));
    let (mut writers, mut readers, mut replied, mut ports) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for client in 0..CLIENTS {
        // connect() sets a read deadline; the short write timeout is how a
        // sender notices the frozen server's buffers are full.
        let stream = connect(server.addr);
        stream
            .set_write_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        ports.push(stream.local_addr().unwrap().port());
        let bytes = Arc::new(AtomicU64::new(0));
        replied.push(bytes.clone());
        let replies = stream.try_clone().unwrap();
        let counted = bytes.clone();
        readers.push(thread::spawn(move || count_replies(replies, &counted)));
        let frozen = frozen.clone();
        // The connection stays open after the sender returns (the reader's
        // clone): the server never sees an EOF.
        writers.push(thread::spawn(move || {
            send_load(stream, client, &bytes, &frozen)
        }));
    }
    thread::sleep(Duration::from_millis(500));
    // A server that keeps up reads everything as it comes, and a signal
    // then finds little to drain. Freeze it, so that it falls behind for
    // sure: its kernel still takes bytes into each socket, nobody reads.
    signal(pid, "-STOP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !is_stopped(pid) {
        assert!(Instant::now() < deadline, "server did not stop");
        thread::sleep(Duration::from_millis(1));
    }
    frozen.store(true, Ordering::SeqCst);
    let sent: Vec<u64> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    // Reached = acknowledged by the server's kernel; bytes the server's
    // full window held back wait in our send buffer. A late delayed ACK
    // would only make this undercount.
    thread::sleep(Duration::from_millis(300));
    let queues = tcp_queues();
    let queue = |from: u16, to: u16| {
        *(queues.get(&(from, to)))
            .unwrap_or_else(|| panic!("no connection {from} -> {to} in /proc/net/tcp"))
    };
    let server_port = server.addr.port();
    let reached: Vec<u64> = (ports.iter().zip(&sent))
        .map(|(&port, sent)| sent - queue(port, server_port).0)
        .collect();
    let unread: Vec<u64> = (ports.iter())
        .map(|&port| queue(server_port, port).1)
        .collect();
    signal(pid, "-TERM");
    signal(pid, "-CONT");
    let status = wait_exit(&mut server, Duration::from_secs(10));
    let lines = |bytes: &[u64]| bytes.iter().map(|b| b / LOAD_LINE).sum::<u64>();
    eprintln!(
        "lines sent {}, reached the server {}; unread by it at SIGTERM {} bytes ({} max on one connection)",
        lines(&sent),
        lines(&reached),
        unread.iter().sum::<u64>(),
        unread.iter().max().unwrap(),
    );
    // Each line that reached the server gets one whole reply; lines still
    // in our send buffer at the signal may or may not (and a connection the
    // server closes with some of them unread ends with a reset).
    let mut wrong = Vec::new();
    for (client, reader) in readers.into_iter().enumerate() {
        let end = reader.join().unwrap();
        let bytes = replied[client].load(Ordering::SeqCst);
        let answered = bytes / REPLY.len() as u64;
        let (must, may) = (reached[client] / LOAD_LINE, sent[client] / LOAD_LINE);
        let clean = match &end {
            Ok(()) => true,
            Err(e) => e.kind() == io::ErrorKind::ConnectionReset,
        };
        let whole = bytes % REPLY.len() as u64 == 0;
        if !(must..=may).contains(&answered) || !whole || !clean {
            wrong.push(format!(
                "client {client}: {bytes} reply bytes ({answered} replies), {must} lines \
                 reached the server, {may} sent, unread at SIGTERM {} bytes, ended {end:?}",
                unread[client]
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(status.success(), "{status}");
    // The test ran what it is about: a load, and a backlog at the signal.
    assert!(lines(&reached) > 10_000, "only {} lines", lines(&reached));
    assert!(unread.iter().sum::<u64>() > 0, "nothing left to drain");
    // Accepting stopped.
    assert!(TcpStream::connect(server.addr).is_err());
}

#[test]
fn sigint_with_an_idle_client_exits_within_the_drain_timeout() {
    let mut server = serve_binary(&["--drain-timeout", "1"]);
    let mut idle = connect(server.addr);
    send(&mut idle, b"partial, never ends");
    signal(server.child.id(), "-INT");
    assert!(wait_exit(&mut server, Duration::from_secs(5)).success());
    assert_eq!(read_to_close(&mut idle), b"");
}

#[test]
fn logs_connections_at_info_and_lines_with_verbose() {
    let mut server = serve_binary(&["-v"]);
    let mut client = connect(server.addr);
    let peer = client.local_addr().unwrap();
    send(&mut client, b"hello log\nBYE\n");
    assert_eq!(read_to_close(&mut client), REPLY.repeat(2));
    signal(server.child.id(), "-TERM");
    wait_exit(&mut server, Duration::from_secs(10));
    let log = std::mem::replace(&mut server.stderr, std::thread::spawn(String::new))
        .join()
        .unwrap();
    let said = format!("line received peer={peer} line=hello log\n");
    assert!(log.contains(&said), "{log}");
    assert!(log.contains("connection opened"), "{log}");
    assert!(log.contains(&peer.to_string()), "{log}");
}

#[test]
fn verbose_log_shows_control_bytes_escaped() {
    let mut server = serve_binary(&["-v"]);
    let mut client = connect(server.addr);
    let peer = client.local_addr().unwrap();
    send(
        &mut client,
        b"nul\x00 soh\x01 bel\x07 esc\x1b[2J del\x7f csi\xc2\x9b \x9b end\nBYE\n",
    );
    assert_eq!(read_to_close(&mut client), REPLY.repeat(2));
    signal(server.child.id(), "-TERM");
    wait_exit(&mut server, Duration::from_secs(10));
    let log = std::mem::replace(&mut server.stderr, std::thread::spawn(String::new))
        .join()
        .unwrap();
    let want = format!(
        "line received peer={peer} line=nul^@ soh^A bel^G esc^[[2J del^? csi\\xc2\\x9b \\x9b end\n"
    );
    assert!(log.contains(&want), "{want:?} not in {log:?}");
    for raw in ['\0', '\x01', '\x07', '\x1b', '\x7f', '\u{9b}'] {
        assert!(!log.contains(raw), "{raw:?} in {log:?}");
    }
}

#[test]
fn quiet_hides_connection_logs() {
    let mut server = serve_binary(&["-q"]);
    let mut client = connect(server.addr);
    send(&mut client, b"BYE\n");
    assert_eq!(read_to_close(&mut client), REPLY);
    signal(server.child.id(), "-TERM");
    wait_exit(&mut server, Duration::from_secs(10));
    let log = std::mem::replace(&mut server.stderr, std::thread::spawn(String::new))
        .join()
        .unwrap();
    assert!(!log.contains("connection"), "{log}");
}

#[test]
fn a_port_in_use_is_one_clear_line_and_exit_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let out = Command::new(common::bin())
        .args(["serve", "--listen", &addr.to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!("sockline: cannot listen on {addr}: ")),
        "{stderr}"
    );
}

/// CPU ticks (utime + stime) the process used so far.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn out_of_file_descriptors_backs_off_and_recovers() {
    // With 32 descriptors the server can hold only a few connections; the
    // rest wait in the backlog instead of making accept spin.
    let server = serve_binary(&["-q", "--workers", "1"]);
    let pid = server.child.id().to_string();
    let status = Command::new("prlimit")
        .args(["--pid", &pid, "--nofile=32:32"])
        .status()
        .unwrap();
    assert!(status.success());
    let mut clients: Vec<_> = (0..40).map(|_| connect(server.addr)).collect();
    let mut answered = 0;
    for client in &mut clients {
        client
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        send(client, b"hi\n");
        let mut buf = [0; REPLY.len()];
        if std::io::Read::read_exact(client, &mut buf).is_ok() {
            assert_eq!(buf, REPLY);
            answered += 1;
        }
    }
    assert!((1..40).contains(&answered), "answered {answered} of 40");
    // While starved, the server must not spin: under a quarter of a CPU.
    let before = cpu_ticks(server.child.id());
    std::thread::sleep(Duration::from_secs(1));
    let spent = cpu_ticks(server.child.id()) - before;
    assert!(spent < 25, "server used {spent} ticks of 100 while starved");
    // Freeing descriptors lets the waiting clients in.
    let (served, waiting) = clients.split_at_mut(answered);
    for client in served.iter_mut() {
        send(client, b"bye\n");
        assert_eq!(read_to_close(client), REPLY);
    }
    for client in waiting.iter_mut().take(10) {
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        assert_eq!(read_n(client, REPLY.len()), REPLY);
    }
    signal(server.child.id(), "-KILL");
}
