//! The server on real sockets: the tutorial's wire protocol, framing,
//! pipelining, many clients, and clients that misbehave.

mod common;

use common::{connect, read_n, read_to_close, send, start};
use sockline::Config;
use sockline::mode::{Ack, Echo};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

const REPLY: &[u8] = b" MSG Received\n";

#[test]
fn tutorial_dialogue_byte_for_byte() {
    let server = start(Ack, Config::default());
    let mut client = connect(server.addr);
    for line in ["hello", "how are you?", "안녕하세요"] {
        send(&mut client, format!("{line}\n").as_bytes());
        assert_eq!(read_n(&mut client, REPLY.len()), REPLY);
    }
    send(&mut client, b"BYE\n");
    assert_eq!(
        read_to_close(&mut client),
        REPLY,
        "BYE is answered, then closed"
    );
    server.stop().unwrap();
}

#[test]
fn bye_in_any_case_closes_only_that_client() {
    let server = start(Ack, Config::default());
    let mut other = connect(server.addr);
    for bye in ["bye", "Bye", "bYe\r"] {
        let mut client = connect(server.addr);
        send(
            &mut client,
            format!("first\n{bye}\nnever answered\n").as_bytes(),
        );
        assert_eq!(read_to_close(&mut client), REPLY.repeat(2));
    }
    send(&mut other, b"still here\n");
    assert_eq!(read_n(&mut other, REPLY.len()), REPLY);
}

#[test]
fn crlf_is_stripped_and_bytes_are_opaque() {
    let server = start(Echo, Config::default());
    let mut client = connect(server.addr);
    send(&mut client, b"dos\r\nunix\n\xff\xfe invalid utf-8\n\r\n");
    let want = b"dos\nunix\n\xff\xfe invalid utf-8\n\n";
    assert_eq!(read_n(&mut client, want.len()), want);
}

#[test]
fn unterminated_last_line_is_answered_on_eof() {
    let server = start(Echo, Config::default());
    let mut client = connect(server.addr);
    send(&mut client, b"one\ntwo");
    client.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_close(&mut client), b"one\ntwo\n");
}

#[test]
fn a_line_split_across_many_writes_is_one_line() {
    let server = start(Echo, Config::default());
    let mut client = connect(server.addr);
    for byte in b"slow line\r" {
        send(&mut client, &[*byte]);
        std::thread::sleep(Duration::from_millis(2));
    }
    send(&mut client, b"\n");
    assert_eq!(read_n(&mut client, 10), b"slow line\n");
}

#[test]
fn five_hundred_pipelined_lines_in_one_write() {
    let server = start(Echo, Config::default());
    let mut client = connect(server.addr);
    let mut batch = Vec::new();
    for i in 0..500 {
        batch.extend_from_slice(format!("line {i}\n").as_bytes());
    }
    send(&mut client, &batch);
    assert_eq!(read_n(&mut client, batch.len()), batch, "all, in order");

    let server = start(Ack, Config::default());
    let mut client = connect(server.addr);
    send(&mut client, &batch);
    assert_eq!(read_n(&mut client, 500 * REPLY.len()), REPLY.repeat(500));
}

#[test]
fn three_hundred_clients_fifty_lines_each() {
    let server = start(Echo, Config::default());
    let clients: Vec<_> = (0..300)
        .map(|c| {
            let addr = server.addr;
            std::thread::spawn(move || {
                let mut stream = connect(addr);
                for i in 0..50 {
                    let line = format!("client {c} line {i}\n");
                    send(&mut stream, line.as_bytes());
                    assert_eq!(read_n(&mut stream, line.len()), line.as_bytes());
                }
                send(&mut stream, b"BYE\n");
                assert_eq!(read_to_close(&mut stream), b"BYE\n");
            })
        })
        .collect();
    for client in clients {
        client.join().expect("every reply correct");
    }
}

