//! Property tests for the framing: however a byte stream is cut into reads,
//! the server sees the same lines and sends the same replies.
//!
//! The reference model is deliberately naive: split on `\n`, strip one
//! trailing `\r`, and answer an unterminated last line as if it had its
//! `\n`. The socket properties run against one in-process server per
//! protocol, writing each generated stream in arbitrary chunks (with
//! `TCP_NODELAY` and short pauses so the server's reads really do end at
//! different places), then half-closing and reading to EOF.

mod common;

use common::{connect, start};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config as PropConfig, TestCaseError, TestRunner};
use sockline::connection::split_line;
use sockline::mode::{Ack, Echo};
use sockline::{Config, Protocol};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::Duration;

/// Cases per socket property: enough to vary the cuts, few enough to run
/// in seconds.
const SOCKET_CASES: u32 = 64;

/// The lines of `stream` as the server should see them: split on `\n`,
/// one trailing `\r` stripped, an unterminated last line included.
fn model_lines(stream: &[u8]) -> Vec<Vec<u8>> {
    let mut parts: Vec<&[u8]> = stream.split(|&b| b == b'\n').collect();
    // `split` always yields a last piece: empty when the stream ends with
    // `\n` (or is empty), else the unterminated last line.
    let last = parts.pop().unwrap();
    if !last.is_empty() {
        parts.push(last);
    }
    parts
        .into_iter()
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line).to_vec())
        .collect()
}

fn echo_reply(lines: &[Vec<u8>]) -> Vec<u8> {
    lines
        .iter()
        .flat_map(|line| line.iter().copied().chain([b'\n']))
        .collect()
}

fn ack_reply(lines: &[Vec<u8>]) -> Vec<u8> {
    b" MSG Received\n".repeat(lines.len())
}

/// Bytes of one line, without its terminator: random bytes, printable
/// text, or a small alphabet full of `\r` and near-`BYE`s for the edge
/// cases.
fn line_body() -> impl Strategy<Value = Vec<u8>> {
    let no_lf = any::<u8>().prop_filter("no \\n", |&b| b != b'\n');
    prop_oneof![
        prop::collection::vec(no_lf, 0..300),
        "[ -~]{0,200}".prop_map(String::into_bytes),
        prop::collection::vec(prop::sample::select(&b"\rBYEbye x"[..]), 0..8),
    ]
}

#[derive(Debug, Clone, Copy)]
enum End {
    Lf,
    CrLf,
}

/// A stream of lines ending in `\n` or `\r\n`, maybe followed by an
/// unterminated last line; none of them `BYE`, which would close early.
fn stream() -> impl Strategy<Value = Vec<u8>> {
    let end = prop_oneof![Just(End::Lf), Just(End::CrLf)];
    (
        prop::collection::vec((line_body(), end), 0..24),
        prop::option::of(line_body()),
    )
        .prop_map(|(lines, last)| {
            let mut bytes = Vec::new();
            for (body, end) in lines {
                bytes.extend_from_slice(&body);
                bytes.extend_from_slice(match end {
                    End::Lf => b"\n",
                    End::CrLf => b"\r\n",
                });
            }
            bytes.extend(last.unwrap_or_default());
            bytes
        })
        .prop_filter("no BYE line", |bytes| {
            !model_lines(bytes).iter().any(|l| sockline::mode::is_bye(l))
        })
}

/// A stream and where to cut it: sorted, distinct cut points, and for each
/// chunk whether to pause after writing it.
fn cut_stream() -> impl Strategy<Value = (Vec<u8>, Vec<usize>, Vec<bool>)> {
    (
        stream(),
        prop::collection::vec(any::<Index>(), 0..32),
        prop::collection::vec(any::<bool>(), 33),
    )
        .prop_map(|(bytes, cuts, pauses)| {
            let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
            cuts.sort_unstable();
            cuts.dedup();
            (bytes, cuts, pauses)
        })
}

