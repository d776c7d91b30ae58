//! `serve --mode chat` on real sockets: the wire format byte for byte,
//! commands, rooms, history, a hundred members at once, slow and broken
//! members, shutdown.

mod common;

use common::{connect, read_to_close, serve_binary, start};
use sockline::Config;
use sockline::mode::Chat;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// One chat client: writes through `stream`, reads lines through `reader`.
struct Member {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
    name: String,
}

impl Member {
    /// Connects and reads the welcome line, which names the member.
    fn join(addr: SocketAddr) -> Member {
        let stream = connect(addr);
        let reader = BufReader::new(stream.try_clone().unwrap());
        let mut member = Member {
            stream,
            reader,
            name: String::new(),
        };
        let welcome = member.next();
        let name = welcome
            .strip_prefix("* welcome ")
            .and_then(|rest| rest.strip_suffix(", /help lists commands"))
            .unwrap_or_else(|| panic!("not a welcome: {welcome:?}"));
        member.name = name.to_owned();
        member
    }

    fn say(&mut self, line: &str) {
        self.stream
            .write_all(format!("{line}\n").as_bytes())
            .unwrap();
    }

    /// The next line, without its `\n` (which must be there).
    fn next(&mut self) -> String {
        let mut line = Vec::new();
        self.reader.read_until(b'\n', &mut line).unwrap();
        assert_eq!(line.pop(), Some(b'\n'), "a whole line, got {line:?}");
        String::from_utf8(line).unwrap()
    }

    fn expect(&mut self, want: &str) {
        assert_eq!(self.next(), want, "at {}", self.name);
    }

    /// Reads the rest until the server closes.
    fn rest(mut self) -> Vec<u8> {
        let mut rest = self.reader.buffer().to_vec();
        rest.extend(read_to_close(&mut self.stream));
        rest
    }
}

#[test]
fn three_members_see_each_others_lines_and_comings_and_goings() {
    let server = start(Chat::new(0), Config::default());
    let mut a = Member::join(server.addr);
    assert_eq!(a.name, "user-1");
    let mut b = Member::join(server.addr);
    a.expect("* user-2 joined");
    let mut c = Member::join(server.addr);
    assert_eq!((b.name.as_str(), c.name.as_str()), ("user-2", "user-3"));
    a.expect("* user-3 joined");
    b.expect("* user-3 joined");

    a.say("hello, anyone?");
    b.expect("user-1: hello, anyone?");
    c.expect("user-1: hello, anyone?");
    b.say("안녕하세요");
    a.expect("user-2: 안녕하세요");
    c.expect("user-2: 안녕하세요");
    c.say("me too");
    a.expect("user-3: me too");
    b.expect("user-3: me too");

    // BYE is answered, then closed; the others see a plain leave.
    c.say("bYe");
    assert_eq!(c.rest(), b"* bye\n");
    a.expect("* user-3 left");
    b.expect("* user-3 left");
    // Hanging up without a word is a leave with its reason.
    drop(b);
    a.expect("* user-2 left (closed by client)");
    // The sender never got its own lines back: the next line is this reply.
    a.say("/who");
    a.expect("* members of lobby: user-1");
}