#[test]
fn misbehaving_clients_disturb_nobody() {
    let server = start(Ack, Config::default());
    let mut good = connect(server.addr);

    // Stalls mid-line, forever.
    let mut stalled = connect(server.addr);
    send(&mut stalled, b"half a li");
    // Sends a lot and never reads its replies.
    let mut deaf = connect(server.addr);
    deaf.set_nonblocking(true).unwrap();
    let flood = b"x\n".repeat(64 * 1024);
    for _ in 0..64 {
        if deaf.write(&flood).is_err() {
            break;
        }
    }
    // Leaves without BYE, mid-line.
    let mut gone = connect(server.addr);
    send(&mut gone, b"abc\nde");
    drop(gone);
    // Resets: unread replies plus SO_LINGER 0 make close send an RST.
    let reset = connect(server.addr);
    let reset = socket2::Socket::from(reset);
    reset.set_linger(Some(Duration::ZERO)).unwrap();
    let mut reset = TcpStream::from(reset);
    send(&mut reset, b"one\ntwo\nthr");
    std::thread::sleep(Duration::from_millis(50));
    drop(reset);
    // Garbage.
    let mut garbage = connect(server.addr);
    send(
        &mut garbage,
        &[0, 159, 146, 150, b'\n', 255, 0, b'\r', b'\n'],
    );
    assert_eq!(read_n(&mut garbage, 2 * REPLY.len()), REPLY.repeat(2));

    for i in 0..100 {
        send(&mut good, format!("line {i}\n").as_bytes());
        assert_eq!(read_n(&mut good, REPLY.len()), REPLY);
    }
    let mut late = connect(server.addr);
    send(&mut late, b"BYE\n");
    assert_eq!(read_to_close(&mut late), REPLY);
    drop((stalled, deaf));
}

#[test]
fn overlong_line_gets_an_error_and_a_close() {
    let config = Config {
        max_line: 100,
        ..Config::default()
    };
    let server = start(Echo, config);
    let mut client = connect(server.addr);
    let mut data = b"short\n".to_vec();
    data.extend(std::iter::repeat_n(b'a', 101));
    data.push(b'\n');
    send(&mut client, &data);
    assert_eq!(
        read_to_close(&mut client),
        b"short\nERR line too long (max 100 bytes)\n"
    );
    // A line that never ends is refused once it passes the limit.
    let mut endless = connect(server.addr);
    let chunk = [b'z'; 64];
    let mut reply = Vec::new();
    for _ in 0..1000 {
        if endless.write_all(&chunk).is_err() {
            break;
        }
        endless.set_nonblocking(true).unwrap();
        let mut buf = [0; 128];
        if let Ok(n) = endless.read(&mut buf) {
            reply.extend_from_slice(&buf[..n]);
            break;
        }
        endless.set_nonblocking(false).unwrap();
    }
    endless.set_nonblocking(false).unwrap();
    reply.extend(read_to_close(&mut endless));
    assert_eq!(reply, b"ERR line too long (max 100 bytes)\n");
    // Exactly max_line bytes is fine.
    let mut fits = connect(server.addr);
    let line = [b"b".repeat(100), b"\r\n".to_vec()].concat();
    send(&mut fits, &line);
    assert_eq!(
        read_n(&mut fits, 101),
        [b"b".repeat(100), b"\n".to_vec()].concat()
    );
}

#[test]
fn past_max_conns_a_client_is_told_the_server_is_full() {
    let config = Config {
        max_conns: 3,
        ..Config::default()
    };
    let server = start(Ack, config);
    let mut held: Vec<_> = (0..3).map(|_| connect(server.addr)).collect();
    for client in &mut held {
        // A reply proves the server admitted it.
        send(client, b"hi\n");
        assert_eq!(read_n(client, REPLY.len()), REPLY);
    }
    let mut extra = connect(server.addr);
    assert_eq!(read_to_close(&mut extra), b"ERR server full\n");
    // Room again once one leaves.
    send(&mut held[0], b"bye\n");
    assert_eq!(read_to_close(&mut held[0]), REPLY);
    let mut again = connect(server.addr);
    send(&mut again, b"hi\n");
    assert_eq!(read_n(&mut again, REPLY.len()), REPLY);
}

#[test]
fn shutdown_answers_received_lines_then_returns() {
    let server = start(Ack, Config::default());
    let mut clients: Vec<_> = (0..20).map(|_| connect(server.addr)).collect();
    for client in &mut clients {
        send(client, b"one\ntwo\nthree\npartial");
    }
    // Wait until every client was answered once, so all bytes reached it.
    for client in &mut clients {
        assert_eq!(read_n(client, REPLY.len()), REPLY);
    }
    server.stop().unwrap();
    for client in &mut clients {
        assert_eq!(read_to_close(client), REPLY.repeat(2));
    }
}
