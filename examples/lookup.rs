//! Replies that come from another thread: each line is answered after a
//! slow, blocking lookup on a small thread pool, while the event loop goes on
//! serving everyone else. The pool posts each answer back through the
//! loop's [`Mailbox`]; the protocol puts a connection's answers back in the
//! order its lines came, whatever order the pool finishes them in.
//!
//! ```text
//! ANY LINE   -> the line reversed, after a lookup of --delay ms
//! PING       -> PONG (no lookup; in order behind lookups still pending)
//! BYE        -> BYE, once every earlier answer is out; then the close
//! ```
//! Run: `cargo run --example lookup -- 127.0.0.1:6001`

use sockline::mailbox::Refused;
use sockline::{Config, ConnId, Flow, Mailbox, Output, Protocol, Shutdown, server};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The slow part: a blocking call, standing in for a database or a DNS
/// lookup. It must not run on the event loop.
fn lookup(line: &[u8], delay: Duration) -> Vec<u8> {
    std::thread::sleep(delay);
    line.iter().rev().copied().collect()
}

/// An answer for connection `to`: the `seq`th line's.
pub struct Answer {
    seq: u64,
    bytes: Vec<u8>,
}

/// Work for the pool: whom to answer, through which loop.
struct Job {
    mailbox: Mailbox<Answer>,
    to: ConnId,
    seq: u64,
    line: Vec<u8>,
}

/// The protocol; each event loop's clone holds its own mailbox.
#[derive(Clone)]
pub struct Lookup {
    jobs: Sender<Job>,
    mailbox: Option<Mailbox<Answer>>,
}

/// Per connection: the lines asked, the next answer to send, the answers
/// that came early, and where a BYE stands.
#[derive(Default)]
pub struct Pending {
    asked: u64,
    next: u64,
    early: BTreeMap<u64, Vec<u8>>,
    bye: Option<u64>,
}

impl Lookup {
    /// A protocol whose lookups take `delay` each, on `threads` threads.
    pub fn new(threads: usize, delay: Duration) -> Self {
        let (jobs, queue) = channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for _ in 0..threads {
            let queue = queue.clone();
            std::thread::spawn(move || work(&queue, delay));
        }
        Lookup {
            jobs,
            mailbox: None,
        }
    }
}

/// A pool thread: takes jobs until the protocol is gone.
fn work(queue: &Mutex<Receiver<Job>>, delay: Duration) {
    loop {
        // A panicked sibling leaves the queue usable.
        let job = queue.lock().unwrap_or_else(|e| e.into_inner()).recv();
        let Ok(job) = job else { return };
        let mut answer = Answer {
            seq: job.seq,
            bytes: lookup(&job.line, delay),
        };
        // A full mailbox hands the answer back: the loop is busy, so wait a
        // little (this thread, not the loop) and try again.
        loop {
            match job.mailbox.post(job.to, answer) {
                Ok(()) => break,
                Err(Refused::Full(back)) => {
                    answer = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(Refused::Closed(_)) => return,
            }
        }
    }
}

impl Protocol for Lookup {
    type Session = Pending;
    type Event = Answer;

    fn start(&mut self, mailbox: Mailbox<Answer>) {
        self.mailbox = Some(mailbox);
    }

    fn open(&mut self, _peer: SocketAddr, _out: &mut Output) -> Pending {
        Pending::default()
    }

    fn line(&mut self, pending: &mut Pending, line: &[u8], out: &mut Output) -> Flow {
        let seq = pending.asked;
        pending.asked += 1;
        // Answered at once, but in order behind lookups still pending.
        if line.eq_ignore_ascii_case(b"PING") {
            return answer_in_order(pending, seq, b"PONG".to_vec(), out);
        }
        if line.eq_ignore_ascii_case(b"BYE") {
            pending.bye = Some(seq);
            return answer_in_order(pending, seq, b"BYE".to_vec(), out);
        }
        let Some(mailbox) = self.mailbox.clone() else {
            out.line(b"ERR not started");
            return Flow::Continue;
        };
        let job = Job {
            mailbox,
            to: out.id(),
            seq,
            line: line.to_vec(),
        };
        if self.jobs.send(job).is_err() {
            out.line(b"ERR lookups unavailable");
        }
        Flow::Continue
    }

    fn event(&mut self, pending: &mut Pending, answer: Answer, out: &mut Output) -> Flow {
        answer_in_order(pending, answer.seq, answer.bytes, out)
    }
}

/// Sends answer `seq` and every early one that follows it, in order;
/// closes after the BYE's.
fn answer_in_order(pending: &mut Pending, seq: u64, bytes: Vec<u8>, out: &mut Output) -> Flow {
    pending.early.insert(seq, bytes);
    while let Some(bytes) = pending.early.remove(&pending.next) {
        out.line(&bytes);
        if pending.bye == Some(pending.next) {
            return Flow::Close;
        }
        pending.next += 1;
    }
    Flow::Continue
}

#[allow(dead_code)] // tests include this file for `Lookup` alone
fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:6001".into());
    let addr: SocketAddr = addr.parse().map_err(std::io::Error::other)?;
    let listener = server::bind(addr)?;
    eprintln!("lookup: listening on {}", listener.local_addr()?);
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals()?;
    let proto = Lookup::new(8, Duration::from_millis(100));
    server::run(listener, proto, Config::default(), shutdown)
}
