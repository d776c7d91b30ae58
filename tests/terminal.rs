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
use std::net::TcpListener;
use std::process::{ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
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

/// `sockline connect` with stdin and stdout on a terminal (the line
/// editor), stderr on a pipe.
struct Editor {
    child: KillOnDrop,
    master: File,
    /// The client's end, to see when the editor reads keys (raw mode).
    probe: Option<File>,
    out: Output,
    stderr: JoinHandle<String>,
}

impl Editor {
    fn start(args: &[&str]) -> Editor {
        let size = Winsize {
            ws_row: 24,
            ws_col: 400,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = openpty(&size, None).expect("openpty");
        let mut command = Command::new(common::bin());
        command
            .arg("connect")
            .args(args)
            .env("TERM", "xterm")
            .stdin(Stdio::from(pty.slave.try_clone().unwrap()))
            .stdout(Stdio::from(pty.slave.try_clone().unwrap()))
            .stderr(Stdio::piped());
        let mut child = KillOnDrop(command.spawn().expect("start sockline connect"));
        drop(command);
        let master = File::from(pty.master);
        let out = Output::read(Box::new(master.try_clone().unwrap()));
        let stderr = common::read_in_background(child.stderr.take().unwrap());
        Editor {
            child,
            master,
            probe: Some(File::from(pty.slave)),
            out,
            stderr,
        }
    }

    /// Waits until the line editor reads keys (raw mode): before, the
    /// terminal itself would take Ctrl-C or Ctrl-D.
    fn wait_for_editor(&self) {
        let probe = self.probe.as_ref().unwrap();
        let until = Instant::now() + DEADLINE;
        while tcgetattr(probe)
            .unwrap()
            .local_flags
            .contains(LocalFlags::ICANON)
        {
            assert!(Instant::now() < until, "the line editor never started");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Types `keys` once the editor reads keys.
    fn type_keys(&mut self, keys: &[u8]) {
        self.wait_for_editor();
        self.master.write_all(keys).unwrap();
    }

    /// Waits for the client to exit: its status, all it drew, its stderr.
    fn finish(mut self) -> (Option<ExitStatus>, Vec<u8>, String) {
        // Reading the master ends once the client's end is all closed.
        drop(self.probe.take());
        let status = common::wait_within(&mut self.child, DEADLINE);
        drop(self.child);
        let all = self.out.rest();
        (status, all, self.stderr.join().unwrap())
    }
}

/// The screen that `output` leaves: its rows, trailing blanks trimmed and
/// trailing empty rows dropped. Enough of a terminal for what the line
/// editor draws: text, CR, LF, backspace, cursor moves (CSI A B C D),
/// erasing (CSI K, CSI J); other sequences are skipped.
fn screen(output: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(output);
    let mut rows: Vec<Vec<char>> = vec![Vec::new()];
    let (mut row, mut col) = (0usize, 0usize);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => col = 0,
            '\n' => {
                row += 1;
                if rows.len() <= row {
                    rows.push(Vec::new());
                }
            }
            '\x08' => col = col.saturating_sub(1),
            '\x1b' => match chars.next() {
                Some('[') => {
                    let mut params = String::new();
                    let mut last = ' ';
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            last = c;
                            break;
                        }
                        params.push(c);
                    }
                    let n: usize = params.parse().unwrap_or(1).max(1);
                    let line = &mut rows[row];
                    match last {
                        'A' => row = row.saturating_sub(n),
                        'B' => {
                            row += n;
                            while rows.len() <= row {
                                rows.push(Vec::new());
                            }
                        }
                        'C' => col += n,
                        'D' => col = col.saturating_sub(n),
                        'K' if params.is_empty() || params == "0" => line.truncate(col),
                        'K' => line.clear(),
                        'J' => {
                            line.truncate(col);
                            rows.truncate(row + 1);
                        }
                        _ => {}
                    }
                }
                Some(']') => {
                    // OSC: up to BEL or ST.
                    while let Some(c) = chars.next() {
                        if c == '\x07' || (c == '\x1b' && chars.next_if_eq(&'\\').is_some()) {
                            break;
                        }
                    }
                }
                _ => {}
            },
            c if c.is_control() => {}
            c => {
                let line = &mut rows[row];
                while line.len() < col {
                    line.push(' ');
                }
                if col < line.len() {
                    line[col] = c;
                } else {
                    line.push(c);
                }
                col += 1;
            }
        }
    }
    let mut rows: Vec<String> = rows
        .into_iter()
        .map(|row| row.into_iter().collect::<String>().trim_end().to_string())
        .collect();
    while rows.last().is_some_and(|row| row.is_empty()) {
        rows.pop();
    }
    rows
}

