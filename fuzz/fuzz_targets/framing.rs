//! The line framing on arbitrary bytes.
//!
//! `split_line` is applied until it finds no more lines, checking that each
//! line plus its terminator (`\n`, or `\r\n` when the line had one trailing
//! `\r`) is exactly the bytes it consumed. Then the same bytes are framed
//! again as the server sees them, arriving in chunks (sizes taken from the
//! input's first bytes) with a buffer carrying the partial line across
//! reads: the lines must be the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockline::connection::split_line;

/// Every line of `data`, checking the invariants; then the leftover bytes.
fn split_all(mut data: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let mut lines = Vec::new();
    while let Some((line, used)) = split_line(data) {
        assert!(used <= data.len(), "consumed more than there was");
        assert!(!line.contains(&b'\n'), "a line holds a \\n");
        let consumed = &data[..used];
        let cr = consumed.len() >= 2 && consumed[consumed.len() - 2] == b'\r';
        let mut rebuilt = line.to_vec();
        if cr {
            rebuilt.push(b'\r');
        }
        rebuilt.push(b'\n');
        assert_eq!(rebuilt, consumed, "line + terminator != consumed bytes");
        // The first `\n` ends the line: nothing before it is skipped.
        assert_eq!(memchr_first(data), Some(used - 1));
        lines.push(line);
        data = &data[used..];
    }
    assert!(!data.contains(&b'\n'), "a \\n was left over");
    (lines, data)
}

fn memchr_first(data: &[u8]) -> Option<usize> {
    data.iter().position(|&b| b == b'\n')
}

fuzz_target!(|input: &[u8]| {
    // Up to 4 chunk sizes, then the stream.
    let (sizes, data) = input.split_at(input.len().min(4));
    let (whole, rest) = split_all(data);

    // As the server does it: read a chunk, frame what is buffered, keep the
    // partial line for the next read.
    let mut buffered = Vec::new();
    let mut chunked: Vec<Vec<u8>> = Vec::new();
    let mut pos = 0;
    let mut turn = 0;
    while pos < data.len() {
        let size = sizes
            .get(turn % sizes.len().max(1))
            .map_or(1, |&s| s as usize % 64 + 1);
        let end = (pos + size).min(data.len());
        buffered.extend_from_slice(&data[pos..end]);
        let mut used = 0;
        while let Some((line, n)) = split_line(&buffered[used..]) {
            chunked.push(line.to_vec());
            used += n;
        }
        buffered.drain(..used);
        pos = end;
        turn += 1;
    }
    assert_eq!(chunked, whole, "chunked framing differs from whole framing");
    assert_eq!(buffered, rest, "different partial line left over");
});