#[test]
fn commands_rooms_and_private_messages() {
    let server = start(Chat::new(0), Config::default());
    let mut a = Member::join(server.addr);
    a.say("/nick alice");
    a.expect("* you are now alice");
    let mut b = Member::join(server.addr);
    a.expect("* user-2 joined");
    // Nicks: taken (ignoring case), invalid, missing, then fine.
    b.say("/nick ALICE");
    b.expect("ERR nick taken");
    b.say("/nick bad name!");
    b.expect("ERR invalid nick: use 1-32 of A-Z a-z 0-9 _ -");
    b.say(&format!("/nick {}", "x".repeat(33)));
    b.expect("ERR invalid nick: use 1-32 of A-Z a-z 0-9 _ -");
    b.say("/nick");
    b.expect("ERR usage: /nick NAME");
    b.say("/nick bob");
    b.expect("* you are now bob");
    a.expect("* user-2 is now bob");
    a.say("/who");
    a.expect("* members of lobby: alice, bob");

    let mut c = Member::join(server.addr);
    a.expect("* user-3 joined");
    b.expect("* user-3 joined");
    c.say("/NICK carol");
    c.expect("* you are now carol");
    a.expect("* user-3 is now carol");
    b.expect("* user-3 is now carol");

    // Rooms.
    c.say("/join dev");
    c.expect("* you joined dev");
    a.expect("* carol left");
    b.expect("* carol left");
    c.say("/join dev");
    c.expect("ERR already in dev");
    c.say("/join no way");
    c.expect("ERR invalid room: use 1-32 of A-Z a-z 0-9 _ -");
    c.say("/join");
    c.expect("ERR usage: /join ROOM");
    c.say("/rooms");
    c.expect("* rooms: lobby (2), dev (1)");
    c.say("only dev hears this");
    a.say("only the lobby hears this");
    b.expect("alice: only the lobby hears this");
    b.say("/join dev");
    b.expect("* you joined dev");
    a.expect("* bob left");
    c.expect("* bob joined");
    b.say("hi dev");
    c.expect("bob: hi dev");
    // Had a dev line reached alice, it would come before this reply.
    a.say("/who");
    a.expect("* members of lobby: alice");
    c.say("/who");
    c.expect("* members of dev: bob, carol");
    c.say("/rooms");
    c.expect("* rooms: dev (2), lobby (1)");

    // Actions, private messages (across rooms), escapes.
    c.say("/me waves");
    b.expect("~ carol waves");
    c.say("/me");
    c.expect("ERR usage: /me ACTION");
    c.say("/msg Alice psst, over here");
    a.expect("*carol* psst, over here");
    c.say("/msg nobody hello?");
    c.expect("ERR no such member nobody");
    c.say("/msg alice");
    c.expect("ERR usage: /msg NAME TEXT");
    c.say("//nick is a command");
    b.expect("carol: /nick is a command");
    c.say("/dance");
    c.expect("ERR unknown command /dance (try /help)");
    c.say("/help");
    c.expect(
        "* commands: /nick NAME, /join ROOM, /who, /rooms, /me ACTION, \
         /msg NAME TEXT, /help, /quit (or BYE)",
    );
    c.expect(
        "* any other line goes to your room; start it with // to send a line beginning with /",
    );
    // None of c's commands reached b but the ones meant for the room.
    c.say("/quit");
    assert_eq!(c.rest(), b"* bye\n");
    b.expect("* carol left");
    // A freed nick can be taken again.
    b.say("/nick carol");
    b.expect("* you are now carol");
}

#[test]
fn an_action_cannot_pass_for_a_server_notice() {
    let server = start(Chat::new(0), Config::default());
    let mut a = Member::join(server.addr);
    let mut b = Member::join(server.addr);
    a.expect("* user-2 joined");
    b.say("/me left (too slow)");
    let action = a.next();
    assert_eq!(action, "~ user-2 left (too slow)");
    // Lines starting with `* ` are the server's own voice only.
    assert_ne!(action, "* user-2 left (too slow)");
    drop(b);
    a.expect("* user-2 left (closed by client)");
}

#[test]
fn bytes_that_are_not_utf8_pass_through_and_never_break_the_room() {
    let server = start(Chat::new(0), Config::default());
    let mut a = Member::join(server.addr);
    let mut b = Member::join(server.addr);
    a.expect("* user-2 joined");
    b.stream
        .write_all(b"\xff\xfe raw\r\n/nick \xff\n/\xc3\n/msg \xff hi\n\n")
        .unwrap();
    let mut line = Vec::new();
    a.reader.read_until(b'\n', &mut line).unwrap();
    assert_eq!(line, b"user-2: \xff\xfe raw\n");
    for want in [
        &b"ERR invalid nick: use 1-32 of A-Z a-z 0-9 _ -\n"[..],
        b"ERR unknown command /\xc3 (try /help)\n",
        b"ERR no such member \xff\n",
    ] {
        line.clear();
        b.reader.read_until(b'\n', &mut line).unwrap();
        assert_eq!(line, want);
    }
    // The empty line was ignored: the next thing a hears is this.
    b.say("still fine");
    a.expect("user-2: still fine");
}

