//! A new line protocol on sockline's core in a few dozen lines: an in-memory
//! key-value store shared by every client.
//!
//! ```text
//! SET key value   -> OK
//! GET key         -> VALUE value | NIL
//! DEL key         -> OK | NIL
//! QUIT            -> BYE, then the connection closes
//! ```
//! Run: `cargo run --example kv -- 127.0.0.1:6000`

use sockline::{Config, Flow, Output, Protocol, Shutdown, server};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// The store: one map behind a lock, shared by every event loop's clone.
#[derive(Default, Clone)]
pub struct Kv {
    map: Arc<Mutex<HashMap<Vec<u8>, Vec<u8>>>>,
}

impl Protocol for Kv {
    type Session = ();
    type Event = ();

    fn open(&mut self, _peer: SocketAddr, _out: &mut Output) {}

    fn line(&mut self, _: &mut (), line: &[u8], out: &mut Output) -> Flow {
        let mut words = line.splitn(3, |&b| b == b' ');
        let command = words.next().unwrap_or_default().to_ascii_uppercase();
        let key = words.next();
        let value = words.next();
        // A panic elsewhere cannot leave the map half-written; keep serving.
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        match (command.as_slice(), key, value) {
            (b"SET", Some(k), Some(v)) => {
                map.insert(k.to_vec(), v.to_vec());
                out.line(b"OK");
            }
            (b"GET", Some(k), None) => match map.get(k) {
                Some(v) => out.line(&[b"VALUE ", v.as_slice()].concat()),
                None => out.line(b"NIL"),
            },
            (b"DEL", Some(k), None) => out.line(if map.remove(k).is_some() {
                b"OK"
            } else {
                b"NIL"
            }),
            (b"QUIT", None, None) => {
                out.line(b"BYE");
                return Flow::Close;
            }
            _ => out.line(b"ERR usage: SET key value | GET key | DEL key | QUIT"),
        }
        Flow::Continue
    }
}

#[allow(dead_code)] // tests include this file for `Kv` alone
fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:6000".into());
    let addr: SocketAddr = addr.parse().map_err(std::io::Error::other)?;
    let listener = server::bind(addr)?;
    eprintln!("kv: listening on {}", listener.local_addr()?);
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals()?;
    server::run(listener, Kv::default(), Config::default(), shutdown)
}
