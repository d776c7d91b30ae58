//! What the kernel still holds for our sockets: the bytes written but not
//! yet acknowledged by the client (`tx_queue` in `/proc/net/tcp` and
//! `/proc/net/tcp6`).
//!
//! Needed once, when the drain timeout cuts connections: by then every reply
//! may have left the server's own buffers, and what the client loses is what
//! still sits in the kernel. Reading the table is safe code and costs one
//! pass over it; `SIOCOUTQ` would need `unsafe`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Unacknowledged bytes of every TCP socket, by (local, remote) address;
/// empty where `/proc` cannot be read.
pub fn unacked() -> HashMap<(SocketAddr, SocketAddr), u64> {
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
fn parse_row(row: &str) -> Option<((SocketAddr, SocketAddr), u64)> {
    let fields: Vec<&str> = row.split_whitespace().take(5).collect();
    let [_, local, remote, _, queues] = fields[..] else {
        return None;
    };
    let (tx, _rx) = queues.split_once(':')?;
    let tx = u64::from_str_radix(tx, 16).ok()?;
    Some(((address(local)?, address(remote)?), tx))
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
        let ((local, remote), tx) = parse_row(v4).unwrap();
        assert_eq!(local, "127.0.0.1:5000".parse().unwrap());
        assert_eq!(remote, "127.0.0.1:54000".parse().unwrap());
        assert_eq!(tx, 0xABCD);
        let v6 = "   0: 00000000000000000000000001000000:1388 00000000000000000000000001000000:D2F0 01 00000010:00000000 00:00000000 00000000     0        0 1 1";
        let ((local, _), tx) = parse_row(v6).unwrap();
        assert_eq!(local, "[::1]:5000".parse().unwrap());
        assert_eq!(tx, 16);
    }

    #[test]
    fn sees_a_real_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let key = (client.local_addr().unwrap(), client.peer_addr().unwrap());
        assert_eq!(unacked().get(&key), Some(&0));
    }
}
