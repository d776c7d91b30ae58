//! Shared test helpers: start a real server on 127.0.0.1 port 0, in-process
//! or as the real binary, and talk to it over real sockets; run child
//! processes with deadlines, killing them however the test ends.
#![allow(dead_code)]

pub mod browser;
pub mod chat;
pub mod pki;

use sockline::{Config, Protocol, Shutdown, server};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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
    pub child: KillOnDrop,
    pub addr: SocketAddr,
    /// What the server printed up to its "listening on" line.
    pub banner: String,
    /// The rest of the server's stderr, read in the background.
    pub stderr: JoinHandle<String>,
}

/// Path of the real binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_sockline")
}

/// Runs `sockline serve --listen 127.0.0.1:0 EXTRA...` (or with EXTRA's own
/// `--listen`) and waits for its "listening on" line.
pub fn serve_binary(extra: &[&str]) -> Binary {
    let mut child = KillOnDrop(
        Command::new(bin())
            .arg("serve")
            .args(match extra.contains(&"--listen") {
                true => &[][..],
                false => &["--listen", "127.0.0.1:0"][..],
            })
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sockline serve"),
    );
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut banner = String::new();
    let addr = loop {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "server exited before listening: {banner}"
        );
        banner.push_str(&line);
        if line.starts_with('{') {
            // --log-format json: the address is a field.
            let object: serde_json::Value = serde_json::from_str(&line).unwrap();
            if let Some(listen) = object["fields"]["listen"].as_str() {
                break listen.parse().unwrap();
            }
        } else if let Some(at) = line
            .find("listening on ")
            .filter(|_| !line.contains("web listening"))
        {
            break line[at + "listening on ".len()..].trim().parse().unwrap();
        }
    };
    let stderr = read_in_background(stderr);
    Binary {
        child,
        addr,
        banner,
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

/// The resident memory of process `pid`, in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
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

/// A child process killed (and reaped) when the test ends, however it ends;
/// derefs to the [`Child`].
pub struct KillOnDrop(pub Child);

impl Deref for KillOnDrop {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A finished child process and its output.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Reads all of `from` (lossy UTF-8) on a thread of its own.
pub fn read_in_background(mut from: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut all = Vec::new();
        let _ = from.read_to_end(&mut all);
        String::from_utf8_lossy(&all).into_owned()
    })
}

