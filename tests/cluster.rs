//! Chat rooms across sockline servers through a real Redis: one order on
//! every node, and a sender told when a line was not sent.

mod common;

use common::chat::Member;
use common::{RedisServer, connect, serve_binary};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// The first line of `/help`.
const HELP: &str = "* commands: /nick NAME, /join ROOM, /who, /rooms, /me ACTION, /msg NAME TEXT, /help, /quit (or BYE)";

fn node(redis: &RedisServer, name: &str) -> common::Binary {
    node_with(redis, name, &[])
}

/// A chat node on `redis` named `name`, with `extra` flags.
fn node_with(redis: &RedisServer, name: &str, extra: &[&str]) -> common::Binary {
    let url = redis.url();
    let mut args = vec!["--mode", "chat", "-q", "--redis", &url, "--node", name];
    args.extend_from_slice(extra);
    serve_binary(&args)
}

#[test]
fn members_on_two_nodes_see_one_order() {
    let redis = RedisServer::start();
    let a = node(&redis, "a");
    let b = node(&redis, "b");
    let mut alice = Member::join(a.addr, "alice");
    let mut carol = Member::join(a.addr, "carol");
    let mut bob = Member::join(b.addr, "bob");
    let mut dave = Member::join(b.addr, "dave");
    // Everyone is in: each hears the last rename, wherever it happened.
    // Default names are the cluster's: dave had the fourth.
    for member in [&mut alice, &mut carol, &mut bob] {
        while !member.line().ends_with(" is now dave") {}
    }
    const LINES: usize = 100;
    let speak = |mut writer: TcpStream, who: &'static str| {
        std::thread::spawn(move || {
            for i in 0..LINES {
                writer
                    .write_all(format!("{who} {i:03}\n").as_bytes())
                    .unwrap();
            }
        })
    };
    let talk = [
        speak(alice.writer.try_clone().unwrap(), "from-alice"),
        speak(bob.writer.try_clone().unwrap(), "from-bob"),
    ];
    let both = ["alice: ", "bob: "];
    let on_a = carol.said(&both, 2 * LINES);
    let on_b = dave.said(&both, 2 * LINES);
    assert_eq!(
        on_a, on_b,
        "carol (node a) and dave (node b) saw different orders"
    );
    // Each sender's lines in the order sent; nobody hears itself.
    let heard_by_alice = alice.said(&both, LINES);
    let heard_by_bob = bob.said(&both, LINES);
    let sent = |who: &str| -> Vec<String> {
        (0..LINES)
            .map(|i| format!("{who}: from-{who} {i:03}"))
            .collect()
    };
    assert_eq!(heard_by_alice, sent("bob"));
    assert_eq!(heard_by_bob, sent("alice"));
    let from_alice: Vec<_> = on_a
        .iter()
        .filter(|l| l.starts_with("alice: "))
        .cloned()
        .collect();
    assert_eq!(from_alice, sent("alice"));
    for t in talk {
        t.join().unwrap();
    }
}

