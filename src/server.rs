//! The accept loop, connection limits and graceful drain.
//!
//! [`run`] starts one worker thread per CPU the process may use. Each worker
//! owns a `mio` event loop, a clone of the listener and a slab of
//! [`Connection`]s; whichever worker wakes first accepts a connection and
//! serves it for its whole life, so nothing is locked or shared on the hot
//! path but a counter of open connections.
//!
//! Why not a tokio task per connection: a task with its buffers costs 1 KiB
//! (a lean `readable()` + `try_read` task) to 9 KiB (`BufReader::lines`) per
//! idle connection, while a slab entry here measures 0.15 KiB (see
//! docs/PERFORMANCE.md).

pub use crate::admission::Access;

use crate::admission::{Admission, Refusal};
use crate::connection::{Accepted, Connection, Scratch, Status};
use crate::exec::{self, Exec, Graves};
use crate::framing::Framing;
use crate::kernel;
use crate::mailbox::{self, Letterbox, Mail};
use crate::metrics::Metrics;
use crate::protocol::{CloseReason, ConnId, Protocol};
use crate::shutdown::Shutdown;
use crate::transport::Transport;
use crate::web::Origins;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Server limits.
#[derive(Debug, Clone)]
pub struct Config {
    /// Longest accepted line, in bytes, without its `\r\n`.
    pub max_line: usize,
    /// Connections served at once; more are told `ERR server full`.
    pub max_conns: usize,
    /// Bytes of messages from others a connection may have waiting before
    /// it is disconnected as too slow.
    pub max_queue: usize,
    /// How long a shutdown waits for replies to drain.
    pub drain_timeout: Duration,
    /// Who may connect.
    pub access: Access,
    /// Connections one IP address may hold at once; 0 means no limit.
    pub max_conns_per_ip: usize,
    /// Close a connection that sends no complete line for this long.
    pub idle_timeout: Option<Duration>,
    /// Lines a second one connection may have answered; past it the server
    /// reads that connection more slowly (TCP backpressure).
    pub max_lines_per_sec: Option<u32>,
    /// Where the counters go; share it to serve them (`metrics::serve`).
    pub metrics: Arc<Metrics>,
    /// Event-loop threads; 0 means one per CPU this process may run on.
    /// A protocol with [`Protocol::ONE_LOOP`] always gets one.
    pub workers: usize,
    /// Speak TLS with this config; `None` is plain TCP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// A TLS handshake not done by then is dropped.
    pub handshake_timeout: Duration,
    /// Close a connection whose pending bytes the client took none of for
    /// this long (it does not read).
    pub write_timeout: Option<Duration>,
    /// Every connection starts with a PROXY protocol header (v1 or v2, from
    /// a load balancer) giving the client's address, which admission, the
    /// logs and the protocol then see; one without a valid header is
    /// refused. A connection waiting for its header holds one of
    /// `max_conns`, and has `handshake_timeout` to send it (and finish
    /// its TLS handshake, if any).
    pub proxy_protocol: bool,
    /// Pages that may open a WebSocket on the web listener
    /// ([`run_with_web`]).
    pub web_origins: Origins,
    /// Hand every connection to a helper process of its own, instead of
    /// the protocol: its bytes to the process's stdin, its stdout back
    /// (`serve --exec`; see [`crate::exec`]). The process becomes a child
    /// subreaper and reaps every exited child that is not a helper's:
    /// such a server wants a process of its own.
    pub exec: Option<Exec>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_line: 65536,
            max_conns: 10_000,
            max_queue: 1 << 20,
            drain_timeout: Duration::from_secs(5),
            access: Access::default(),
            max_conns_per_ip: 0,
            idle_timeout: None,
            max_lines_per_sec: None,
            metrics: Arc::default(),
            workers: 0,
            tls: None,
            handshake_timeout: Duration::from_secs(10),
            write_timeout: Some(Duration::from_secs(30)),
            proxy_protocol: false,
            web_origins: Origins::default(),
            exec: None,
        }
    }
}

/// TLS clients being told why they are refused, at most, per worker: each
/// costs a handshake, so past this many a refusal is just a close.
const TLS_REFUSALS: usize = 32;

/// Lingering closes at once, at most, per worker, outside a drain: each
/// holds a descriptor that no longer counts toward `max_conns`. Past this,
/// a close is immediate (and may reset a client that is still sending).
const LINGER_MAX: usize = 1024;
/// Bytes not yet sent that the kernel may hold for a connection
/// (`TCP_NOTSENT_LOWAT`): beyond this, writes wait in the server's own
/// buffers, which `max_queue` and the output cap bound. On loopback a
/// client that keeps up has almost nothing unsent, so this costs it nothing.
pub const KERNEL_UNSENT: u32 = 16 * 1024;
/// A lingering close ends when the client has sent nothing for this long...
const LINGER_QUIET: Duration = Duration::from_secs(5);
/// ...or lasted this long in all (as nginx's `lingering_timeout` and
/// `lingering_time`).
const LINGER_TIME: Duration = Duration::from_secs(30);

