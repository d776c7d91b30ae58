//! `sockline connect` on a terminal: what one chat member sends must not
//! drive another member's terminal (colours, window title, clearing), while
//! piped output stays byte for byte what the server sent.
//!
//! The real binary runs with its stdout on a pseudo-terminal (from
//! `openpty`; the test reads the other end), against the real chat server,
//! and another member sends control bytes. Both of the client's printing
//! paths are covered: plain (stdin a pipe) and the line editor (stdin a
//! terminal too).

mod common;

use common::KillOnDrop;
use nix::pty::{Winsize, openpty};
use nix::sys::termios::{LocalFlags, tcgetattr};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long any one step may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(20);

/// What the other member sends: colours, a window title, a clear screen, a
/// carriage return that could overwrite the line, other C0 controls, DEL,
/// a C1 CSI both as a bare byte and UTF-8 encoded, then text that must be
/// left alone (UTF-8, a tab).
const ATTACK: &[u8] =
    b"\x1b[31mRED\x1b]0;pwned\x07\x00\x01 \x1b[2J\rX\x7f \x9b \xc2\x9b caf\xc3\xa9\tend";
/// How a terminal must show [`ATTACK`].
const SHOWN: &str = "^[[31mRED^[]0;pwned^G^@^A ^[[2J^MX^? \\x9b \\xc2\\x9b caf\u{e9}\tend";

/// Where the client's stdin and stdout go.
#[derive(Clone, Copy, Debug)]
enum Wiring {
    /// Stdout a terminal, stdin a pipe: the plain printer.
    Terminal,
    /// Both a terminal: the line editor.
    Editor,
    /// Both pipes.
    Pipes,
}

