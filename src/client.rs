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

mod tty;

use crate::error::describe;
use crate::escape::{escape, unfinished};
use crate::mode::is_bye;
use crate::tls::ClientTls;
use std::borrow::Cow;
use std::cell::Cell;
use std::io::{self, BufRead, IsTerminal as _, Write};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time;
use tty::Terminal;

/// Stdin lines read ahead of the socket before the reader thread waits.
const LINES_AHEAD: usize = 64;
/// Bytes read from the server per `read`.
const CHUNK: usize = 16 * 1024;

/// Where stdin lines go: each `\n`-terminated, or the error that ended
/// reading; dropped at EOF.
type LineSender = mpsc::Sender<io::Result<Vec<u8>>>;

/// The connection: TCP, or TLS over it.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Connects to `addr` (`HOST:PORT`) and runs an interactive session: every
/// stdin line is sent, every byte from the server is printed (with control
/// characters escaped if stdout is a terminal, unless `raw`).
///
/// `timeout` bounds connecting (and the TLS handshake, with `tls`) and,
/// after the user sends `BYE`, the wait for the server to close. Returns
/// `Ok` after `BYE`, after stdin EOF once the server has closed, when stdout
/// is closed, or (in a terminal) on Ctrl-C; an error if connecting fails or
/// the server ends the session first.
pub fn run(addr: &str, timeout: Duration, tls: Option<&ClientTls>, raw: bool) -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut terminal = None;
    let escaped = !raw && io::stdout().is_terminal();
    let result = runtime.block_on(session(addr, timeout, tls, escaped, &mut terminal));
    // Do not wait for a name lookup still blocked in the background.
    runtime.shutdown_background();
    if let Some(terminal) = terminal {
        terminal.finish();
    }
    result
}

/// How sending ended.
enum Sent {
    /// The user sent `BYE`.
    Bye,
    /// Stdin ended; the write half is shut down.
    Eof,
}

/// How printing ended.
enum Printed {
    /// The server closed the connection.
    ServerClosed,
    /// Nobody reads our stdout (or the terminal's printer failed).
    StdoutClosed,
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
    let tcp = connect(addr, timeout).await?;
    let stream: Box<dyn Stream> = match tls {
        Some((config, name)) => Box::new(handshake(tcp, addr, config, name, timeout).await?),
        None => Box::new(tcp),
    };
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
    let printing = async {
        match &printer {
            Some(printer) => tty::print_lines(&mut from_server, printer, escaped).await,
            None => print_replies(&mut from_server, escaped).await,
        }
    };
    let interrupted = async {
        match terminal {
            Some(terminal) => terminal.interrupted().await,
            // Plain mode leaves SIGINT alone: it kills the process.
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        result = talk(printing, &mut lines, &mut to_server, timeout) => result,
        // Ctrl-C in a terminal: leave now; dropping the stream closes it.
        () = interrupted => Ok(()),
    }
}

/// Prints the server's bytes (`printing`) while sending stdin `lines`,
/// until one side ends the session.
async fn talk(
    printing: impl Future<Output = io::Result<Printed>>,
    lines: &mut mpsc::Receiver<io::Result<Vec<u8>>>,
    to_server: &mut (impl AsyncWrite + Unpin),
    timeout: Duration,
) -> io::Result<()> {
    tokio::pin!(printing);
    let quit = Cell::new(false);
    let sent = tokio::select! {
        printed = &mut printing => return match printed? {
            // Chat's /quit: the close is the answer we asked for.
            Printed::ServerClosed if quit.get() => Ok(()),
            Printed::ServerClosed => Err(closed_by_server()),
            Printed::StdoutClosed => Ok(()),
        },
        sent = send_lines(lines, to_server, &quit) => sent,
    };
    match sent {
        Ok(Sent::Bye) => match time::timeout(timeout, printing).await {
            Ok(printed) => printed.map(drop),
            // The server did not close in time; the user asked to leave anyway.
            Err(_elapsed) => Ok(()),
        },
        Ok(Sent::Eof) => printing.await.map(drop),
        Err(e) => {
            // Writing failed (the server is gone: its last bytes are
            // already here) or stdin did (rare): print what came, then fail.
            let _ = time::timeout(timeout, printing).await;
            Err(e)
        }
    }
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

/// Runs the TLS handshake on `tcp`, within `timeout`.
async fn handshake(
    tcp: TcpStream,
    addr: &str,
    config: std::sync::Arc<rustls::ClientConfig>,
    name: rustls::pki_types::ServerName<'static>,
    timeout: Duration,
) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let connector = tokio_rustls::TlsConnector::from(config);
    let failed = |why: String| io::Error::other(format!("TLS handshake with {addr} failed: {why}"));
    match time::timeout(timeout, connector.connect(name, tcp)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(failed(describe(&e))),
        Err(_elapsed) => Err(failed(format!("no answer in {} s", timeout.as_secs_f64()))),
    }
}

/// Copies the server's bytes to stdout, flushing each chunk, until the
/// server closes or stdout does; with `escaped`, control characters are
/// shown escaped.
async fn print_replies(from: &mut (impl AsyncRead + Unpin), escaped: bool) -> io::Result<Printed> {
    let mut buf = vec![0; CHUNK];
    // Escaping: the end of the bytes so far whose escaping depends on the
    // bytes to come (half a UTF-8 character, a `\r`), kept for them.
    let mut held = Vec::new();
    loop {
        let n = from.read(&mut buf).await.map_err(session_error)?;
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
/// write half so the server sees the end too); notes a `/quit` in `quit`,
/// so that the server closing after it is no error.
async fn send_lines(
    lines: &mut mpsc::Receiver<io::Result<Vec<u8>>>,
    to: &mut (impl AsyncWrite + Unpin),
    quit: &Cell<bool>,
) -> io::Result<Sent> {
    while let Some(line) = lines.recv().await {
        let line = line?;
        to.write_all(&line).await.map_err(session_error)?;
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if is_bye(text) {
            return Ok(Sent::Bye);
        }
        // Any other server takes `/quit` as a line like others: go on.
        quit.set(quit.get() || text == b"/quit");
    }
    to.shutdown().await.map_err(session_error)?;
    Ok(Sent::Eof)
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
    let why = match e.kind() {
        ConnectionReset | ConnectionAborted | BrokenPipe => "connection reset by server".into(),
        _ => format!("connection failed: {}", describe(&e)),
    };
    io::Error::new(e.kind(), why)
}
