//! The PROXY protocol header: the client's real address, which a load
//! balancer (HAProxy's `send-proxy`/`send-proxy-v2`, nginx's
//! `proxy_protocol on`, cloud load balancers) sends first on each
//! connection it opens to a server on a client's behalf.
//!
//! Pure functions over the bytes received so far, after HAProxy's
//! specification (doc/proxy-protocol.txt, "The PROXY protocol, Versions 1 &
//! 2"): [`parse`] says whether they start with a complete header, how long
//! it is, and what it carries. The connection peeks at its socket and
//! takes exactly [`Parsed::header_len`] bytes, so what follows (a TLS ClientHello,
//! the first lines) stays for the next stage.
//!
//! - Version 1 is one text line, `PROXY TCP4|TCP6 SRC DST SPORT DPORT\r\n`
//!   or `PROXY UNKNOWN ...\r\n`, at most [`V1_MAX`] (107) bytes with its
//!   CRLF, as the specification bounds it.
//! - Version 2 is a 16-byte binary preamble (signature, version and
//!   command, family and protocol, length) followed by the addresses and
//!   optional TLVs, which are skipped. The specification sets no bound but
//!   the 16-bit length; this one refuses a header longer than [`V2_MAX`]
//!   (4 KiB in all): room for the addresses and kilobytes of TLVs (SSL
//!   details, unique IDs, cloud endpoint IDs), while the header is peeked
//!   whole into the worker's 16 KiB read buffer.
//!
//! A header that carries no client address (v2 `LOCAL`, which HAProxy's
//! health checks send; v1 `UNKNOWN`; v2 `PROXY` for a family or protocol
//! other than TCP over IPv4 or IPv6) is [`Parsed::Local`]: the connection's
//! own addresses stand, as the specification says. Anything else is
//! [`Parsed::Invalid`], as early as the first byte that cannot be a header.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Longest version 1 header, CRLF included (`PROXY UNKNOWN` with two IPv6
/// addresses and two ports).
pub const V1_MAX: usize = 107;
/// Longest version 2 header accepted, in all (16 bytes of preamble, then
/// addresses and TLVs).
pub const V2_MAX: usize = 4096;
/// Bytes to look at to find any header: the longer of the two limits.
pub const MAX_LEN: usize = V2_MAX;

/// The twelve bytes a version 2 header starts with.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// What a version 1 header starts with.
const V1_START: &[u8; 6] = b"PROXY ";
/// A version 2 header's fixed part.
const V2_PREAMBLE: usize = 16;

/// What the bytes received so far say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A header may be coming: wait for more bytes.
    Incomplete,
    /// A header of `len` bytes, for a client at `source` that connected to
    /// `destination` (the load balancer's address it reached).
    Header {
        /// The header's length in bytes; the client's bytes follow.
        len: usize,
        /// The client's address.
        source: SocketAddr,
        /// Where the client connected to.
        destination: SocketAddr,
    },
    /// A header of `len` bytes with no client address (v2 `LOCAL`, v1
    /// `UNKNOWN`, or another address family): the connection's own
    /// addresses stand.
    Local {
        /// The header's length in bytes.
        len: usize,
    },
    /// Not a valid header, and no more bytes can make it one: why.
    Invalid(&'static str),
}

impl Parsed {
    /// The header's length, once there is a valid one.
    pub fn header_len(&self) -> Option<usize> {
        match *self {
            Parsed::Header { len, .. } | Parsed::Local { len } => Some(len),
            Parsed::Incomplete | Parsed::Invalid(_) => None,
        }
    }
}

/// Reads a PROXY protocol header (version 1 or 2) at the start of `bytes`.
pub fn parse(bytes: &[u8]) -> Parsed {
    match bytes.first() {
        None => Parsed::Incomplete,
        Some(b'P') => v1(bytes),
        Some(b'\r') => v2(bytes),
        Some(_) => Parsed::Invalid("not a PROXY protocol header"),
    }
}

/// True when `bytes` are the start of `expected` (or all of it and more).
fn begins(bytes: &[u8], expected: &[u8]) -> bool {
    let n = bytes.len().min(expected.len());
    bytes[..n] == expected[..n]
}

