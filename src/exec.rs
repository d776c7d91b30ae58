//! `serve --exec`: a helper process per client, as the tutorial proposes
//! and as `inetd`, djb's `tcpserver` and `ncat --exec` do.
//!
//! [`Exec::spawn`] starts `/bin/sh -c COMMAND` (or, for plain words
//! naming a program, the program itself: see [`Exec::new`]) for one
//! connection, with
//! the UCSPI-TCP environment (`PROTO`, `TCPREMOTEIP`, ...) and three
//! non-blocking pipes, in a process group of its own. The connection's
//! event loop drives those pipes like its sockets (see
//! `Connection::pump`): no thread per client, and each direction stops
//! reading its source while its destination has bytes it did not take, so
//! a child that floods a slow client, or a client that floods a child that
//! does not read, is held back by a full pipe or socket, never by a buffer
//! without bound.
//!
//! The exit of the child comes to the loop as readiness of its pidfd, so no
//! signal handler is involved. Every signal goes to the whole process
//! group, so a shell's own children do not outlive it, and the server is a
//! child subreaper ([`become_subreaper`]): those children, orphaned when
//! the shell exits, are reparented to the server and reaped by it
//! ([`Graves`]), not left as zombies of an init that may not reap.

use mio::unix::SourceFd;
use mio::unix::pipe::{Receiver, Sender};
use mio::{Interest, Registry, Token};
use rustix::process::{Pid, Signal, WaitOptions};
use std::collections::BTreeSet;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The process groups of this process's helpers whose owner (a [`Child`],
/// then its [`Grave`]) signals and reaps them. A group's number cannot be
/// reused while it has a member, and with the server a subreaper, members
/// are reaped only by their owner: so the owner may signal its group for as
/// long as the number is in here. The lock is held across each spawn and
/// each reaping that may empty a group, so a number leaves this set before
/// a new child can get it.
static GROUPS: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());
/// [`become_subreaper`] succeeded.
static SUBREAPER: AtomicBool = AtomicBool::new(false);

fn groups() -> std::sync::MutexGuard<'static, BTreeSet<i32>> {
    GROUPS.lock().unwrap_or_else(|e| e.into_inner())
}

/// How a server runs one helper process per client.
#[derive(Debug, Clone)]
pub struct Exec {
    command: String,
    grace: Duration,
    /// The program and its arguments, for a command the shell would only
    /// look up and start (see [`Exec::new`]).
    direct: Option<(PathBuf, Vec<String>)>,
}

/// Words the shell gives a meaning of its own (builtins, keywords): a
/// command starting with one is always run by the shell.
const SHELL_WORDS: [&str; 51] = [
    ".", ":", "alias", "bg", "break", "case", "cd", "command", "continue", "do", "done", "echo",
    "elif", "else", "esac", "eval", "exec", "exit", "export", "false", "fc", "fg", "fi", "for",
    "getopts", "hash", "if", "in", "jobs", "kill", "local", "printf", "pwd", "read", "readonly",
    "return", "set", "shift", "test", "then", "times", "trap", "true", "type", "ulimit", "umask",
    "unalias", "unset", "until", "wait", "while",
];

impl Exec {
    /// `command`, to be run by `/bin/sh -c` for each client; once the
    /// client is gone (or the server drains), a child has `grace` before
    /// its process group gets SIGTERM, then as long again before SIGKILL.
    ///
    /// A command of plain words (letters, digits and `_-./,:+@%`: no
    /// quotes, variables, globs, redirections or separators) whose first
    /// word names a program on `PATH` (not a shell builtin or keyword) is
    /// started directly, as the shell would start it, without the shell in
    /// between: one program started per client instead of two.
    pub fn new(command: impl Into<String>, grace: Duration) -> Exec {
        let command = command.into();
        let direct = plain(&command);
        Exec {
            command,
            grace,
            direct,
        }
    }

    /// The command.
    pub fn command(&self) -> &str {
        &self.command
    }

    /// The grace before the signals.
    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// True when the command is started without a shell.
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }
}

