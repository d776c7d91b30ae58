//! The interactive client (`sockline connect`): stdin lines go to the
//! server, the server's bytes go to stdout as they arrive.
//!
//! Those bytes are the server's, and in a chat anyone's: on a terminal,
//! control characters among them would be obeyed (recolour, retitle,
//! clear the screen), so when stdout is a terminal they are shown escaped
//! ([`crate::escape`]) unless the user asks for `raw`. Piped stdout gets
//! the bytes exactly as they came.
//!
//! This module owns one session from connecting to exit, and the rule for
//! how it ends (BYE, stdin EOF, the server closing, stdout closing). It runs
//! on a current-thread tokio runtime so that reading the socket never waits
//! for the user: printing and sending are two futures polled together, so
//! replies are printed while we wait for stdin, and a server that stops
//! reading until its replies are read cannot deadlock a long pasted input.
//!
//! Stdin is read on a thread of its own that hands whole lines over a
//! channel: `spawn_stdin_reader` reads plain lines; when stdin and stdout are
//! a terminal, [`tty`] reads them with a line editor instead and prints the
//! server's lines above the prompt. The plain thread may still be blocked in
//! `read` when [`run`] returns; the process exiting ends it. The editor's
//! thread is ended by [`run`], since it holds the terminal in raw mode.
//!
//! Built with the `client` feature (on by default): tokio, tokio-rustls and
//! the line editor serve this module only, and the server does without them.

mod secure;
mod tty;

use crate::error::describe;
use crate::escape::{escape, escape_lossy, unfinished};
use crate::mode::is_bye;
use crate::tls::ClientTls;
use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::io::{self, BufRead, IsTerminal as _, Write};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::time;
use tty::Terminal;

/// Stdin lines read ahead of the socket before the reader thread waits.
const LINES_AHEAD: usize = 64;
/// Bytes read from the server per `read`.
const CHUNK: usize = 16 * 1024;
/// The exit code after Ctrl-C (SIGINT), as a shell reports a process that
/// SIGINT killed.
pub const INTERRUPTED: i32 = 130;
/// How much of the server's last line is kept, to tell an `ERR` line.
const LAST_LINE_KEPT: usize = 512;

/// Where stdin lines go: each `\n`-terminated, or the error that ended
/// reading; dropped at EOF.
type LineSender = mpsc::Sender<io::Result<Vec<u8>>>;
type LineReceiver = mpsc::Receiver<io::Result<Vec<u8>>>;

/// The connection: TCP, or TLS over it.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Connects to `addr` (`HOST:PORT`) and runs an interactive session: every
/// stdin line is sent, every byte from the server is printed (with control
/// characters escaped if stdout is a terminal, unless `raw`).
///
/// `timeout` bounds connecting (and the TLS handshake, with `tls`) and,
/// after the user sends `BYE`, the wait for the server to close.
///
/// How it ends (the exit code a script sees):
/// - `Ok` (0) after `BYE`, `/quit` or the end of stdin followed by the
///   server's close, and when nobody reads stdout any more;
/// - an error (1) if connecting fails, the connection breaks, the server
///   closes while stdin is still open, or the server's last line before
///   closing starts with `ERR ` (a refusal such as `ERR server full`, or
///   a cut such as `ERR line too long`), whatever the timing;
/// - on SIGINT (Ctrl-C) the process exits here, with [`INTERRUPTED`].
pub fn run(addr: &str, timeout: Duration, tls: Option<&ClientTls>, raw: bool) -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut terminal = None;
    let escaped = !raw && io::stdout().is_terminal();
    let result = runtime.block_on(async {
        // First: from here on SIGINT is ours, connecting included.
        let mut interrupts = signal(SignalKind::interrupt())?;
        tokio::select! {
            biased;
            _ = interrupts.recv() => Ok(true),
            result = session(addr, timeout, tls, escaped, &mut terminal) => result.map(|()| false),
        }
    });
    // Do not wait for a name lookup still blocked in the background.
    runtime.shutdown_background();
    let pressed = terminal.is_some_and(Terminal::finish);
    match result {
        _ if pressed => std::process::exit(INTERRUPTED),
        Ok(true) => std::process::exit(INTERRUPTED),
        Ok(false) => Ok(()),
        Err(e) => Err(e),
    }
}

