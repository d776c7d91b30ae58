//! Shared test helpers: start a real server on 127.0.0.1 port 0, in-process
//! or as the real binary, and talk to it over real sockets.
#![allow(dead_code)]

use sockline::{Config, Protocol, Shutdown, server};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

/// A server running in this process.
pub struct InProcess {
    pub addr: SocketAddr,
    pub shutdown: Shutdown,
    pub thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl InProcess {
    /// Triggers shutdown and waits for the server to return.
    pub fn stop(mut self) -> std::io::Result<()> {
        self.shutdown.trigger();
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// Starts `proto` with `config` on 127.0.0.1:0.
pub fn start<P: Protocol>(proto: P, config: Config) -> InProcess {
    let listener = server::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = Shutdown::new();
    let signal = shutdown.clone();
    let thread = std::thread::spawn(move || server::run(listener, proto, config, signal));
    InProcess {
        addr,
        shutdown,
        thread: Some(thread),
    }
}

/// The real `sockline` binary, running `serve` on 127.0.0.1:0.
pub struct Binary {
    pub child: Child,
    pub addr: SocketAddr,
    /// The rest of the server's stderr, read in the background.
    pub stderr: JoinHandle<String>,
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Path of the real binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_sockline")
}

/// Runs `sockline serve --listen 127.0.0.1:0 EXTRA...` and waits for its
/// "listening on" line.
pub fn serve_binary(extra: &[&str]) -> Binary {
    let mut child = Command::new(bin())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sockline serve");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "server exited before listening"
        );
        if let Some(at) = line.find("listening on ") {
            break line[at + "listening on ".len()..].trim().parse().unwrap();
        }
    };
    let stderr = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = stderr.read_to_string(&mut rest);
        rest
    });
    Binary {
        child,
        addr,
        stderr,
    }
}

/// Connects with a generous read timeout so a broken server fails the test
/// instead of hanging it.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
}

/// Reads until the server closes the connection.
pub fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    stream.read_to_end(&mut all).unwrap();
    all
}

/// Reads exactly `n` bytes.
pub fn read_n(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    stream.read_exact(&mut buf).unwrap();
    buf
}

/// Sends `data` in one write.
pub fn send(stream: &mut TcpStream, data: &[u8]) {
    stream.write_all(data).unwrap();
}
