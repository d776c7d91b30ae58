//! Control characters made visible, for bytes from the network that are
//! about to reach a terminal or a log.
//!
//! A chat line is a stranger's bytes. Printed raw, `\x1b[2J` clears the
//! reader's screen, `\x1b]0;...\x07` retitles the window, a `\r` rewrites
//! the start of the line so one member can pass for another, and a log
//! viewed with `less -R` or `tail` obeys them too. [`escape`] turns every
//! such byte into printable text in the style of `cat -v`, so what was sent
//! can still be read but not obeyed:
//!
//! | bytes | shown as |
//! |---|---|
//! | C0 controls `0x00`–`0x1f` except tab and line feed | `^@`, `^A`, …, `^[` (ESC), …, `^_` |
//! | DEL `0x7f` | `^?` |
//! | a C1 control `0x80`–`0x9f` that is not part of valid UTF-8 | `\x9b` (an 8-bit terminal takes it as a control) |
//! | a C1 control U+0080–U+009F encoded in UTF-8 | `\xc2\x9b` (some UTF-8 terminals take U+009B as CSI) |
//!
//! Tab, line feed and a carriage return right before a line feed (the
//! ending of CRLF protocols) are kept. Everything else, valid UTF-8 or not,
//! passes unchanged: text stays text, and bytes of a legacy 8-bit encoding
//! stay what a terminal set to it displays. Escaping an ESC escapes a whole
//! escape sequence, since what follows ESC is printable once ESC is gone.
//!
//! The escaped forms are not quoted in turn (a `^` or `\` that was sent
//! shows as itself): this is for showing, not for round trips.
//!
//! Used by `sockline connect` when its stdout is a terminal (both its
//! printers) and by the server's `-v` log of received lines.

use std::borrow::Cow;

/// `bytes` with every control character shown as printable text (see the
/// [module docs](self)); borrowed when there was nothing to escape.
pub fn escape(bytes: &[u8]) -> Cow<'_, [u8]> {
    let mut out = Vec::new();
    // `bytes[..done]` is in `out`; while nothing was escaped, `done` is 0.
    let mut done = 0;
    let mut at = 0;
    for chunk in bytes.utf8_chunks() {
        let text = chunk.valid();
        for (i, c) in text.char_indices() {
            // `is_control`: U+0000..U+001F, U+007F and U+0080..U+009F.
            let kept = !c.is_control()
                || c == '\t'
                || c == '\n'
                || (c == '\r' && text.as_bytes().get(i + 1) == Some(&b'\n'));
            if !kept {
                out.extend_from_slice(&bytes[done..at + i]);
                show(c, &mut out);
                done = at + i + c.len_utf8();
            }
        }
        at += text.len();
        for &b in chunk.invalid() {
            if is_c1(b) {
                out.extend_from_slice(&bytes[done..at]);
                hex(b, &mut out);
                done = at + 1;
            }
            at += 1;
        }
    }
    if done == 0 {
        return Cow::Borrowed(bytes);
    }
    out.extend_from_slice(&bytes[done..]);
    Cow::Owned(out)
}

/// [`escape`] as text, for what takes strings (a log, the line editor):
/// bytes that are still not UTF-8 become U+FFFD, as with
/// [`String::from_utf8_lossy`].
pub fn escape_lossy(bytes: &[u8]) -> Cow<'_, str> {
    match escape(bytes) {
        Cow::Borrowed(bytes) => String::from_utf8_lossy(bytes),
        Cow::Owned(bytes) => Cow::Owned(
            String::from_utf8(bytes)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
        ),
    }
}