/// How sending ended.
enum Sent {
    /// The user sent `BYE`.
    Bye,
    /// Stdin ended; the write half is shut down.
    Eof,
    /// Writing to the server failed: it is gone or going.
    Failed(io::Error),
}

/// How printing ended.
enum Printed {
    /// The server closed the connection.
    ServerClosed,
    /// Nobody reads our stdout (or the terminal's printer failed).
    StdoutClosed,
}

/// The last line the server sent (its first [`LAST_LINE_KEPT`] bytes):
/// whether it starts with `ERR ` decides how a session it ends ends.
#[derive(Default)]
struct LastLine {
    /// The last complete line, without its `\n`.
    done: Vec<u8>,
    /// The line in progress.
    open: Vec<u8>,
}

impl LastLine {
    fn feed(&mut self, bytes: &[u8]) {
        let mut rest = bytes;
        while let Some(end) = memchr::memchr(b'\n', rest) {
            self.keep(&rest[..end]);
            self.done = std::mem::take(&mut self.open);
            rest = &rest[end + 1..];
        }
        self.keep(rest);
    }

    fn keep(&mut self, part: &[u8]) {
        let room = LAST_LINE_KEPT.saturating_sub(self.open.len());
        self.open.extend_from_slice(&part[..part.len().min(room)]);
    }

