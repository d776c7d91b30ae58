//! `sockline connect` as a user runs it: the real binary, real sockets on
//! 127.0.0.1 port 0, stdin and stdout through pipes. Every wait has a
//! deadline, so a broken client fails a test instead of hanging it.

mod common;

use common::pki::Pki;
use common::{Finished, KillOnDrop};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
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
    run_with(&[addr], input)
}

/// Runs `sockline connect ARGS...` with all of `input` on stdin (a pipe),
/// then EOF.
fn run_with(args: &[&str], input: &str) -> Finished {
    common::run(
        Command::new(common::bin()).arg("connect").args(args),
        input,
        DEADLINE,
    )
}

/// Runs the client with stdin read from the file at `input`.
fn run_from_file(addr: &str, input: &Path) -> Finished {
    let mut child = KillOnDrop(
        Command::new(common::bin())
            .args(["connect", addr])
            .stdin(std::fs::File::open(input).unwrap())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sockline connect"),
    );
    let stdout = common::read_in_background(child.stdout.take().unwrap());
    let stderr = common::read_in_background(child.stderr.take().unwrap());
    let status = common::wait_within(&mut child, DEADLINE);
    drop(child);
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    Finished {
        status: status.unwrap_or_else(|| panic!("still running after {DEADLINE:?}: {stderr}")),
        stdout,
        stderr,
    }
}

/// A file of its own for this test's stdin, removed when dropped.
struct InputFile(std::path::PathBuf);

impl InputFile {
    fn new(name: &str, text: &str) -> InputFile {
        let path =
            std::env::temp_dir().join(format!("sockline-connect-{}-{name}", std::process::id()));
        std::fs::write(&path, text).unwrap();
        InputFile(path)
    }
}

