//! Chat rooms across sockline servers through a real Redis: one order on
//! every node, and a sender told when a line was not sent.

mod common;

use common::{RedisServer, connect, serve_binary};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};

/// A chat member: its stream, and the lines it has read.
struct Member {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Member {
    /// Connects, takes the welcome, and takes the name `name`.
    fn join(addr: SocketAddr, name: &str) -> Member {
        let stream = connect(addr);
        let mut member = Member {
            writer: stream.try_clone().unwrap(),
            reader: BufReader::new(stream),
        };
        assert!(member.line().starts_with("* welcome "));
        member.say(&format!("/nick {name}"));
        member.wait_for(&format!("* you are now {name}"));
        member
    }

    fn say(&mut self, line: &str) {
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .unwrap();
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        assert!(
            self.reader.read_line(&mut line).unwrap() > 0,
            "server closed"
        );
        line.trim_end_matches('\n').to_owned()
    }

    /// Reads until `want`; returns the lines before it.
    fn wait_for(&mut self, want: &str) -> Vec<String> {
        let mut before = Vec::new();
        loop {
            let line = self.line();
            if line == want {
                return before;
            }
            before.push(line);
        }
    }

    /// Reads until it has `n` lines that start with one of `prefixes`.
    fn said(&mut self, prefixes: &[&str], n: usize) -> Vec<String> {
        let mut got = Vec::new();
        while got.len() < n {
            let line = self.line();
            if prefixes.iter().any(|p| line.starts_with(p)) {
                got.push(line);
            }
        }
        got
    }
}

fn node(redis: &RedisServer, name: &str) -> common::Binary {
    serve_binary(&[
        "--mode",
        "chat",
        "-q",
        "--redis",
        &redis.url(),
        "--node",
        name,
    ])
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
    for member in [&mut alice, &mut carol, &mut bob] {
        member.wait_for("* user-2 is now dave");
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
fn a_line_that_cannot_reach_redis_comes_back_as_an_error() {
    let mut redis = RedisServer::start();
    let a = node(&redis, "a");
    let mut alice = Member::join(a.addr, "alice");
    redis.child.kill().unwrap();
    redis.child.wait().unwrap();
    alice.say("is anyone there?");
    let line = alice.line();
    assert!(
        line.starts_with("ERR not sent: "),
        "got {line:?} instead of ERR not sent"
    );
}