    /// The `ERR ...` line the server ended with, if it did, shown escaped.
    fn refusal(&self) -> Option<String> {
        let line = if self.open.is_empty() {
            &self.done
        } else {
            &self.open
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        line.starts_with(b"ERR ")
            .then(|| escape_lossy(line).into_owned())
    }
}

/// Connects, starts reading stdin (with the line editor if stdin and stdout
/// are a terminal: then `terminal` is set, for [`run`] to finish) and talks;
/// prints control characters escaped if `escaped`.
async fn session(
    addr: &str,
    timeout: Duration,
    tls: Option<&ClientTls>,
    escaped: bool,
    terminal: &mut Option<Terminal>,
) -> io::Result<()> {
    // Bad TLS settings are reported before any connecting.
    let tls = match tls {
        Some(tls) => Some((
            crate::tls::client_config(tls)?,
            crate::tls::server_name(addr)?,
        )),
        None => None,
    };
    let interactive = io::stdin().is_terminal();
    let tcp = connect(addr, timeout).await?;
    let peer = tcp.peer_addr().map(|ip| ip.to_string()).unwrap_or_default();
    let mut connected = match peer == addr || peer.is_empty() {
        true => format!("connected to {addr}"),
        false => format!("connected to {addr} ({peer})"),
    };
    let stream: Box<dyn Stream> = match tls {
        Some((config, name)) => {
            let stream = secure::handshake(tcp, addr, config, name, timeout).await?;
            connected = format!(
                "{connected}, {}",
                secure::describe_session(stream.get_ref().1)
            );
            Box::new(stream)
        }
        None => Box::new(tcp),
    };
    if interactive {
        // Someone is typing: say where to. Scripts get stderr quiet.
        eprintln!("sockline: {connected}");
    }
    let (lines_tx, mut lines) = mpsc::channel(LINES_AHEAD);
    let terminal = match tty::editor() {
        Some((editor, printer)) => {
            Some(terminal.insert(Terminal::start(editor, printer, lines_tx)?))
        }
        None => {
            spawn_stdin_reader(lines_tx)?;
            None
        }
    };
    let printer = terminal.as_ref().map(|terminal| terminal.printer());
    let (mut from_server, mut to_server) = tokio::io::split(stream);
    let last = RefCell::new(LastLine::default());
    let printing = async {
        match &printer {
            Some(printer) => tty::print_lines(&mut from_server, printer, escaped, &last).await,
            None => print_replies(&mut from_server, escaped, &last).await,
        }
    };
    let talked = talk(printing, &mut lines, &mut to_server, timeout, interactive).await;
    // However it ended: an `ERR` line before the server's close says why.
    let ended_by_server = !matches!(talked, Ok(Some(Printed::StdoutClosed)) | Ok(None));
    match last.borrow().refusal() {
        Some(line) if ended_by_server => Err(io::Error::other(format!(
            "the server closed the connection: {line}"
        ))),
        _ => talked.map(drop),
    }
}

/// Prints the server's bytes (`printing`) while sending stdin `lines`,
/// until one side ends the session. `Ok(Some(how))` when printing ended
/// and the session is fine; `Ok(None)` when the server did not close
/// within `timeout` after `BYE`. `interactive`: stdin is a terminal.
async fn talk(
    printing: impl Future<Output = io::Result<Printed>>,
    lines: &mut LineReceiver,
    to_server: &mut (impl AsyncWrite + Unpin),
    timeout: Duration,
    interactive: bool,
) -> io::Result<Option<Printed>> {
    tokio::pin!(printing);
    // Whether the user has ended the session: BYE, /quit, end of stdin.
    let ended = Cell::new(false);
    let sent = tokio::select! {
        printed = &mut printing => Err(printed),
        sent = send_lines(lines, to_server, &ended) => Ok(sent),
    };
    let printed = match sent {
        Err(printed) => printed?,
        Ok(sent) => match sent? {
            Sent::Bye => match time::timeout(timeout, printing).await {
                Ok(printed) => printed?,
                // The server did not close in time; the user asked to leave anyway.
                Err(_elapsed) => return Ok(None),
            },
            Sent::Eof => printing.await?,
            // The server is gone or going: its last bytes are already
            // here, and may say why (`ERR ...`), or be a clean close.
            Sent::Failed(e) => match time::timeout(timeout, printing).await {
                Ok(Ok(Printed::ServerClosed)) => Printed::ServerClosed,
                // What reading met says more (a TLS alert, say) than the
                // reset that writing met after it.
                Ok(Err(read)) => return Err(read),
                _ => return Err(e),
            },
        },
    };
    let fine = match printed {
        Printed::StdoutClosed => true,
        // Which came first, the server's close or the end of piped input,
        // is a matter of timing: the input ending at all is what counts.
        Printed::ServerClosed => ended.get() || (!interactive && input_ends(lines, timeout).await),
    };
    match fine {
        true => Ok(Some(printed)),
        false => Err(closed_by_server()),
    }
}

/// Whether stdin ends within `timeout` (its lines, unsent, are dropped:
/// the server is gone).
async fn input_ends(lines: &mut LineReceiver, timeout: Duration) -> bool {
    let rest = async {
        while let Some(line) = lines.recv().await {
            if line.is_err() {
                return false;
            }
        }
        true
    };
    time::timeout(timeout, rest).await.unwrap_or(false)
}
/// Resolves `addr` and connects to its first address that accepts, all
/// within `timeout`.
async fn connect(addr: &str, timeout: Duration) -> io::Result<TcpStream> {
    let attempt = async {
        let mut last = None;
        let ips = tokio::net::lookup_host(addr)
            .await
            .map_err(|e| match e.kind() {
                // No port, or brackets missing around an IPv6 address.
                io::ErrorKind::InvalidInput => io::Error::new(e.kind(), "expected HOST:PORT"),
                _ => e,
            })?;
        for ip in ips {
            match TcpStream::connect(ip).await {
                Ok(stream) => return Ok(stream),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address found")))
    };
    let outcome = match time::timeout(timeout, attempt).await {
        Ok(outcome) => outcome,
        Err(_elapsed) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("timed out after {} s", timeout.as_secs_f64()),
        )),
    };
    outcome
        .and_then(|stream| stream.set_nodelay(true).map(|()| stream))
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot connect to {addr}: {}", describe(&e)),
            )
        })
}

