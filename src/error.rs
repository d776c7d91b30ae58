//! I/O errors as the short phrase a person reads after some context:
//! `cannot connect to HOST:PORT: connection refused`, not `Connection
//! refused (os error 111)`.
//!
//! The client (`sockline connect`) and the load generator (`sockline bench`)
//! both report socket errors on one line; one function keeps their wording
//! the same.

use std::io;

/// A short lowercase description of `e`, without the `(os error N)` suffix.
pub fn describe(e: &io::Error) -> String {
    use io::ErrorKind::*;
    let known = match e.kind() {
        ConnectionRefused => "connection refused",
        ConnectionReset => "connection reset",
        AddrInUse => "address in use",
        AddrNotAvailable => "address not available here",
        PermissionDenied => "permission denied",
        HostUnreachable => "host unreachable",
        NetworkUnreachable => "network unreachable",
        _ => "",
    };
    if !known.is_empty() {
        return known.into();
    }
    let text = e.to_string();
    let text = text.split(" (os error").next().unwrap_or_default();
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => format!("{:?}", e.kind()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_the_os_error_and_lowercases() {
        let refused = io::Error::from_raw_os_error(111);
        assert_eq!(describe(&refused), "connection refused");
        let busy = io::Error::from_raw_os_error(98);
        assert_eq!(describe(&busy), "address in use");
        assert_eq!(describe(&io::Error::other("Timed out")), "timed out");
        assert_eq!(describe(&io::Error::other("")), "Other");
    }
}