#[test]
fn a_late_joiner_gets_the_rooms_last_lines() {
    let server = start(Chat::new(3), Config::default());
    let mut a = Member::join(server.addr);
    let mut b = Member::join(server.addr);
    a.expect("* user-2 joined");
    for i in 1..=5 {
        a.say(&format!("line {i}"));
    }
    a.say("/me is not history");
    for i in 1..=5 {
        b.expect(&format!("user-1: line {i}"));
    }
    b.expect("~ user-1 is not history");

    // After the welcome: the last three chat lines, then live traffic.
    let mut c = Member::join(server.addr);
    for i in 3..=5 {
        c.expect(&format!("user-1: line {i}"));
    }
    a.expect("* user-3 joined");
    b.expect("* user-3 joined");
    b.say("live");
    c.expect("user-2: live");
    a.expect("user-2: live");

    // /join replays the joined room's history after "* you joined".
    c.say("/join dev");
    c.expect("* you joined dev");
    c.say("in dev");
    c.say("/join lobby");
    c.expect("* you joined lobby");
    for want in ["user-1: line 4", "user-1: line 5", "user-2: live"] {
        c.expect(want);
    }
    for member in [&mut a, &mut b] {
        member.expect("* user-3 left");
        member.expect("* user-3 joined");
    }
    // The last member left dev, but its history stayed for the next.
    c.say("/join dev");
    c.expect("* you joined dev");
    c.expect("user-3: in dev");
    b.say("/join dev");
    b.expect("* user-3 left");
    b.expect("* you joined dev");
    b.expect("user-3: in dev");
    c.expect("* user-2 joined");
    b.say("/who");
    b.expect("* members of dev: user-2, user-3");
}

#[test]
fn history_outlives_an_empty_room() {
    // The real binary, so that the default --history-rooms is what is tested.
    let server = serve_binary(&["--mode", "chat", "--history", "3", "-q"]);
    let mut a = Member::join(server.addr);
    a.say("/join dev");
    a.expect("* you joined dev");
    for i in 1..=4 {
        a.say(&format!("line {i}"));
    }
    a.say("/quit");
    // Its lines were read before the /quit, and dev is empty once the
    // server has closed it (everything runs on one loop).
    assert_eq!(a.rest(), b"* bye\n");

    let mut b = Member::join(server.addr);
    b.say("/rooms");
    b.expect("* rooms: lobby (1)");
    // /who right away: without the history, its answer comes next.
    b.say("/join dev");
    b.say("/who");
    b.expect("* you joined dev");
    for want in ["user-1: line 2", "user-1: line 3", "user-1: line 4"] {
        b.expect(want);
    }
    b.expect("* members of dev: user-2");
}

#[test]
fn history_rooms_zero_forgets_a_room_as_it_empties() {
    let server = serve_binary(&["--mode", "chat", "--history", "3", "--history-rooms", "0"]);
    let mut a = Member::join(server.addr);
    a.say("said to nobody");
    a.say("/quit");
    assert_eq!(a.rest(), b"* bye\n");

    let mut b = Member::join(server.addr);
    b.say("/who");
    b.expect("* members of lobby: user-2");
}