/// Copies the server's bytes to stdout, flushing each chunk, until the
/// server closes or stdout does; with `escaped`, control characters are
/// shown escaped.
async fn print_replies(
    from: &mut (impl AsyncRead + Unpin),
    escaped: bool,
    last: &RefCell<LastLine>,
) -> io::Result<Printed> {
    let mut buf = vec![0; CHUNK];
    // Escaping: the end of the bytes so far whose escaping depends on the
    // bytes to come (half a UTF-8 character, a `\r`), kept for them.
    let mut held = Vec::new();
    loop {
        let n = from.read(&mut buf).await.map_err(session_error)?;
        last.borrow_mut().feed(&buf[..n]);
        let shown = if escaped {
            held.extend_from_slice(&buf[..n]);
            let ready = match n {
                0 => held.len(),
                _ => held.len() - unfinished(&held),
            };
            let shown = escape(&held[..ready]).into_owned();
            held.drain(..ready);
            Cow::Owned(shown)
        } else {
            Cow::Borrowed(&buf[..n])
        };
        if !shown.is_empty() && !print(&shown)? {
            return Ok(Printed::StdoutClosed);
        }
        if n == 0 {
            return Ok(Printed::ServerClosed);
        }
    }
}

/// Writes `bytes` to stdout and flushes; `false` if nobody reads stdout.
fn print(bytes: &[u8]) -> io::Result<bool> {
    // A blocking write: while stdout is stalled the session is too, which
    // is the backpressure we want.
    let mut stdout = io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => {
            let why = format!("cannot write to stdout: {}", describe(&e));
            Err(io::Error::new(e.kind(), why))
        }
    }
}

/// Sends stdin lines until `BYE` (sent, then stop) or EOF (shut down the
/// write half so the server sees the end too); notes in `ended` that the
/// user ended the session (`BYE`, EOF, or a `/quit`, after which the server
/// closing is no error). An error only if reading stdin failed.
async fn send_lines(
    lines: &mut LineReceiver,
    to: &mut (impl AsyncWrite + Unpin),
    ended: &Cell<bool>,
) -> io::Result<Sent> {
    while let Some(line) = lines.recv().await {
        let line = line?;
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        let bye = is_bye(text);
        // Any other server takes `/quit` as a line like others: go on.
        ended.set(ended.get() || bye || text == b"/quit");
        if let Err(e) = to.write_all(&line).await {
            return Ok(Sent::Failed(session_error(e)));
        }
        if bye {
            return Ok(Sent::Bye);
        }
    }
    ended.set(true);
    match to.shutdown().await {
        Ok(()) => Ok(Sent::Eof),
        Err(e) => Ok(Sent::Failed(session_error(e))),
    }
}

/// Reads stdin on its own thread and sends each line, `\n`-terminated, to
/// `lines`; dropping the sender at EOF tells the session. The plain reader;
/// [`tty::Terminal::start`] is the line editor's.
fn spawn_stdin_reader(lines: LineSender) -> io::Result<()> {
    let read = move || {
        let mut stdin = io::stdin().lock();
        loop {
            let mut line = Vec::new();
            let item = match stdin.read_until(b'\n', &mut line) {
                Ok(0) => return,
                Ok(_) => {
                    if !line.ends_with(b"\n") {
                        line.push(b'\n');
                    }
                    Ok(line)
                }
                Err(e) => Err(io::Error::new(
                    e.kind(),
                    format!("cannot read stdin: {}", describe(&e)),
                )),
            };
            let failed = item.is_err();
            // A send error means the session is over; nobody wants more lines.
            if lines.blocking_send(item).is_err() || failed {
                return;
            }
        }
    };
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(read)
        .map(drop)
}

fn closed_by_server() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed by server")
}

/// An error on the established connection, as the user should read it.
fn session_error(e: io::Error) -> io::Error {
    use io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
    let why = match (secure::explain(&e), e.kind()) {
        // TLS: the server refused our certificate, or wants one.
        (Some(why), _) => why,
        (None, ConnectionReset | ConnectionAborted | BrokenPipe) => {
            "connection reset by server".into()
        }
        (None, _) => format!("connection failed: {}", describe(&e)),
    };
    io::Error::new(e.kind(), why)
}
