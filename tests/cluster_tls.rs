//! Chat rooms across sockline servers through a real Redis spoken to over
//! TLS (`rediss://`): a private CA (`--redis-ca`), mutual TLS
//! (`--redis-cert`, `--redis-key`), a node that does not trust Redis's
//! certificate, and bad certificate files. Certificates are made at run
//! time with rcgen; Redis is a real `redis-server` with TLS on a free port.

mod common;

use common::chat::Member;
use common::pki::Pki;
use common::{KillOnDrop, bin, free_port, run};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

/// How long a node or Redis gets to say what a test waits for.
const PATIENCE: Duration = Duration::from_secs(20);

/// The lines `from` gives, read on a thread of its own.
fn lines(from: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Reads `log` until a line contains `want` and returns that line; fails
/// the test, showing what was read, if none does within [`PATIENCE`] or
/// the log ends first.
fn wait_log(log: &Receiver<String>, want: &str, what: &str) -> String {
    let deadline = Instant::now() + PATIENCE;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match log.recv_timeout(left) {
            Ok(line) if line.contains(want) => return line,
            Ok(line) => seen.push(line),
            Err(e) => panic!("{what} did not log {want:?} ({e}); it logged: {seen:#?}"),
        }
    }
}

/// A real `redis-server` speaking only TLS on a free port of 127.0.0.1,
/// with `pki`'s server certificate; with `auth_clients`, clients must
/// present a certificate `pki`'s CA signed. Killed when dropped.
struct TlsRedis {
    _child: KillOnDrop,
    port: u16,
}

impl TlsRedis {
    fn start(pki: &Pki, auth_clients: bool) -> TlsRedis {
        let port = free_port();
        let mut child = KillOnDrop(
            Command::new("redis-server")
                .args(["--port", "0", "--tls-port", &port.to_string()])
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .args(["--tls-cert-file", &pki.path("server.pem")])
                .args(["--tls-key-file", &pki.path("server.key")])
                .args(["--tls-ca-cert-file", &pki.path("ca.pem")])
                .args(["--tls-auth-clients", if auth_clients { "yes" } else { "no" }])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot run redis-server ({e}): run scripts/test.sh or apt-get install redis-server"
                    )
                }),
        );
        // Its log goes to stdout; a redis-server built without TLS says so
        // there and exits.
        let log = lines(child.stdout.take().unwrap());
        wait_log(&log, "Ready to accept connections", "redis-server with TLS");
        // Keep reading, so that Redis never blocks on a full pipe.
        std::thread::spawn(move || log.iter().for_each(drop));
        TlsRedis {
            _child: child,
            port,
        }
    }

    fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }
}

/// A `sockline serve --mode chat` node on `redis` (quiet: it logs only
/// warnings and errors), with `extra` flags.
struct Node {
    _child: KillOnDrop,
    addr: SocketAddr,
    /// Its stderr from after the "listening on" line.
    log: Receiver<String>,
}

impl Node {
    fn start(redis: &TlsRedis, name: &str, extra: &[&str]) -> Node {
        let mut child = KillOnDrop(
            Command::new(bin())
                .args(["serve", "--listen", "127.0.0.1:0", "--mode", "chat", "-q"])
                .args(["--redis", &redis.url(), "--node", name])
                .args(extra)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start sockline serve"),
        );
        let log = lines(child.stderr.take().unwrap());
        let line = wait_log(&log, "listening on ", name);
        let at = line.find("listening on ").unwrap() + "listening on ".len();
        Node {
            _child: child,
            addr: line[at..].trim().parse().unwrap(),
            log,
        }
    }

    /// What it has logged so far past its start-up lines (`sockline: ...`):
    /// with `-q`, only warnings and errors.
    fn warnings(&self) -> Vec<String> {
        let logged = self.log.try_iter();
        logged.filter(|l| !l.starts_with("sockline: ")).collect()
    }
}