/// Waits up to `deadline` for `child` to exit; `None` if it is still
/// running then.
pub fn wait_within(child: &mut Child, deadline: Duration) -> Option<ExitStatus> {
    let until = Instant::now() + deadline;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= until {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `command` with `input` on stdin, then EOF, and collects its output;
/// kills it and fails the test, showing its output so far, if it runs past
/// `deadline`.
pub fn run(command: &mut Command, input: &str, deadline: Duration) -> Finished {
    let mut child = KillOnDrop(
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the program under test"),
    );
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_owned();
    std::thread::spawn(move || {
        // A program that exits early shows in the assertions on its output.
        let _ = stdin.write_all(input.as_bytes());
    });
    let stdout = read_in_background(child.stdout.take().unwrap());
    let stderr = read_in_background(child.stderr.take().unwrap());
    let status = wait_within(&mut child, deadline);
    // Killed, it closes its pipes: what it wrote so far is all there is.
    drop(child);
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    let Some(status) = status else {
        panic!(
            "{command:?} still running after {deadline:?}; stdout: {stdout:?}; stderr: {stderr:?}"
        );
    };
    Finished {
        status,
        stdout,
        stderr,
    }
}

/// An address where nothing listens, held so nothing else takes it: a
/// socket bound but not listening, so connecting is refused, and its port
/// cannot be picked as another socket's source port (a TCP self-connect).
/// Keep the returned socket alive while the address is used.
pub fn refusing_addr() -> (socket2::Socket, SocketAddr) {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    (socket, addr)
}

/// A port on 127.0.0.1 that was free a moment ago (nothing listens on it).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A real `redis-server` on a free port of 127.0.0.1, killed when dropped.
pub struct RedisServer {
    pub child: KillOnDrop,
    pub port: u16,
}

impl RedisServer {
    /// Starts one without persistence; fails the test, saying what to
    /// install, if there is no `redis-server`.
    pub fn start() -> RedisServer {
        Self::start_on(free_port(), None)
    }

    /// Starts one on `port`; with `dir`, it keeps its data there (an
    /// append-only file, synced on every write) across restarts.
    pub fn start_on(port: u16, dir: Option<&std::path::Path>) -> RedisServer {
        let mut command = Command::new("redis-server");
        command.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ]);
        match dir {
            Some(dir) => command
                .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
                .arg(dir),
            None => command.args(["--appendonly", "no"]),
        };
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-server ({e}): run scripts/test.sh or apt-get install redis-server")
            });
        let server = RedisServer {
            child: KillOnDrop(child),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !server.answers() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// Kills it (SIGKILL) and waits for it to be gone.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Sends one command (RESP inline) and returns the first reply line.
    pub fn command(&self, line: &str) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream.write_all(format!("{line}\r\n").as_bytes()).unwrap();
        let mut reply = String::new();
        BufReader::new(stream).read_line(&mut reply).unwrap();
        reply
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Whether it answers PING.
    pub fn answers(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut reply = [0; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }
}

/// One sample's value in Prometheus text (`NAME{labels} VALUE`).
pub fn metric(text: &str, sample: &str) -> u64 {
    let line = text
        .lines()
        .find(|l| l.starts_with(sample) && l[sample.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("no {sample} in:\n{text}"));
    line[sample.len() + 1..].parse().unwrap()
}

/// `GET path` from the metrics listener at `addr`: the whole response.
pub fn scrape(addr: SocketAddr, path: &str) -> String {
    let mut http = connect(addr);
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    http.write_all(request.as_bytes()).unwrap();
    let mut text = String::new();
    http.read_to_string(&mut text).unwrap();
    text
}

/// The haproxy binary: on PATH or where Debian puts it.
pub fn haproxy() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(["/usr/sbin".into(), "/usr/local/sbin".into()]);
    for dir in dirs {
        let candidate = dir.join("haproxy");
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "haproxy is not installed: this test runs a real HAProxy in front of sockline; \
         run scripts/test.sh or .ci/run (they install it), or apt-get install haproxy"
    );
}

/// True when something listens on 127.0.0.1:`port` (from /proc/net/tcp,
/// so that checking opens no connection through the balancer).
pub fn listening(port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let local = format!("0100007F:{port:04X}");
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(1) == Some(&local.as_str()) && fields.get(3) == Some(&"0A")
    })
}

/// A real HAProxy, killed when dropped.
pub struct Haproxy {
    pub child: KillOnDrop,
    pub addr: SocketAddr,
    dir: PathBuf,
}

impl Haproxy {
    /// Runs `haproxy -f CONFIG -db` with `backend` (the lines of a TCP
    /// backend) behind a frontend on a free port; waits until it listens.
    pub fn start(name: &str, backend: &str) -> Haproxy {
        let binary = haproxy();
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("sockline-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("haproxy.cfg");
        let text = format!(
            "global\n    maxconn 256\n\n\
             defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n\n\
             frontend front\n    bind 127.0.0.1:{port}\n    default_backend socklines\n\n\
             backend socklines\n{backend}"
        );
        std::fs::write(&config, text).unwrap();
        let mut child = KillOnDrop(
            Command::new(&binary)
                .arg("-f")
                .arg(&config)
                .arg("-db")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display())),
        );
        let stderr = read_in_background(child.stderr.take().unwrap());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !listening(port) {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("haproxy exited ({status}): {}", stderr.join().unwrap());
            }
            assert!(
                Instant::now() < deadline,
                "haproxy not listening on {port} after 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Haproxy {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir,
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.0.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
