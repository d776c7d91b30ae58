//! The command line: clap derive; each flag's doc comment is its help text.

use clap::{Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;

/// Line-oriented TCP messaging: a server for thousands of clients, an
/// interactive client and a load generator.
#[derive(Debug, Parser)]
#[command(name = "sockline", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve a line protocol to many clients at once.
    Serve(ServeArgs),
    /// Talk to a line server interactively: send stdin lines, print replies.
    Connect(ConnectArgs),
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on; use 0.0.0.0:5000 or [::]:5000 to expose it.
    #[arg(long, default_value = "127.0.0.1:5000")]
    pub listen: SocketAddr,
    /// What the server answers.
    #[arg(long, value_enum, default_value_t = Mode::Ack)]
    pub mode: Mode,
    /// Longest accepted line in bytes; longer ones get an error and a close.
    #[arg(long, default_value_t = 65536, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_line: u64,
    /// Connections served at once; more are told `ERR server full`.
    #[arg(long, default_value_t = 10_000)]
    pub max_conns: usize,
    /// Seconds a shutdown (SIGINT/SIGTERM) waits for replies to drain.
    #[arg(long, default_value_t = 5.0)]
    pub drain_timeout: f64,
    /// Event-loop threads (default: one per CPU available).
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// Log only warnings and errors.
    #[arg(short, long, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Also log every received line.
    #[arg(short, long)]
    pub verbose: bool,
}

/// The built-in protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Answer every line with " MSG Received" (the tutorial's server).
    Ack,
    /// Send every line back.
    Echo,
}

#[derive(Debug, clap::Args)]
pub struct ConnectArgs {
    /// Server address, HOST:PORT.
    pub addr: String,
    /// Seconds to wait for connecting, and for the server to close after BYE.
    #[arg(long, default_value_t = 5.0)]
    pub timeout: f64,
}
