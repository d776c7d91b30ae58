//! TLS on real sockets: every mode over TLS, mutual TLS, a handshake that
//! never finishes, a plain client at a TLS server, and `serve`/`connect`
//! end to end. Certificates are made at run time with rcgen.

mod common;

use common::pki::Pki;
use common::{Finished, bin, connect, read_to_close, send, serve_binary, start};
use rustls::{ClientConnection, StreamOwned};
use sockline::Config;
use sockline::mode::{Ack, Chat, Echo};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

const REPLY: &[u8] = b" MSG Received\n";

/// Reads exactly `n` bytes.
fn read_n(stream: &mut impl Read, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    stream.read_exact(&mut buf).unwrap();
    buf
}

#[test]
fn ack_over_tls_is_the_tutorial_dialogue() {
    let pki = Pki::new("ack");
    let server = start(Ack, pki.server_config(false));
    let mut client = pki.client(server.addr, false);
    client.write_all(b"hello\r\n").unwrap();
    assert_eq!(read_n(&mut client, REPLY.len()), REPLY);
    client.write_all(b"bYe\n").unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).unwrap();
    // The server ends with close_notify, so read_to_end sees a clean end.
    assert_eq!(rest, REPLY);
}

#[test]
fn echo_over_tls_carries_a_mebibyte_both_ways() {
    let pki = Pki::new("echo");
    let server = start(Echo, pki.server_config(false));
    let mut client = pki.client(server.addr, false);
    let lines: Vec<u8> = (0..25_000)
        .flat_map(|i| format!("line {i:05} {}\n", "x".repeat(40)).into_bytes())
        .collect();
    assert!(lines.len() > 1 << 20);
    // Write it all before reading any: the server's replies back up into
    // rustls and the socket, and must still all arrive, in order.
    let total = lines.len();
    let mut got = Vec::with_capacity(total);
    let mut sent = 0;
    let mut buf = vec![0; 64 * 1024];
    client.get_ref().set_nonblocking(true).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while got.len() < total {
        assert!(std::time::Instant::now() < deadline, "echo stalled");
        if sent < total {
            match client.write(&lines[sent..(sent + 16 * 1024).min(total)]) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("write failed: {e}"),
            }
        }
        match client.read(&mut buf) {
            Ok(0) => panic!("server closed early"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_micros(200))
            }
            Err(e) => panic!("read failed: {e}"),
        }
    }
    assert!(got == lines, "echoed bytes differ");
}

#[test]
fn chat_over_tls_members_see_each_other() {
    let pki = Pki::new("chat");
    let server = start(Chat::new(0), pki.server_config(false));
    let mut alice = pki.client(server.addr, false);
    let line = |stream: &mut StreamOwned<ClientConnection, TcpStream>| {
        let mut text = Vec::new();
        let mut byte = [0];
        while byte[0] != b'\n' {
            stream.read_exact(&mut byte).unwrap();
            text.push(byte[0]);
        }
        String::from_utf8(text).unwrap()
    };
    assert!(line(&mut alice).starts_with("* welcome user-"));
    alice.write_all(b"/nick alice\n").unwrap();
    assert!(line(&mut alice).contains("alice"));
    let mut bob = pki.client(server.addr, false);
    assert!(line(&mut bob).starts_with("* welcome user-"));
    assert!(line(&mut alice).ends_with(" joined\n"));
    alice.write_all(b"hello over TLS\n").unwrap();
    assert_eq!(line(&mut bob), "alice: hello over TLS\n");
}

#[test]
fn mutual_tls_serves_only_clients_with_a_certificate() {
    let pki = Pki::new("mutual");
    let server = start(Ack, pki.server_config(true));
    let mut stranger = pki.client(server.addr, false);
    // TLS 1.3: the client learns of the refusal on its first read.
    let _ = stranger.write_all(b"hello\n");
    let mut buf = [0; 64];
    let refused = stranger.read(&mut buf);
    assert!(
        matches!(refused, Err(_) | Ok(0)),
        "a client without a certificate was answered: {refused:?}"
    );
    let mut known = pki.client(server.addr, true);
    known.write_all(b"hello\n").unwrap();
    assert_eq!(read_n(&mut known, REPLY.len()), REPLY);
}

