//! `serve --proxy-protocol`: behind a load balancer, the client's address
//! comes from the PROXY header (v1 or v2) the balancer sends first, and
//! admission, the protocol, the logs and the metrics see it. Hand-written
//! headers against an in-process server, then a real HAProxy (the Debian
//! package, started here on free ports) in front of two real servers.

mod common;

use common::{Haproxy, connect, read_n, read_to_close, send, serve_binary, start};
use sockline::mode::Ack;
use sockline::server::Access;
use sockline::{Config, Flow, Output, Protocol, metrics};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

const REPLY: &[u8] = b" MSG Received\n";
const NO_HEADER: &[u8] = b"ERR no valid PROXY protocol header\n";

/// A version 1 header for a TCP client at `source` that reached `destination`.
fn v1(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let family = if source.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        source.ip(),
        destination.ip(),
        source.port(),
        destination.port()
    )
    .into_bytes()
}

/// A version 2 PROXY header for a TCP client at `source`, with a TLV (a
/// unique ID) the server skips.
fn v2(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut block = Vec::new();
    let family = match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            block.extend_from_slice(&s.octets());
            block.extend_from_slice(&d.octets());
            0x11
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            block.extend_from_slice(&s.octets());
            block.extend_from_slice(&d.octets());
            0x21
        }
        _ => panic!("one family for both addresses"),
    };
    block.extend_from_slice(&source.port().to_be_bytes());
    block.extend_from_slice(&destination.port().to_be_bytes());
    block.extend_from_slice(&[0x05, 0, 4, b'i', b'd', b'4', b'2']);
    v2_raw(0x21, family, &block)
}

/// A version 2 header: version and command byte, family byte, the rest.
fn v2_raw(command: u8, family: u8, rest: &[u8]) -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend_from_slice(&[command, family]);
    header.extend_from_slice(&(rest.len() as u16).to_be_bytes());
    header.extend_from_slice(rest);
    header
}

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

/// Greets each client with the address the server gave it (what the logs
/// and the metrics see too), then acknowledges lines as `ack` does.
#[derive(Clone)]
struct Whoami;

impl Protocol for Whoami {
    type Session = ();
    type Event = ();

    fn open(&mut self, peer: SocketAddr, out: &mut Output) {
        out.line(peer.to_string().as_bytes());
    }

    fn line(&mut self, _: &mut (), _line: &[u8], out: &mut Output) -> Flow {
        out.line(b" MSG Received");
        Flow::Continue
    }
}

/// Reads one line (through its `\n`).
fn read_line(stream: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0];
    while line.last() != Some(&b'\n') {
        match stream.read(&mut byte) {
            Ok(1) => line.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&line).into_owned()
}