#[test]
fn a_hundred_members_at_once_all_see_all_lines_in_one_order() {
    const MEMBERS: usize = 100;
    const LINES: usize = 100;
    let server = start(Chat::new(0), Config::default());
    let addr = server.addr;
    let connected = Arc::new(Barrier::new(MEMBERS));
    let all_in = Arc::new(Barrier::new(MEMBERS));
    let done = Arc::new(Barrier::new(MEMBERS));
    let threads: Vec<_> = (0..MEMBERS)
        .map(|_| {
            let (connected, all_in, done) = (connected.clone(), all_in.clone(), done.clone());
            std::thread::spawn(move || {
                connected.wait();
                let mut member = Member::join(addr);
                // Everyone's welcome was read, so everyone is in the room.
                all_in.wait();
                for i in 0..LINES {
                    member.say(&format!("{i}"));
                }
                let mut seen = Vec::with_capacity((MEMBERS - 1) * LINES);
                while seen.len() < (MEMBERS - 1) * LINES {
                    let line = member.next();
                    if line.starts_with("* ") {
                        continue; // joins of later members
                    }
                    let (from, text) = line.split_once(": ").expect("NAME: text");
                    seen.push((from.to_owned(), text.parse::<usize>().unwrap()));
                }
                done.wait();
                (member.name, seen)
            })
        })
        .collect();
    let results: Vec<(String, Vec<(String, usize)>)> =
        threads.into_iter().map(|t| t.join().unwrap()).collect();

    for (name, seen) in &results {
        // Each sender's lines, all of them, in order; never one's own.
        let mut next = std::collections::HashMap::new();
        for (from, i) in seen {
            assert_ne!(from, name, "{name} got its own line back");
            let want = next.entry(from.clone()).or_insert(0);
            assert_eq!(i, want, "{name} got {from}'s lines out of order");
            *want += 1;
        }
        assert_eq!(next.len(), MEMBERS - 1);
        assert!(next.values().all(|&n| n == LINES));
    }
    // One global order: any two members agree on the order of the lines
    // both received (everyone's but their own two senders').
    for (reference, (ref_name, ref_seen)) in results.iter().enumerate().take(2) {
        for (other, (name, seen)) in results.iter().enumerate() {
            if other == reference {
                continue;
            }
            let mine = ref_seen.iter().filter(|(from, _)| from != name);
            let theirs = seen.iter().filter(|(from, _)| from != ref_name);
            assert!(
                mine.eq(theirs),
                "{ref_name} and {name} disagree on the order"
            );
        }
    }
}

/// Line length of the flood, `\n` included.
const FLOOD_LINE: usize = 100;
/// How far the flooder may run ahead of the live reader: a sender that
/// stays within `max_queue` is one readers can follow.
const AHEAD: usize = 32 * 1024;
/// Bytes of flood per write.
const BATCH: usize = 8 * 1024;