const LISTENER: Token = Token(usize::MAX - 1);
/// The `--web` listener: HTTP, then WebSocket.
const WEB: Token = Token(usize::MAX - 3);
/// The `out.id()` of mail for the loop as a whole: no connection.
const NOBODY: ConnId = ConnId::nobody();
const WAKER: Token = Token(usize::MAX - 2);
/// Tokens per connection: its socket (0), and with `--exec` its child's
/// pipes and pidfd ([`exec::STDIN`]...).
const SOURCES: usize = 8;

/// The token of `source` of connection `key`.
fn token(key: usize, source: usize) -> Token {
    Token(key * SOURCES + source)
}
/// A WebSocket client silent this long gets a ping (and again each time
/// as long): proxies and NATs on the way keep the connection, and a peer
/// that is gone shows as a write the client does not take
/// (`write_timeout`).
const PING_EVERY: Duration = Duration::from_secs(30);
/// How long accepting pauses when the process is out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Binds a listening socket with a backlog fit for bursts of connections.
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// Raises the soft open-file limit to the hard limit; returns the new limit.
pub fn raise_fd_limit() -> io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

/// Serves `proto` on `listener` until `shutdown` is triggered and the
/// connections have drained (or `drain_timeout` passed).
pub fn run<P: Protocol>(
    listener: std::net::TcpListener,
    proto: P,
    config: Config,
    shutdown: Shutdown,
) -> io::Result<()> {
    serve(listener, None, proto, config, shutdown)
}

/// [`run`], with a second listener, `web`, whose clients speak HTTP: the
/// chat page ([`crate::web::PAGE`]) or a WebSocket upgrade, after which
/// each WebSocket message is a line, on the same event loops and under the
/// same limits as the lines of `listener`'s clients.
pub fn run_with_web<P: Protocol>(
    listener: std::net::TcpListener,
    web: std::net::TcpListener,
    proto: P,
    config: Config,
    shutdown: Shutdown,
) -> io::Result<()> {
    serve(listener, Some(web), proto, config, shutdown)
}

fn serve<P: Protocol>(
    listener: std::net::TcpListener,
    web: Option<std::net::TcpListener>,
    proto: P,
    config: Config,
    shutdown: Shutdown,
) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    if let Some(web) = &web {
        web.set_nonblocking(true)?;
    }
    if config.exec.is_some()
        && let Err(e) = exec::become_subreaper()
    {
        tracing::warn!(error = %e, "cannot adopt the helpers' orphans (they may be left as zombies)");
    }
    let workers = match config.workers {
        _ if P::ONE_LOOP => 1,
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let shared = Arc::new(Shared {
        admission: Admission::new(
            config.access.clone(),
            config.max_conns,
            config.max_conns_per_ip,
            config.metrics.clone(),
        ),
        config,
    });
    let mut loops = Vec::with_capacity(workers);
    for _ in 0..workers {
        let listener = listener.try_clone()?;
        let web = web.as_ref().map(|web| web.try_clone()).transpose()?;
        loops.push(Worker::new(
            [Some(listener), web],
            proto.clone(),
            shared.clone(),
            &shutdown,
        )?);
    }
    drop(listener);
    drop(web);
    let threads: Vec<_> = loops
        .into_iter()
        .enumerate()
        .map(|(i, worker)| {
            std::thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(move || worker.run())
        })
        .collect::<io::Result<_>>()?;
    let mut result = Ok(());
    for thread in threads {
        let outcome = thread
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("a worker thread panicked")));
        if result.is_ok() {
            result = outcome;
        }
    }
    result
}

/// What every worker shares.
struct Shared {
    config: Config,
    /// Who may connect, and the counts of who did.
    admission: Admission,
}

impl Shared {
    /// Counts a new connection from `ip`, or says why it is refused.
    fn admit(&self, ip: IpAddr) -> Result<(), Refusal> {
        self.admission.admit(ip)
    }

    /// Forgets a connection from `ip`.
    fn release(&self, ip: IpAddr) {
        self.admission.release(ip)
    }
}

