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
//! until the server closes). Ctrl-C is read by rustyline as a key; the editor
//! thread turns it into a SIGINT, which the session listens for while the
//! terminal is in use, so Ctrl-C closes the connection and exits 0 whether
//! the prompt is up or not (after Ctrl-D it is not).
//!
//! Ending: the terminal is in raw mode while `readline` runs, and only
//! `readline` returning restores it, so [`Terminal::finish`] must make it
//! return before the process exits: it lets the printer drain, then raises
//! SIGINT, which rustyline's handler (installed while `readline` runs) turns
//! into `Interrupted`.

use super::{LineSender, Printed, session_error};
use crate::error::describe;
use crate::escape::{escape_lossy, unfinished};
use rustyline::error::ReadlineError;
use rustyline::{DefaultEditor, ExternalPrinter};
use signal_hook::consts::SIGINT;
use signal_hook::low_level::raise;
use std::io::{self, IsTerminal as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;

const PROMPT: &str = "> ";
/// Printed lines queued for the printer thread before the session waits.
const QUEUED: usize = 64;
/// A partial line this long is printed without waiting for its end.
const LONGEST_PARTIAL: usize = 16 * 1024;
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
    /// SIGINT, i.e. Ctrl-C; listening also keeps SIGINT from killing us.
    interrupts: Signal,
}

impl Terminal {
    /// Starts the threads: the editor sends each line, `\n`-terminated, to
    /// `lines` and drops it at EOF, as `spawn_stdin_reader` does. Call within
    /// the runtime (SIGINT is handled through it).
    pub(super) fn start(
        editor: DefaultEditor,
        printer: impl ExternalPrinter + Send + 'static,
        lines: LineSender,
    ) -> io::Result<Terminal> {
        // Before `readline` first runs: rustyline puts back, when it
        // returns, the SIGINT handler that was there when it started.
        let interrupts = signal(SignalKind::interrupt())?;
        let (queue, queued) = mpsc::channel(QUEUED);
        let printing = std::thread::Builder::new()
            .name("printer".into())
            .spawn(move || print(printer, queued))?;
        // Last: once it runs, only `finish` gives the terminal back.
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let editing = std::thread::Builder::new()
            .name("editor".into())
            .spawn(move || edit(editor, &lines, &stopping))?;
        Ok(Terminal {
            printer: queue,
            printing,
            editing,
            stop,
            interrupts,
        })
    }

    /// Where to send whole lines (each ending in `\n`) to print.
    pub(super) fn printer(&self) -> mpsc::Sender<String> {
        self.printer.clone()
    }

    /// Completes when the user presses Ctrl-C (or SIGINT comes otherwise).
    pub(super) async fn interrupted(&mut self) {
        self.interrupts.recv().await;
    }

    /// Prints what is still queued, then ends `readline` so the terminal
    /// leaves raw mode. Call after the session, whose printer senders must
    /// be gone. Gives up on a thread that takes over a second.
    pub(super) fn finish(self) {
        let Terminal {
            printer,
            printing,
            editing,
            stop,
            interrupts,
        } = self;
        drop(printer);
        wait_for(&printing, || {});
        stop.store(true, Ordering::SeqCst);
        // A SIGINT between two `readline`s, or before rustyline's handler
        // is in place, goes to ours and is lost: repeat until it ends.
        wait_for(&editing, || {
            let _ = raise(SIGINT);
        });
        drop(interrupts);
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

/// The editor thread: reads lines until EOF, Ctrl-C, `BYE` or `stop`.
fn edit(mut editor: DefaultEditor, lines: &LineSender, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        let line = match editor.readline(PROMPT) {
            Ok(line) => line,
            // Ctrl-D: dropping `lines` tells the session.
            Err(ReadlineError::Eof) => return,
            Err(ReadlineError::Interrupted) => {
                if !stop.load(Ordering::SeqCst) {
                    // Ctrl-C: the session quits on SIGINT.
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

/// The printer thread: prints each queued message until the queue closes
/// (then drains, see [`DRAIN`]) or the terminal fails (then dropping the
/// queue tells the session).
fn print(mut printer: impl ExternalPrinter, mut queued: mpsc::Receiver<String>) {
    while let Some(text) = queued.blocking_recv() {
        if printer.print(text).is_err() {
            return;
        }
    }
    let _ = printer.print(DRAIN.into());
}

/// The terminal's `print_replies`: sends the server's bytes to `printer`
/// as whole lines (lossy UTF-8; with `escaped`, control characters shown
/// escaped), keeping a partial line until its end comes, the server closes,
/// or it grows past [`LONGEST_PARTIAL`].
pub(super) async fn print_lines(
    from: &mut (impl AsyncRead + Unpin),
    printer: &mpsc::Sender<String>,
    escaped: bool,
) -> io::Result<Printed> {
    let mut buf = vec![0; super::CHUNK];
    let mut partial = Vec::new();
    loop {
        let n = from.read(&mut buf).await.map_err(session_error)?;
        partial.extend_from_slice(&buf[..n]);
        let whole = match memchr::memrchr(b'\n', &partial) {
            Some(end) => end + 1,
            None if n == 0 => partial.len(),
            // Not in the middle of a UTF-8 character, or of a `\r\n`.
            None if partial.len() >= LONGEST_PARTIAL => partial.len() - unfinished(&partial),
            None => 0,
        };
        if whole > 0 {
            let bytes = &partial[..whole];
            let mut text = if escaped {
                escape_lossy(bytes)
            } else {
                String::from_utf8_lossy(bytes)
            }
            .into_owned();
            partial.drain(..whole);
            if !text.ends_with('\n') {
                text.push('\n');
            }
            if printer.send(text).await.is_err() {
                // The printer failed: the terminal is gone.
                return Ok(Printed::StdoutClosed);
            }
        }
        if n == 0 {
            return Ok(Printed::ServerClosed);
        }
    }
}
