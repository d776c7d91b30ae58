//! The connection's states, framing and partial writes, driven through the
//! in-memory stream (no sockets).

use super::*;
use crate::mode::{Ack, Echo};
use crate::transport::Memory;

impl<S> Connection<S> {
    fn memory(&mut self) -> &mut Memory {
        match &mut self.stream {
            Transport::Memory(memory) => memory,
            _ => panic!("not an in-memory connection"),
        }
    }
}

/// A connection over memory that takes `room` bytes of writes.
fn open<P: Protocol>(
    proto: &mut P,
    refusal: Option<Refusal>,
    room: usize,
) -> (Connection<P::Session>, Scratch) {
    let mut scratch = Scratch::default();
    let memory = Memory {
        room,
        ..Memory::default()
    };
    let peer = "127.0.0.1:1".parse().unwrap();
    let stream = Transport::Memory(Box::new(memory));
    let accepted = Accepted {
        exec: false,
        id: ConnId::new(0, 0),
        stream,
        peer,
        refusal,
        budget: None,
        web: None,
    };
    let conn = Connection::open(accepted, proto, &mut scratch);
    (conn, scratch)
}

fn send<S>(conn: &mut Connection<S>, bytes: &[u8]) {
    conn.memory().input.extend(bytes);
}

/// Takes what the client received so far.
fn received<S>(conn: &mut Connection<S>) -> Vec<u8> {
    std::mem::take(&mut conn.memory().output)
}

fn drive<P: Protocol>(
    conn: &mut Connection<P::Session>,
    proto: &mut P,
    scratch: &mut Scratch,
) -> Status {
    conn.drive(proto, scratch, 10, false)
}

#[test]
fn lines_are_answered_and_framed_and_a_cr_is_stripped() {
    let (mut conn, mut scratch) = open(&mut Echo, None, usize::MAX);
    send(&mut conn, b"a\r\nb\nx\r\r\n\xff\xfe\nc");
    assert_eq!(
        drive(&mut conn, &mut Echo, &mut scratch),
        Status::Wait { want_write: false }
    );
    assert_eq!(received(&mut conn), b"a\nb\nx\r\n\xff\xfe\n");
    // The partial line waits for its end.
    send(&mut conn, b"d\n");
    drive(&mut conn, &mut Echo, &mut scratch);
    assert_eq!(received(&mut conn), b"cd\n");
}

#[test]
fn a_line_too_long_is_refused_then_closing() {
    let (mut conn, mut scratch) = open(&mut Echo, None, usize::MAX);
    send(&mut conn, b"ok\n12345678901\nnever\n");
    let status = drive(&mut conn, &mut Echo, &mut scratch);
    assert_eq!(status, Status::Close(CloseReason::TooLong));
    assert_eq!(
        received(&mut conn),
        b"ok\nERR line too long (max 10 bytes)\n"
    );
    // Unterminated and too long: refused as soon as it is over the limit.
    let (mut conn, mut scratch) = open(&mut Echo, None, usize::MAX);
    send(&mut conn, b"123456789012");
    let status = drive(&mut conn, &mut Echo, &mut scratch);
    assert_eq!(status, Status::Close(CloseReason::TooLong));
    // Exactly the limit, still waiting for its "\r\n", is fine.
    let (mut conn, mut scratch) = open(&mut Echo, None, usize::MAX);
    send(&mut conn, b"1234567890\r");
    assert_eq!(
        drive(&mut conn, &mut Echo, &mut scratch),
        Status::Wait { want_write: false }
    );
}

#[test]
fn bye_is_answered_then_the_connection_is_closing_and_reads_no_more() {
    let (mut conn, mut scratch) = open(&mut Ack, None, usize::MAX);
    send(&mut conn, b"hi\nbYe\nlater\n");
    let status = drive(&mut conn, &mut Ack, &mut scratch);
    assert_eq!(status, Status::Close(CloseReason::Protocol));
    assert_eq!(received(&mut conn), b" MSG Received\n".repeat(2));
    assert!(matches!(
        conn.state,
        State::Closing {
            session: Some(()),
            ..
        }
    ));
    // Lingering: the session goes back, buffers go, what comes is dropped.
    assert_eq!(conn.linger(), Some(()));
    assert!(conn.memory().shut);
    assert_eq!(
        drive(&mut conn, &mut Ack, &mut scratch),
        Status::Wait { want_write: false }
    );
    assert!(conn.memory().input.is_empty(), "lingering reads what comes");
    assert_eq!(received(&mut conn), b"");
    conn.memory().eof = true;
    assert_eq!(
        drive(&mut conn, &mut Ack, &mut scratch),
        Status::Close(CloseReason::Client)
    );
}

