//! What the kernel holds for our sockets: the bytes written but not yet
//! acknowledged by the client, and the bytes received but not yet read
//! (`tx_queue` and `rx_queue` in `/proc/net/tcp` and `/proc/net/tcp6`).
//!
//! Needed twice in a shutdown, never on the hot path. At the signal, the
//! bytes already received are what the drain must answer, and no more (a
//! client that keeps sending must not keep the drain going). When the drain
//! timeout cuts connections, every reply may have left the server's own
//! buffers, and what the client loses is what still sits in the kernel.
//! Reading the table is safe code and costs one pass over it; the
//! `SIOCOUTQ`/`SIOCINQ` ioctls would need `unsafe`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// A socket's queues, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Queues {
    /// Written by us, not yet acknowledged by the peer.
    pub unacked: u64,
    /// Received, not yet read by us.
    pub unread: u64,
}

/// The queues of every TCP socket, by (local, remote) address; empty where
/// `/proc` cannot be read.
pub fn queues() -> HashMap<(SocketAddr, SocketAddr), Queues> {
    let mut queues = HashMap::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        queues.extend(text.lines().skip(1).filter_map(parse_row));
    }
    queues
}

/// `sl local rem st tx_queue:rx_queue ...`, addresses as `HEXIP:HEXPORT`.
fn parse_row(row: &str) -> Option<((SocketAddr, SocketAddr), Queues)> {
    let fields: Vec<&str> = row.split_whitespace().take(5).collect();
    let [_, local, remote, _, queues] = fields[..] else {
        return None;
    };
    let (tx, rx) = queues.split_once(':')?;
    let queues = Queues {
        unacked: u64::from_str_radix(tx, 16).ok()?,
        unread: u64::from_str_radix(rx, 16).ok()?,
    };
    Some(((address(local)?, address(remote)?), queues))
}

/// The kernel prints each 32-bit word of the address in host byte order.
fn address(field: &str) -> Option<SocketAddr> {
    let (ip, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Vec<u32> = (0..ip.len() / 8)
        .map(|i| u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok())
        .collect::<Option<_>>()?;
    let ip = match words[..] {
        [a] => IpAddr::V4(Ipv4Addr::from(a.to_le_bytes())),
        [a, b, c, d] => {
            let mut bytes = [0; 16];
            for (chunk, word) in bytes.chunks_mut(4).zip([a, b, c, d]) {
                chunk.copy_from_slice(&word.to_le_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_tables() {
        let v4 = "   3: 0100007F:1388 0100007F:D2F0 01 0000ABCD:00000000 01:00000014 00000000     0        0 123 1";
        let ((local, remote), queues) = parse_row(v4).unwrap();
        assert_eq!(local, "127.0.0.1:5000".parse().unwrap());
        assert_eq!(remote, "127.0.0.1:54000".parse().unwrap());
        assert_eq!((queues.unacked, queues.unread), (0xABCD, 0));
        let v6 = "   0: 00000000000000000000000001000000:1388 00000000000000000000000001000000:D2F0 01 00000010:00000000 00:00000000 00000000     0        0 1 1";
        let ((local, _), queues) = parse_row(v6).unwrap();
        assert_eq!(local, "[::1]:5000".parse().unwrap());
        assert_eq!(queues.unacked, 16);
    }

    #[test]
    fn sees_a_real_socket() {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        client.write_all(b"seven!\n").unwrap();
        let key = (server.local_addr().unwrap(), server.peer_addr().unwrap());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while queues().get(&key).map(|q| q.unread) != Some(7) {
            assert!(
                std::time::Instant::now() < deadline,
                "{:?}",
                queues().get(&key)
            );
        }
    }
}