/// A reader, a flooder and a deaf member (sends, never reads) in one room;
/// the flooder sends `total` bytes of numbered lines, calling `sample`
/// now and then. Checks the reader and the flooder lose nothing and see
/// the deaf member leave as too slow.
fn flood_past_a_deaf_member(addr: SocketAddr, total: usize, mut sample: impl FnMut()) {
    let mut reader = Member::join(addr);
    let mut flooder = Member::join(addr);
    let mut deaf = Member::join(addr);
    reader.expect("* user-2 joined");
    for member in [&mut reader, &mut flooder] {
        member.expect("* user-3 joined");
    }
    deaf.say("I hear nothing");
    for member in [&mut reader, &mut flooder] {
        member.expect("user-3: I hear nothing");
    }

    // Nagle would hold each batch for a delayed ACK: the flooder gets no data back.
    flooder.stream.set_nodelay(true).unwrap();
    let lines = total / FLOOD_LINE;
    let received = Arc::new(AtomicUsize::new(0));
    let reading = {
        let received = received.clone();
        std::thread::spawn(move || {
            let mut left = 0;
            let mut next = 0;
            loop {
                let line = reader.next();
                if line == "* user-3 left (too slow)" {
                    left += 1;
                    continue;
                }
                if line == "user-2: done" {
                    break;
                }
                let number = line
                    .strip_prefix("user-2: ")
                    .and_then(|text| text.split(' ').next())
                    .and_then(|n| n.parse::<usize>().ok());
                assert_eq!(number, Some(next), "lost or reordered: {line:?}");
                next += 1;
                received.store(next, Ordering::Relaxed);
            }
            (next, left, reader)
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut batch = Vec::new();
    let mut sent = 0;
    while sent < lines {
        while (sent - received.load(Ordering::Relaxed)) * FLOOD_LINE > AHEAD - BATCH {
            assert!(
                Instant::now() < deadline,
                "the reader stopped getting lines"
            );
            std::thread::sleep(Duration::from_micros(100));
        }
        batch.clear();
        let end = (sent + BATCH / FLOOD_LINE).min(lines);
        for i in sent..end {
            let head = format!("{i:09} ");
            batch.extend_from_slice(head.as_bytes());
            batch.resize(batch.len() + FLOOD_LINE - head.len() - 1, b'x');
            batch.push(b'\n');
        }
        sent = end;
        flooder.stream.write_all(&batch).unwrap();
        if sent % (1 << 14) < BATCH / FLOOD_LINE {
            sample();
        }
    }
    flooder.say("done");
    let (got, left, reader) = reading.join().unwrap();
    assert_eq!(got, lines, "the reader got every line");
    assert_eq!(left, 1, "the reader saw the deaf member leave, once");
    flooder.expect("* user-3 left (too slow)");
    flooder.say("/who");
    flooder.expect("* members of lobby: user-1, user-2");
    drop((reader, deaf));
}

#[test]
fn a_member_that_stops_reading_is_dropped_and_the_others_lose_nothing() {
    let config = Config {
        max_queue: 64 * 1024,
        ..Config::default()
    };
    let server = start(Chat::new(0), config);
    flood_past_a_deaf_member(server.addr, 8 << 20, || {});
}

#[test]
fn the_real_server_stays_small_while_a_deaf_member_is_flooded() {
    let server = serve_binary(&["--mode", "chat", "--max-queue", "65536", "-q"]);
    let pid = server.child.id();
    let rss_kib = || common::rss_kib(pid);
    let mut peak = 0;
    flood_past_a_deaf_member(server.addr, 20 << 20, || peak = peak.max(rss_kib()));
    peak = peak.max(rss_kib());
    eprintln!("server peak RSS: {peak} KiB");
    assert!(peak > 0);
    assert!(peak < 100 * 1024, "server RSS peaked at {peak} KiB");
}

/// One burst from a sender bigger than `max_queue` must not drop a member
/// that reads as fast as it can: the socket is offered the queue first.
#[test]
fn a_burst_over_max_queue_does_not_drop_a_fast_reader() {
    let config = Config {
        max_queue: 64 * 1024,
        ..Config::default()
    };
    let server = start(Chat::new(0), config);
    let mut reader = Member::join(server.addr);
    let mut sender = Member::join(server.addr);
    reader.expect("* user-2 joined");
    let burst = "x".repeat(99) + "\n";
    sender
        .stream
        .write_all(burst.repeat(1000).as_bytes())
        .unwrap();
    for _ in 0..1000 {
        reader.expect(&format!("user-2: {}", "x".repeat(99)));
    }
}

#[test]
fn a_member_that_resets_mid_line_disturbs_nobody() {
    let server = start(Chat::new(0), Config::default());
    let mut a = Member::join(server.addr);
    let mut b = Member::join(server.addr);
    a.expect("* user-2 joined");
    let mut reset = Member::join(server.addr);
    a.expect("* user-3 joined");
    b.expect("* user-3 joined");
    reset.stream.write_all(b"half a li").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    // SO_LINGER 0: closing sends an RST instead of a FIN.
    let socket = socket2::Socket::from(reset.stream);
    socket.set_linger(Some(Duration::ZERO)).unwrap();
    drop((socket, reset.reader));
    // The half line is never said; the others see it leave, nothing else.
    a.expect("* user-3 left (connection reset)");
    b.expect("* user-3 left (connection reset)");
    b.say("still here");
    a.expect("user-2: still here");
    let mut c = Member::join(server.addr);
    assert_eq!(c.name, "user-4");
    a.expect("* user-4 joined");
    c.say("/who");
    c.expect("* members of lobby: user-1, user-2, user-4");
}

#[test]
fn shutdown_tells_every_member_before_closing() {
    let server = start(Chat::new(0), Config::default());
    let mut members: Vec<Member> = Vec::new();
    for i in 0..5 {
        let member = Member::join(server.addr);
        for earlier in &mut members {
            earlier.expect(&format!("* user-{} joined", i + 1));
        }
        members.push(member);
    }
    server.stop().unwrap();
    // No leave notices: everyone is told why once.
    for member in members {
        assert_eq!(member.rest(), b"* server shutting down\n");
    }
}
