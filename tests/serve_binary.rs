//! The real `sockline serve` process: startup line, logs, signals, limits.

mod common;

use common::{connect, read_n, read_to_close, send, serve_binary};
use std::process::Command;
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
    assert!(log.contains(&format!("Client {peer}: hello log")), "{log}");
    assert!(log.contains("connection opened"), "{log}");
    assert!(log.contains(&peer.to_string()), "{log}");
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
