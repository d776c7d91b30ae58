//! `serve --web`: the page, HTTP errors, and WebSocket members on real
//! sockets, next to TCP members, with a real WebSocket client
//! (tungstenite's) and with frames built by hand where a client would not
//! send them (fragments around a ping, unmasked, oversized).

mod common;

use common::{read_to_close, send, serve_binary};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

/// A server with `--web`: its lines address and its web address.
struct Web {
    server: common::Binary,
    web: SocketAddr,
}

fn serve_web(extra: &[&str]) -> Web {
    let args = [&["--web", "127.0.0.1:0"], extra].concat();
    let server = serve_binary(&args);
    // The `web listening on ADDR` line comes before `listening on`.
    let line = (server.banner.lines())
        .find_map(|l| l.split("web listening on ").nth(1))
        .expect("no `web listening on` line before `listening on`");
    let web = line.split_whitespace().next().unwrap().parse().unwrap();
    Web { server, web }
}

type Ws = WebSocket<TcpStream>;

/// A WebSocket client, connected and upgraded.
fn ws(addr: SocketAddr) -> Ws {
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (socket, response) = tungstenite::client(format!("ws://{addr}/ws"), stream).unwrap();
    assert_eq!(response.status(), 101);
    socket
}

/// The next data message, as text.
fn next(socket: &mut Ws) -> String {
    loop {
        match socket.read().unwrap() {
            Message::Text(text) => return text.to_string(),
            Message::Binary(bytes) => return String::from_utf8_lossy(&bytes).into_owned(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("not data: {other:?}"),
        }
    }
}

/// Reads until the server's close frame; returns it.
fn closed(socket: &mut Ws) -> Option<CloseFrame> {
    loop {
        match socket.read() {
            Ok(Message::Close(frame)) => return frame,
            Ok(_) => {}
            Err(e) => panic!("no close frame: {e}"),
        }
    }
}

fn say(socket: &mut Ws, text: &str) {
    socket.send(Message::text(text)).unwrap();
}

/// One HTTP request; the whole response.
fn http(addr: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    send(&mut stream, request.as_bytes());
    String::from_utf8(read_to_close(&mut stream)).unwrap()
}

#[test]
fn the_page_and_clean_http_errors() {
    let metrics: SocketAddr = format!("127.0.0.1:{}", common::free_port())
        .parse()
        .unwrap();
    let web = serve_web(&["--mode", "chat", "--metrics-listen", &metrics.to_string()]);
    let page = http(web.web, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
    assert!(page.contains("Content-Type: text/html; charset=utf-8\r\n"));
    assert!(page.contains("<title>sockline chat</title>"));
    assert!(page.contains("Content-Security-Policy: default-src 'none'"));
    let status = |request: &str| {
        let response = http(web.web, request);
        response.lines().next().unwrap_or_default().to_owned()
    };
    assert_eq!(status("GET /x HTTP/1.1\r\n\r\n"), "HTTP/1.1 404 Not Found");
    assert_eq!(
        status("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
        "HTTP/1.1 405 Method Not Allowed"
    );
    assert_eq!(
        status("GET /ws HTTP/1.1\r\n\r\n"),
        "HTTP/1.1 400 Bad Request"
    );
    assert_eq!(
        status("\x16\x03\x01\x02garbage\r\n\r\n"),
        "HTTP/1.1 400 Bad Request"
    );
    let evil = "GET /ws HTTP/1.1\r\nHost: a:1\r\nOrigin: http://evil\r\nUpgrade: websocket\r\n\
                Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
                Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    assert_eq!(status(evil), "HTTP/1.1 403 Forbidden");
    // None of that disturbed anyone: a member still chats.
    let mut member = ws(web.web);
    assert!(next(&mut member).starts_with("* welcome user-"));
    let mut tcp = common::connect(web.server.addr);
    let mut line = String::new();
    BufReader::new(tcp.try_clone().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("* welcome "), "{line}");
    tcp.write_all(b"hello from tcp\n").unwrap();
    let said = next(&mut member);
    assert!(said.ends_with(" joined"), "{said}");
    assert!(next(&mut member).ends_with(": hello from tcp"));
    say(&mut member, "hello from the web");
    tcp.write_all(b"/who\n").unwrap();
    // The metrics tell the transports apart (the gauge is a sweep behind).
    std::thread::sleep(Duration::from_millis(1100));
    let text = common::scrape(metrics, "/metrics");
    let value = |sample: &str| common::metric(&text, sample);
    assert_eq!(value("sockline_web_requests_total{answer=\"page\"}"), 1);
    assert_eq!(value("sockline_web_requests_total{answer=\"upgrade\"}"), 1);
    assert_eq!(value("sockline_web_requests_total{answer=\"error\"}"), 5);
    assert_eq!(value("sockline_websocket_members"), 1);
    let by = |transport: &str| {
        value(&format!(
            "sockline_lines_in_by_transport_total{{transport=\"{transport}\"}}"
        ))
    };
    assert_eq!((by("tcp"), by("websocket")), (2, 1));
}

#[test]
fn websocket_and_tcp_members_share_a_room_both_ways() {
    let web = serve_web(&["--mode", "chat"]);
    let mut browser = ws(web.web);
    next(&mut browser); // welcome
    say(&mut browser, "/nick webby");
    assert_eq!(next(&mut browser), "* you are now webby");
    let stream = common::connect(web.server.addr);
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut tcp = stream;
    let mut line = String::new();
    let mut next_line = || {
        line.clear();
        reader.read_line(&mut line).unwrap();
        line.trim_end().to_owned()
    };
    assert!(next_line().starts_with("* welcome "));
    tcp.write_all(b"/nick termy\n").unwrap();
    assert_eq!(next_line(), "* you are now termy");
    say(&mut browser, "<b>hi</b> from the browser");
    assert_eq!(next_line(), "webby: <b>hi</b> from the browser");
    tcp.write_all(b"hi from the terminal\r\n").unwrap();
    loop {
        let got = next(&mut browser);
        if got == "termy: hi from the terminal" {
            break;
        }
        assert!(got.starts_with("* "), "{got}");
    }
    // Bytes that are not UTF-8 go to a browser as a binary message.
    tcp.write_all(b"\xff\xfe raw\n").unwrap();
    match browser.read().unwrap() {
        Message::Binary(bytes) => assert_eq!(&bytes[..], b"termy: \xff\xfe raw"),
        other => panic!("{other:?}"),
    }
    // A message with a line break would break the TCP members' framing.
    say(&mut browser, "one\n* termy left");
    assert_eq!(
        next(&mut browser),
        "ERR a message is one line: no line breaks"
    );
    // /who sees both; /quit ends with a normal close.
    say(&mut browser, "/who");
    assert_eq!(next(&mut browser), "* members of lobby: termy, webby");
    say(&mut browser, "/quit");
    assert_eq!(next(&mut browser), "* bye");
    let frame = closed(&mut browser).expect("a close frame");
    assert_eq!(frame.code, CloseCode::Normal);
    assert_eq!(next_line(), "* webby left");
}

#[test]
fn ack_mode_over_websocket_is_the_tutorial_s_protocol() {
    let web = serve_web(&[]);
    let mut socket = ws(web.web);
    say(&mut socket, "hello");
    assert_eq!(next(&mut socket), " MSG Received");
    say(&mut socket, "bye");
    assert_eq!(next(&mut socket), " MSG Received");
    assert_eq!(closed(&mut socket).unwrap().code, CloseCode::Normal);
}

/// A client frame, masked (unless `mask` is `None`).
fn frame(first: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![first];
    let bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n @ 0..=125 => out.push(bit | n as u8),
        n @ 126..=0xFFFF => {
            out.push(bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(mask) => {
            out.extend_from_slice(&mask);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// A raw upgraded connection (no client library), its 101 read.
fn raw(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let request = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    send(&mut stream, request.as_bytes());
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0];
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101 "));
    stream
}

/// Reads one server frame: its first byte and payload.
fn read_frame(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut head = [0; 2];
    stream.read_exact(&mut head).unwrap();
    assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
    let len = match head[1] & 0x7F {
        126 => {
            let mut b = [0; 2];
            stream.read_exact(&mut b).unwrap();
            usize::from(u16::from_be_bytes(b))
        }
        127 => {
            let mut b = [0; 8];
            stream.read_exact(&mut b).unwrap();
            u64::from_be_bytes(b) as usize
        }
        n => usize::from(n),
    };
    let mut payload = vec![0; len];
    stream.read_exact(&mut payload).unwrap();
    (head[0], payload)
}

#[test]
fn fragments_around_a_ping_are_one_line_and_the_ping_gets_its_pong() {
    let web = serve_web(&["--mode", "echo"]);
    let mut stream = raw(web.web);
    let mask = Some([1, 2, 3, 4]);
    let mut bytes = frame(0x01, b"frag", mask); // text, not FIN
    bytes.extend(frame(0x89, b"are you there", mask)); // ping in between
    bytes.extend(frame(0x00, b"mented ", mask)); // continuation
    bytes.extend(frame(0x80, "línea".as_bytes(), mask)); // FIN continuation
    // One byte at a time: frames cut anywhere are reassembled.
    for byte in bytes {
        stream.write_all(&[byte]).unwrap();
    }
    assert_eq!(read_frame(&mut stream), (0x8A, b"are you there".to_vec()));
    let (first, payload) = read_frame(&mut stream);
    assert_eq!((first, &payload[..]), (0x81, "fragmented línea".as_bytes()));
    // A clean close: the server echoes it and closes.
    stream.write_all(&frame(0x88, &[0x03, 0xE8], mask)).unwrap();
    assert_eq!(read_frame(&mut stream), (0x88, vec![0x03, 0xE8]));
    assert!(read_to_close(&mut stream).is_empty());
}

/// The close frame a server sent after whatever came first: its code.
fn close_code(stream: &mut TcpStream) -> (u16, String) {
    loop {
        let (first, payload) = read_frame(stream);
        if first == 0x88 {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            return (code, String::from_utf8_lossy(&payload[2..]).into_owned());
        }
    }
}

#[test]
fn broken_or_oversized_frames_close_that_connection_only() {
    let web = serve_web(&["--mode", "echo", "--max-line", "100"]);
    let mut bystander = ws(web.web);
    let mask = Some([9, 9, 9, 9]);
    // Unmasked: a protocol error.
    let mut unmasked = raw(web.web);
    unmasked.write_all(&frame(0x81, b"hi", None)).unwrap();
    assert_eq!(close_code(&mut unmasked).0, 1002);
    // Too big, whole or in fragments: 1009, after the ERR line.
    let mut big = raw(web.web);
    big.write_all(&frame(0x81, &[b'x'; 101], mask)).unwrap();
    let (first, payload) = read_frame(&mut big);
    assert_eq!(
        (first, String::from_utf8(payload).unwrap()),
        (0x81, "ERR line too long (max 100 bytes)".into())
    );
    assert_eq!(close_code(&mut big).0, 1009);
    let mut pieces = raw(web.web);
    pieces.write_all(&frame(0x02, &[0; 60], mask)).unwrap();
    pieces.write_all(&frame(0x80, &[0; 60], mask)).unwrap();
    assert_eq!(close_code(&mut pieces).0, 1009);
    // A text message that is not UTF-8: 1007.
    let mut bad_text = raw(web.web);
    bad_text.write_all(&frame(0x81, b"\xff", mask)).unwrap();
    assert_eq!(close_code(&mut bad_text).0, 1007);
    // A continuation out of nowhere: 1002.
    let mut orphan = raw(web.web);
    orphan.write_all(&frame(0x80, b"x", mask)).unwrap();
    assert_eq!(close_code(&mut orphan).0, 1002);
    // The bystander never noticed.
    say(&mut bystander, "still here");
    assert_eq!(next(&mut bystander), "still here");
}

#[test]
fn refused_and_never_upgraded_clients_are_told_or_dropped() {
    let web = serve_web(&["--max-conns", "1", "--tls-handshake-timeout", "1"]);
    let mut first = ws(web.web);
    // Full: the upgrade, then a close frame 1008 with the reason.
    let mut second = raw(web.web);
    assert_eq!(close_code(&mut second), (1008, "server full".into()));
    drop(second);
    say(&mut first, "hi");
    assert_eq!(next(&mut first), " MSG Received");
    drop(first);
    std::thread::sleep(Duration::from_millis(200));
    // Half a request, then nothing: dropped once the timeout passes.
    let mut slow = TcpStream::connect(web.web).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    send(&mut slow, b"GET /ws HTTP/1.1\r\nHost: x\r\n");
    let started = std::time::Instant::now();
    assert!(read_to_close(&mut slow).is_empty());
    assert!(started.elapsed() < Duration::from_secs(8));
}

#[test]
fn shutdown_says_going_away() {
    let web = serve_web(&["--mode", "chat"]);
    let mut member = ws(web.web);
    next(&mut member);
    let pid = web.server.child.id();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(next(&mut member), "* server shutting down");
    let frame = closed(&mut member).unwrap();
    assert_eq!(frame.code, CloseCode::Away);
}
