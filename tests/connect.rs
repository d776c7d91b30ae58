//! `sockline connect` as a user runs it: the real binary, real sockets on
//! 127.0.0.1 port 0, stdin and stdout through pipes. Every wait has a
//! deadline, so a broken client fails a test instead of hanging it.

mod common;

use common::{Finished, KillOnDrop};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long any one step may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(20);

/// A running `sockline connect`, killed if the test ends early.
struct Client {
    child: KillOnDrop,
    stdin: Option<ChildStdin>,
    /// Stdout chunks as they arrive; disconnected at EOF.
    stdout: mpsc::Receiver<Vec<u8>>,
    seen: Vec<u8>,
    stderr: Option<JoinHandle<String>>,
}

impl Client {
    fn start(addr: &str) -> Client {
        let mut child = KillOnDrop(
            Command::new(common::bin())
                .args(["connect", addr])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start sockline connect"),
        );
        let mut stdout = child.stdout.take().unwrap();
        let (tx, chunks) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0; 4096];
            while let Ok(n @ 1..) = stdout.read(&mut buf) {
                if tx.send(buf[..n].to_vec()).is_err() {
                    return;
                }
            }
        });
        let stderr = common::read_in_background(child.stderr.take().unwrap());
        Client {
            stdin: child.stdin.take(),
            child,
            stdout: chunks,
            seen: Vec::new(),
            stderr: Some(stderr),
        }
    }

    /// Types `data`. A client that already exited is not an error here: the
    /// test's assertions on its output say what went wrong.
    fn write(&mut self, data: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        if let Err(e) = stdin.write_all(data.as_bytes()) {
            eprintln!("cannot write to the client's stdin: {e}");
        }
    }

    fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits until stdout contains `needle`; false if it did not in time.
    fn stdout_has(&mut self, needle: &str) -> bool {
        let until = Instant::now() + DEADLINE;
        while !String::from_utf8_lossy(&self.seen).contains(needle) {
            let left = until.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(chunk) => self.seen.extend(chunk),
                Err(_) => return false,
            }
        }
        true
    }

    /// Waits for the client to exit (without closing stdin) and collects its
    /// output; kills it and fails the test if it runs past the deadline.
    fn finish(mut self) -> Finished {
        let Some(status) = common::wait_within(&mut self.child, DEADLINE) else {
            let _ = self.child.kill();
            while let Ok(chunk) = self.stdout.try_recv() {
                self.seen.extend(chunk);
            }
            panic!(
                "client still running after {DEADLINE:?}; stdout so far: {:?}",
                String::from_utf8_lossy(&self.seen)
            );
        };
        while let Ok(chunk) = self.stdout.recv_timeout(DEADLINE) {
            self.seen.extend(chunk);
        }
        let stderr = self.stderr.take().unwrap().join().unwrap();
        Finished {
            status,
            stdout: String::from_utf8_lossy(&self.seen).into_owned(),
            stderr,
        }
    }
}

/// Runs the client with all of `input` on stdin, then EOF.
fn run(addr: &str, input: &str) -> Finished {
    common::run(
        Command::new(common::bin()).args(["connect", addr]),
        input,
        DEADLINE,
    )
}

/// A one-connection test server on 127.0.0.1:0 running `serve` in a thread.
fn local_server(
    serve: impl FnOnce(std::net::TcpStream) + Send + 'static,
) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let thread = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        serve(stream);
    });
    (addr, thread)
}

#[test]
fn talks_to_the_real_server_and_leaves_after_bye() {
    let server = common::serve_binary(&[]);
    let done = run(&server.addr.to_string(), "hello\nworld\nBYE\n");
    assert!(done.status.success(), "stderr: {}", done.stderr);
    assert_eq!(done.stdout, " MSG Received\n MSG Received\n MSG Received\n");
}

#[test]
fn stdin_eof_half_closes_and_prints_the_rest() {
    let server = common::serve_binary(&["--mode", "echo"]);
    let done = run(&server.addr.to_string(), "a\nb\n");
    assert!(done.status.success(), "stderr: {}", done.stderr);
    assert_eq!(done.stdout, "a\nb\n");
}

#[test]
fn refused_connection_is_one_line_and_exit_1() {
    let (_held, addr) = common::refusing_addr();
    let port = addr.port();
    let done = run(&format!("127.0.0.1:{port}"), "");
    assert_eq!(done.status.code(), Some(1), "stderr: {}", done.stderr);
    assert_eq!(done.stderr.lines().count(), 1, "stderr: {}", done.stderr);
    assert!(
        done.stderr
            .starts_with(&format!("sockline: cannot connect to 127.0.0.1:{port}")),
        "stderr: {}",
        done.stderr
    );
    assert!(done.stderr.contains("refused"), "stderr: {}", done.stderr);
    assert!(!done.stderr.contains("panicked"), "stderr: {}", done.stderr);
}

#[test]
fn server_vanishing_mid_session_is_an_error() {
    let (addr, server) = local_server(|stream| {
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line).unwrap();
        (&stream).write_all(b"partial\n").unwrap();
        // Dropping the stream closes the connection.
    });
    let mut client = Client::start(&addr.to_string());
    client.write("hello\n");
    // Stdin stays open: the user has neither typed BYE nor hit EOF.
    let done = client.finish();
    server.join().unwrap();
    assert!(!done.status.success(), "stdout: {}", done.stdout);
    assert!(done.stdout.contains("partial"), "stdout: {}", done.stdout);
    assert!(
        done.stderr.contains("closed by server"),
        "stderr: {}",
        done.stderr
    );
}

#[test]
fn lines_are_printed_as_they_arrive_without_typing() {
    let (addr, server) = local_server(|mut stream| {
        stream.write_all(b"early\n").unwrap();
        // Then wait for the client's end of input before closing.
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).unwrap();
    });
    let mut client = Client::start(&addr.to_string());
    assert!(
        client.stdout_has("early"),
        "no \"early\" on stdout while stdin was open and idle"
    );
    client.close_stdin();
    let done = client.finish();
    server.join().unwrap();
    assert!(done.status.success(), "stderr: {}", done.stderr);
    assert_eq!(done.stdout, "early\n");
}

#[test]
fn quit_in_a_chat_is_a_clean_exit() {
    let server = common::serve_binary(&["--mode", "chat"]);
    let mut client = Client::start(&server.addr.to_string());
    assert!(client.stdout_has("* welcome user-1"));
    client.write("/quit\n");
    // Stdin stays open: the server closing after /quit ends the session.
    let done = client.finish();
    assert!(done.status.success(), "stderr: {}", done.stderr);
    assert!(done.stdout.ends_with("* bye\n"), "stdout: {}", done.stdout);
}

#[test]
fn quit_is_an_ordinary_line_to_other_servers() {
    let server = common::serve_binary(&["--mode", "echo"]);
    let done = run(&server.addr.to_string(), "/quit\nhello\n");
    assert!(done.status.success(), "stderr: {}", done.stderr);
    assert_eq!(done.stdout, "/quit\nhello\n");
}
