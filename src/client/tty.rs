//! The terminal front end of `sockline connect`, used when stdin and stdout
//! are both a terminal: the user edits lines with rustyline (history on the
//! up arrow, kept in memory), and the server's lines are printed above the
//! prompt through rustyline's external printer, so a message that arrives
//! while the user is typing never garbles the half-typed line.
//!
//! Two threads of our own, beside the session's runtime thread:
//! - the editor thread runs `readline` in a loop and feeds the session the
//!   channel the plain stdin reader would;
//! - the printer thread hands complete lines to the external printer, whose
//!   `print` may wait until the editor has drawn the previous message; on a
//!   thread of its own, that wait never stalls the session.
//!
//! Keys: Ctrl-D on an empty line is stdin EOF (half-close, print the rest
//! until the server closes); its prompt is erased, as no line follows it
//! (by the editor thread, while the printer thread waits: one writes at a
//! time, see [`Terminal::start`]).
//! Ctrl-C is read by rustyline as a key; the editor thread turns it into a
//! SIGINT, which the session listens for, so Ctrl-C closes the connection
//! and exits 130 whether the prompt is up or not (after Ctrl-D it is not).
//!
//! The server's lines are printed whole; a partial line (a prompt such as
//! `Name: ` that waits for an answer) is printed once no more of it comes
//! for [`PARTIAL_WAIT`], as a line of its own above the prompt.
//!
//! Ending: the terminal is in raw mode while `readline` runs, and only
//! `readline` returning restores it, so [`Terminal::finish`] must make it
//! return before the process exits: it lets the printer drain, then raises
//! SIGINT, which rustyline's handler (installed while `readline` runs) turns
//! into `Interrupted`; the editor thread then erases the prompt, which
//! nobody will answer (after `/quit`, or when the server closed).

use super::{LastLine, LineSender, Printed, session_error};
use crate::error::describe;
use crate::escape::{escape_lossy, unfinished};
use rustyline::error::ReadlineError;
use rustyline::{DefaultEditor, ExternalPrinter};
use signal_hook::consts::SIGINT;
use signal_hook::low_level::raise;
use std::cell::RefCell;
use std::io::{self, IsTerminal as _, Write as _};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::sync::mpsc;
use tokio::time;

const PROMPT: &str = "> ";
/// Printed lines queued for the printer thread before the session waits.
const QUEUED: usize = 64;
/// A partial line this long is printed without waiting for its end.
const LONGEST_PARTIAL: usize = 16 * 1024;
/// A partial line is printed when no more bytes come for this long: a
/// prompt (`Name: `) shows as it arrives, a line split over two reads not.
const PARTIAL_WAIT: Duration = Duration::from_millis(100);
/// Erases the prompt's row once `readline` has ended (with a newline, below
/// it), and leaves the cursor there: a prompt nobody will answer is not left
/// on the screen.
const ERASE_PROMPT: &str = "\x1b[A\r\x1b[K";
/// How long [`Terminal::finish`] waits for each thread.
const FINISH_WITHIN: Duration = Duration::from_secs(1);
/// The printer's last message, to drain it: once `print` has taken it, the
/// message before it has been drawn. It shows nothing: up one line, then a
/// newline, whether the editor draws it (clear the prompt row, write this,
/// redraw the prompt) or `print` writes it as is because no prompt is up
/// (the cursor is then at the start of a line: all we print ends in `\n`).
const DRAIN: &str = "\x1b[A\n";

/// A line editor and its external printer, if stdin and stdout are a
/// terminal that rustyline can drive (not `TERM=dumb`, say).
pub(super) fn editor() -> Option<(DefaultEditor, impl ExternalPrinter + Send + 'static)> {
    if !io::stdin().is_terminal() || !io::stdout().is_terminal() {
        return None;
    }
    let mut editor = DefaultEditor::new().ok()?;
    let printer = editor.create_external_printer().ok()?;
    Some((editor, printer))
}

/// The running editor and printer threads.
pub(super) struct Terminal {
    /// Whole lines to print above the prompt.
    printer: mpsc::Sender<String>,
    printing: JoinHandle<()>,
    editing: JoinHandle<()>,
    /// Tells the editor thread that [`Terminal::finish`] is ending it.
    stop: Arc<AtomicBool>,
    /// Set by the editor thread when the user pressed Ctrl-C: the SIGINT it
    /// raises may come after the session, ended by the editor's going, is
    /// over.
    interrupted: Arc<AtomicBool>,
}