/// How many bytes at the end of `bytes` [`escape`] might show differently
/// once more bytes follow: a `\r` (the start of a `\r\n`?), or the start
/// of a UTF-8 sequence that is valid so far but incomplete. A printer that
/// gets a stream in pieces holds these back until the next piece, or the
/// end, comes.
pub fn unfinished(bytes: &[u8]) -> usize {
    if bytes.ends_with(b"\r") {
        return 1;
    }
    // A UTF-8 sequence is at most 4 bytes, so an incomplete one has its
    // lead byte (the last byte that is no continuation byte) in the last 3.
    let from = bytes.len().saturating_sub(3);
    let Some(lead) = bytes[from..].iter().rposition(|&b| b & 0xc0 != 0x80) else {
        return 0;
    };
    let tail = &bytes[from + lead..];
    match std::str::from_utf8(tail) {
        // `error_len` is `None` when the input ended mid-sequence.
        Err(e) if e.error_len().is_none() => tail.len(),
        _ => 0,
    }
}

/// Appends control character `c` in its printable form.
fn show(c: char, out: &mut Vec<u8>) {
    let mut utf8 = [0; 4];
    match c.encode_utf8(&mut utf8).as_bytes() {
        // Caret notation: `^@` for NUL, `^[` for ESC, ...
        [b @ 0x00..=0x1f] => out.extend_from_slice(&[b'^', b + 0x40]),
        [0x7f] => out.extend_from_slice(b"^?"),
        // U+0080..U+009F: the bytes that encode it.
        encoded => encoded.iter().for_each(|&b| hex(b, out)),
    }
}

/// Whether `b` is a C1 control byte, as an 8-bit terminal reads it.
fn is_c1(b: u8) -> bool {
    (0x80..=0x9f).contains(&b)
}