#[test]
fn eof_answers_an_unterminated_last_line_then_closes() {
    let (mut conn, mut scratch) = open(&mut Echo, None, usize::MAX);
    send(&mut conn, b"one\ntwo");
    conn.memory().eof = true;
    // The readiness event reported the end of stream (`hup`).
    let status = conn.drive(&mut Echo, &mut scratch, 10, true);
    assert_eq!(status, Status::Close(CloseReason::Client));
    assert_eq!(received(&mut conn), b"one\ntwo\n");
}

#[test]
fn a_refused_client_gets_its_reason_and_no_session() {
    let (mut conn, mut scratch) = open(&mut Ack, Some(Refusal::Full), usize::MAX);
    assert_eq!(received(&mut conn), b"ERR server full\n");
    assert!(matches!(conn.state, State::Refusing));
    send(&mut conn, b"hello\n");
    let status = drive(&mut conn, &mut Ack, &mut scratch);
    assert_eq!(status, Status::Close(CloseReason::Protocol));
    assert_eq!(received(&mut conn), b"");
    assert_eq!(conn.finish(), None);
}

#[test]
fn a_shutdown_reads_only_what_had_arrived() {
    let (mut conn, mut scratch) = open(&mut Ack, None, usize::MAX);
    send(&mut conn, b"1\n2\n3\n");
    // 4 bytes were in the socket at the signal; more came after.
    conn.stop_reading(&mut Ack, &mut scratch, Some(4));
    assert!(matches!(conn.state, State::Emptying { left: 4, .. }));
    let status = drive(&mut conn, &mut Ack, &mut scratch);
    assert_eq!(status, Status::Close(CloseReason::Shutdown));
    assert_eq!(received(&mut conn), b" MSG Received\n".repeat(2));
    // Nothing had arrived: straight to draining.
    let (mut conn, mut scratch) = open(&mut Ack, None, usize::MAX);
    send(&mut conn, b"late\n");
    conn.stop_reading(&mut Ack, &mut scratch, Some(0));
    assert_eq!(
        drive(&mut conn, &mut Ack, &mut scratch),
        Status::Close(CloseReason::Shutdown)
    );
    assert_eq!(received(&mut conn), b"");
}

#[test]
fn replies_the_socket_does_not_take_wait_and_leave_in_order() {
    // The client takes 5 bytes at a time.
    let (mut conn, mut scratch) = open(&mut Echo, None, 5);
    send(&mut conn, b"first\nsecond\n");
    assert_eq!(
        drive(&mut conn, &mut Echo, &mut scratch),
        Status::Wait { want_write: true }
    );
    assert_eq!(conn.queued(), "first\nsecond\n".len() - 5);
    send(&mut conn, b"third\n");
    let mut got = received(&mut conn);
    for _ in 0..10 {
        conn.memory().room = 5;
        drive(&mut conn, &mut Echo, &mut scratch);
        got.extend(received(&mut conn));
    }
    assert_eq!(got, b"first\nsecond\nthird\n");
    assert_eq!(conn.queued(), 0);
}

#[test]
fn shared_messages_get_their_terminator_across_partial_writes() {
    let (mut conn, mut scratch) = open(&mut Echo, None, 3);
    let hello = Message::from(&b"hello"[..]);
    let world = Message::from(&b"world!"[..]);
    assert!(conn.deliver(hello, 1 << 20));
    assert!(conn.deliver(world, 1 << 20));
    // A line of the server's own meanwhile queues behind the messages.
    let status = conn.end_with(b"ERR idle", CloseReason::Idle, &mut scratch);
    assert_eq!(status, Status::Wait { want_write: true });
    let mut got = received(&mut conn);
    let mut status = None;
    for _ in 0..20 {
        // Odd sizes: writes end inside payloads and on terminators.
        conn.memory().room = 2;
        status = Some(conn.flush_only());
        got.extend(received(&mut conn));
    }
    assert_eq!(got, b"hello\nworld!\nERR idle\n");
    assert_eq!(conn.queued(), 0);
    assert_eq!(status, Some(Status::Close(CloseReason::Idle)));
}

#[test]
fn a_member_that_takes_nothing_is_over_its_queue() {
    let (mut conn, _scratch) = open(&mut Echo, None, 0);
    let msg = Message::from(&[b'x'; 99][..]);
    // 100 bytes on the wire each: ten fit in 1,000.
    for _ in 0..10 {
        assert!(conn.deliver(msg.clone(), 1000));
    }
    assert!(!conn.deliver(msg, 1000));
}