impl Terminal {
    /// Starts the threads: the editor sends each line, `\n`-terminated, to
    /// `lines` and drops it at EOF, as `spawn_stdin_reader` does. Call once
    /// SIGINT is handled ([`super::run`] does that first): rustyline puts
    /// back, when `readline` returns, the SIGINT handler that was there
    /// when it started.
    pub(super) fn start(
        editor: DefaultEditor,
        printer: impl ExternalPrinter + Send + 'static,
        lines: LineSender,
    ) -> io::Result<Terminal> {
        let (queue, queued) = mpsc::channel(QUEUED);
        // Held by the printer thread while it prints, and by the editor
        // thread while it erases a prompt that `readline` left behind.
        let screen = Arc::new(Mutex::new(()));
        let printing_screen = screen.clone();
        let printing = std::thread::Builder::new()
            .name("printer".into())
            .spawn(move || print(printer, queued, &printing_screen))?;
        // Last: once it runs, only `finish` gives the terminal back.
        let stop = Arc::new(AtomicBool::new(false));
        let interrupted = Arc::new(AtomicBool::new(false));
        let ends = Ends {
            stop: stop.clone(),
            interrupted: interrupted.clone(),
            screen,
        };
        let editing = std::thread::Builder::new()
            .name("editor".into())
            .spawn(move || edit(editor, &lines, &ends))?;
        Ok(Terminal {
            printer: queue,
            printing,
            editing,
            stop,
            interrupted,
        })
    }

    /// Where to send whole lines (each ending in `\n`) to print.
    pub(super) fn printer(&self) -> mpsc::Sender<String> {
        self.printer.clone()
    }

    /// Prints what is still queued, then ends `readline` so the terminal
    /// leaves raw mode. Call after the session, whose printer senders must
    /// be gone. Gives up on a thread that takes over a second. True if the
    /// user pressed Ctrl-C.
    pub(super) fn finish(self) -> bool {
        let Terminal {
            printer,
            printing,
            editing,
            stop,
            interrupted,
        } = self;
        drop(printer);
        wait_for(&printing, || {});
        stop.store(true, Ordering::SeqCst);
        // A SIGINT between two `readline`s, or before rustyline's handler
        // is in place, goes to ours and is lost: repeat until it ends.
        wait_for(&editing, || {
            let _ = raise(SIGINT);
        });
        interrupted.load(Ordering::SeqCst)
    }
}