#[test]
fn a_handshake_that_never_finishes_is_dropped_and_others_are_served() {
    let pki = Pki::new("slow");
    let config = Config {
        handshake_timeout: Duration::from_millis(300),
        ..pki.server_config(false)
    };
    let server = start(Ack, config);
    // Connects and says nothing: no handshake, no line.
    let mut silent = connect(server.addr);
    let mut served = pki.client(server.addr, false);
    served.write_all(b"hi\n").unwrap();
    assert_eq!(read_n(&mut served, REPLY.len()), REPLY);
    let started = std::time::Instant::now();
    assert_eq!(read_to_close(&mut silent), b"");
    // Dropped by the timeout, not by the test's 20 s read deadline.
    assert!(started.elapsed() < Duration::from_secs(10));
    served.write_all(b"still here\n").unwrap();
    assert_eq!(read_n(&mut served, REPLY.len()), REPLY);
}

#[test]
fn a_plain_client_at_a_tls_server_is_told_so_in_one_line() {
    let pki = Pki::new("plain");
    let server = start(Ack, pki.server_config(false));
    let mut plain = connect(server.addr);
    send(&mut plain, b"hello\n");
    assert_eq!(
        read_to_close(&mut plain),
        b"ERR this server speaks TLS (try sockline connect --tls)\n"
    );
}

/// Runs `sockline connect ARGS...` with `input` on stdin.
fn connect_binary(args: &[&str], input: &str) -> Finished {
    common::run(
        Command::new(bin()).arg("connect").args(args),
        input,
        Duration::from_secs(20),
    )
}

#[test]
fn serve_and_connect_speak_tls_with_files_and_mutual_auth() {
    let pki = Pki::new("binary");
    let ca = pki.path("ca.pem");
    let server = serve_binary(&pki.serve_args().each_ref().map(String::as_str));
    let addr = format!("localhost:{}", server.addr.port());
    let (client_cert, client_key) = (pki.path("client.pem"), pki.path("client.key"));
    let done = connect_binary(
        &[
            "--tls",
            "--ca",
            &ca,
            "--cert",
            &client_cert,
            "--key",
            &client_key,
            &addr,
        ],
        "hello\nBYE\n",
    );
    assert!(done.status.success(), "stderr: {}", done.stderr);
    assert_eq!(done.stdout.as_bytes(), REPLY.repeat(2));
    // Without a client certificate the server refuses: one line, exit 1.
    let done = connect_binary(&["--tls", "--ca", &ca, &addr], "hello\nBYE\n");
    assert!(!done.status.success());
    assert_eq!(done.stderr.lines().count(), 1, "stderr: {}", done.stderr);
    assert!(
        done.stderr.starts_with("sockline: "),
        "stderr: {}",
        done.stderr
    );
}

#[test]
fn self_signed_prints_a_fingerprint_that_connect_can_pin() {
    let server = serve_binary(&["--tls-self-signed"]);
    let addr = server.addr.to_string();
    let line = server
        .banner
        .lines()
        .find(|line| line.contains("SHA-256 fingerprint"))
        .expect("a fingerprint line");
    let pin = line.rsplit(' ').next().unwrap();
    assert_eq!(pin.len(), 32 * 3 - 1, "line: {line}");
    let done = connect_binary(&["--tls", "--pin", pin, &addr], "hello\nBYE\n");
    assert!(done.status.success(), "stderr: {}", done.stderr);
    assert_eq!(done.stdout.as_bytes(), REPLY.repeat(2));
    // Another certificate's fingerprint: refused, one line, exit 1.
    let wrong = "00".repeat(32);
    let done = connect_binary(&["--tls", "--pin", &wrong, &addr], "hello\n");
    assert!(!done.status.success());
    assert!(
        done.stderr.contains("does not match --pin"),
        "stderr: {}",
        done.stderr
    );
    // Unauthenticated but encrypted, on request.
    let done = connect_binary(&["--tls", "--insecure", &addr], "hi\nBYE\n");
    assert!(done.status.success(), "stderr: {}", done.stderr);
    assert_eq!(done.stdout.as_bytes(), REPLY.repeat(2));
}

