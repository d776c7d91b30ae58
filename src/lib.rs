//! sockline: line-oriented TCP messaging, from the tutorial's one-client
//! server to one process that serves thousands of clients at once.
//!
//! # Architecture
//!
//! A server is a [`Protocol`] (what to answer to a line) run by
//! [`server::run`] (how bytes move). `run` takes a bound listener, starts one
//! worker thread per CPU, and each worker drives its share of the
//! connections from a single `mio` event loop. A connection is a small struct
//! in a slab ([`connection`]): its socket and the line framing, with no read
//! or write buffer held while it is idle, so ten thousand idle clients cost
//! a few hundred bytes each. Who may connect, and how many at once, is
//! decided in [`admission`]. A [`Shutdown`] handle stops accepting and drains.
//!
//! The built-in protocols live in [`mode`]; `examples/kv.rs` shows a new one
//! in a few dozen lines. The interactive client is [`client`], and the load
//! generator behind `sockline bench` is [`loadgen`].
//!
//! # Writing a protocol
//!
//! ```no_run
//! use sockline::{Flow, Output, Protocol, Config, Shutdown};
//! use std::net::SocketAddr;
//!
//! #[derive(Clone)]
//! struct Shout;
//! impl Protocol for Shout {
//!     type Session = ();
//!     type Event = ();
//!     fn open(&mut self, _peer: SocketAddr, _out: &mut Output) {}
//!     fn line(&mut self, _s: &mut (), line: &[u8], out: &mut Output) -> Flow {
//!         out.line(&line.to_ascii_uppercase());
//!         Flow::Continue
//!     }
//! }
//!
//! let listener = sockline::server::bind("127.0.0.1:0".parse().unwrap()).unwrap();
//! sockline::server::run(listener, Shout, Config::default(), Shutdown::new()).unwrap();
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admission;
pub mod client;
pub mod connection;
mod error;
pub mod escape;
pub mod framing;
pub mod kernel;
pub mod loadgen;
pub mod mailbox;
pub mod metrics;
pub mod mode;
pub mod protocol;
pub mod server;
pub mod shutdown;
pub mod tls;
pub mod transport;

pub use mailbox::Mailbox;
pub use protocol::{CloseReason, ConnId, Flow, Message, Output, Protocol};
pub use server::Config;
pub use shutdown::Shutdown;
