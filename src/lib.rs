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
//! With [`Config::exec`], each connection gets a helper process instead of
//! a protocol ([`exec`]), its pipes driven by the same event loop.
//!
//! The built-in protocols live in [`mode`]; `examples/kv.rs` shows a new one
//! in a few dozen lines.
//!
//! # Features
//!
//! Both are on by default, and the `sockline` binary requires both. The
//! server needs neither: with `default-features = false` the library is the
//! server alone, without tokio and the crates these two bring.
//!
//! - `client`: module `client`, the interactive client (`sockline connect`),
//!   and the client half of [`tls`] (with the public roots).
//! - `bench`: module `loadgen`, the load generator (`sockline bench`).
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
#[cfg(feature = "client")]
pub mod client;
pub mod connection;
#[cfg(any(feature = "client", feature = "bench"))]
pub mod error;
pub mod escape;
pub mod exec;
pub mod framing;
pub mod kernel;
#[cfg(feature = "bench")]
pub mod loadgen;
pub mod mailbox;
pub mod metrics;
pub mod mode;
pub mod protocol;
pub mod proxy;
pub mod server;
pub mod shutdown;
pub mod tls;
pub mod transport;
pub mod web;

pub use mailbox::Mailbox;
pub use protocol::{CloseReason, ConnId, Flow, Message, Output, Protocol};
pub use server::Config;
pub use shutdown::Shutdown;