/// Scrapes until `sample` has value `want` (or 10 s pass: then the
/// assertion fails, showing the metrics).
fn wait_for(addr: SocketAddr, sample: &str, want: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = common::scrape(addr, "/metrics");
        if common::metric(&text, sample) == want {
            return text;
        }
        assert!(Instant::now() < deadline, "{sample} never {want}:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `config` with the PROXY protocol on and its metrics served; returns the
/// metrics address too.
fn proxied(config: Config) -> (Config, SocketAddr) {
    let config = Config {
        proxy_protocol: true,
        ..config
    };
    let http = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let at = http.local_addr().unwrap();
    metrics::serve(http, Arc::clone(&config.metrics)).unwrap();
    (config, at)
}

#[test]
fn the_header_s_client_is_who_admission_the_protocol_and_the_metrics_see() {
    let (config, metrics_at) = proxied(Config {
        max_conns_per_ip: 1,
        access: Access {
            allow: vec![],
            deny: vec!["10.9.0.0/16".parse().unwrap()],
        },
        ..Config::default()
    });
    let server = start(Whoami, config);
    let front = addr("192.0.2.1:5000");

    // v1, then lines: the protocol got the header's address.
    let mut one = connect(server.addr);
    let mut bytes = v1(addr("10.1.0.1:1111"), front);
    bytes.extend_from_slice(b"hello\r\nworld\n");
    send(&mut one, &bytes);
    assert_eq!(read_line(&mut one), "10.1.0.1:1111\n");
    assert_eq!(read_n(&mut one, 2 * REPLY.len()), REPLY.repeat(2));

    // v2 over IPv4 and over IPv6, TLVs skipped.
    let mut two = connect(server.addr);
    send(&mut two, &v2(addr("10.2.0.2:2222"), front));
    assert_eq!(read_line(&mut two), "10.2.0.2:2222\n");
    send(&mut two, b"hi\n");
    assert_eq!(read_n(&mut two, REPLY.len()), REPLY);
    let mut six = connect(server.addr);
    send(
        &mut six,
        &v2(addr("[2001:db8::5]:3333"), addr("[2001:db8::1]:80")),
    );
    assert_eq!(read_line(&mut six), "[2001:db8::5]:3333\n");

    // v2 LOCAL (a balancer's health check): the connection's own address.
    let mut local = connect(server.addr);
    send(&mut local, &v2_raw(0x20, 0x00, &[]));
    let own = local.local_addr().unwrap();
    assert_eq!(read_line(&mut local), format!("{own}\n"));
    drop(local);

    // --max-conns-per-ip counts the header's address: every TCP peer here
    // is 127.0.0.1, yet only the second from 10.1.0.1 is refused.
    let mut again = connect(server.addr);
    send(&mut again, &v1(addr("10.1.0.1:1112"), front));
    assert_eq!(
        read_to_close(&mut again),
        b"ERR too many connections from your address\n"
    );
    // --deny matches the header's address, not 127.0.0.1.
    let mut denied = connect(server.addr);
    send(&mut denied, &v2(addr("10.9.3.4:4444"), front));
    assert_eq!(read_to_close(&mut denied), b"ERR access denied\n");

    let text = wait_for(metrics_at, "sockline_connections_open", 3);
    assert_eq!(
        common::metric(&text, "sockline_connections_total"),
        4,
        "{text}"
    );
    assert_eq!(
        common::metric(&text, "sockline_refused_total{reason=\"per_ip\"}"),
        1
    );
    assert_eq!(
        common::metric(&text, "sockline_refused_total{reason=\"denied\"}"),
        1
    );
    assert_eq!(
        common::metric(&text, "sockline_refused_total{reason=\"proxy_header\"}"),
        0
    );
    // The ones admitted are served on.
    send(&mut one, b"still\n");
    assert_eq!(read_n(&mut one, REPLY.len()), REPLY);
}

#[test]
fn a_connection_without_a_valid_header_is_refused_or_dropped() {
    let (config, metrics_at) = proxied(Config {
        handshake_timeout: Duration::from_millis(500),
        ..Config::default()
    });
    let server = start(Ack, config);
    let front = addr("192.0.2.1:5000");

    // Lines where the header should be, garbage, a v1 line over 107 bytes,
    // a v2 header with a bad version: one line, then the close.
    let too_long = format!("PROXY UNKNOWN {}\r\nhi\n", "x".repeat(100));
    let mut bad_version = v2(addr("10.0.0.1:1"), front);
    bad_version[12] = 0x11;
    for bad in [
        &b"hello\n"[..],
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
        too_long.as_bytes(),
        &bad_version,
    ] {
        let mut client = connect(server.addr);
        send(&mut client, bad);
        assert_eq!(read_to_close(&mut client), NO_HEADER, "{bad:?}");
    }

    // A header split across two writes is waited for, then served.
    let mut split = connect(server.addr);
    let header = v1(addr("10.0.0.7:7777"), front);
    send(&mut split, &header[..9]);
    std::thread::sleep(Duration::from_millis(100));
    send(&mut split, &[&header[9..], b"hi\n"].concat());
    assert_eq!(read_n(&mut split, REPLY.len()), REPLY);
    // So is a v2 one, cut inside its address block.
    let mut split = connect(server.addr);
    let header = v2(addr("10.0.0.8:8888"), front);
    send(&mut split, &header[..20]);
    std::thread::sleep(Duration::from_millis(100));
    send(&mut split, &[&header[20..], b"hi\n"].concat());
    assert_eq!(read_n(&mut split, REPLY.len()), REPLY);

    // A header that never completes, and a client that sends nothing, are
    // dropped after the handshake timeout, without a word.
    let started = Instant::now();
    let mut partial = connect(server.addr);
    send(&mut partial, b"PROXY TCP4 10.0.0.1 ");
    let mut silent = connect(server.addr);
    assert_eq!(read_to_close(&mut partial), b"");
    assert_eq!(read_to_close(&mut silent), b"");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(5),
        "dropped after {took:?}"
    );

    let text = wait_for(
        metrics_at,
        "sockline_refused_total{reason=\"proxy_header\"}",
        6,
    );
    assert_eq!(
        common::metric(&text, "sockline_connections_total"),
        2,
        "{text}"
    );
    // The two served are the only ones open: no slot was leaked.
    wait_for(metrics_at, "sockline_connections_open", 2);
}

#[test]
fn a_connection_waiting_for_its_header_holds_one_of_max_conns() {
    let (config, metrics_at) = proxied(Config {
        max_conns: 1,
        handshake_timeout: Duration::from_millis(500),
        ..Config::default()
    });
    let server = start(Ack, config);
    let front = addr("192.0.2.1:5000");
    let mut waiting = connect(server.addr);
    wait_for(metrics_at, "sockline_connections_open", 1);
    // Full: told at once, before its header is even read.
    let mut second = connect(server.addr);
    send(&mut second, &v1(addr("10.0.0.2:2"), front));
    assert_eq!(read_to_close(&mut second), b"ERR server full\n");
    // The one waiting times out; its slot is free again.
    assert_eq!(read_to_close(&mut waiting), b"");
    wait_for(metrics_at, "sockline_connections_open", 0);
    let mut third = connect(server.addr);
    send(
        &mut third,
        &[&v1(addr("10.0.0.3:3"), front)[..], b"hi\n"].concat(),
    );
    assert_eq!(read_n(&mut third, REPLY.len()), REPLY);
    let text = common::scrape(metrics_at, "/metrics");
    assert_eq!(
        common::metric(&text, "sockline_refused_total{reason=\"full\"}"),
        1
    );
    assert_eq!(
        common::metric(&text, "sockline_refused_total{reason=\"proxy_header\"}"),
        1
    );
}

/// A blocking TLS client over `tcp`, trusting `cert`.
fn tls_client(
    tcp: TcpStream,
    cert: &rustls::pki_types::CertificateDer<'static>,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let session = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    rustls::StreamOwned::new(session, tcp)
}

#[test]
fn the_header_comes_before_tls_and_refusals_are_told_over_tls() {
    let made = sockline::tls::self_signed(vec!["localhost".into()]).unwrap();
    let tls = sockline::tls::server_config(vec![made.cert.clone()], made.key, None).unwrap();
    let (config, metrics_at) = proxied(Config {
        tls: Some(tls),
        max_conns: 2,
        access: Access {
            allow: vec![],
            deny: vec!["10.9.0.0/16".parse().unwrap()],
        },
        ..Config::default()
    });
    let server = start(Ack, config);
    let front = addr("192.0.2.1:5000");

    // The header, then the ClientHello: the server took only the header.
    let mut tcp = connect(server.addr);
    send(&mut tcp, &v1(addr("10.0.0.1:1"), front));
    let mut served = tls_client(tcp, &made.cert);
    served.write_all(b"hello\n").unwrap();
    let mut reply = vec![0; REPLY.len()];
    served.read_exact(&mut reply).unwrap();
    assert_eq!(reply, REPLY);

    // Denied by the header's address: the reason comes over TLS.
    let mut tcp = connect(server.addr);
    send(&mut tcp, &v2(addr("10.9.0.1:1"), front));
    let mut denied = tls_client(tcp, &made.cert);
    let mut got = Vec::new();
    denied.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"ERR access denied\n");

    // A bad header before TLS: closed without a word (no TLS to say it in).
    let mut bad = connect(server.addr);
    send(&mut bad, b"\x16\x03\x01\x00\xa5\x01");
    assert_eq!(read_to_close(&mut bad), b"");

    // Full at accept (one served, one waiting for its header): told over
    // TLS too, once its header and handshake are done.
    let _waiting = connect(server.addr);
    wait_for(metrics_at, "sockline_connections_open", 2);
    let mut tcp = connect(server.addr);
    send(&mut tcp, &v1(addr("10.0.0.3:3"), front));
    let mut full = tls_client(tcp, &made.cert);
    let mut got = Vec::new();
    full.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"ERR server full\n");
}