/// The prompt as the screen shows it, alone on its row, trailing blank trimmed.
const PROMPT: &str = ">";

#[test]
fn a_prompt_without_a_newline_shows_as_it_arrives() {
    // A server that asks and waits, as a login prompt does.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        stream.write_all(b"Name: ").unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut name = String::new();
        reader.read_line(&mut name).unwrap();
        stream
            .write_all(format!("hello {}\n", name.trim_end()).as_bytes())
            .unwrap();
        // Then until the client's end of input.
        let mut rest = Vec::new();
        let _ = reader.read_to_end(&mut rest);
    });
    let mut editor = Editor::start(&[&addr.to_string()]);
    // Shown before anyone typed a thing.
    editor.out.wait_for(b"Name: ");
    editor.type_keys(b"bob\r");
    editor.out.wait_for(b"hello bob");
    editor.type_keys(b"\x04");
    let (status, output, stderr) = editor.finish();
    server.join().unwrap();
    let shown = screen(&output);
    assert!(status.is_some_and(|s| s.success()), "{status:?} {stderr}");
    assert!(shown.contains(&"Name:".to_string()), "{shown:?}");
    // One line on stderr: where we are connected.
    assert_eq!(stderr, format!("sockline: connected to {addr}\n"));
}

#[test]
fn no_stray_prompt_after_quit_or_ctrl_d() {
    // /quit in a chat: the server says bye and closes; no prompt after it.
    let chat = common::serve_binary(&["--mode", "chat"]);
    let mut editor = Editor::start(&[&chat.addr.to_string()]);
    editor.out.wait_for(b"* welcome user-1");
    editor.type_keys(b"/quit\r");
    let (status, output, stderr) = editor.finish();
    let shown = screen(&output);
    assert!(status.is_some_and(|s| s.success()), "{status:?} {stderr}");
    assert_eq!(shown.last().map(String::as_str), Some("* bye"), "{shown:?}");
    assert!(shown.contains(&"> /quit".to_string()), "{shown:?}");
    assert!(!shown.contains(&PROMPT.to_string()), "{shown:?}");

    // Ctrl-D: the rest is printed, and the prompt it was typed at is gone.
    let echo = common::serve_binary(&["--mode", "echo"]);
    let mut editor = Editor::start(&[&echo.addr.to_string()]);
    editor.type_keys(b"hi\r");
    // The echo, drawn above the next prompt (which it erases first).
    editor.out.wait_for(b"\x1b[Khi\r\n");
    editor.type_keys(b"\x04");
    let (status, output, stderr) = editor.finish();
    let shown = screen(&output);
    assert!(status.is_some_and(|s| s.success()), "{status:?} {stderr}");
    assert_eq!(
        shown,
        ["> hi", "hi"],
        "{:?}",
        String::from_utf8_lossy(&output)
    );
}

#[test]
fn ctrl_c_exits_130() {
    let chat = common::serve_binary(&["--mode", "chat"]);
    let mut editor = Editor::start(&[&chat.addr.to_string()]);
    editor.out.wait_for(b"* welcome user-1");
    editor.type_keys(b"\x03");
    let (status, _, stderr) = editor.finish();
    assert_eq!(status.and_then(|s| s.code()), Some(130), "{stderr}");
}

#[test]
fn with_tls_the_connected_line_names_the_version_and_the_certificate() {
    let server = common::serve_binary(&["--tls-self-signed"]);
    let line = (server.banner.lines())
        .find(|line| line.contains("SHA-256 fingerprint"))
        .expect("a fingerprint line");
    let pin = line.rsplit(' ').next().unwrap();
    let addr = server.addr.to_string();
    let mut editor = Editor::start(&["--pin", pin, &addr]);
    editor.type_keys(b"hello\r");
    editor.out.wait_for(b" MSG Received");
    editor.type_keys(b"\x04");
    let (status, _, stderr) = editor.finish();
    assert!(status.is_some_and(|s| s.success()), "{status:?} {stderr}");
    assert_eq!(
        stderr,
        format!("sockline: connected to {addr}, TLS 1.3, certificate CN=rcgen self signed cert\n")
    );
}