fn v1(bytes: &[u8]) -> Parsed {
    if !begins(bytes, V1_START) {
        return Parsed::Invalid("not a PROXY protocol header");
    }
    let within = &bytes[..bytes.len().min(V1_MAX)];
    let Some(lf) = within.iter().position(|&b| b == b'\n') else {
        return match bytes.len() >= V1_MAX {
            true => Parsed::Invalid("v1 header longer than 107 bytes"),
            false => Parsed::Incomplete,
        };
    };
    let Some(line) = within[..lf].strip_suffix(b"\r") else {
        return Parsed::Invalid("v1 header not ended by CRLF");
    };
    let len = lf + 1;
    let mut fields = line.split(|&b| b == b' ');
    fields.next(); // PROXY
    let v6 = match fields.next() {
        // The rest of the line, if any, means nothing.
        Some(b"UNKNOWN") => return Parsed::Local { len },
        Some(b"TCP4") => false,
        Some(b"TCP6") => true,
        _ => return Parsed::Invalid("v1 header: protocol not TCP4, TCP6 or UNKNOWN"),
    };
    let fields: Vec<&[u8]> = fields.collect();
    let [source, destination, source_port, destination_port] = fields[..] else {
        return Parsed::Invalid("v1 header: not four addresses and ports");
    };
    let ip = |text: &[u8]| -> Option<IpAddr> {
        let text = std::str::from_utf8(text).ok()?;
        match v6 {
            false => text.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
            true => text.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
        }
    };
    let (Some(source), Some(destination)) = (ip(source), ip(destination)) else {
        return Parsed::Invalid("v1 header: bad address");
    };
    let (Some(source_port), Some(destination_port)) = (port(source_port), port(destination_port))
    else {
        return Parsed::Invalid("v1 header: bad port");
    };
    Parsed::Header {
        len,
        source: SocketAddr::new(source, source_port),
        destination: SocketAddr::new(destination, destination_port),
    }
}