impl Drop for InputFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Fails the test unless `done` exited with `code`, with at most one line
/// on stderr, which (if any) starts `sockline: ` and contains `says`.
fn assert_exit(done: &Finished, code: i32, says: &str) {
    assert_eq!(
        done.status.code(),
        Some(code),
        "stdout: {:?}, stderr: {:?}",
        done.stdout,
        done.stderr
    );
    assert!(done.stderr.lines().count() <= 1, "stderr: {}", done.stderr);
    assert!(done.stderr.contains(says), "stderr: {}", done.stderr);
    assert!(
        done.stderr.is_empty() || done.stderr.starts_with("sockline: "),
        "stderr: {}",
        done.stderr
    );
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

#[test]
fn a_line_the_server_cuts_exits_1_from_a_pipe_and_from_a_file_alike() {
    let server = common::serve_binary(&["--mode", "echo"]);
    let addr = server.addr.to_string();
    let input = format!("{}\n", "x".repeat(70_000));
    let file = InputFile::new("long", &input);
    let refusal = "ERR line too long (max 65536 bytes)";
    for _ in 0..3 {
        for done in [run(&addr, &input), run_from_file(&addr, &file.0)] {
            assert_exit(&done, 1, refusal);
            assert!(
                done.stdout.ends_with(&format!("{refusal}\n")),
                "stdout ends {:?}",
                &done.stdout[done.stdout.len().saturating_sub(80)..]
            );
        }
    }
}

#[test]
fn a_refused_session_exits_1() {
    let server = common::serve_binary(&["--max-conns", "1"]);
    // Another client holds the one slot.
    let mut holder = common::connect(server.addr);
    common::send(&mut holder, b"hi\n");
    assert_eq!(common::read_n(&mut holder, 14), b" MSG Received\n");
    let addr = server.addr.to_string();
    let file = InputFile::new("refused", "hello\n");
    for done in [
        run(&addr, "hello\n"),
        run(&addr, ""),
        run_from_file(&addr, &file.0),
    ] {
        assert_exit(&done, 1, "ERR server full");
        assert_eq!(done.stdout, "ERR server full\n");
    }
}

#[test]
fn bye_and_the_end_of_input_exit_0_from_a_pipe_and_from_a_file() {
    let ack = common::serve_binary(&[]);
    let echo = common::serve_binary(&["--mode", "echo"]);
    let bye = InputFile::new("bye", "hello\nBYE\n");
    let eof = InputFile::new("eof", "a\nb\n");
    for _ in 0..3 {
        let addr = ack.addr.to_string();
        for done in [run(&addr, "hello\nBYE\n"), run_from_file(&addr, &bye.0)] {
            assert_exit(&done, 0, "");
            assert_eq!(done.stdout, " MSG Received\n MSG Received\n");
        }
        let addr = echo.addr.to_string();
        for done in [run(&addr, "a\nb\n"), run_from_file(&addr, &eof.0)] {
            assert_exit(&done, 0, "");
            assert_eq!(done.stdout, "a\nb\n");
        }
    }
}

#[test]
fn sigint_exits_130() {
    let server = common::serve_binary(&["--mode", "echo"]);
    let mut client = Client::start(&server.addr.to_string());
    client.write("hi\n");
    assert!(client.stdout_has("hi\n"));
    let pid = Pid::from_raw(client.child.id().try_into().unwrap());
    kill(pid, Signal::SIGINT).unwrap();
    let done = client.finish();
    assert_eq!(done.status.code(), Some(130), "stderr: {}", done.stderr);
    assert_eq!(done.stdout, "hi\n");
}

#[test]
fn pin_implies_tls_and_an_unknown_issuer_says_what_to_do() {
    let server = common::serve_binary(&["--tls-self-signed"]);
    let addr = server.addr.to_string();
    let line = (server.banner.lines())
        .find(|line| line.contains("SHA-256 fingerprint"))
        .expect("a fingerprint line");
    let pin = line.rsplit(' ').next().unwrap();
    // --pin, --insecure: TLS without saying --tls.
    let done = run_with(&["--pin", pin, &addr], "hello\nBYE\n");
    assert_exit(&done, 0, "");
    assert_eq!(done.stdout, " MSG Received\n MSG Received\n");
    let done = run_with(&["--insecure", &addr], "hello\nBYE\n");
    assert_exit(&done, 0, "");
    // The public roots do not know it: what to do, with the fingerprint.
    let done = run_with(&["--tls", &addr], "hello\n");
    assert_exit(&done, 1, "unknown issuer");
    for hint in ["--ca FILE", &format!("--pin {pin}"), "--insecure"] {
        assert!(done.stderr.contains(hint), "no {hint:?} in {}", done.stderr);
    }
}

/// An X.509 version 1 client certificate (no extensions), as `openssl x509
/// -req` makes one without `-extfile`, and its key.
const V1_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBHzCBxwIUKoNBOFWlbWYck7fUnbZXq0xoTxIwCgYIKoZIzj0EAwIwEjEQMA4G
A1UEAwwHdGVzdCBDQTAeFw0yNjEyMDExODQ2MTJaFw0yNjEyMzExODQ2MTJaMBQx
EjAQBgNVBAMMCXYxIGNsaWVudDBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABDA8
S4yg5mi2i2B3Q36YUI2Ke0hl0u4Cc4YNPFEyqlIGwGHJotVOGhrAIoYHCMmA2v/V
stdH0E14Lm8T0m8myqwwCgYIKoZIzj0EAwIDRwAwRAIgXSjK1m9peuyHKzeb5Rep
Y/aQbAnKNreAw+R61mRVTrECIBgDfCv7i6Xj9HCWs/kuKmSx8iFoj7lMXH+eSYxd
aKtn
-----END CERTIFICATE-----
";
const V1_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg1369KoWX3CiwF7hV
U/s1Y50kGkhpZsQqwfNsbP2DRSmhRANCAAQwPEuMoOZototgd0N+mFCNintIZdLu
AnOGDTxRMqpSBsBhyaLVThoawCKGBwjJgNr/1bLXR9BNeC5vE9JvJsqs
-----END PRIVATE KEY-----
";

#[test]
fn client_certificate_problems_are_named_in_words() {
    // --cert implies --tls; a version 1 certificate is refused by name,
    // before any connecting.
    let cert = InputFile::new("v1.pem", V1_CERT);
    let key = InputFile::new("v1.key", V1_KEY);
    let (_held, addr) = common::refusing_addr();
    let args = [
        "--cert",
        cert.0.to_str().unwrap(),
        "--key",
        key.0.to_str().unwrap(),
        &addr.to_string(),
    ];
    let done = run_with(&args, "");
    assert_exit(&done, 1, "X.509 version 1 certificate");
    assert!(done.stderr.contains("v1.pem"), "stderr: {}", done.stderr);
    assert!(
        !done.stderr.contains("UnsupportedCertVersion"),
        "{}",
        done.stderr
    );

    // A server that wants a certificate, and a client without one.
    let pki = Pki::new("connect-mutual");
    let ca = pki.path("ca.pem");
    let server = common::serve_binary(&pki.serve_args().each_ref().map(String::as_str));
    let addr = format!("localhost:{}", server.addr.port());
    let done = run_with(&["--ca", &ca, &addr], "hello\n");
    assert_exit(&done, 1, "requires a client certificate");
    assert!(
        done.stderr.contains("--cert FILE --key FILE"),
        "{}",
        done.stderr
    );
}
