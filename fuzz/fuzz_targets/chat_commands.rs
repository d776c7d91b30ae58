//! The chat command parser on arbitrary lines.
//!
//! The parser is private to the library (`mode::chat::command`), and the
//! `Protocol` methods need an `Output`, which only the library can make;
//! so this target compiles the parser's own source file into itself (its
//! one dependency, `crate::mode::is_bye`, is the library's public one) and
//! checks what each kind of `Input` promises.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// What `command.rs` imports as `crate::mode::is_bye`.
mod mode {
    pub use sockline::mode::is_bye;
}

#[allow(dead_code)]
#[path = "../../src/mode/chat/command.rs"]
mod command;

use command::{Input, MAX_NAME, parse, valid_name};

const COMMANDS: [&str; 8] = ["nick", "join", "me", "msg", "who", "rooms", "help", "quit"];

/// `part` lies within `whole`.
fn within(part: &[u8], whole: &[u8]) -> bool {
    let (p, w) = (part.as_ptr() as usize, whole.as_ptr() as usize);
    p >= w && p + part.len() <= w + whole.len()
}

fn is_space(b: &u8) -> bool {
    *b == b' '
}

fuzz_target!(|line: &[u8]| {
    // The server never hands a protocol a line holding `\n`.
    if line.contains(&b'\n') {
        return;
    }
    let input = parse(line);
    let command = line.strip_prefix(b"/").filter(|c| !c.starts_with(b"/"));
    let word = command.map(|c| c.split(is_space).next().unwrap());
    match input {
        Input::Empty => assert!(line.is_empty()),
        Input::Quit => assert!(
            sockline::mode::is_bye(line) || word.is_some_and(|w| w.eq_ignore_ascii_case(b"quit"))
        ),
        Input::Say(text) => {
            assert!(!line.is_empty() && command.is_none() && !sockline::mode::is_bye(line));
            // The line as sent, or `//text` sent as `/text`.
            assert!(text == line || (line.starts_with(b"//") && text == &line[1..]));
        }
        Input::Nick(arg) | Input::Join(arg) => {
            assert!(within(arg, line));
            assert!(!arg.is_empty() && arg == arg.trim_ascii());
        }
        Input::Me(action) => {
            assert!(within(action, line));
            assert!(!action.trim_ascii().is_empty());
        }
        Input::Msg(to, text) => {
            assert!(within(to, line) && within(text, line));
            assert!(!to.contains(&b' '));
            assert!(!text.trim_ascii().is_empty());
        }
        Input::Who | Input::Rooms | Input::Help => {
            let word = word.expect("a command");
            assert!(
                ["who", "rooms", "help"]
                    .iter()
                    .any(|c| word.eq_ignore_ascii_case(c.as_bytes()))
            );
        }
        Input::Usage(usage) => {
            assert!(command.is_some());
            assert!(usage.starts_with("ERR usage: /"));
        }
        Input::Unknown(word) => {
            assert!(within(word, line) && !word.contains(&b' '));
            assert!(
                !COMMANDS
                    .iter()
                    .any(|c| word.eq_ignore_ascii_case(c.as_bytes()))
            );
        }
    }
    if let Some(name) = valid_name(line) {
        assert!((1..=MAX_NAME).contains(&name.len()));
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        );
        assert_eq!(name.as_bytes(), line);
    }
});