#[test]
fn nodes_share_rooms_through_redis_over_tls_with_a_private_ca() {
    let pki = Pki::new("private-ca");
    let redis = TlsRedis::start(&pki, false);
    let ca = pki.path("ca.pem");
    let a = Node::start(&redis, "a", &["--redis-ca", &ca]);
    let b = Node::start(&redis, "b", &["--redis-ca", &ca]);
    let mut alice = Member::join(a.addr, "alice");
    let mut bob = Member::join(b.addr, "bob");
    // Renames go through Redis too: alice hearing bob's means both nodes
    // are subscribed.
    while !alice.line().ends_with(" is now bob") {}
    alice.say("hello over TLS");
    bob.wait_for("alice: hello over TLS");
    bob.say("hi alice");
    alice.wait_for("bob: hi alice");
    for (node, name) in [(&a, "a"), (&b, "b")] {
        let warned = node.warnings();
        assert!(warned.is_empty(), "node {name} logged: {warned:#?}");
    }
}

#[test]
fn a_node_that_does_not_trust_the_redis_certificate_logs_why() {
    let (pki, other) = (Pki::new("redis-ca"), Pki::new("other-ca"));
    let redis = TlsRedis::start(&pki, false);
    let node = Node::start(&redis, "a", &["--redis-ca", &other.path("ca.pem")]);
    let line = wait_log(&node.log, "invalid peer certificate", "the node");
    assert!(line.contains("UnknownIssuer"), "{line}");
    assert!(line.contains(&redis.url()), "{line}");
}

#[test]
fn mutual_tls_lets_in_a_node_with_a_client_certificate_only() {
    let pki = Pki::new("mutual");
    let redis = TlsRedis::start(&pki, true);
    let ca = pki.path("ca.pem");
    let (cert, key) = (pki.path("client.pem"), pki.path("client.key"));
    let with = Node::start(
        &redis,
        "a",
        &[
            "--redis-ca",
            &ca,
            "--redis-cert",
            &cert,
            "--redis-key",
            &key,
        ],
    );
    // Two members of one node hear each other only through Redis.
    let mut alice = Member::join(with.addr, "alice");
    let mut bob = Member::join(with.addr, "bob");
    bob.say("hello with a certificate");
    alice.wait_for("bob: hello with a certificate");
    let warned = with.warnings();
    assert!(warned.is_empty(), "node a logged: {warned:#?}");

    let without = Node::start(&redis, "b", &["--redis-ca", &ca]);
    wait_log(
        &without.log,
        "CertificateRequired",
        "a node without a certificate",
    );
}

#[test]
fn bad_redis_tls_files_and_urls_are_one_line_errors_at_start() {
    let pki = Pki::new("bad-files");
    let (ca, cert, key) = (
        pki.path("ca.pem"),
        pki.path("client.pem"),
        pki.path("client.key"),
    );
    let missing = pki.path("missing.pem");
    // Whatever is at this address, the node never gets to it.
    let tls_url = "rediss://127.0.0.1:1";
    let cases: [(&[&str], &str); 5] = [
        (
            &["--redis", tls_url, "--redis-ca", &missing],
            "cannot read certificates from",
        ),
        (
            &["--redis", tls_url, "--redis-ca", &key],
            "no certificate in",
        ),
        (
            &[
                "--redis",
                tls_url,
                "--redis-cert",
                &cert,
                "--redis-key",
                &ca,
            ],
            "cannot read a private key from",
        ),
        (
            &["--redis", "redis://127.0.0.1:1", "--redis-ca", &ca],
            "requires a URL with the `rediss://` scheme",
        ),
        (
            &["--redis", "rediss://127.0.0.1:1/#nope"],
            "only #insecure is supported",
        ),
    ];
    for (flags, want) in cases {
        let done = run(
            Command::new(bin())
                .args(["serve", "--listen", "127.0.0.1:0", "--mode", "chat"])
                .args(flags),
            "",
            PATIENCE,
        );
        assert!(!done.status.success(), "{flags:?} started");
        assert_eq!(
            done.stderr.lines().count(),
            1,
            "{flags:?}: {:?}",
            done.stderr
        );
        assert!(
            done.stderr.starts_with("sockline: ") && done.stderr.contains(want),
            "{flags:?}: {:?}",
            done.stderr
        );
        assert!(!done.stderr.contains("panicked"), "{:?}", done.stderr);
    }
}