#[test]
fn a_tls_client_that_never_reads_is_dropped_by_the_write_timeout() {
    let pki = Pki::new("deaf");
    let config = Config {
        write_timeout: Some(Duration::from_millis(500)),
        ..pki.server_config(false)
    };
    let server = start(Ack, config);
    let mut deaf = pki.client(server.addr, false);
    deaf.get_ref()
        .set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let flood = b"never reading\n".repeat(1024);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let dropped = loop {
        assert!(std::time::Instant::now() < deadline, "never dropped");
        match deaf.write(&flood) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => break e,
        }
    };
    assert!(
        matches!(
            dropped.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
        "{dropped:?}"
    );
    // The others are served.
    let mut other = pki.client(server.addr, false);
    other.write_all(b"hi\n").unwrap();
    assert_eq!(read_n(&mut other, REPLY.len()), REPLY);
}

#[test]
fn a_refused_tls_client_is_told_why_over_tls() {
    let pki = Pki::new("refused");
    let config = Config {
        max_conns: 1,
        ..pki.server_config(false)
    };
    let server = start(Ack, config);
    let mut first = pki.client(server.addr, false);
    first.write_all(b"hi\n").unwrap();
    assert_eq!(read_n(&mut first, REPLY.len()), REPLY);
    // Past max_conns: the reason comes through TLS, then a clean close.
    let mut second = pki.client(server.addr, false);
    let mut got = Vec::new();
    second.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"ERR server full\n");
    // The one admitted is still served, and its slot frees for the next.
    first.write_all(b"BYE\n").unwrap();
    let mut rest = Vec::new();
    first.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, REPLY);
    let mut third = pki.client(server.addr, false);
    third.write_all(b"hi\n").unwrap();
    assert_eq!(read_n(&mut third, REPLY.len()), REPLY);

    let denied = Config {
        access: sockline::server::Access {
            allow: vec![],
            deny: vec!["127.0.0.0/8".parse().unwrap()],
        },
        ..pki.server_config(false)
    };
    let server = start(Ack, denied);
    let mut client = pki.client(server.addr, false);
    let mut got = Vec::new();
    client.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"ERR access denied\n");
}

#[test]
fn with_tls_the_web_listener_speaks_https_and_wss() {
    let pki = Pki::new("web");
    let (cert, key) = (pki.path("server.pem"), pki.path("server.key"));
    let server = serve_binary(&[
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--web",
        "127.0.0.1:0",
    ]);
    let line = (server.banner.lines())
        .find_map(|l| l.split("web listening on ").nth(1))
        .unwrap();
    assert!(line.contains("(https://"), "{line}");
    let web: SocketAddr = line.split_whitespace().next().unwrap().parse().unwrap();
    // The page over HTTPS.
    let mut https = pki.client(web, false);
    https
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut page = Vec::new();
    let _ = https.read_to_end(&mut page);
    assert!(page.starts_with(b"HTTP/1.1 200 OK\r\n"));
    // A WebSocket over TLS (wss://): the tutorial's dialogue.
    let stream = pki.client(web, false);
    let url = format!("wss://localhost:{}/ws", web.port());
    let (mut socket, _) = tungstenite::client(url, stream).unwrap();
    socket.send(tungstenite::Message::text("hello")).unwrap();
    let reply = socket.read().unwrap();
    assert_eq!(reply.into_text().unwrap().as_str(), " MSG Received");
}