#[test]
fn the_output_cap_stops_answering_with_lines_left() {
    let (mut conn, mut scratch) = open(&mut Ack, None, 0);
    // One read of 2-byte lines makes 7 times its size in replies.
    let lines = READ_CHUNK / 2;
    send(&mut conn, &b"x\n".repeat(lines));
    assert_eq!(
        drive(&mut conn, &mut Ack, &mut scratch),
        Status::Wait { want_write: true }
    );
    assert!(conn.inbox.backlog, "lines left for later");
    assert!((OUTPUT_CAP..OUTPUT_CAP + 14).contains(&conn.queued()));
    conn.memory().room = usize::MAX;
    drive(&mut conn, &mut Ack, &mut scratch);
    assert_eq!(received(&mut conn), b" MSG Received\n".repeat(lines));
}

/// A connection over memory that starts with a PROXY header, from a proxy
/// at 127.0.0.1:1.
fn open_proxied<P: Protocol>(proto: &mut P) -> (Connection<P::Session>, Scratch) {
    let mut scratch = Scratch::default();
    let memory = Memory {
        room: usize::MAX,
        ..Memory::default()
    };
    let stream = Transport::Memory(Box::new(memory));
    let peer = "127.0.0.1:1".parse().unwrap();
    let id = ConnId::new(0, 0);
    let accepted = Accepted {
        exec: false,
        id,
        stream,
        peer,
        refusal: None,
        budget: None,
        web: None,
    };
    let conn = Connection::proxied(accepted, proto, &mut scratch);
    (conn, scratch)
}

#[test]
fn a_proxy_header_in_pieces_gives_the_client_and_leaves_the_lines() {
    let (mut conn, mut scratch) = open_proxied(&mut Echo);
    assert!(conn.handshaking());
    send(&mut conn, b"PROXY TCP4 10.1.2.3 10.0.0.1 4");
    assert_eq!(
        drive(&mut conn, &mut Echo, &mut scratch),
        Status::Wait { want_write: false }
    );
    // Peeked, not taken: all of it is still there.
    assert_eq!(conn.memory().input.len(), 30);
    send(&mut conn, b"567 5000\r\nhello\nPROXY 2\n");
    assert_eq!(
        drive(&mut conn, &mut Echo, &mut scratch),
        Status::Admit(Ok(()))
    );
    assert_eq!(conn.peer(), "10.1.2.3:4567".parse().unwrap());
    // Exactly the header was taken; nothing was answered yet.
    assert_eq!(conn.memory().input.len(), "hello\nPROXY 2\n".len());
    assert_eq!(received(&mut conn), b"");
    // Until the server decides, nothing more happens.
    assert_eq!(
        drive(&mut conn, &mut Echo, &mut scratch),
        Status::Wait { want_write: false }
    );
    conn.admit(None, &mut Echo, &mut scratch);
    assert!(!conn.handshaking());
    drive(&mut conn, &mut Echo, &mut scratch);
    assert_eq!(received(&mut conn), b"hello\nPROXY 2\n");
}