/// The program and arguments of a command the shell would only look up
/// and start, or `None`.
fn plain(command: &str) -> Option<(PathBuf, Vec<String>)> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "_-./,:+@% \t".contains(c);
    if !command.chars().all(allowed) {
        return None;
    }
    let mut words = command.split_ascii_whitespace().map(String::from);
    let first = words.next()?;
    if SHELL_WORDS.contains(&first.as_str()) || first.starts_with('-') {
        return None;
    }
    let program = match first.contains('/') {
        true => Some(PathBuf::from(&first)).filter(|p| executable(p)),
        false => std::env::split_paths(&std::env::var_os("PATH")?)
            .map(|dir| dir.join(&first))
            .find(|p| executable(p)),
    }?;
    Some((program, std::iter::once(first).chain(words).collect()))
}

fn executable(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The sources of one child, after the connection's socket (0) in the
/// event loop's numbering of a connection's tokens.
pub const STDIN: usize = 1;
/// The child's stdout.
pub const STDOUT: usize = 2;
/// The child's stderr.
pub const STDERR: usize = 3;
/// The child's pidfd: readable once it exited.
pub const EXIT: usize = 4;

/// Longest stderr line logged as one; a longer one is logged in pieces.
const STDERR_LINE: usize = 4096;

/// What a connection knows about its client at spawn.
pub struct Client {
    /// The client's address (the one a PROXY header gave, if any).
    pub remote: SocketAddr,
    /// The server's address on the connection.
    pub local: SocketAddr,
    /// With `--tls-client-ca`: the client certificate's subject.
    pub subject: Option<String>,
}

impl Exec {
    /// Starts the command for `client`; its pipes are non-blocking.
    pub fn spawn(&self, client: &Client) -> io::Result<Child> {
        let mut command = match &self.direct {
            Some((program, words)) => {
                let mut command = Command::new(program);
                command.arg0(&words[0]).args(&words[1..]);
                command
            }
            None => {
                let mut command = Command::new("/bin/sh");
                command.arg("-c").arg(&self.command);
                command
            }
        };
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .env("PROTO", "TCP")
            .env("TCPREMOTEIP", client.remote.ip().to_string())
            .env("TCPREMOTEPORT", client.remote.port().to_string())
            .env("TCPLOCALIP", client.local.ip().to_string())
            .env("TCPLOCALPORT", client.local.port().to_string());
        if let Some(subject) = &client.subject {
            command.env("TLSCLIENTSUBJECT", subject);
        }
        let mut groups = groups();
        let mut process = command.spawn()?;
        let pid = Pid::from_child(&process);
        groups.insert(pid.as_raw_nonzero().get());
        drop(groups);
        let pipes = (|| {
            let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())?;
            let stdin = Sender::from(process.stdin.take().expect("piped"));
            let stdout = Receiver::from(process.stdout.take().expect("piped"));
            let stderr = Receiver::from(process.stderr.take().expect("piped"));
            stdin.set_nonblocking(true)?;
            stdout.set_nonblocking(true)?;
            stderr.set_nonblocking(true)?;
            io::Result::Ok((pidfd, stdin, stdout, stderr))
        })();
        let (pidfd, stdin, stdout, stderr) = match pipes {
            Ok(pipes) => pipes,
            Err(e) => {
                let _ = rustix::process::kill_process_group(pid, Signal::KILL);
                let _ = process.wait();
                settle(pid);
                return Err(e);
            }
        };
        Ok(Child {
            process,
            pid,
            pidfd,
            stdin: Some(stdin),
            stdout: Some(stdout),
            stderr: Some(stderr),
            pending: Vec::new(),
            stderr_line: Vec::new(),
            status: None,
            group: true,
            wrote: false,
            grace: self.grace,
            clock: None,
        })
    }
}