struct Worker<P: Protocol> {
    poll: Poll,
    /// The lines listener, and the web listener if any; `None` once
    /// closed (shutdown).
    listeners: [Option<TcpListener>; 2],
    /// Who may open a WebSocket on the web listener.
    origins: Arc<Origins>,
    conns: Slab<Entry<P::Session>>,
    proto: P,
    shared: Arc<Shared>,
    scratch: Scratch,
    /// Connections with newly queued messages, to flush at the end of a round.
    dirty: Vec<usize>,
    /// Connections that yielded with input maybe left, and whether their
    /// peer's end of stream was already reported.
    ready: Vec<(usize, bool)>,
    /// Accepting is paused until then (out of file descriptors).
    accept_at: Option<Instant>,
    /// The next sweep (timeouts and line budgets).
    sweep_at: Option<Instant>,
    /// Lines each connection may have answered per sweep.
    budget: Option<u32>,
    /// Bytes waiting in this worker's connections at the last sweep.
    queued: u64,
    /// WebSocket members of this worker at the last sweep.
    websockets: u64,
    /// Mail from other threads, and shutdown.
    letterbox: Letterbox<P::Event>,
    /// Mail taken from the letterbox, being handed out.
    mail: Vec<Mail<P::Event>>,
    /// More mail may be waiting: poll without sleeping.
    more_mail: bool,
    /// The generation of the next connection (see [`ConnId`]).
    generation: u32,
    /// Refused TLS connections still in the slab (see [`TLS_REFUSALS`]).
    refusing: usize,
    /// Connections in a lingering close (see [`LINGER_MAX`]).
    lingering: usize,
    /// Shutting down: no new connections, so lingering is not capped.
    draining: bool,
    /// With `--exec`: process groups of ended connections left to reap.
    graves: Graves,
}

struct Entry<S> {
    conn: Connection<S>,
    want_write: bool,
    standing: Standing,
}

/// Where a connection stands with [`Admission`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Standing {
    /// Counted as open.
    Admitted,
    /// Refused, kept only to be told why (over TLS, one of `refusing`).
    Refused,
    /// Waiting for its PROXY header: holds one of `max_conns`, and is
    /// admitted or refused by the address the header gives.
    Pending,
}

impl<P: Protocol> Worker<P> {
    fn new(
        listeners: [Option<std::net::TcpListener>; 2],
        proto: P,
        shared: Arc<Shared>,
        shutdown: &Shutdown,
    ) -> io::Result<Self> {
        let poll = Poll::new()?;
        let listeners = listeners.map(|listener| listener.map(TcpListener::from_std));
        let mut listeners = listeners;
        for (listener, token) in listeners.iter_mut().zip([LISTENER, WEB]) {
            if let Some(listener) = listener {
                poll.registry()
                    .register(listener, token, Interest::READABLE)?;
            }
        }
        let origins = Arc::new(shared.config.web_origins.clone());
        let waker = Waker::new(poll.registry(), WAKER)?;
        let (mailbox, letterbox) = mailbox::mailbox(waker, mailbox::CAPACITY);
        shutdown.watch(letterbox.bell());
        let mut proto = proto;
        proto.start(mailbox);
        let budget = Sweep::new(&shared.config, false).budget;
        Ok(Worker {
            poll,
            listeners,
            origins,
            conns: Slab::new(),
            proto,
            shared,
            scratch: Scratch::default(),
            dirty: Vec::new(),
            ready: Vec::new(),
            accept_at: None,
            sweep_at: None,
            budget,
            queued: 0,
            websockets: 0,
            letterbox,
            mail: Vec::new(),
            more_mail: false,
            generation: 0,
            refusing: 0,
            lingering: 0,
            draining: false,
            graves: Graves::default(),
        })
    }

    fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut deadline = None;
        let sweep = Sweep::new(&self.shared.config, self.listeners[1].is_some());
        loop {
            if deadline.is_none() && self.letterbox.shutdown() {
                deadline = Some(Instant::now() + self.shared.config.drain_timeout);
                self.start_drain();
            }
            if let Some(at) = deadline
                && (self.conns.is_empty() && self.graves.is_empty() || Instant::now() >= at)
            {
                self.cut_all();
                return Ok(());
            }
            let now = Instant::now();
            if self.sweep_at.is_none_or(|at| now >= at) {
                self.sweep_at = Some(now + sweep.every);
                self.sweep(&sweep);
            }
            let wake = [self.accept_at, deadline, self.sweep_at]
                .into_iter()
                .flatten()
                .min();
            let timeout = match self.ready.is_empty() && !self.more_mail {
                true => wake.map(|at| at.saturating_duration_since(Instant::now())),
                false => Some(Duration::ZERO),
            };
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            if self.accept_at.is_some_and(|at| Instant::now() >= at) {
                self.accept_at = None;
                self.accept();
            }
            for (key, hup) in std::mem::take(&mut self.ready) {
                if self.conns.contains(key) {
                    self.drive(key, hup);
                }
            }
            self.take_mail();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_on(false),
                    WEB => self.accept_on(true),
                    WAKER => {}
                    Token(token) => {
                        let (key, source) = (token / SOURCES, token % SOURCES);
                        let Some(entry) = self.conns.get_mut(key) else {
                            continue;
                        };
                        let hup = event.is_read_closed() || event.is_error();
                        entry.conn.child_ready(source, hup);
                        if source != 0 {
                            // The child's pipes or its exit.
                            self.drive(key, false);
                            continue;
                        }
                        // A writable-only event matters only with bytes pending.
                        if event.is_readable() || hup || entry.want_write {
                            self.drive(key, hup);
                        }
                    }
                }
            }
            self.flush_dirty();
            let counts = std::mem::take(&mut self.scratch.counts);
            self.shared.config.metrics.add(counts);
        }
    }

    /// Takes the connections waiting on both listeners.
    fn accept(&mut self) {
        self.accept_on(false);
        self.accept_on(true);
    }

    /// Takes the connections waiting on the lines listener, or the web one.
    fn accept_on(&mut self, web: bool) {
        while self.accept_at.is_none() {
            let Some(listener) = &self.listeners[usize::from(web)] else {
                return;
            };
            match listener.accept() {
                Ok((stream, peer)) => self.admit(stream, peer, web),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if is_out_of_resources(&e) => {
                    tracing::warn!(
                        error = %e,
                        pause_ms = ACCEPT_BACKOFF.as_millis() as u64,
                        "cannot accept; pausing"
                    );
                    self.accept_at = Some(Instant::now() + ACCEPT_BACKOFF);
                }
                // The client gave up before we got to it; nothing to serve.
                Err(e) => tracing::debug!(error = %e, "accept failed"),
            }
        }
    }

    fn admit(&mut self, mut stream: TcpStream, peer: SocketAddr, web: bool) {
        let shared = &self.shared;
        let proxied = shared.config.proxy_protocol;
        let mut refusal = None;
        // With the PROXY protocol, `peer` is the proxy: the client is known
        // once its header is read (see `admit_proxied`); until then it
        // holds one of max_conns.
        let verdict = match proxied {
            true => shared.admission.reserve(),
            false => shared.admit(peer.ip()),
        };
        if let Err(why) = verdict {
            shared.config.metrics.refused(why);
            match proxied {
                true => tracing::debug!(proxy = %peer, reason = why.reason(), "refused"),
                false => tracing::debug!(%peer, reason = why.reason(), "refused"),
            }
            // Over TLS, or on the web listener, the reason can be told only
            // after a handshake (TLS, HTTP): a few such refusals at a time.
            let told_later = shared.config.tls.is_some() || web;
            if !told_later {
                if self.lingering >= LINGER_MAX {
                    // A fresh socket's send buffer is empty, so this does
                    // not block; the close is immediate.
                    let _ = stream.write(&Framing::Line.frame(&why.line()));
                    return;
                }
                // Told at once, then a lingering close (see `close`).
            } else if self.refusing >= TLS_REFUSALS {
                return;
            } else {
                self.refusing += 1;
            }
            refusal = Some(why);
        } else if !proxied {
            shared.config.metrics.accepted();
        }
        let _ = stream.set_nodelay(true);
        // Keep what waits for a client that does not read in our queues,
        // where the limits see it, not in a kernel buffer of up to 4 MiB.
        let _ = socket2::SockRef::from(&stream).set_tcp_notsent_lowat(KERNEL_UNSENT);
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        let registered =
            self.poll
                .registry()
                .register(&mut stream, token(key, 0), Interest::READABLE);
        let transport = registered.and_then(|()| match &shared.config.tls {
            Some(tls) => Transport::tls(stream, tls.clone()),
            None => Ok(Transport::Plain(stream)),
        });
        let stream = match transport {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "cannot serve connection");
                match refusal {
                    Some(_) if shared.config.tls.is_some() || web => self.refusing -= 1,
                    Some(_) => {}
                    None if proxied => shared.admission.unreserve(),
                    None => shared.release(peer.ip()),
                }
                return;
            }
        };
        if refusal.is_none() && !proxied {
            tracing::debug!(%peer, "connection opened");
        }
        let id = ConnId::new(key, self.generation);
        self.generation = self.generation.wrapping_add(1);
        let open = match proxied {
            true => Connection::proxied,
            false => Connection::open,
        };
        let accepted = Accepted {
            id,
            stream,
            peer,
            refusal,
            budget: self.budget,
            web: web.then(|| self.origins.clone()),
            exec: shared.config.exec.is_some() && !web,
        };
        let conn = open(accepted, &mut self.proto, &mut self.scratch);
        let standing = match refusal {
            Some(_) => Standing::Refused,
            None if proxied => Standing::Pending,
            None => Standing::Admitted,
        };
        entry.insert(Entry {
            conn,
            want_write: false,
            standing,
        });
        self.deliver_post();
        self.drive(key, false);
    }

    /// Lets connection `key` do its I/O, then acts on the outcome.
    fn drive(&mut self, key: usize, hup: bool) {
        let entry = &mut self.conns[key];
        let max_line = self.shared.config.max_line;
        let status = entry
            .conn
            .drive(&mut self.proto, &mut self.scratch, max_line, hup);
        if let Status::Admit(header) = status {
            return self.admit_proxied(key, header, hup);
        }
        if status == Status::Spawn {
            return self.spawn(key);
        }
        if status == Status::Yield {
            self.ready.push((key, hup));
        }
        self.settle(key, status);
        self.deliver_post();
    }

    /// Connection `key` read its PROXY header (`Ok`: its `peer` is now the
    /// client's address) or a bad one (`Err`: why): admits the client or
    /// refuses it, as `admit` does at accept, then drives it on.
    fn admit_proxied(&mut self, key: usize, header: Result<(), &'static str>, hup: bool) {
        let shared = &self.shared;
        let entry = &mut self.conns[key];
        let peer = entry.conn.peer();
        let proxy = entry.conn.stream().peer_addr().unwrap_or(peer);
        let verdict = match header {
            Ok(()) => shared.admission.admit_reserved(peer.ip()),
            Err(bad) => {
                shared.admission.unreserve();
                let reason = Refusal::Proxy.reason();
                tracing::debug!(%proxy, reason, detail = bad, "refused");
                Err(Refusal::Proxy)
            }
        };
        let refusal = verdict.err();
        match refusal {
            None => {
                entry.standing = Standing::Admitted;
                shared.config.metrics.accepted();
                tracing::debug!(%peer, %proxy, "connection opened");
            }
            Some(why) => {
                entry.standing = Standing::Refused;
                shared.config.metrics.refused(why);
                if header.is_ok() {
                    tracing::debug!(%peer, %proxy, reason = why.reason(), "refused");
                }
                if shared.config.tls.is_some() || entry.conn.is_web() {
                    if self.refusing >= TLS_REFUSALS {
                        // Enough handshakes for refusals: just close.
                        let mut entry = self.conns.remove(key);
                        let _ = self.poll.registry().deregister(entry.conn.stream());
                        return;
                    }
                    self.refusing += 1;
                    if why == Refusal::Proxy {
                        // No TLS to say it in: a lingering close.
                        return self.close(key, CloseReason::Protocol);
                    }
                }
            }
        }
        let entry = &mut self.conns[key];
        entry
            .conn
            .admit(refusal, &mut self.proto, &mut self.scratch);
        self.deliver_post();
        self.drive(key, hup);
    }

    /// Starts connection `key`'s helper process and hands the connection
    /// to it; one that cannot be started is told so, and the server goes on.
    fn spawn(&mut self, key: usize) {
        let Some(exec) = &self.shared.config.exec else {
            return self.close(key, CloseReason::Error);
        };
        if self.draining {
            // Its handshake ended after the signal: no new child.
            return self.close(key, CloseReason::Shutdown);
        }
        let metrics = &self.shared.config.metrics;
        let entry = &mut self.conns[key];
        let remote = entry.conn.peer();
        let client = exec::Client {
            remote,
            local: entry.conn.stream().local_addr().unwrap_or(remote),
            subject: entry.conn.client_subject(),
        };
        let spawned = exec.spawn(&client).and_then(|mut child| {
            match child.register(self.poll.registry(), |source| token(key, source)) {
                Ok(()) => Ok(child),
                Err(e) => {
                    child.kill_now();
                    Err(e)
                }
            }
        });
        match spawned {
            Ok(child) => {
                metrics.spawned();
                tracing::debug!(peer = %remote, pid = child.pid(), "child started");
                entry.conn.adopt(child);
                self.drive(key, false);
            }
            Err(e) => {
                metrics.spawn_failed();
                tracing::warn!(peer = %remote, error = %e, "cannot start the command");
                let line = b"ERR cannot start the command";
                let status = entry
                    .conn
                    .end_with(line, CloseReason::Child, &mut self.scratch);
                self.settle(key, status);
            }
        }
    }

    fn settle(&mut self, key: usize, status: Status) {
        let entry = &mut self.conns[key];
        match status {
            Status::Wait { want_write } if want_write != entry.want_write => {
                let interest = if want_write {
                    Interest::READABLE | Interest::WRITABLE
                } else {
                    Interest::READABLE
                };
                entry.want_write = want_write;
                let registry = self.poll.registry();
                if let Err(e) = registry.reregister(entry.conn.stream(), token(key, 0), interest) {
                    tracing::warn!(peer = %entry.conn.peer(), error = %e, "cannot watch connection");
                    self.close(key, CloseReason::Error);
                }
            }
            // `Admit` and `Spawn` come only from `drive`, which handles them.
            Status::Wait { .. } | Status::Yield | Status::Admit(_) | Status::Spawn => {}
            Status::Close(why) => self.close(key, why),
        }
    }

    /// Queues the messages protocols sent to other connections, in order;
    /// they leave in [`flush_dirty`](Self::flush_dirty), one write each.
    fn deliver_post(&mut self) {
        let max_queue = self.shared.config.max_queue;
        while !self.scratch.post.is_empty() {
            let mut post = std::mem::take(&mut self.scratch.post);
            for (to, msg) in post.drain(..) {
                let key = to.key();
                // Gone, or its slot went to another since: nobody to tell.
                let Some(entry) = self.conns.get_mut(key).filter(|e| e.conn.id() == to) else {
                    continue;
                };
                self.scratch.counts.bytes_out += msg.len() as u64;
                if entry.conn.deliver(msg, max_queue) {
                    self.dirty.push(key);
                } else {
                    // Its notice goes to the others through the next post.
                    self.close(key, CloseReason::TooSlow);
                }
            }
            if self.scratch.post.is_empty() {
                self.scratch.post = post; // keep the allocation
            }
        }
    }

    fn flush_dirty(&mut self) {
        while let Some(key) = self.dirty.pop() {
            if let Some(entry) = self.conns.get_mut(key) {
                let status = entry.conn.flush_only();
                self.settle(key, status);
                self.deliver_post();
            }
        }
    }

    /// Ends connection `key` for `why`: with a lingering close when `why`
    /// is the server's decision ([`CloseReason::lingers`]), else at once.
    /// For a connection already lingering, `why` says how that ended.
    fn close(&mut self, key: usize, why: CloseReason) {
        self.end(key, why, true);
    }

    fn end(&mut self, key: usize, why: CloseReason, may_linger: bool) {
        let metrics = &self.shared.config.metrics;
        let entry = &mut self.conns[key];
        let id = entry.conn.id();
        if entry.conn.child_alive() {
            if may_linger {
                // It ends once its child is reaped (see `Connection::pump`).
                entry.conn.abandon(why);
                return;
            }
            // The drain timeout: no more waiting.
            if let Some(child) = entry.conn.child() {
                child.kill_now();
            }
        }
        let peer = entry.conn.peer();
        if let Some(child) = entry.conn.child() {
            let status = child.status().map_or("unknown".into(), exec::describe);
            tracing::debug!(%peer, pid = child.pid(), %status, "child exited");
            metrics.exited(status);
            if let Some(grave) = child.grave() {
                self.graves.bury(grave);
            }
        }
        if entry.conn.lingering() {
            let mut entry = self.conns.remove(key);
            let _ = self.poll.registry().deregister(entry.conn.stream());
            self.lingering -= 1;
            metrics.lingered(why);
            let (peer, reason) = (entry.conn.peer(), why.as_str());
            tracing::debug!(%peer, reason, "lingering close ended");
            return;
        }
        match entry.standing {
            Standing::Refused => {
                // Never admitted: told why, now gone.
                if self.shared.config.tls.is_some() || entry.conn.is_web() {
                    self.refusing -= 1;
                }
            }
            Standing::Pending => {
                // It ended without a PROXY header: refused as a bad one is.
                self.shared.admission.unreserve();
                metrics.refused(Refusal::Proxy);
                let before = match why {
                    CloseReason::Handshake => {
                        let timeout = self.shared.config.handshake_timeout;
                        format!("none within {} s", timeout.as_secs_f64())
                    }
                    why => format!("{} before one", why.as_str()),
                };
                let proxy = entry.conn.peer();
                let reason = Refusal::Proxy.reason();
                tracing::debug!(%proxy, reason, detail = before, "refused");
            }
            Standing::Admitted => {
                self.shared.release(entry.conn.peer().ip());
                metrics.closed(why);
                let (peer, reason) = (entry.conn.peer(), why.as_str());
                tracing::debug!(%peer, reason, "connection closed");
            }
        }
        let linger = may_linger && why.lingers() && (self.draining || self.lingering < LINGER_MAX);
        let session = if linger {
            // It stays in the slab, reading only, until the client's EOF or
            // a linger limit (`sweep`); it no longer counts as open.
            self.lingering += 1;
            metrics.linger();
            let session = entry.conn.linger();
            if std::mem::take(&mut entry.want_write) {
                let registry = self.poll.registry();
                let _ = registry.reregister(entry.conn.stream(), token(key, 0), Interest::READABLE);
            }
            self.ready.push((key, true));
            session
        } else {
            let mut entry = self.conns.remove(key);
            let _ = self.poll.registry().deregister(entry.conn.stream());
            entry.conn.finish()
        };
        // No session: refused, or a TLS handshake that never finished;
        // the protocol never knew it.
        if let Some(session) = session {
            let mut out = self.scratch.detached(id);
            self.proto.close(session, why, &mut out);
        }
    }

    /// Hands out the mail other threads posted: events to the connections
    /// they name (if still there) and to the protocol; a bounded batch per
    /// round, so that sockets get their turn.
    fn take_mail(&mut self) {
        const BATCH: usize = 1024;
        let mut mail = std::mem::take(&mut self.mail);
        self.more_mail = self.letterbox.take(BATCH, &mut mail);
        for mail in mail.drain(..) {
            match mail {
                Mail::To(to, event) => {
                    let key = to.key();
                    let Some(entry) = self.conns.get_mut(key).filter(|e| e.conn.id() == to) else {
                        continue;
                    };
                    let status = entry.conn.event(&mut self.proto, &mut self.scratch, event);
                    if status == Status::Yield {
                        // It waited for this mail: its lines go on.
                        self.ready.push((key, false));
                    }
                    self.settle(key, status);
                }
                Mail::Loop(event) => {
                    let mut out = self.scratch.detached(NOBODY);
                    self.proto.loop_event(event, &mut out);
                }
            }
            self.deliver_post();
        }
        self.mail = mail;
    }

    /// The periodic chores: refill line budgets (waking the connections
    /// that waited for one), and end each connection past a timeout: no
    /// complete line for `idle_timeout` (with a notice), a TLS handshake
    /// not done in `handshake_timeout`, or pending bytes the client took
    /// none of for `write_timeout`.
    fn sweep(&mut self, sweep: &Sweep) {
        let now = Instant::now();
        let mut ends = Vec::new();
        let (mut queued, mut websockets) = (0, 0);
        for (key, entry) in self.conns.iter_mut() {
            queued += entry.conn.queued() as u64;
            websockets += u64::from(entry.conn.is_websocket_member());
            if let Some(budget) = sweep.budget
                && entry.conn.refill(budget)
            {
                // It stopped reading mid-stream: read until the socket is dry.
                self.ready.push((key, true));
            }
            if let Some(child) = entry.conn.child()
                && child.tick(now)
            {
                // Signalled: see whether it is gone.
                self.ready.push((key, false));
            }
            let (idle, stalled) = entry.conn.sweep();
            if let Some(every) = sweep.ping
                && entry.conn.keepalive(every, &mut self.scratch)
            {
                self.dirty.push(key);
            }
            if entry.conn.lingering() {
                let (quiet, total) = sweep.linger;
                if idle > quiet || stalled > total {
                    ends.push((key, CloseReason::Idle));
                } else if entry.conn.take_throttled() {
                    self.ready.push((key, true));
                }
                continue;
            }
            let past = |limit: Option<u32>, n: u32| limit.is_some_and(|limit| n > limit);
            if entry.conn.handshaking() && past(sweep.handshake, idle) {
                ends.push((key, CloseReason::Handshake));
            } else if past(sweep.idle.as_ref().map(|(limit, _)| *limit), idle) {
                ends.push((key, CloseReason::Idle));
            } else if past(sweep.stall, stalled) {
                ends.push((key, CloseReason::TooSlow));
            }
        }
        self.graves.sweep(now);
        if self.shared.config.exec.is_some() {
            exec::reap_strays();
        }
        let metrics = &self.shared.config.metrics;
        metrics.queued(std::mem::replace(&mut self.queued, queued), queued);
        let was = std::mem::replace(&mut self.websockets, websockets);
        metrics.websockets(was, websockets);
        for (key, why) in ends {
            match (&sweep.idle, why) {
                (Some((_, notice)), CloseReason::Idle) if !self.conns[key].conn.lingering() => {
                    let entry = &mut self.conns[key];
                    let status = entry.conn.end_with(notice, why, &mut self.scratch);
                    self.settle(key, status);
                }
                // It is not listening, or cannot read us yet: just close.
                _ => self.close(key, why),
            }
        }
        self.deliver_post();
    }

    /// Stops accepting; every connection reads what already reached its
    /// socket, answers it and closes (see `Connection::stop_reading`).
    fn start_drain(&mut self) {
        // Clients the kernel already connected count as received: take them
        // from the backlog, or closing the listener would reset them.
        self.accept();
        self.draining = true;
        self.scratch.linger_bytes = u32::MAX;
        for listener in &mut self.listeners {
            if let Some(mut listener) = listener.take() {
                let _ = self.poll.registry().deregister(&mut listener);
            }
        }
        let keys: Vec<usize> = self.conns.iter().map(|(key, _)| key).collect();
        let queues = match keys.is_empty() {
            true => Default::default(),
            false => kernel::queues(),
        };
        for key in keys {
            if let Some(entry) = self.conns.get_mut(key) {
                let ends = socket_ends(&mut entry.conn);
                let unread = ends.and_then(|ends| queues.get(&ends));
                let unread = unread.map(|q| q.unread);
                entry
                    .conn
                    .stop_reading(&mut self.proto, &mut self.scratch, unread);
                entry.conn.drain_child(self.shared.config.drain_timeout);
                self.drive(key, true);
            }
        }
        self.flush_dirty();
    }

    /// The drain timeout: closes every connection left, now. One that
    /// still had bytes for its client is logged and counted.
    fn cut_all(&mut self) {
        let keys: Vec<usize> = self.conns.iter().map(|(key, _)| key).collect();
        let queues = match keys.is_empty() {
            true => Default::default(),
            false => kernel::queues(),
        };
        for key in keys {
            let Some(entry) = self.conns.get_mut(key) else {
                continue;
            };
            let peer = entry.conn.peer();
            let ends = socket_ends(&mut entry.conn);
            let queued = ends.and_then(|ends| queues.get(&ends));
            let unsent = entry.conn.unsent() + queued.map_or(0, |q| q.unacked as usize);
            if unsent > 0 {
                tracing::warn!(
                    %peer,
                    unsent,
                    "drain timeout: closed with bytes unsent"
                );
                self.shared.config.metrics.cut(unsent as u64);
            }
            self.end(key, CloseReason::Shutdown, false);
        }
        self.graves
            .sweep(Instant::now() + Duration::from_secs(3600));
        self.scratch.post.clear();
    }
}