#[test]
fn a_v2_local_header_keeps_the_connection_s_own_address() {
    let (mut conn, mut scratch) = open_proxied(&mut Ack);
    send(&mut conn, b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00hi\n");
    assert_eq!(
        drive(&mut conn, &mut Ack, &mut scratch),
        Status::Admit(Ok(()))
    );
    assert_eq!(conn.peer(), "127.0.0.1:1".parse().unwrap());
    conn.admit(None, &mut Ack, &mut scratch);
    drive(&mut conn, &mut Ack, &mut scratch);
    assert_eq!(received(&mut conn), b" MSG Received\n");
}

#[test]
fn without_a_valid_proxy_header_it_is_refused_or_closed() {
    // Lines where the header should be: the server refuses, it is told.
    let (mut conn, mut scratch) = open_proxied(&mut Ack);
    send(&mut conn, b"hello\n");
    let status = drive(&mut conn, &mut Ack, &mut scratch);
    assert_eq!(status, Status::Admit(Err("not a PROXY protocol header")));
    conn.admit(Some(Refusal::Proxy), &mut Ack, &mut scratch);
    assert_eq!(received(&mut conn), b"ERR no valid PROXY protocol header\n");
    assert_eq!(
        drive(&mut conn, &mut Ack, &mut scratch),
        Status::Close(CloseReason::Protocol)
    );
    assert_eq!(conn.finish(), None);
    // A refused client is not served, even with a good header.
    let (mut conn, mut scratch) = open_proxied(&mut Ack);
    send(&mut conn, b"PROXY TCP4 10.1.2.3 10.0.0.1 1 2\r\nhi\n");
    drive(&mut conn, &mut Ack, &mut scratch);
    conn.admit(Some(Refusal::Denied), &mut Ack, &mut scratch);
    drive(&mut conn, &mut Ack, &mut scratch);
    assert_eq!(received(&mut conn), b"ERR access denied\n");
    // The client's end before a whole header: closed.
    let (mut conn, mut scratch) = open_proxied(&mut Ack);
    conn.memory().eof = true;
    assert_eq!(
        drive(&mut conn, &mut Ack, &mut scratch),
        Status::Close(CloseReason::Client)
    );
    let (mut conn, mut scratch) = open_proxied(&mut Ack);
    send(&mut conn, b"PROXY TCP4 ");
    conn.memory().eof = true;
    let status = conn.drive(&mut Ack, &mut scratch, 10, true);
    assert_eq!(status, Status::Close(CloseReason::Client));
    // A shutdown while it waits for its header: closed, never served.
    let (mut conn, mut scratch) = open_proxied(&mut Ack);
    conn.stop_reading(&mut Ack, &mut scratch, None);
    assert_eq!(
        drive(&mut conn, &mut Ack, &mut scratch),
        Status::Close(CloseReason::Shutdown)
    );
    assert_eq!(conn.finish(), None);
}

/// Echoes lines; `ask` waits for mail, which is answered as `answer: MAIL`.
#[derive(Clone)]
struct Asker;

impl Protocol for Asker {
    type Session = ();
    type Event = &'static str;

    fn open(&mut self, _: std::net::SocketAddr, _: &mut Output) {}

    fn line(&mut self, _: &mut (), line: &[u8], out: &mut Output) -> Flow {
        out.line(line);
        match line {
            b"ask" => Flow::Wait,
            _ => Flow::Continue,
        }
    }

    fn event(&mut self, _: &mut (), mail: &'static str, out: &mut Output) -> Flow {
        out.line(format!("answer: {mail}").as_bytes());
        match mail {
            "not yet" => Flow::Wait,
            _ => Flow::Continue,
        }
    }
}

#[test]
fn lines_after_a_wait_are_answered_only_after_the_mail_that_ends_it() {
    let (mut conn, mut scratch) = open(&mut Asker, None, usize::MAX);
    send(&mut conn, b"a\nask\nb\nc\n");
    let status = drive(&mut conn, &mut Asker, &mut scratch);
    assert_eq!(status, Status::Wait { want_write: false });
    assert_eq!(received(&mut conn), b"a\nask\n");
    // Readiness while waiting: nothing is answered, nothing more is read.
    send(&mut conn, b"d\n");
    drive(&mut conn, &mut Asker, &mut scratch);
    assert_eq!(received(&mut conn), b"");
    assert!(!conn.memory().input.is_empty(), "read while waiting");

    // Mail that keeps it waiting, then mail that ends the wait: the server
    // is told to drive it again (`Yield`), and the lines go on in order.
    let status = conn.event(&mut Asker, &mut scratch, "not yet");
    assert_eq!(status, Status::Wait { want_write: false });
    let status = conn.event(&mut Asker, &mut scratch, "42");
    assert_eq!(status, Status::Yield);
    drive(&mut conn, &mut Asker, &mut scratch);
    assert_eq!(
        received(&mut conn),
        b"answer: not yet\nanswer: 42\nb\nc\nd\n"
    );
    // Mail when not waiting changes nothing.
    let status = conn.event(&mut Asker, &mut scratch, "late");
    assert_eq!(status, Status::Wait { want_write: false });
    assert_eq!(received(&mut conn), b"answer: late\n");
}

/// A connection from the web listener (over memory), upgraded.
fn upgraded(proto: &mut Echo) -> (Connection<()>, Scratch) {
    let mut scratch = Scratch::default();
    let accepted = Accepted {
        exec: false,
        id: ConnId::new(0, 0),
        stream: Transport::Memory(Box::new(Memory {
            room: usize::MAX,
            ..Memory::default()
        })),
        peer: "127.0.0.1:1".parse().unwrap(),
        refusal: None,
        budget: None,
        web: Some(Arc::default()),
    };
    let mut conn = Connection::open(accepted, proto, &mut scratch);
    send(
        &mut conn,
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    );
    drive(&mut conn, proto, &mut scratch);
    let response = received(&mut conn);
    assert!(response.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));
    (conn, scratch)
}

#[test]
fn a_silent_websocket_client_gets_a_ping_every_so_many_sweeps() {
    let (mut conn, mut scratch) = upgraded(&mut Echo);
    for sweep in 1..=5 {
        conn.sweep();
        conn.keepalive(2, &mut scratch);
        let want: &[u8] = if sweep % 2 == 0 { b"\x89\x00" } else { b"" };
        assert_eq!(received(&mut conn), want, "sweep {sweep}");
    }
    // Anything from the client (a pong) starts the count again.
    send(&mut conn, &[0x8A, 0x80, 1, 2, 3, 4]);
    drive(&mut conn, &mut Echo, &mut scratch);
    conn.sweep();
    conn.keepalive(2, &mut scratch);
    assert_eq!(received(&mut conn), b"");
    conn.sweep();
    conn.keepalive(2, &mut scratch);
    assert_eq!(received(&mut conn), b"\x89\x00");
}