/// Stops a `serve_binary` server and returns all it logged.
fn log_of(mut server: common::Binary) -> String {
    let _ = server.child.kill();
    let _ = server.child.wait();
    let mut log = server.banner;
    log.push_str(&server.stderr.join().unwrap());
    log
}

#[test]
fn the_log_names_the_client_and_a_bad_header_once_with_the_proxy_s_address() {
    let server = serve_binary(&["--proxy-protocol", "-v"]);
    let mut client = connect(server.addr);
    let mut bytes = v1(addr("10.1.2.3:4567"), addr("192.0.2.1:5000"));
    bytes.extend_from_slice(b"hello\n");
    send(&mut client, &bytes);
    assert_eq!(read_n(&mut client, REPLY.len()), REPLY);
    let proxy = client.local_addr().unwrap();
    send(&mut client, b"BYE\n");
    assert_eq!(read_to_close(&mut client), REPLY);

    let mut bad = connect(server.addr);
    send(&mut bad, b"hello\n");
    assert_eq!(read_to_close(&mut bad), NO_HEADER);
    let bad = bad.local_addr().unwrap();

    let log = log_of(server);
    for expected in [
        format!("connection opened peer=10.1.2.3:4567 proxy={proxy}\n"),
        "line received peer=10.1.2.3:4567 line=hello\n".to_string(),
        "connection closed peer=10.1.2.3:4567 reason=\"closed by protocol\"\n".to_string(),
        format!(
            "refused proxy={bad} reason=\"no valid PROXY protocol header\" \
             detail=\"not a PROXY protocol header\"\n"
        ),
    ] {
        assert_eq!(log.matches(&expected).count(), 1, "{expected:?} in:\n{log}");
    }
    assert_eq!(log.matches(&bad.to_string()).count(), 1, "{log}");
}