/// Appends `b` as `\xNN`, lower-case hex.
fn hex(b: u8, out: &mut Vec<u8>) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.extend_from_slice(&[
        b'\\',
        b'x',
        DIGITS[usize::from(b >> 4)],
        DIGITS[usize::from(b & 0xf)],
    ]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(bytes: &[u8]) -> String {
        String::from_utf8(escape(bytes).into_owned()).unwrap()
    }

    #[test]
    fn text_passes_unchanged_and_borrowed() {
        for text in [
            &b""[..],
            b"hello, world\n",
            b"tab\tand\r\n",
            "caf\u{e9} \u{2713} \u{1f600} \u{a0}nbsp".as_bytes(),
            // Not UTF-8, but no control either: Latin-1 "caf\u{e9}".
            b"caf\xe9 \xff\xfe",
        ] {
            assert!(
                matches!(escape(text), Cow::Borrowed(b) if b == text),
                "{text:?}"
            );
        }
    }

    #[test]
    fn the_attack_line_is_shown_not_obeyed() {
        assert_eq!(
            shown(b"\x1b[31mRED\x1b]0;pwned\x07\x1b[2J\n"),
            "^[[31mRED^[]0;pwned^G^[[2J\n"
        );
    }

    #[test]
    fn every_c0_control_but_tab_and_line_feed_in_caret_notation() {
        for b in 0..0x20u8 {
            let want = match b {
                b'\t' | b'\n' => char::from(b).to_string(),
                _ => format!("^{}", char::from(b + 0x40)),
            };
            assert_eq!(shown(&[b]), want, "byte {b:#04x}");
        }
        assert_eq!(shown(b"\x00\x01\x1f\x7f"), "^@^A^_^?");
    }

    #[test]
    fn carriage_return_is_kept_only_before_line_feed() {
        assert_eq!(shown(b"a\r\n"), "a\r\n");
        assert_eq!(shown(b"bob: hi\ralice: lies\n"), "bob: hi^Malice: lies\n");
        assert_eq!(shown(b"a\r"), "a^M");
        assert_eq!(shown(b"a\r\r\n"), "a^M\r\n");
    }

    #[test]
    fn c1_controls_as_bytes_and_as_utf8() {
        // Bare bytes (not UTF-8): every one of 0x80..0x9f.
        for b in 0x80..=0x9fu8 {
            assert_eq!(shown(&[b'x', b, b'y']), format!("x\\x{b:02x}y"));
        }
        // U+0080..U+009F, encoded: both bytes shown.
        assert_eq!(shown("\u{9b}31m".as_bytes()), "\\xc2\\x9b31m");
        assert_eq!(shown("a\u{80}\u{9f}b".as_bytes()), "a\\xc2\\x80\\xc2\\x9fb");
        // The neighbours are text: U+00A0 (0xc2 0xa0), U+07FF, U+0100.
        for text in ["\u{a0}", "\u{7ff}", "\u{100}", "\u{2028}"] {
            assert_eq!(shown(text.as_bytes()), text);
        }
        // A C1 byte inside a longer valid sequence is not a control.
        assert_eq!(shown("\u{2009}".as_bytes()), "\u{2009}"); // e2 80 89
        // Invalid bytes of the upper half stay as they are.
        assert_eq!(escape(b"\xc2 \xe2\x9b\xff"), &b"\xc2 \xe2\\x9b\xff"[..]);
    }

    #[test]
    fn the_output_has_no_control_character_at_all() {
        // Every pair of bytes: nothing that escape lets through is a
        // control, and whatever was text is still there.
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                let input = [a, b, b'.'];
                let out = escape(&input);
                for chunk in out.utf8_chunks() {
                    for c in chunk.valid().chars() {
                        assert!(
                            !c.is_control() || c == '\t' || c == '\n' || c == '\r',
                            "{input:?} -> {out:?}"
                        );
                    }
                    assert!(chunk.invalid().iter().all(|&b| !is_c1(b)), "{input:?}");
                }
                let lone_cr =
                    (0..out.len()).any(|i| out[i] == b'\r' && out.get(i + 1) != Some(&b'\n'));
                assert!(!lone_cr, "{input:?}");
            }
        }
    }

    #[test]
    fn escaping_in_pieces_is_escaping_at_once() {
        let text = "a\r\nb\rc\u{9b}d\u{e9}\u{1f600}\x1b[0m".as_bytes();
        let whole = [text, b"\xe2\x9b\xff\xf0\x9f\r\x80end\r\n\xe2\x9b"].concat();
        let at_once = escape(&whole).into_owned();
        for cut in 0..=whole.len() {
            // As a printer does: escape all but the unfinished end, carry
            // that over to the next piece.
            let (first, second) = whole.split_at(cut);
            let keep = first.len() - unfinished(first);
            let mut out = escape(&first[..keep]).into_owned();
            out.extend_from_slice(&escape(&[&first[keep..], second].concat()));
            assert_eq!(out, at_once, "cut at {cut}");
        }
    }

    #[test]
    fn as_text_invalid_utf8_is_replaced_after_escaping() {
        assert_eq!(escape_lossy(b"ok"), "ok");
        assert_eq!(escape_lossy(b"a\x00\x9b\xff"), "a^@\\x9b\u{fffd}");
        assert_eq!(escape_lossy(b"\xff"), "\u{fffd}");
    }

    #[test]
    fn unfinished_holds_back_only_what_can_still_change() {
        assert_eq!(unfinished(b""), 0);
        assert_eq!(unfinished(b"abc"), 0);
        assert_eq!(unfinished(b"abc\r"), 1);
        assert_eq!(unfinished(b"abc\r\n"), 0);
        assert_eq!(unfinished(b"ab\xc2"), 1);
        assert_eq!(unfinished(b"ab\xe2\x9b"), 2);
        assert_eq!(unfinished(b"ab\xf0\x9f\x98"), 3);
        assert_eq!(unfinished("ab\u{1f600}".as_bytes()), 0);
        // Never valid: nothing to wait for.
        assert_eq!(unfinished(b"ab\xff"), 0);
        assert_eq!(unfinished(b"ab\xe0\x80"), 0);
        assert_eq!(unfinished(b"ab\x9b"), 0);
    }
}