/// A running helper process and its pipes.
pub struct Child {
    process: std::process::Child,
    pid: Pid,
    pidfd: OwnedFd,
    /// `None` once closed: the client's end came (or it is gone), or the
    /// child closed its stdin.
    pub stdin: Option<Sender>,
    /// `None` once at its end (or the client is gone).
    pub stdout: Option<Receiver>,
    stderr: Option<Receiver>,
    /// Bytes from the client the child's stdin did not take yet: while any
    /// wait, the client is not read.
    pub pending: Vec<u8>,
    /// A stderr line not complete yet.
    stderr_line: Vec<u8>,
    /// Its exit status, once reaped.
    status: Option<ExitStatus>,
    /// Its process group is still ours to signal (see [`GROUPS`]): until
    /// it is reaped, and after while members it left are.
    group: bool,
    /// It wrote something to its stdout.
    pub wrote: bool,
    grace: Duration,
    /// Since when the child has been expected to end, and the signals its
    /// group already got (0: none, 1: SIGTERM, 2: SIGKILL).
    clock: Option<(Instant, u8)>,
}

impl Child {
    /// Its process ID (and process group ID).
    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// Registers its pipes and pidfd under `token(source)`.
    pub fn register(
        &mut self,
        registry: &Registry,
        token: impl Fn(usize) -> Token,
    ) -> io::Result<()> {
        if let Some(stdin) = &mut self.stdin {
            registry.register(stdin, token(STDIN), Interest::WRITABLE)?;
        }
        if let Some(stdout) = &mut self.stdout {
            registry.register(stdout, token(STDOUT), Interest::READABLE)?;
        }
        if let Some(stderr) = &mut self.stderr {
            registry.register(stderr, token(STDERR), Interest::READABLE)?;
        }
        let fd = self.pidfd.as_raw_fd();
        registry.register(&mut SourceFd(&fd), token(EXIT), Interest::READABLE)
    }