/// A connection's socket's local and remote addresses, as the kernel's
/// tables name it (with the PROXY protocol, `peer()` is the client behind
/// the proxy, not the socket's other end).
fn socket_ends<S>(conn: &mut Connection<S>) -> Option<(SocketAddr, SocketAddr)> {
    let peer = conn.peer();
    let stream = conn.stream();
    let local = stream.local_addr().ok()?;
    Some((local, stream.peer_addr().unwrap_or(peer)))
}

/// What the periodic sweep does, and how often.
struct Sweep {
    every: Duration,
    /// Sweeps without a line before a connection is idle, and its notice.
    idle: Option<(u32, Vec<u8>)>,
    /// Sweeps a TLS handshake (and with the PROXY protocol, its header
    /// before it) may take.
    handshake: Option<u32>,
    /// Sweeps in a row a connection may leave its pending bytes untaken.
    stall: Option<u32>,
    /// Lines per connection per sweep.
    budget: Option<u32>,
    /// Sweeps a lingering close may stay quiet, and last in all.
    linger: (u32, u32),
    /// With a web listener: sweeps of a WebSocket client's silence between
    /// keepalive pings.
    ping: Option<u32>,
}

impl Sweep {
    /// The chores for `config`, with a web listener or not (whose HTTP
    /// request is bounded by the handshake timeout too).
    fn new(config: &Config, web: bool) -> Sweep {
        let second = Duration::from_secs(1);
        let handshake = (config.tls.is_some() || config.proxy_protocol || web)
            .then_some(config.handshake_timeout);
        let grace = config.exec.as_ref().map(|exec| exec.grace());
        let timeouts = [config.idle_timeout, handshake, config.write_timeout, grace];
        // At least once a second, for the rate budget and the queue gauge.
        let every = match timeouts.iter().flatten().min() {
            Some(t) => (*t / 2).clamp(Duration::from_millis(10), second),
            None => second,
        };
        let sweeps = |t: Duration| (t.as_secs_f64() / every.as_secs_f64()).ceil() as u32;
        let budget = config
            .max_lines_per_sec
            .map(|rate| ((rate as f64 * every.as_secs_f64()).ceil() as u32).max(1));
        Sweep {
            every,
            idle: config.idle_timeout.map(|t| (sweeps(t), idle_notice(t))),
            handshake: handshake.map(sweeps),
            stall: config.write_timeout.map(sweeps),
            budget,
            linger: (sweeps(LINGER_QUIET), sweeps(LINGER_TIME)),
            ping: web.then(|| sweeps(PING_EVERY)),
        }
    }
}

/// The last line to a connection closed for idleness.
fn idle_notice(timeout: Duration) -> Vec<u8> {
    format!("ERR idle timeout (no line for {} s)", timeout.as_secs_f64()).into_bytes()
}

fn is_out_of_resources(e: &io::Error) -> bool {
    // EMFILE, ENFILE, ENOBUFS, ENOMEM: the pending connection stays queued.
    matches!(e.raw_os_error(), Some(24 | 23 | 105 | 12))
}