/// A port in decimal, 0 to 65535, without a sign or a leading zero.
fn port(text: &[u8]) -> Option<u16> {
    let digits = !text.is_empty() && text.len() <= 5 && text.iter().all(u8::is_ascii_digit);
    if !digits || (text.len() > 1 && text[0] == b'0') {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}

fn v2(bytes: &[u8]) -> Parsed {
    if !begins(bytes, V2_SIGNATURE) {
        return Parsed::Invalid("not a PROXY protocol header (bad v2 signature)");
    }
    if bytes.len() < V2_PREAMBLE {
        return Parsed::Incomplete;
    }
    let (version, command) = (bytes[12] >> 4, bytes[12] & 0xf);
    if version != 2 {
        return Parsed::Invalid("v2 header: version not 2");
    }
    let (family, protocol) = (bytes[13] >> 4, bytes[13] & 0xf);
    if family > 3 || protocol > 2 {
        return Parsed::Invalid("v2 header: unknown address family or protocol");
    }
    let len = V2_PREAMBLE + usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
    if len > V2_MAX {
        return Parsed::Invalid("v2 header longer than 4096 bytes");
    }
    if bytes.len() < len {
        return Parsed::Incomplete;
    }
    let addresses = &bytes[V2_PREAMBLE..len];
    match (command, family, protocol) {
        // LOCAL: the proxy's own connection (a health check); whatever
        // address block it has is skipped.
        (0, _, _) => Parsed::Local { len },
        // PROXY, TCP over IPv4 (4-byte addresses) or IPv6 (16), then
        // two 2-byte ports; TLVs after them are skipped.
        (1, 1, 1) => tcp::<4>(addresses, len),
        (1, 2, 1) => tcp::<16>(addresses, len),
        // PROXY for UNSPEC, UDP or AF_UNIX: no TCP client address to use;
        // the specification says to fall back to the connection's own.
        (1, _, _) => Parsed::Local { len },
        _ => Parsed::Invalid("v2 header: command not LOCAL or PROXY"),
    }
}

/// The source and destination of a v2 TCP header with `N`-byte addresses
/// (4: IPv4, 16: IPv6).
fn tcp<const N: usize>(mut block: &[u8], len: usize) -> Parsed
where
    IpAddr: From<[u8; N]>,
{
    let ips = take::<N>(&mut block).zip(take::<N>(&mut block));
    let ports = take::<2>(&mut block).zip(take::<2>(&mut block));
    let (Some((source, destination)), Some((source_port, destination_port))) = (ips, ports) else {
        return Parsed::Invalid("v2 header: addresses cut short");
    };
    Parsed::Header {
        len,
        source: SocketAddr::new(IpAddr::from(source), u16::from_be_bytes(source_port)),
        destination: SocketAddr::new(
            IpAddr::from(destination),
            u16::from_be_bytes(destination_port),
        ),
    }
}

/// Takes the next `N` bytes off the front of `bytes`.
fn take<const N: usize>(bytes: &mut &[u8]) -> Option<[u8; N]> {
    let (head, rest) = bytes.split_first_chunk::<N>()?;
    *bytes = rest;
    Some(*head)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A version 2 header: `command` (0 LOCAL, 1 PROXY), `family` byte,
    /// then the address block and TLVs as given.
    fn v2(command: u8, family: u8, rest: &[u8]) -> Vec<u8> {
        let mut header = V2_SIGNATURE.to_vec();
        header.push(0x20 | command);
        header.push(family);
        header.extend_from_slice(&(rest.len() as u16).to_be_bytes());
        header.extend_from_slice(rest);
        header
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    /// Every strict prefix of `header` waits for more.
    fn prefixes_wait(header: &[u8]) {
        for n in 0..header.len() {
            assert_eq!(parse(&header[..n]), Parsed::Incomplete, "{n} bytes");
        }
    }

    #[test]
    fn v1_tcp4_gives_the_client_and_leaves_what_follows() {
        let header = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n";
        let mut bytes = header.to_vec();
        bytes.extend_from_slice(b"hello\r\n");
        let parsed = parse(&bytes);
        assert_eq!(
            parsed,
            Parsed::Header {
                len: header.len(),
                source: addr("192.168.0.1:56324"),
                destination: addr("192.168.0.11:443"),
            }
        );
        assert_eq!(parsed.header_len(), Some(header.len()));
        prefixes_wait(header);
    }

    #[test]
    fn v1_tcp6_in_any_canonical_form() {
        let header = b"PROXY TCP6 2001:db8::1 ::ffff:10.0.0.1 0 65535\r\n";
        assert_eq!(
            parse(header),
            Parsed::Header {
                len: header.len(),
                source: addr("[2001:db8::1]:0"),
                destination: addr("[::ffff:10.0.0.1]:65535"),
            }
        );
        let full = b"PROXY TCP6 FFFF:ffff:ffff:ffff:ffff:ffff:ffff:ffff ::1 1 2\r\n";
        assert!(matches!(parse(full), Parsed::Header { .. }));
    }

    #[test]
    fn v1_unknown_keeps_the_connection_s_address_and_ignores_the_rest() {
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), Parsed::Local { len: 15 });
        let ffff = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let worst = format!("PROXY UNKNOWN {ffff} {ffff} 65535 65535\r\n");
        assert_eq!(worst.len(), V1_MAX);
        assert_eq!(parse(worst.as_bytes()), Parsed::Local { len: V1_MAX });
        assert_eq!(
            parse(b"PROXY UNKNOWN whatever\r\nhi\n"),
            Parsed::Local { len: 24 }
        );
    }

    #[test]
    fn v1_is_at_most_107_bytes() {
        let long = format!("PROXY UNKNOWN {}", "x".repeat(200));
        assert_eq!(parse(&long.as_bytes()[..V1_MAX - 1]), Parsed::Incomplete);
        assert_eq!(
            parse(&long.as_bytes()[..V1_MAX]),
            Parsed::Invalid("v1 header longer than 107 bytes")
        );
        // A CRLF at bytes 107-108 is one too far.
        let over = format!("PROXY UNKNOWN {}\r\n", "x".repeat(V1_MAX - 15));
        assert_eq!(over.len(), V1_MAX + 1);
        assert!(matches!(parse(over.as_bytes()), Parsed::Invalid(_)));
    }

    #[test]
    fn v1_must_match_exactly() {
        for bad in [
            &b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rx\r\n",
            b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
            b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY\r\n",
            b"PROXY \r\n",
        ] {
            assert!(
                matches!(parse(bad), Parsed::Invalid(_)),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn anything_else_is_refused_at_its_first_wrong_byte() {
        assert_eq!(parse(b""), Parsed::Incomplete);
        assert_eq!(parse(b"P"), Parsed::Incomplete);
        assert_eq!(parse(b"PROX"), Parsed::Incomplete);
        assert_eq!(parse(b"\r\n\r\n\0"), Parsed::Incomplete);
        for bad in [
            &b"hello\n"[..],
            b"GET / HTTP/1.1\r\n",
            b"PROXZ",
            b"PROXYTCP4",
            b"\x16\x03\x01\x02\x00", // a TLS ClientHello
            b"\r\nhello\r\n",        // an empty line, then more
            b"\r\n\r\n\0\r\nQUIT\r",
        ] {
            assert!(matches!(parse(bad), Parsed::Invalid(_)), "{bad:?}");
        }
    }

    #[test]
    fn v2_proxy_over_ipv4_and_ipv6() {
        let mut block = vec![10, 0, 0, 1, 192, 168, 0, 11];
        block.extend_from_slice(&[0xdc, 0x04, 0x01, 0xbb]); // 56324, 443
        let header = v2(1, 0x11, &block);
        assert_eq!(header.len(), 28);
        let mut bytes = header.clone();
        bytes.extend_from_slice(b"\x16\x03\x01"); // what follows is not ours
        assert_eq!(
            parse(&bytes),
            Parsed::Header {
                len: 28,
                source: addr("10.0.0.1:56324"),
                destination: addr("192.168.0.11:443"),
            }
        );
        prefixes_wait(&header);

        let source: Ipv6Addr = "2001:db8::7".parse().unwrap();
        let mut block = source.octets().to_vec();
        block.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        block.extend_from_slice(&[0, 80, 0, 81]);
        assert_eq!(
            parse(&v2(1, 0x21, &block)),
            Parsed::Header {
                len: 52,
                source: addr("[2001:db8::7]:80"),
                destination: addr("[::1]:81"),
            }
        );
    }

    #[test]
    fn v2_tlvs_are_skipped() {
        let mut block = vec![10, 0, 0, 1, 10, 0, 0, 2, 0, 1, 0, 2];
        block.extend_from_slice(&[0x04, 0, 3, 0, 0, 0]); // NOOP, 3 bytes
        block.extend_from_slice(&[0x05, 0, 4, b'a', b'b', b'c', b'd']); // UNIQUE_ID
        block.extend_from_slice(&[0xea, 0, 2, b'v', b'p']); // a cloud's own
        let header = v2(1, 0x11, &block);
        let parsed = parse(&header);
        assert_eq!(parsed.header_len(), Some(header.len()));
        assert!(
            matches!(parsed, Parsed::Header { source, .. } if source == addr("10.0.0.1:1")),
            "{parsed:?}"
        );
    }

    #[test]
    fn v2_local_and_unspec_keep_the_connection_s_address() {
        // HAProxy's health checks: LOCAL, UNSPEC, no address.
        assert_eq!(parse(&v2(0, 0x00, &[])), Parsed::Local { len: 16 });
        // A LOCAL's addresses, if any, are skipped, whatever the family.
        let block = [127, 0, 0, 1, 127, 0, 0, 1, 0, 1, 0, 2];
        assert_eq!(parse(&v2(0, 0x11, &block)), Parsed::Local { len: 28 });
        // PROXY for an unspecified family, UDP, or a UNIX socket: nothing
        // to use, so the connection's own address.
        assert_eq!(parse(&v2(1, 0x00, &[])), Parsed::Local { len: 16 });
        assert_eq!(parse(&v2(1, 0x12, &block)), Parsed::Local { len: 28 });
        assert_eq!(parse(&v2(1, 0x31, &[0; 216])), Parsed::Local { len: 232 });
    }

    #[test]
    fn v2_refuses_bad_signatures_versions_commands_families_and_short_blocks() {
        let good = v2(1, 0x11, &[10, 0, 0, 1, 10, 0, 0, 2, 0, 1, 0, 2]);
        let with = |at: usize, byte: u8| {
            let mut bad = good.clone();
            bad[at] = byte;
            parse(&bad)
        };
        for at in 1..12 {
            assert!(
                matches!(with(at, b'x'), Parsed::Invalid(_)),
                "signature byte {at}"
            );
        }
        assert!(matches!(with(12, 0x11), Parsed::Invalid(_)), "version 1");
        assert!(matches!(with(12, 0x31), Parsed::Invalid(_)), "version 3");
        assert!(matches!(with(12, 0x22), Parsed::Invalid(_)), "command 2");
        assert!(matches!(with(13, 0x41), Parsed::Invalid(_)), "family 4");
        assert!(matches!(with(13, 0x13), Parsed::Invalid(_)), "protocol 3");
        // The length says 8 bytes: too few for two IPv4 addresses and ports.
        let short = v2(1, 0x11, &[10, 0, 0, 1, 10, 0, 0, 2]);
        assert!(matches!(parse(&short), Parsed::Invalid(_)));
        let short = v2(1, 0x21, &[0; 35]);
        assert!(matches!(parse(&short), Parsed::Invalid(_)));
    }

    #[test]
    fn v2_waits_for_its_length_up_to_the_cap() {
        // 16 bytes say how long it is; until then, and until that many
        // arrived, it waits.
        let mut block = vec![10, 0, 0, 1, 10, 0, 0, 2, 0, 1, 0, 2];
        block.resize(V2_MAX - 16, 0);
        let header = v2(1, 0x11, &block);
        assert_eq!(header.len(), V2_MAX);
        assert_eq!(parse(&header[..15]), Parsed::Incomplete);
        assert_eq!(parse(&header[..V2_MAX - 1]), Parsed::Incomplete);
        assert_eq!(parse(&header).header_len(), Some(V2_MAX));
        // One byte over the cap is refused as soon as the length is known.
        block.push(0);
        let over = v2(1, 0x11, &block);
        assert_eq!(
            parse(&over[..16]),
            Parsed::Invalid("v2 header longer than 4096 bytes")
        );
    }
}
