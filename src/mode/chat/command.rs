//! What a chat line asks for: plain text for the room, or a `/command`.
//!
//! Parsing is pure (bytes in, [`Input`] out) so it is tested without
//! sockets. Lines are bytes and may be invalid UTF-8; nothing here assumes
//! otherwise.

use crate::mode::is_bye;

/// One line from a member, understood.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Input<'a> {
    /// Text for the room (for `//text`, the text is `/text`).
    Say(&'a [u8]),
    /// `/nick NAME`
    Nick(&'a [u8]),
    /// `/join ROOM`
    Join(&'a [u8]),
    /// `/who`
    Who,
    /// `/rooms`
    Rooms,
    /// `/me ACTION`
    Me(&'a [u8]),
    /// `/msg NAME TEXT`
    Msg(&'a [u8], &'a [u8]),
    /// `/help`
    Help,
    /// `/quit`, or the tutorial's `BYE`.
    Quit,
    /// A known command without its argument: the `ERR usage: ...` line.
    Usage(&'static str),
    /// `/x` for no known `x`: the command word, without its `/`.
    Unknown(&'a [u8]),
    /// An empty line: nothing to do.
    Empty,
}

/// Reads one line (without its `\n`).
pub(super) fn parse(line: &[u8]) -> Input<'_> {
    if line.is_empty() {
        return Input::Empty;
    }
    if is_bye(line) {
        return Input::Quit;
    }
    let Some(command) = line.strip_prefix(b"/") else {
        return Input::Say(line);
    };
    if command.starts_with(b"/") {
        return Input::Say(command);
    }
    // The word, then everything after the first space as its argument.
    let (word, arg) = match command.iter().position(|&b| b == b' ') {
        Some(at) => (&command[..at], &command[at + 1..]),
        None => (command, &command[command.len()..]),
    };
    let is = |name: &str| word.eq_ignore_ascii_case(name.as_bytes());
    let word_arg = arg.trim_ascii();
    if is("nick") {
        required(word_arg, Input::Nick, "ERR usage: /nick NAME")
    } else if is("join") {
        required(word_arg, Input::Join, "ERR usage: /join ROOM")
    } else if is("me") {
        required(arg, Input::Me, "ERR usage: /me ACTION")
    } else if is("msg") {
        // The name ends at the first space; the text is the rest, as sent.
        let arg = arg.trim_ascii_start();
        match arg.iter().position(|&b| b == b' ') {
            Some(at) if !arg[at + 1..].trim_ascii().is_empty() => {
                Input::Msg(&arg[..at], &arg[at + 1..])
            }
            _ => Input::Usage("ERR usage: /msg NAME TEXT"),
        }
    } else if is("who") {
        Input::Who
    } else if is("rooms") {
        Input::Rooms
    } else if is("help") {
        Input::Help
    } else if is("quit") {
        Input::Quit
    } else {
        Input::Unknown(word)
    }
}

/// `make(arg)`, or the usage line when `arg` is blank.
fn required<'a>(arg: &'a [u8], make: fn(&'a [u8]) -> Input<'a>, usage: &'static str) -> Input<'a> {
    if arg.trim_ascii().is_empty() {
        Input::Usage(usage)
    } else {
        make(arg)
    }
}

/// Longest nick or room name.
pub(super) const MAX_NAME: usize = 32;

/// Nicks and rooms: 1 to [`MAX_NAME`] of `A-Z a-z 0-9 _ -`, so a name is
/// always printable ASCII and never contains the `: ` or `, ` that
/// separate names from text on the wire. Returns it as a `&str`.
pub(super) fn valid_name(name: &[u8]) -> Option<&str> {
    let ok = (1..=MAX_NAME).contains(&name.len())
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    // All ASCII, so this cannot fail.
    ok.then(|| std::str::from_utf8(name).ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lines_and_escapes_go_to_the_room() {
        assert_eq!(parse(b"hello /nick x"), Input::Say(b"hello /nick x"));
        assert_eq!(parse(b"//nick x"), Input::Say(b"/nick x"));
        assert_eq!(parse(b"\xff\xfe"), Input::Say(b"\xff\xfe"));
        assert_eq!(parse(b""), Input::Empty);
        assert_eq!(parse(b" "), Input::Say(b" "));
    }

    #[test]
    fn commands_and_their_arguments() {
        assert_eq!(parse(b"/nick  bob "), Input::Nick(b"bob"));
        assert_eq!(parse(b"/NICK bob"), Input::Nick(b"bob"));
        assert_eq!(parse(b"/join dev"), Input::Join(b"dev"));
        assert_eq!(parse(b"/me waves  twice"), Input::Me(b"waves  twice"));
        assert_eq!(parse(b"/msg bob hi there"), Input::Msg(b"bob", b"hi there"));
        assert_eq!(parse(b"/msg  bob  hi"), Input::Msg(b"bob", b" hi"));
        assert_eq!(parse(b"/who"), Input::Who);
        assert_eq!(parse(b"/rooms please"), Input::Rooms);
        assert_eq!(parse(b"/help"), Input::Help);
        assert_eq!(parse(b"/quit"), Input::Quit);
        assert_eq!(parse(b"bYe"), Input::Quit);
        assert_eq!(parse(b"bye now"), Input::Say(b"bye now"));
    }

    #[test]
    fn missing_arguments_and_unknown_commands() {
        assert_eq!(parse(b"/nick"), Input::Usage("ERR usage: /nick NAME"));
        assert_eq!(parse(b"/nick   "), Input::Usage("ERR usage: /nick NAME"));
        assert_eq!(parse(b"/join"), Input::Usage("ERR usage: /join ROOM"));
        assert_eq!(parse(b"/me "), Input::Usage("ERR usage: /me ACTION"));
        assert_eq!(
            parse(b"/msg bob"),
            Input::Usage("ERR usage: /msg NAME TEXT")
        );
        assert_eq!(
            parse(b"/msg bob  "),
            Input::Usage("ERR usage: /msg NAME TEXT")
        );
        assert_eq!(parse(b"/x y"), Input::Unknown(b"x"));
        assert_eq!(parse(b"/"), Input::Unknown(b""));
        assert_eq!(parse(b"/\xff"), Input::Unknown(b"\xff"));
    }

    #[test]
    fn names() {
        assert_eq!(valid_name(b"A-z_09"), Some("A-z_09"));
        assert_eq!(valid_name(&[b'a'; MAX_NAME]).map(str::len), Some(MAX_NAME));
        for bad in [
            &b""[..],
            &[b'a'; MAX_NAME + 1],
            b"a b",
            b"a:",
            b"\xc3\xa9",
            b"a,b",
        ] {
            assert_eq!(valid_name(bad), None, "{bad:?}");
        }
    }
}