/// Connects to `to` from `from` (port 0: any), with a read timeout.
fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.bind(&addr(from).into()).unwrap();
    socket.connect(&to.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
}

/// Every `peer=` in `log`.
fn peers(log: &str) -> Vec<SocketAddr> {
    log.split("peer=")
        .skip(1)
        .map(|rest| rest.split_whitespace().next().unwrap().parse().unwrap())
        .collect()
}

#[test]
fn behind_a_real_haproxy_each_server_sees_the_real_clients() {
    let v1_server = serve_binary(&["--proxy-protocol", "-v"]);
    let v2_server = serve_binary(&["--proxy-protocol", "-v", "--deny", "127.0.0.2/32"]);
    // Round robin over a v1 and a v2 server; no health checks.
    let balancer = Haproxy::start(
        "haproxy",
        &format!(
            "    balance roundrobin\n\
             \x20   server v1 {} send-proxy\n\
             \x20   server v2 {} send-proxy-v2\n",
            v1_server.addr, v2_server.addr
        ),
    );

    // In this order, round robin gives each server one client from each
    // address: 127.0.0.1, 127.0.0.1, 127.0.0.2, 127.0.0.2.
    let mut clients = Vec::new();
    let mut answers = Vec::new();
    for from in ["127.0.0.1:0", "127.0.0.1:0", "127.0.0.2:0", "127.0.0.2:0"] {
        let mut client = connect_from(from, balancer.addr);
        send(&mut client, b"hello\n");
        let mut got = read_n(&mut client, 1);
        got.extend(read_n(&mut client, if got == b" " { 13 } else { 17 }));
        answers.push(got);
        clients.push(client);
    }
    let local: Vec<SocketAddr> = clients.iter().map(|c| c.local_addr().unwrap()).collect();
    // 127.0.0.1 is served wherever it lands; 127.0.0.2 only by the v1
    // server: the v2 server denies it, through HAProxy.
    assert_eq!(answers[0], REPLY);
    assert_eq!(answers[1], REPLY);
    let mut two = vec![answers[2].clone(), answers[3].clone()];
    two.sort();
    assert_eq!(two, [REPLY.to_vec(), b"ERR access denied\n".to_vec()]);
    let denied = if answers[2] == REPLY { 3 } else { 2 };
    assert_eq!(read_to_close(&mut clients[denied]), b"");
    for (i, client) in clients.iter_mut().enumerate() {
        if i != denied {
            send(client, b"BYE\n");
            assert_eq!(read_to_close(client), REPLY);
        }
    }
    drop(balancer);

    let v1_log = log_of(v1_server);
    let v2_log = log_of(v2_server);
    // Every address either log names is a client's own: none is HAProxy's.
    for log in [&v1_log, &v2_log] {
        let seen = peers(log);
        assert!(!seen.is_empty(), "{log}");
        for peer in seen {
            assert!(local.contains(&peer), "{peer} is not a client's:\n{log}");
        }
    }
    // Each client is in exactly one log, by its own address and port.
    for (i, client) in local.iter().enumerate() {
        let opened = format!("connection opened peer={client} ");
        let refused = format!("refused peer={client} ");
        let said = format!("line received peer={client} line=hello\n");
        let (v1_has, v2_has) = (v1_log.contains(&opened), v2_log.contains(&opened));
        if i == denied {
            assert!(v2_log.contains(&refused), "{refused:?} in:\n{v2_log}");
            assert!(!v1_has && !v2_has && !v1_log.contains(&refused));
        } else {
            assert!(v1_has != v2_has, "{opened:?} once in:\n{v1_log}\n{v2_log}");
            let log = if v1_has { &v1_log } else { &v2_log };
            assert!(log.contains(&said), "{said:?} in:\n{log}");
        }
    }
    // Round robin: each server saw one client from each address.
    for log in [&v1_log, &v2_log] {
        let ips: Vec<IpAddr> = peers(log).iter().map(SocketAddr::ip).collect();
        assert!(ips.contains(&"127.0.0.1".parse().unwrap()), "{log}");
        assert!(ips.contains(&"127.0.0.2".parse().unwrap()), "{log}");
    }
}