    /// Closes its stdin (the client's end came, or it is gone), throwing
    /// away what the child did not read; starts the grace clock.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
        self.pending = Vec::new();
        self.start_grace();
    }

    /// The client is gone: nobody reads the child's output any more (its
    /// next write fails), nobody writes its input.
    pub fn orphan(&mut self) {
        self.close_stdin();
        self.stdout = None;
    }

    /// The server drains: stdin closes now, and the signals come within
    /// `drain` (half of it each, at most the grace).
    pub fn drain(&mut self, drain: Duration) {
        self.grace = self.grace.min(drain / 2);
        self.close_stdin();
    }

    /// The client's end came, maybe behind bytes the child has not read
    /// yet: the grace starts now.
    pub fn start_grace(&mut self) {
        self.clock.get_or_insert((Instant::now(), 0));
    }

    /// Reaps the child if it exited; true once it has. A group it leaves
    /// behind gets SIGTERM at once, and SIGKILL after the grace.
    pub fn reap(&mut self) -> bool {
        if self.status.is_some() {
            return true;
        }
        match self.process.try_wait() {
            Ok(Some(status)) => self.status = Some(status),
            Ok(None) => return false,
            // Not ours to wait for any more (cannot happen: only this
            // handle and its group's owner reap it); count it as gone.
            Err(_) => self.status = Some(ExitStatus::default()),
        }
        if !SUBREAPER.load(Ordering::Relaxed) {
            // Its orphans go to init, which reaps them when it likes: the
            // number may be reused at any time from now on. One signal,
            // while the group is seen alive, then hands off.
            if group_alive(self.pid) {
                let _ = rustix::process::kill_process_group(self.pid, Signal::TERM);
            }
            groups().remove(&self.pid.as_raw_nonzero().get());
            self.group = false;
        } else if settle(self.pid) {
            let _ = rustix::process::kill_process_group(self.pid, Signal::TERM);
            self.clock = Some((Instant::now(), 1));
        } else {
            self.group = false;
        }
        true
    }

    /// True when it exited as a shell does when it cannot run the command:
    /// 127 (not found) or 126 (not executable).
    pub fn not_started(&self) -> bool {
        matches!(self.status.and_then(|s| s.code()), Some(126 | 127))
    }

    /// Its exit status, once reaped.
    pub fn status(&self) -> Option<ExitStatus> {
        self.status
    }

    /// Sends the signals that are due by `now`; true if one was sent.
    pub fn tick(&mut self, now: Instant) -> bool {
        if !self.group {
            return false;
        }
        let Some((since, sent)) = &mut self.clock else {
            return false;
        };
        let due = match now.saturating_duration_since(*since) {
            t if t >= self.grace * 2 => 2,
            t if t >= self.grace => 1,
            _ => 0,
        };
        if due <= *sent {
            return false;
        }
        *sent = due;
        if self.status.is_some() && !settle(self.pid) {
            // What it left is gone, and so is the number.
            self.group = false;
            return false;
        }
        let signal = if due == 2 { Signal::KILL } else { Signal::TERM };
        rustix::process::kill_process_group(self.pid, signal).is_ok()
    }

    /// Reads its stderr until dry (or `budget` reads) and logs each line,
    /// tagged with the client's address; true when the budget ran out
    /// before the pipe was dry (more may wait).
    pub fn log_stderr(&mut self, buf: &mut [u8], peer: SocketAddr, budget: usize) -> bool {
        use std::io::Read;
        let mut more = true;
        for _ in 0..budget {
            let Some(stderr) = &mut self.stderr else {
                more = false;
                break;
            };
            match stderr.read(buf) {
                Ok(0) => {
                    self.stderr = None;
                    break;
                }
                Ok(n) => self.stderr_line.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    more = false;
                    break;
                }
                Err(_) => {
                    self.stderr = None;
                    more = false;
                    break;
                }
            }
            self.log_lines(peer, false);
        }
        self.log_lines(peer, self.stderr.is_none());
        more && self.stderr.is_some()
    }

    /// The connection ends (the child was reaped): what its stderr still
    /// holds is logged, a last partial line too.
    pub fn last_stderr(&mut self, buf: &mut [u8], peer: SocketAddr) {
        let _ = self.log_stderr(buf, peer, 64);
        self.log_lines(peer, true);
    }

    /// Logs the complete lines held (and with `all` the rest too).
    fn log_lines(&mut self, peer: SocketAddr, all: bool) {
        let mut start = 0;
        let held = &self.stderr_line;
        loop {
            let rest = &held[start..];
            let (line, used) = match memchr::memchr(b'\n', rest) {
                Some(at) if at <= STDERR_LINE => (&rest[..at], at + 1),
                _ if rest.len() > STDERR_LINE => (&rest[..STDERR_LINE], STDERR_LINE),
                _ if all && !rest.is_empty() => (rest, rest.len()),
                _ => break,
            };
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            tracing::info!(
                %peer,
                pid = self.process.id(),
                line = %crate::escape::escape_lossy(line),
                "child stderr"
            );
            start += used;
        }
        self.stderr_line.drain(..start);
    }

    /// The server stops now (drain timeout): SIGKILL to the group, and the
    /// child reaped if it dies within 100 ms (one that does not, stuck in
    /// the kernel, is left to its [`Grave`]: the loop does not block).
    pub fn kill_now(&mut self) {
        if self.group {
            let _ = rustix::process::kill_process_group(self.pid, Signal::KILL);
        }
        for _ in 0..50 {
            if self.reap() {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Its process group, if members may be left to signal and reap once
    /// the connection is gone.
    pub fn grave(&mut self) -> Option<Grave> {
        std::mem::take(&mut self.group).then(|| Grave {
            pgid: self.pid,
            since: Instant::now(),
            grace: self.grace,
            killed: false,
        })
    }
}

/// Reaps the members of group `pgid` that exited (the leader too, if
/// another handle did not); true while members are left. When none is,
/// the number leaves [`GROUPS`], under its lock.
fn settle(pgid: Pid) -> bool {
    let mut groups = groups();
    loop {
        match rustix::process::waitpgid(pgid, WaitOptions::NOHANG) {
            Ok(Some(_)) | Err(rustix::io::Errno::INTR) => continue,
            Ok(None) => return true,
            // None of ours: gone, or members whose parent is a member
            // (its exit is ours to reap, later).
            Err(rustix::io::Errno::CHILD) if group_alive(pgid) => return true,
            Err(_) => break,
        }
    }
    groups.remove(&pgid.as_raw_nonzero().get());
    false
}

/// Reaps the children of this process that exited and belong to no
/// helper's group: orphans a helper's children left that moved to a group
/// or session of their own (`setsid`), and came to the server as their
/// subreaper. One call takes what it can now; a zombie whose owner is to
/// reap it stops it until the next.
pub fn reap_strays() {
    use nix::sys::wait::{Id, WaitPidFlag, waitid, waitpid};
    if !SUBREAPER.load(Ordering::Relaxed) {
        return;
    }
    let groups = groups();
    for _ in 0..64 {
        let peek = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        let Some(pid) = waitid(Id::All, peek).ok().and_then(|status| status.pid()) else {
            return;
        };
        let owned = |id: i32| groups.contains(&id);
        let pgid = rustix::process::getpgid(Pid::from_raw(pid.as_raw()));
        if owned(pid.as_raw()) || pgid.is_ok_and(|g| owned(g.as_raw_nonzero().get())) {
            return;
        }
        let _ = waitpid(pid, Some(WaitPidFlag::WNOHANG));
    }
}

/// True while any process of group `pgid` exists (a zombie counts).
fn group_alive(pgid: Pid) -> bool {
    rustix::process::test_kill_process_group(pgid).is_ok()
}

/// What a child's process group left behind after the connection ended:
/// members still running (SIGKILLed after the grace), or exited and not
/// yet reaped.
pub struct Grave {
    pgid: Pid,
    since: Instant,
    grace: Duration,
    killed: bool,
}

/// The process groups of a worker's ended connections that may still have
/// members; reaped at each sweep.
#[derive(Default)]
pub struct Graves(Vec<Grave>);

impl Graves {
    /// Reaps `grave` now if it can, or keeps it for the sweeps.
    pub fn bury(&mut self, mut grave: Grave) {
        if !grave.reap() {
            self.0.push(grave);
        }
    }

    /// Reaps what can be, and SIGKILLs groups past their grace.
    pub fn sweep(&mut self, now: Instant) {
        self.0.retain_mut(|grave| {
            if !grave.killed && now.saturating_duration_since(grave.since) >= grave.grace {
                let _ = rustix::process::kill_process_group(grave.pgid, Signal::KILL);
                grave.killed = true;
            }
            !grave.reap()
        });
    }

    /// True when nothing is left to reap.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Grave {
    /// Reaps the group's exited members; true once none is left.
    fn reap(&mut self) -> bool {
        !settle(self.pgid)
    }
}

/// Makes this process the reaper of its descendants' orphans, so that what
/// a child's shell leaves behind is reaped here ([`Graves`]).
pub fn become_subreaper() -> io::Result<()> {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))?;
    SUBREAPER.store(true, Ordering::Relaxed);
    Ok(())
}

/// `status` in a few words, for logs and metrics: `0`, `3`, or a signal's
/// name (`SIGKILL`).
pub fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code.to_string(),
        (None, Some(signal)) => {
            const NAMES: [&str; 15] = [
                "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV",
                "USR2", "PIPE", "ALRM", "TERM",
            ];
            match NAMES.get((signal as usize).wrapping_sub(1)) {
                Some(name) => format!("SIG{name}"),
                None => format!("signal {signal}"),
            }
        }
        (None, None) => "unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_words_naming_a_program_skip_the_shell() {
        let direct = |command: &str| Exec::new(command, Duration::ZERO).is_direct();
        for command in ["cat", "tr a-z A-Z", "sleep 60", "/bin/cat -u", "  yes  "] {
            assert!(direct(command), "{command}");
        }
        let shell = [
            "cat | cat",
            "echo hi",
            "exit 3",
            "FOO=1 cat",
            "cat $HOME",
            "cat *.txt",
            "cat > out",
            "sleep 1; cat",
            "cat &",
            "'cat'",
            "no-such-program-here",
            "./not/a/file",
            "",
        ];
        for command in shell {
            assert!(!direct(command), "{command}");
        }
    }
}