/// Runs `sockline connect EXTRA...` wired as `wiring` in a chat where
/// another member sends [`ATTACK`]; ends the session (stdin EOF) and
/// returns all the client wrote to its stdout.
fn receive_attack(wiring: Wiring, extra: &[&str]) -> Vec<u8> {
    let server = common::serve_binary(&["--mode", "chat"]);
    let mut command = Command::new(common::bin());
    command
        .args(["connect", &server.addr.to_string()])
        .args(extra)
        .env("TERM", "xterm")
        .stderr(Stdio::piped());
    // The terminal's other end, if any: we read it, and type into it.
    let mut master = None;
    // The client's end, for the line editor: to see when it reads keys.
    let mut probe = None;
    let output = match wiring {
        Wiring::Pipes => {
            command.stdin(Stdio::piped()).stdout(Stdio::piped());
            None
        }
        Wiring::Terminal | Wiring::Editor => {
            // Wide enough that no line of ours wraps.
            let size = Winsize {
                ws_row: 24,
                ws_col: 400,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            let pty = openpty(&size, None).expect("openpty");
            let stdin = match wiring {
                Wiring::Editor => {
                    probe = Some(pty.slave.try_clone().unwrap());
                    Stdio::from(pty.slave.try_clone().unwrap())
                }
                _ => Stdio::piped(),
            };
            command.stdin(stdin).stdout(Stdio::from(pty.slave));
            let master_end = File::from(pty.master);
            let output = master_end.try_clone().unwrap();
            master = Some(master_end);
            Some(output)
        }
    };
    let mut child = KillOnDrop(command.spawn().expect("start sockline connect"));
    // Our copies of the terminal's client end go with `command`: once the
    // client exits, reading the master ends.
    drop(command);
    let mut stdin: Option<ChildStdin> = child.stdin.take();
    let output: Box<dyn Read + Send> = match output {
        Some(master) => Box::new(master),
        None => Box::new(child.stdout.take().unwrap()),
    };
    let stderr = common::read_in_background(child.stderr.take().unwrap());
    let mut out = Output::read(output);

    out.wait_for(b"* welcome user-1");
    let mut other = common::connect(server.addr);
    let mut welcome = String::new();
    BufReader::new(other.try_clone().unwrap())
        .read_line(&mut welcome)
        .unwrap();
    assert!(welcome.starts_with("* welcome user-2"), "{welcome:?}");
    out.wait_for(b"* user-2 joined");
    let mut lines = ATTACK.to_vec();
    lines.extend_from_slice(b"\ndone\n");
    other.write_all(&lines).unwrap();
    out.wait_for(b"user-2: done");

    // Stdin EOF: the client half-closes, the server closes, the client exits.
    match (master.as_mut(), probe.take()) {
        (Some(master), Some(probe)) => {
            // Ctrl-D on the empty prompt, once the editor reads keys (raw
            // mode): before, the terminal itself would take it, and the
            // lines may well come before the prompt is up.
            let until = Instant::now() + DEADLINE;
            while tcgetattr(&probe)
                .unwrap()
                .local_flags
                .contains(LocalFlags::ICANON)
            {
                assert!(Instant::now() < until, "the line editor never started");
                std::thread::sleep(Duration::from_millis(10));
            }
            master.write_all(b"\x04").unwrap();
            // Reading the master ends once the client's end is all closed.
            drop(probe);
        }
        _ => drop(stdin.take()),
    }
    let status = common::wait_within(&mut child, DEADLINE);
    drop(child);
    let all = out.rest();
    let stderr = stderr.join().unwrap();
    let shown = String::from_utf8_lossy(&all);
    assert!(
        status.is_some_and(|status| status.success()),
        "{wiring:?}: exit {status:?}, stderr {stderr:?}, output {shown:?}"
    );
    drop(master);
    all
}

/// The client's output as it arrives, read on a thread of its own.
struct Output {
    chunks: mpsc::Receiver<Vec<u8>>,
    seen: Vec<u8>,
}

impl Output {
    fn read(mut from: Box<dyn Read + Send>) -> Output {
        let (tx, chunks) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0; 4096];
            // A terminal's master reports EIO once the client end is closed.
            while let Ok(n @ 1..) = from.read(&mut buf) {
                if tx.send(buf[..n].to_vec()).is_err() {
                    return;
                }
            }
        });
        Output {
            chunks,
            seen: Vec::new(),
        }
    }

    /// Waits until the output contains `needle`; fails the test if it does
    /// not in time.
    fn wait_for(&mut self, needle: &[u8]) {
        let until = Instant::now() + DEADLINE;
        while !contains(&self.seen, needle) {
            let left = until.saturating_duration_since(Instant::now());
            match self.chunks.recv_timeout(left) {
                Ok(chunk) => self.seen.extend(chunk),
                Err(_) => panic!(
                    "no {:?} in the output: {:?}",
                    String::from_utf8_lossy(needle),
                    String::from_utf8_lossy(&self.seen)
                ),
            }
        }
    }

    /// All the output, once the client is gone.
    fn rest(mut self) -> Vec<u8> {
        while let Ok(chunk) = self.chunks.recv_timeout(DEADLINE) {
            self.seen.extend(chunk);
        }
        self.seen
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Fails the test if `output` has any of `forbidden`.
fn assert_none_of(output: &[u8], forbidden: &[&[u8]]) {
    for bad in forbidden {
        assert!(
            !contains(output, bad),
            "{:?} reached the terminal: {:?}",
            String::from_utf8_lossy(bad),
            String::from_utf8_lossy(output)
        );
    }
}

/// Every raw control byte of [`ATTACK`].
const CONTROLS: [&[u8]; 6] = [b"\x1b", b"\x07", b"\x00", b"\x01", b"\x7f", b"\x9b"];

#[test]
fn a_terminal_shows_control_bytes_escaped() {
    let output = receive_attack(Wiring::Terminal, &[]);
    let line = format!("user-2: {SHOWN}\r\n");
    assert!(
        contains(&output, line.as_bytes()),
        "{line:?} not in {:?}",
        String::from_utf8_lossy(&output)
    );
    // Nothing of the attack came through raw, and nothing else needed escaping.
    assert_none_of(&output, &CONTROLS);
}

#[test]
fn the_line_editor_shows_control_bytes_escaped() {
    let output = receive_attack(Wiring::Editor, &[]);
    let line = format!("user-2: {SHOWN}");
    assert!(
        contains(&output, line.as_bytes()),
        "{line:?} not in {:?}",
        String::from_utf8_lossy(&output)
    );
    // The editor draws with escape sequences of its own; none of the attack's.
    assert_none_of(
        &output,
        &[
            b"\x1b[31m",
            b"\x1b]",
            b"\x1b[2J",
            b"\x07",
            b"\x00",
            b"\x01",
            b"\x7f",
            b"\x9b",
        ],
    );
}

#[test]
fn raw_passes_control_bytes_to_the_terminal() {
    let output = receive_attack(Wiring::Terminal, &["--raw"]);
    let mut line = b"user-2: ".to_vec();
    line.extend_from_slice(ATTACK);
    line.extend_from_slice(b"\r\n");
    assert!(
        contains(&output, &line),
        "{:?}",
        String::from_utf8_lossy(&output)
    );
    // The editor shows text (invalid UTF-8 as U+FFFD), control bytes as they are.
    let output = receive_attack(Wiring::Editor, &["--raw"]);
    let raw = "user-2: \x1b[31mRED\x1b]0;pwned\x07\x00\x01 \x1b[2J\rX\x7f";
    assert!(
        contains(&output, raw.as_bytes()),
        "{:?}",
        String::from_utf8_lossy(&output)
    );
}

#[test]
fn piped_output_is_byte_exact() {
    let output = receive_attack(Wiring::Pipes, &[]);
    let mut want = b"* welcome user-1, /help lists commands\n* user-2 joined\nuser-2: ".to_vec();
    want.extend_from_slice(ATTACK);
    want.extend_from_slice(b"\nuser-2: done\n");
    assert_eq!(
        String::from_utf8_lossy(&output),
        String::from_utf8_lossy(&want)
    );
    assert_eq!(output, want);
}