#[test]
fn haproxy_s_health_checks_are_served_by_its_own_address() {
    // HAProxy's checks send a header too: v1 with the check's own
    // addresses, v2 as LOCAL (no address). Neither is refused.
    let v1_server = serve_binary(&["--proxy-protocol", "-v"]);
    let v2_server = serve_binary(&["--proxy-protocol", "-v"]);
    let balancer = Haproxy::start(
        "haproxy-checks",
        &format!(
            "    balance roundrobin\n\
             \x20   server v1 {} send-proxy check inter 100ms\n\
             \x20   server v2 {} send-proxy-v2 check inter 100ms\n",
            v1_server.addr, v2_server.addr
        ),
    );
    std::thread::sleep(Duration::from_millis(600));
    // Both servers are up: round robin serves a client on each.
    for _ in 0..2 {
        let mut client = connect_from("127.0.0.1:0", balancer.addr);
        send(&mut client, b"hello\nBYE\n");
        assert_eq!(read_to_close(&mut client), REPLY.repeat(2));
    }
    drop(balancer);
    for log in [log_of(v1_server), log_of(v2_server)] {
        assert!(!log.contains("refused"), "{log}");
        // A check's peer is HAProxy's own end of the connection.
        let checks = log
            .lines()
            .filter(|line| line.contains("connection opened"))
            .filter(|line| {
                let field = |name: &str| line.split(name).nth(1).map(str::to_owned);
                field(" peer=").and_then(|p| p.split(' ').next().map(str::to_owned))
                    == field(" proxy=")
            })
            .count();
        assert!(checks >= 2, "{checks} checks in:\n{log}");
    }
}