/// Runs `nudge` and sleeps until `thread` ends, at most [`FINISH_WITHIN`].
fn wait_for(thread: &JoinHandle<()>, mut nudge: impl FnMut()) {
    let until = Instant::now() + FINISH_WITHIN;
    while !thread.is_finished() && Instant::now() < until {
        nudge();
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What the editor thread shares with the others.
struct Ends {
    /// See [`Terminal::stop`].
    stop: Arc<AtomicBool>,
    /// See [`Terminal::interrupted`].
    interrupted: Arc<AtomicBool>,
    /// Held while the printer thread prints.
    screen: Arc<Mutex<()>>,
}

/// The editor thread: reads lines until EOF, Ctrl-C, `BYE` or `stop`.
fn edit(mut editor: DefaultEditor, lines: &LineSender, ends: &Ends) {
    let Ends {
        stop,
        interrupted,
        screen,
    } = ends;
    while !stop.load(Ordering::SeqCst) {
        let line = match editor.readline(PROMPT) {
            Ok(line) => line,
            Err(ReadlineError::Eof) => {
                // Ctrl-D: the empty prompt goes, and dropping `lines` tells
                // the session. (A line the printer wrote in the instant
                // between `readline` leaving raw mode and this lock would
                // be erased instead; rustyline offers no hook to close it.)
                let _printing = screen.lock().unwrap_or_else(|e| e.into_inner());
                write_now(ERASE_PROMPT);
                return;
            }
            Err(ReadlineError::Interrupted) => {
                if stop.load(Ordering::SeqCst) {
                    // `finish`: the session is over, the printer done, and
                    // nobody will answer this prompt.
                    write_now(ERASE_PROMPT);
                } else {
                    // Ctrl-C: the session quits on SIGINT.
                    interrupted.store(true, Ordering::SeqCst);
                    let _ = raise(SIGINT);
                }
                return;
            }
            Err(e) => {
                let e = match e {
                    ReadlineError::Io(e) => e,
                    e => io::Error::other(e),
                };
                let why = format!("cannot read stdin: {}", describe(&e));
                let _ = lines.blocking_send(Err(io::Error::new(e.kind(), why)));
                return;
            }
        };
        let _ = editor.add_history_entry(line.as_str());
        // The session stops reading after BYE; no prompt for a next line.
        let bye = crate::mode::is_bye(line.as_bytes());
        let mut line = line.into_bytes();
        line.push(b'\n');
        // A send error means the session is over.
        if lines.blocking_send(Ok(line)).is_err() || bye {
            return;
        }
    }
}

/// Writes `text` to the terminal at once; a failure shows nowhere better.
fn write_now(text: &str) {
    let mut stdout = io::stdout().lock();
    let _ = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush());
}

/// The printer thread: prints each queued message until the queue closes
/// (then drains, see [`DRAIN`]) or the terminal fails (then dropping the
/// queue tells the session).
fn print(
    mut printer: impl ExternalPrinter,
    mut queued: mpsc::Receiver<String>,
    screen: &Mutex<()>,
) {
    while let Some(text) = queued.blocking_recv() {
        let _printing = screen.lock().unwrap_or_else(|e| e.into_inner());
        if printer.print(text).is_err() {
            return;
        }
    }
    let _ = printer.print(DRAIN.into());
}

/// The terminal's `print_replies`: sends the server's bytes to `printer`
/// as whole lines (lossy UTF-8; with `escaped`, control characters shown
/// escaped), keeping a partial line until its end comes, the server closes,
/// no more comes for [`PARTIAL_WAIT`], or it grows past [`LONGEST_PARTIAL`].
pub(super) async fn print_lines(
    from: &mut (impl AsyncRead + Unpin),
    printer: &mpsc::Sender<String>,
    escaped: bool,
    last: &RefCell<LastLine>,
) -> io::Result<Printed> {
    let mut buf = vec![0; super::CHUNK];
    let mut partial = Vec::new();
    // Whether the partial line waits for its first byte since a read.
    let mut fresh = false;
    loop {
        let read = from.read(&mut buf);
        let n = match fresh {
            true => match time::timeout(PARTIAL_WAIT, read).await {
                Ok(n) => n,
                Err(_quiet) => {
                    // A prompt, most likely: show what can be shown.
                    fresh = false;
                    let ready = partial.len() - unfinished(&partial);
                    if ready > 0 && !send(printer, &partial[..ready], escaped).await {
                        return Ok(Printed::StdoutClosed);
                    }
                    partial.drain(..ready);
                    continue;
                }
            },
            false => read.await,
        };
        let n = n.map_err(session_error)?;
        last.borrow_mut().feed(&buf[..n]);
        partial.extend_from_slice(&buf[..n]);
        let whole = match memchr::memrchr(b'\n', &partial) {
            Some(end) => end + 1,
            None if n == 0 => partial.len(),
            // Not in the middle of a UTF-8 character, or of a `\r\n`.
            None if partial.len() >= LONGEST_PARTIAL => partial.len() - unfinished(&partial),
            None => 0,
        };
        if whole > 0 {
            if !send(printer, &partial[..whole], escaped).await {
                // The printer failed: the terminal is gone.
                return Ok(Printed::StdoutClosed);
            }
            partial.drain(..whole);
        }
        if n == 0 {
            return Ok(Printed::ServerClosed);
        }
        fresh = !partial.is_empty();
    }
}

/// Sends `bytes` to `printer` as one line; `false` if the printer is gone.
async fn send(printer: &mpsc::Sender<String>, bytes: &[u8], escaped: bool) -> bool {
    let mut text = if escaped {
        escape_lossy(bytes)
    } else {
        String::from_utf8_lossy(bytes)
    }
    .into_owned();
    if !text.ends_with('\n') {
        text.push('\n');
    }
    printer.send(text).await.is_ok()
}