/// Sends `bytes` cut at `cuts`, half-closes, and returns all the replies.
fn exchange(addr: SocketAddr, bytes: &[u8], cuts: &[usize], pauses: &[bool]) -> Vec<u8> {
    let mut client = connect(addr);
    client.set_nodelay(true).unwrap();
    let mut from = 0;
    for (i, &to) in cuts.iter().chain([&bytes.len()]).enumerate() {
        client.write_all(&bytes[from..to]).unwrap();
        client.flush().unwrap();
        if pauses[i] {
            std::thread::sleep(Duration::from_micros(300));
        }
        from = to;
    }
    client.shutdown(Shutdown::Write).unwrap();
    let mut replies = Vec::new();
    client.read_to_end(&mut replies).unwrap();
    replies
}

/// Runs the socket property against one server running `proto`.
fn same_replies_however_cut<P: Protocol>(proto: P, reply: fn(&[Vec<u8>]) -> Vec<u8>) {
    let server = start(proto, Config::default());
    let addr = server.addr;
    let mut runner = TestRunner::new(PropConfig {
        cases: SOCKET_CASES,
        // A runner outside the `proptest!` macro has no source file to
        // keep regressions next to; the failing case is printed instead.
        failure_persistence: None,
        ..PropConfig::default()
    });
    runner
        .run(&cut_stream(), |(bytes, cuts, pauses)| {
            let want = reply(&model_lines(&bytes));
            let got = exchange(addr, &bytes, &cuts, &pauses);
            if got != want {
                return Err(TestCaseError::fail(format!(
                    "cuts {cuts:?}\n got \"{}\"\nwant \"{}\"",
                    got.escape_ascii(),
                    want.escape_ascii(),
                )));
            }
            Ok(())
        })
        .unwrap();
    server.stop().unwrap();
}

#[test]
fn echo_any_split_of_a_stream_gives_the_same_replies() {
    same_replies_however_cut(Echo, echo_reply);
}

#[test]
fn ack_any_split_of_a_stream_gives_the_same_replies() {
    same_replies_however_cut(Ack, ack_reply);
}

/// Every line `split_line` finds in `data`, then what is left over.
fn split_all(mut data: &[u8]) -> (Vec<Vec<u8>>, &[u8]) {
    let mut lines = Vec::new();
    while let Some((line, used)) = split_line(data) {
        assert!(used <= data.len() && used > line.len());
        lines.push(line.to_vec());
        data = &data[used..];
    }
    (lines, data)
}

proptest! {
    #![proptest_config(PropConfig::with_cases(512))]

    /// `split_line`, applied until it finds no more lines, agrees with the
    /// model on any bytes; what it leaves holds no `\n`.
    #[test]
    fn split_line_matches_the_model(data in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..600),
        prop::collection::vec(prop::sample::select(&b"\r\na"[..]), 0..40),
        stream(),
    ]) {
        let (mut lines, rest) = split_all(&data);
        prop_assert!(!rest.contains(&b'\n'));
        // The server answers a partial last line at EOF as if it had its `\n`.
        if !rest.is_empty() {
            let mut last = rest.to_vec();
            last.push(b'\n');
            let (tail, left) = split_all(&last);
            prop_assert!(left.is_empty());
            lines.extend(tail);
        }
        prop_assert_eq!(lines, model_lines(&data));
    }

    /// The line and its terminator are exactly the bytes consumed.
    #[test]
    fn split_line_consumes_line_and_terminator(data in prop::collection::vec(any::<u8>(), 0..300)) {
        match split_line(&data) {
            None => prop_assert!(!data.contains(&b'\n')),
            Some((line, used)) => {
                let end = data.iter().position(|&b| b == b'\n').unwrap();
                prop_assert_eq!(used, end + 1);
                let cr = usize::from(used >= 2 && data[used - 2] == b'\r');
                prop_assert_eq!(line, &data[..used - 1 - cr]);
            }
        }
    }
}
