//! The interactive client (`sockline connect`).

use std::io;
use std::time::Duration;

/// Connects to `addr` and runs an interactive session.
pub fn run(addr: &str, timeout: Duration) -> io::Result<()> {
    let _ = (addr, timeout);
    Err(io::Error::other("not implemented yet"))
}