#[test]
fn lines_wait_while_redis_is_down_and_past_the_bound_come_back_as_errors() {
    let dir = std::env::temp_dir().join(format!("sockline-redis-down-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = common::free_port();
    let mut redis = RedisServer::start_on(port, Some(&dir));
    let a = node(&redis, "a");
    let mut alice = Member::join(a.addr, "alice");
    let mut carol = Member::join(a.addr, "carol");
    while !alice.line().ends_with(" is now carol") {}
    redis.kill();
    carol.wait_for("* cluster link lost: lines wait and go out when it is back");
    // More than the publisher's queue holds (1,024 and the one it retries).
    const LINES: usize = 1100;
    for i in 0..LINES {
        alice.say(&format!("line {i:04}"));
    }
    // /help is answered at once, after every line before it was handled.
    alice.say("/help");
    let before = alice.wait_for(HELP);
    let errors = before
        .iter()
        .filter(|l| l.starts_with("ERR not sent: "))
        .count();
    assert!(errors > 0, "nothing was refused: {before:?}");
    let _back = RedisServer::start_on(port, Some(&dir));
    // What waited goes out in order once Redis is back; nothing twice.
    let mut delivered = carol.said(&["alice: "], 1024);
    alice.say("last");
    delivered
        .extend((carol.wait_for("alice: last").into_iter()).filter(|l| l.starts_with("alice: ")));
    let want: Vec<String> = (0..delivered.len())
        .map(|i| format!("alice: line {i:04}"))
        .collect();
    assert_eq!(delivered, want);
    assert!(delivered.len() >= 1024, "only {} waited", delivered.len());
    assert_eq!(errors + delivered.len(), LINES);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Four members, two on each node: (alice on a, carol on a, bob on b, dave
/// on b), all in the lobby and known to each other.
fn four(a: &common::Binary, b: &common::Binary) -> [Member; 4] {
    let alice = Member::join(a.addr, "alice");
    let mut carol = Member::join(a.addr, "carol");
    let mut bob = Member::join(b.addr, "bob");
    let dave = Member::join(b.addr, "dave");
    let mut alice = alice;
    // Default names are the cluster's: dave had the fourth.
    for member in [&mut alice, &mut carol, &mut bob] {
        while !member.line().ends_with(" is now dave") {}
    }
    [alice, carol, bob, dave]
}

/// Alice and bob each send `n` numbered lines, `gap` apart, while `meanwhile`
/// runs; carol and dave must then see all `2 n` exactly once, in one order,
/// each sender's in the order sent; alice and bob no ERR.
fn talk_through(members: &mut [Member; 4], n: usize, gap: Duration, meanwhile: impl FnOnce()) {
    let speak = |mut writer: TcpStream, who: &'static str| {
        std::thread::spawn(move || {
            for i in 0..n {
                writer
                    .write_all(format!("{who} {i:03}\n").as_bytes())
                    .unwrap();
                std::thread::sleep(gap);
            }
        })
    };
    let [alice, carol, bob, dave] = members;
    let talk = [
        speak(alice.writer.try_clone().unwrap(), "from-alice"),
        speak(bob.writer.try_clone().unwrap(), "from-bob"),
    ];
    meanwhile();
    for t in talk {
        t.join().unwrap();
    }
    let both = ["alice: ", "bob: ", "ERR "];
    let on_a = carol.said(&both, 2 * n);
    let on_b = dave.said(&both, 2 * n);
    assert_eq!(
        on_a, on_b,
        "carol (node a) and dave (node b) saw different orders"
    );
    for who in ["alice", "bob"] {
        let got: Vec<&String> = on_a
            .iter()
            .filter(|l| l.starts_with(&format!("{who}: ")))
            .collect();
        let want: Vec<String> = (0..n)
            .map(|i| format!("{who}: from-{who} {i:03}"))
            .collect();
        assert_eq!(
            got,
            want.iter().collect::<Vec<_>>(),
            "{who}'s lines, lost or doubled or out of order"
        );
    }
    for sender in [alice, bob] {
        assert!(
            !sender.log.iter().any(|l| l.starts_with("ERR")),
            "{:?}",
            sender.log
        );
    }
}

#[test]
fn redis_killed_and_restarted_with_its_data_loses_and_doubles_nothing() {
    let dir = std::env::temp_dir().join(format!("sockline-redis-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = common::free_port();
    let mut redis = RedisServer::start_on(port, Some(&dir));
    let a = node(&redis, "a");
    let b = node(&redis, "b");
    let mut members = four(&a, &b);
    let mut restarted = None;
    talk_through(&mut members, 150, Duration::from_millis(5), || {
        std::thread::sleep(Duration::from_millis(250));
        redis.kill();
        std::thread::sleep(Duration::from_secs(1));
        restarted = Some(RedisServer::start_on(port, Some(&dir)));
    });
    // Members were told the link went and came back. "Back" follows the
    // lines repaired after it, which may be every line still to come (the
    // publisher sends what waited at once): read on for it then.
    let [_, carol, _, _] = &mut members;
    let told = |carol: &Member, what: &str| carol.log.iter().any(|l| l.starts_with(what));
    assert!(told(carol, "* cluster link lost"), "{:?}", carol.log);
    if !told(carol, "* cluster link back") {
        let before = carol.wait_for("* cluster link back");
        assert!(before.is_empty(), "{before:?}");
    }
    drop(restarted);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn redis_paused_for_five_seconds_loses_nothing() {
    let redis = RedisServer::start();
    let a = node(&redis, "a");
    let b = node(&redis, "b");
    let mut members = four(&a, &b);
    let pid = redis.child.id().to_string();
    talk_through(&mut members, 50, Duration::from_millis(20), || {
        std::thread::sleep(Duration::from_millis(200));
        let signal = |sig: &str| {
            let status = std::process::Command::new("kill")
                .args([sig, &pid])
                .status()
                .unwrap();
            assert!(status.success());
        };
        signal("-STOP");
        std::thread::sleep(Duration::from_secs(5));
        signal("-CONT");
    });
}

#[test]
fn a_cut_subscription_is_repaired_from_the_stream() {
    let redis = RedisServer::start();
    let a = node(&redis, "a");
    let b = node(&redis, "b");
    let mut members = four(&a, &b);
    talk_through(&mut members, 200, Duration::from_millis(2), || {
        let mut killed = Vec::new();
        for _ in 0..3 {
            // Past the nodes' 200 ms pause before they resubscribe.
            std::thread::sleep(Duration::from_millis(300));
            let reply = redis.command("CLIENT KILL TYPE pubsub");
            let count = reply
                .trim()
                .strip_prefix(':')
                .and_then(|n| n.parse::<u32>().ok());
            killed.push(count.unwrap_or_else(|| panic!("CLIENT KILL said {reply}")));
        }
        // Both nodes were subscribed when the first came (they subscribe
        // before serving); a busy machine may delay their resubscribing.
        assert_eq!(killed[0], 2, "subscriptions killed: {killed:?}");
    });
}

#[test]
fn redis_restarted_empty_tells_members_their_history_was_lost() {
    let port = common::free_port();
    let mut redis = RedisServer::start_on(port, None);
    let a = node(&redis, "a");
    let b = node(&redis, "b");
    let mut members = four(&a, &b);
    talk_through(&mut members, 5, Duration::ZERO, || {});
    redis.kill();
    let _fresh = RedisServer::start_on(port, None);
    // Counting starts again on every node, and nothing is dropped as seen.
    talk_through(&mut members, 5, Duration::from_millis(50), || {});
    let [_, carol, _, dave] = &mut members;
    for member in [carol, dave] {
        assert!(
            member
                .log
                .iter()
                .any(|l| l.starts_with("* the cluster's store restarted empty")),
            "{:?}",
            member.log
        );
    }
    // Presence is rebuilt: each node enters its members again at its next
    // beat, and their names are taken again.
    let [alice, ..] = &mut members;
    let everyone = "* members of lobby: alice, bob, carol, dave";
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        alice.say("/who");
        let who = alice.said(&["* members of lobby"], 1).remove(0);
        if who == everyone {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still {who}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut newcomer = Member::join(a.addr, "erin");
    newcomer.say("/nick dave");
    newcomer.wait_for("ERR nick taken");
}

#[test]
fn a_line_redis_refuses_waits_alone_and_the_lines_sent_with_it_go_once() {
    let redis = RedisServer::start();
    let a = node(&redis, "a");
    let mut alice = Member::join(a.addr, "alice");
    let mut carol = Member::join(a.addr, "carol");
    let mut bob = Member::join(a.addr, "bob");
    let mut dave = Member::join(a.addr, "dave");
    for member in [&mut bob, &mut dave] {
        member.say("/join broken");
        member.wait_for("* you joined broken");
    }
    bob.wait_for("* dave joined");
    // The room's stream is not a stream: a line for it fails in the
    // script, after the lines before it in the same run went out.
    assert_eq!(redis.command("SET sockline:stream:broken x"), "+OK\r\n");
    // Redis holds the scripts back a while: the lines wait behind the
    // first, then go in one run, alice's, bob's and alice's again.
    assert_eq!(redis.command("CLIENT PAUSE 300 WRITE"), "+OK\r\n");
    let say = |member: &mut Member, who: &str, lines: std::ops::Range<usize>| {
        for i in lines {
            member.say(&format!("{who} {i:03}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    say(&mut alice, "from-alice", 0..10);
    say(&mut bob, "from-bob", 0..10);
    say(&mut alice, "from-alice", 10..20);
    // Bob's line is tried again until the stream is fixed.
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(redis.command("DEL sockline:stream:broken"), ":1\r\n");
    say(&mut alice, "from-alice", 20..21);
    say(&mut bob, "from-bob", 10..11);
    // Each line once, in order.
    for (member, who, n) in [(&mut carol, "alice", 21), (&mut dave, "bob", 11)] {
        let want: Vec<String> = (0..n)
            .map(|i| format!("{who}: from-{who} {i:03}"))
            .collect();
        assert_eq!(member.said(&[&format!("{who}: ")], n), want);
    }
    for sender in [&alice, &bob] {
        assert!(
            !sender.log.iter().any(|l| l.starts_with("ERR")),
            "{:?}",
            sender.log
        );
    }
}

#[test]
fn history_lives_in_redis_for_every_node_and_every_restart() {
    let redis = RedisServer::start();
    let with_history = |name: &str| node_with(&redis, name, &["--history", "3"]);
    let a = with_history("a");
    let mut alice = Member::join(a.addr, "alice");
    alice.say("/join dev");
    alice.wait_for("* you joined dev");
    for i in 1..=4 {
        alice.say(&format!("line {i}"));
    }
    alice.say("/quit");
    alice.wait_for("* bye");
    let want = ["alice: line 2", "alice: line 3", "alice: line 4"];
    // A node started later, and one started after every node went away,
    // both give a newcomer the room's last lines.
    let b = with_history("b");
    drop(a);
    let mut bob = Member::join(b.addr, "bob");
    bob.say("/join dev");
    bob.wait_for("* you joined dev");
    let got: Vec<String> = (0..3).map(|_| bob.line()).collect();
    assert_eq!(got, want);
    drop(bob);
    drop(b);
    let c = with_history("c");
    let mut carol = Member::join(c.addr, "carol");
    carol.say("/join dev");
    carol.wait_for("* you joined dev");
    let got: Vec<String> = (0..3).map(|_| carol.line()).collect();
    assert_eq!(got, want);
}

/// Sends `signal` (`-TERM`, `-KILL`, ...) to process `pid`.
fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal} {pid}");
}

/// Connects and returns the member with the name it was welcomed with.
fn newcomer(addr: SocketAddr) -> (Member, String) {
    let stream = connect(addr);
    let mut member = Member {
        writer: stream.try_clone().unwrap(),
        reader: BufReader::new(stream),
        log: Vec::new(),
    };
    let welcome = member.line();
    let name = welcome
        .strip_prefix("* welcome ")
        .and_then(|rest| rest.strip_suffix(", /help lists commands"))
        .unwrap_or_else(|| panic!("not a welcome: {welcome}"))
        .to_owned();
    (member, name)
}

#[test]
fn names_who_rooms_and_private_messages_span_the_cluster() {
    let redis = RedisServer::start();
    let a = node(&redis, "a");
    let b = node(&redis, "b");
    // Default names never repeat across nodes.
    let mut names = Vec::new();
    let mut newcomers = Vec::new();
    for i in 0..6 {
        let (member, name) = newcomer([a.addr, b.addr][i % 2]);
        names.push(name);
        newcomers.push(member);
    }
    let mut unique = names.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), names.len(), "default names repeat: {names:?}");
    drop(newcomers);

    let mut alice = Member::join(a.addr, "alice");
    let mut bob = Member::join(b.addr, "bob");
    // A name is taken across the cluster, ignoring case; user-N names are
    // the server's to give.
    bob.say("/nick ALICE");
    bob.wait_for("ERR nick taken");
    bob.say(&format!("/nick {}", names[0].to_uppercase()));
    bob.wait_for("ERR nick taken");

    // /who and /rooms count every node's members.
    alice.say("/who");
    alice.wait_for("* members of lobby: alice, bob");
    bob.say("/join dev");
    bob.wait_for("* you joined dev");
    alice.wait_for("* bob left");
    // bob's leave and his entering dev are two ops on node b: alice, on
    // node a, may ask between them. Ask until the cluster has both.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        alice.say("/rooms");
        let rooms = alice.said(&["* rooms: "], 1).remove(0);
        if rooms == "* rooms: dev (1), lobby (1)" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still {rooms}");
        std::thread::sleep(Duration::from_millis(50));
    }

    // /msg reaches a member on another node; an unknown name is an error.
    alice.say("/msg bob psst");
    bob.wait_for("*alice* psst");
    bob.say("/msg Alice back");
    alice.wait_for("*bob* back");
    alice.say("/msg nobody hello?");
    alice.wait_for("ERR no such member nobody");

    // A rename waits for the cluster's answer: the line after it carries
    // the new name, and follows the room's notice.
    bob.say("/join lobby");
    bob.wait_for("* you joined lobby");
    alice.wait_for("* bob joined");
    alice.say("/nick alicia");
    alice.say("after the rename");
    alice.wait_for("* you are now alicia");
    let seen = bob.wait_for("alicia: after the rename");
    assert_eq!(seen, ["* alice is now alicia"]);
    // The old name is free again, on any node.
    bob.say("/nick alice");
    bob.wait_for("* you are now alice");
}

#[test]
fn a_killed_node_s_members_leave_every_room_within_30_s() {
    let redis = RedisServer::start();
    let a = node(&redis, "a");
    let mut b = node(&redis, "b");
    let mut alice = Member::join(a.addr, "alice");
    let mut bob = Member::join(b.addr, "bob");
    bob.say("/join dev");
    bob.wait_for("* you joined dev");
    let _carol = Member::join(b.addr, "carol");
    while !alice.line().ends_with(" is now carol") {}
    b.child.kill().unwrap();
    let killed = std::time::Instant::now();
    (alice.reader.get_ref())
        .set_read_timeout(Some(Duration::from_secs(35)))
        .unwrap();
    alice.wait_for("* carol left (server lost)");
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(30), "noticed after {took:?}");
    alice.say("/who");
    alice.wait_for("* members of lobby: alice");
    alice.say("/rooms");
    alice.wait_for("* rooms: lobby (1)");
    // Its names are free again.
    let mut bob = Member::join(a.addr, "bob");
    bob.say("/who");
    bob.wait_for("* members of lobby: alice, bob");
}

#[test]
fn a_node_restarted_or_shut_down_takes_its_members_out_at_once() {
    let redis = RedisServer::start();
    let a = node(&redis, "a");
    let mut b = node(&redis, "b");
    let mut alice = Member::join(a.addr, "alice");
    let _bob = Member::join(b.addr, "bob");
    while !alice.line().ends_with(" is now bob") {}
    // Killed and started again under its name: the new run takes the old
    // run's members out as it starts, long before it would be taken dead.
    b.child.kill().unwrap();
    let b = node(&redis, "b");
    alice.wait_for("* bob left (server restarted)");
    // Its members come back (as clients do), under their names.
    let _bob = Member::join(b.addr, "bob");
    while !alice.line().ends_with(" is now bob") {}
    // Shut down: its members leave with the reason.
    signal(b.child.id(), "-TERM");
    alice.wait_for("* bob left (server shutting down)");
    alice.say("/who");
    alice.wait_for("* members of lobby: alice");
}

/// The ids of Redis's clients of type `kind` (`CLIENT LIST TYPE kind`),
/// the whole reply read (`RedisServer::command` gives its first line).
fn client_ids(redis: &RedisServer, kind: &str) -> Vec<u64> {
    use std::io::Read;
    let mut stream = TcpStream::connect(("127.0.0.1", redis.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .write_all(format!("CLIENT LIST TYPE {kind}\r\n").as_bytes())
        .unwrap();
    let mut reader = BufReader::new(stream);
    let mut header = String::new();
    reader.read_line(&mut header).unwrap();
    let len: usize = (header.trim().strip_prefix('$'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("CLIENT LIST said {header}"));
    let mut body = vec![0; len + 2];
    reader.read_exact(&mut body).unwrap();
    String::from_utf8_lossy(&body[..len])
        .lines()
        .map(|client| {
            let id = client.split(' ').find_map(|f| f.strip_prefix("id="));
            id.and_then(|id| id.parse().ok())
                .unwrap_or_else(|| panic!("no id in {client}"))
        })
        .collect()
}

/// Node b stops reading (SIGSTOP) while lines flow, until Redis's own
/// `client-output-buffer-limit pubsub` cuts its subscription; once on
/// again, b notices the gap by offset and repairs it from the stream: its
/// members get every line once, in a's order, and hear of the cut.
#[test]
fn a_node_lagging_past_the_pubsub_output_limit_repairs_from_the_stream() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
    let redis = RedisServer::start();
    // A subscriber more than 32 kB behind, past what the sockets' kernel
    // buffers hold, is cut at once.
    let limit = redis.command(r#"CONFIG SET client-output-buffer-limit "pubsub 32kb 16kb 1""#);
    assert_eq!(limit.trim(), "+OK");
    // Each node's subscription: the one that appears once it started.
    let subscribed = |but: &[u64]| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let new: Vec<u64> = (client_ids(&redis, "pubsub").into_iter())
                .filter(|id| !but.contains(id))
                .collect();
            match new[..] {
                [id] => return id,
                [] if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => panic!("new subscriptions: {new:?}"),
            }
        }
    };
    // Once on again, b sends its members all it missed at once, megabytes
    // (Redis's socket buffer alone holds 4 MB): more than the default 1 MiB
    // a member may leave unread, less than all the lines sent (20 MB).
    let roomy = ["--max-queue", "67108864"];
    let a = node_with(&redis, "a", &roomy);
    let subscribed_a = subscribed(&[]);
    let b = node_with(&redis, "b", &roomy);
    let subscribed_b = subscribed(&[subscribed_a]);
    // Alice and carol send on a; erin listens on a, bob and dave on b.
    let mut alice = Member::join(a.addr, "alice");
    let mut carol = Member::join(a.addr, "carol");
    let mut erin = Member::join(a.addr, "erin");
    let mut bob = Member::join(b.addr, "bob");
    let dave = Member::join(b.addr, "dave");
    // Everyone is in once each hears dave's rename (whatever his old name).
    for member in [&mut alice, &mut carol, &mut erin, &mut bob] {
        while !member.line().ends_with(" is now dave") {}
    }
    // Senders on a, which reads on while b is stopped; paced for a's
    // publisher; far fewer lines than a stream's 10,000.
    const MOST: usize = 2500;
    let (stop, sent) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let speak = |member: &Member, who: &'static str| {
        let mut writer = member.writer.try_clone().unwrap();
        let (stop, sent) = (stop.clone(), sent.clone());
        std::thread::spawn(move || {
            let pad = ".".repeat(4000);
            let mut i = 0;
            while i < MOST && !stop.load(Relaxed) {
                let line = format!("from-{who} {i:04} {pad}\n");
                writer.write_all(line.as_bytes()).unwrap();
                sent.fetch_add(1, Relaxed);
                i += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            writer
                .write_all(format!("from-{who} end\n").as_bytes())
                .unwrap();
            i
        })
    };
    let talk = [speak(&alice, "alice"), speak(&carol, "carol")];
    // Every member reads all the while (none is cut as too slow), until it
    // has each other sender's last line.
    let listen = |mut member: Member, name: &str, until: &[&'static str]| {
        let mut left = until.to_vec();
        let reads = move || {
            while !left.is_empty() {
                let line = member.line();
                left.retain(|end| *end != line);
            }
            member
        };
        let thread = std::thread::Builder::new().name(name.to_owned());
        thread.spawn(reads).unwrap()
    };
    let ends = ["alice: from-alice end", "carol: from-carol end"];
    let listening = [
        listen(alice, "alice", &ends[1..]),
        listen(carol, "carol", &ends[..1]),
        listen(erin, "erin", &ends),
        listen(bob, "bob", &ends),
        listen(dave, "dave", &ends),
    ];
    let signal = |sig: &str, pid: u32| {
        let status = std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    std::thread::sleep(Duration::from_millis(200));
    // B lags: the whole node stops, its subscriber reads nothing.
    signal("-STOP", b.child.id());
    let stopped_at = sent.load(Relaxed);
    let mut cut_at = None;
    while talk.iter().any(|t| !t.is_finished()) {
        if !client_ids(&redis, "pubsub").contains(&subscribed_b) {
            cut_at = Some(sent.load(Relaxed));
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Redis cut b's subscription while b could not have closed it.
    let cut_at = cut_at.unwrap_or_else(|| {
        signal("-CONT", b.child.id());
        panic!("b's subscription stood through {MOST} lines from each sender")
    });
    // Lines b's subscription never carried; then b on again, repairing
    // while lines go on.
    std::thread::sleep(Duration::from_millis(300));
    let resumed_at = sent.load(Relaxed);
    signal("-CONT", b.child.id());
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Relaxed);
    let counts = talk.map(|t| t.join().unwrap());
    assert!(resumed_at > cut_at, "no line was sent while b was cut off");
    let [mut alice, mut carol, mut erin, mut bob, mut dave] = listening.map(|l| l.join().unwrap());
    // A last line each way, which each node delivers live, after any `*
    // cluster link back`: the logs then hold every notice.
    erin.say("over");
    for member in [&mut alice, &mut carol, &mut bob, &mut dave] {
        member.wait_for("erin: over");
    }
    dave.say("over");
    erin.wait_for("dave: over");
    // Every member heard every other's line once, in one order: erin's.
    // Lines are shown without their pad.
    let tail = format!(" {}", ".".repeat(4000));
    let heard = |member: &Member, from: &[&str]| -> Vec<String> {
        (member.log.iter())
            .filter(|l| from.iter().any(|who| l.starts_with(&format!("{who}: "))))
            .map(|l| match l.strip_suffix(&tail) {
                Some(short) => short.to_owned(),
                None if l.ends_with(" end") => l.clone(),
                None => format!("mangled: {}", l.chars().take(60).collect::<String>()),
            })
            .collect()
    };
    let same = |what: &str, got: Vec<String>, want: &[String]| {
        if let Some(at) = (0..got.len().max(want.len())).find(|&i| got.get(i) != want.get(i)) {
            let around = |v: &[String]| v[at.saturating_sub(2)..(at + 3).min(v.len())].to_vec();
            panic!(
                "{what}: {} lines, {} wanted; from #{at}: {:?}, wanted {:?}",
                got.len(),
                want.len(),
                around(&got),
                around(want)
            );
        }
    };
    let both = ["alice", "carol"];
    let order = heard(&erin, &both);
    for (who, n) in both.into_iter().zip(counts) {
        let sent: Vec<String> = (0..n)
            .map(|i| format!("{who}: from-{who} {i:04}"))
            .chain([format!("{who}: from-{who} end")])
            .collect();
        same(&format!("{who}'s lines on a"), heard(&erin, &[who]), &sent);
    }
    same("on b, bob", heard(&bob, &both), &order);
    same("on b, dave", heard(&dave, &both), &order);
    same(
        "on a, alice",
        heard(&alice, &both),
        &heard(&erin, &["carol"]),
    );
    same(
        "on a, carol",
        heard(&carol, &both),
        &heard(&erin, &["alice"]),
    );
    for member in [&alice, &carol, &erin, &bob, &dave] {
        let errors: Vec<&String> = member.log.iter().filter(|l| l.starts_with("ERR")).collect();
        assert!(errors.is_empty(), "{errors:?}");
    }
    // Redis cut b's subscription (it is gone); b subscribed again.
    let now = client_ids(&redis, "pubsub");
    assert!(
        now.len() == 2 && !now.contains(&subscribed_b),
        "subscriptions before: a {subscribed_a}, b {subscribed_b}; now {now:?}"
    );
    let log = |node: common::Binary| {
        drop(node.child);
        node.stderr.join().unwrap()
    };
    let (log_a, log_b) = (log(a), log(b));
    let cuts = |log: &str| log.matches("Redis: subscription lost").count();
    let (cuts_a, cuts_b) = (cuts(&log_a), cuts(&log_b));
    assert!(cuts_b >= 1, "b: {log_b}");
    // Members were told of each cut of their node's subscription, and that
    // it came back: b's once (again if it fell behind as it caught up),
    // a's never unless a busy machine made it lag too.
    let notices = |member: &Member| -> Vec<String> {
        (member.log.iter())
            .filter_map(|l| l.strip_prefix("* cluster link "))
            .map(|l| l.split(':').next().unwrap().to_owned())
            .collect()
    };
    for (members, cuts) in [
        (vec![&alice, &carol, &erin], cuts_a),
        (vec![&bob, &dave], cuts_b),
    ] {
        for member in members {
            assert_eq!(notices(member), ["lost", "back"].repeat(cuts));
        }
    }
    eprintln!(
        "b stopped after {stopped_at} lines, cut after {cut_at}, resumed after {resumed_at}, \
         of {counts:?}; subscriptions lost: a {cuts_a}, b {cuts_b}"
    );
}

/// docs/CLUSTER.md's three nodes behind HAProxy, for real: members that
/// land on different nodes share one room.
#[test]
fn three_nodes_behind_haproxy_are_one_chat() {
    let redis = RedisServer::start();
    let url = redis.url();
    // HAProxy checks each node's metrics port: a check on the chat port
    // would be a member coming and going.
    let metrics: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", common::free_port()))
        .collect();
    let nodes: Vec<common::Binary> = (["a", "b", "c"].iter().zip(&metrics))
        .map(|(name, metrics)| {
            let args = ["--mode", "chat", "--redis", &url, "--node", name];
            let more = ["--proxy-protocol", "--metrics-listen", metrics, "-v"];
            serve_binary(&[&args[..], &more].concat())
        })
        .collect();
    let servers: String = (nodes.iter().zip(["a", "b", "c"]).zip(&metrics))
        .map(|((node, name), metrics)| {
            let check = metrics.rsplit(':').next().unwrap();
            format!(
                "    server {name} {} send-proxy-v2 check port {check} inter 100ms\n",
                node.addr
            )
        })
        .collect();
    let balancer = common::Haproxy::start(
        "cluster-haproxy",
        &format!("    balance roundrobin\n{servers}"),
    );
    let mut members: Vec<Member> = ["ann", "ben", "cat"]
        .iter()
        .map(|name| Member::join(balancer.addr, name))
        .collect();
    for member in &mut members[..2] {
        while !member.line().ends_with(" is now cat") {}
    }
    // Health checks came and went meanwhile, and nobody saw them.
    std::thread::sleep(Duration::from_millis(500));
    members[0].say("/who");
    members[0].wait_for("* members of lobby: ann, ben, cat");
    // Each one's line reaches the two others, wherever they are.
    let names = ["ann", "ben", "cat"];
    for (i, name) in names.iter().enumerate() {
        members[i].say(&format!("hello from {name}"));
        for (j, member) in members.iter_mut().enumerate() {
            if j != i {
                member.wait_for(&format!("{name}: hello from {name}"));
            }
        }
    }
    // Each node served one of them, with the client's real address.
    drop(members);
    for node in nodes {
        let log = proxy_log(node);
        assert_eq!(log.matches("connection opened").count(), 1, "{log}");
    }
}

/// A node's log, once it is killed.
fn proxy_log(mut node: common::Binary) -> String {
    let _ = node.child.kill();
    let _ = node.child.wait();
    node.banner + &node.stderr.join().unwrap()
}

/// A cluster carries web members like any other: a browser's WebSocket on
/// one node and a terminal on another share a room.
#[test]
fn a_websocket_member_on_one_node_talks_with_a_tcp_member_on_another() {
    let redis = RedisServer::start();
    let a = node_with(&redis, "a", &["--web", "127.0.0.1:0"]);
    let b = node(&redis, "b");
    let web: SocketAddr = (a.banner.lines())
        .find_map(|l| l.split("web listening on ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    let stream = TcpStream::connect(web).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (mut browser, _) = tungstenite::client(format!("ws://{web}/ws"), stream).unwrap();
    let text = |browser: &mut tungstenite::WebSocket<TcpStream>| loop {
        if let tungstenite::Message::Text(text) = browser.read().unwrap() {
            return text.to_string();
        }
    };
    assert!(text(&mut browser).starts_with("* welcome "));
    let mut bob = Member::join(b.addr, "bob");
    while !text(&mut browser).ends_with(" is now bob") {}
    browser
        .send(tungstenite::Message::text("/nick webby"))
        .unwrap();
    while !bob.line().ends_with(" is now webby") {}
    browser
        .send(tungstenite::Message::text("hello from a browser"))
        .unwrap();
    bob.wait_for("webby: hello from a browser");
    bob.say("hello from a terminal");
    while text(&mut browser) != "bob: hello from a terminal" {}
}
