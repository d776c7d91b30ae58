//! The command line: clap derive; each flag's doc comment is its help text.

use clap::{Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Line-oriented TCP messaging: a server for thousands of clients, an
/// interactive client and a load generator.
#[derive(Debug, Parser)]
#[command(name = "sockline", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve a line protocol to many clients at once.
    Serve(Box<ServeArgs>),
    /// Talk to a line server interactively: send stdin lines, print replies.
    Connect(ConnectArgs),
    /// Load a line server and measure it, like redis-benchmark for any line
    /// protocol: throughput, latency, and with --server-pid its CPU and memory.
    Bench(BenchArgs),
    /// Print a completion script for SHELL (e.g. `sockline completions
    /// bash > /etc/bash_completion.d/sockline`).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page: sockline(1), or with a command's name its own
    /// page, sockline-serve(1) for `sockline man serve` (e.g. `sockline man
    /// serve > /usr/local/share/man/man1/sockline-serve.1`).
    Man {
        /// serve, connect, bench or completions.
        command: Option<String>,
    },
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on: PORT (on 127.0.0.1), IP:PORT or HOST:PORT;
    /// use 0.0.0.0:5000 or [::]:5000 to expose it.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:5000", value_parser = listen_addr)]
    pub listen: SocketAddr,
    /// What the server answers.
    #[arg(long, value_enum, default_value_t = Mode::Ack)]
    pub mode: Mode,
    /// Instead of a mode: run COMMAND (with /bin/sh -c; plain words naming
    /// a program are started directly) once per client, its stdin the
    /// client's bytes and its stdout sent back as it is; its stderr is
    /// logged. It gets PROTO=TCP, TCPREMOTEIP, TCPREMOTEPORT,
    /// TCPLOCALIP, TCPLOCALPORT (and TLSCLIENTSUBJECT with
    /// --tls-client-ca), as under tcpserver.
    #[arg(long, value_name = "COMMAND", conflicts_with_all = ["mode", "web"])]
    pub exec: Option<String>,
    /// With --exec: seconds a child has, once its client is gone (or the
    /// server drains), before its process group gets SIGTERM; SIGKILL
    /// follows as long after.
    #[arg(long, value_name = "SECONDS", default_value = "5", value_parser = seconds)]
    pub exec_grace: Duration,
    /// Longest accepted line in bytes; longer ones get an error and a close.
    #[arg(long, value_name = "BYTES", default_value_t = 65536, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_line: u64,
    /// Connections served at once; more are told `ERR server full`.
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_conns: usize,
    /// Seconds a shutdown (SIGINT/SIGTERM) waits for replies to drain.
    #[arg(long, value_name = "SECONDS", default_value = "5", value_parser = seconds)]
    pub drain_timeout: Duration,
    /// Only clients in this network may connect (repeatable; IPv4 or IPv6
    /// CIDR, or one address: 10.0.0.1 is 10.0.0.1/32).
    #[arg(long, value_name = "CIDR", value_parser = network)]
    pub allow: Vec<ipnet::IpNet>,
    /// Clients in this network may not connect (repeatable; wins over
    /// --allow; CIDR or one address).
    #[arg(long, value_name = "CIDR", value_parser = network)]
    pub deny: Vec<ipnet::IpNet>,
    /// Connections one IP address may hold at once (0: no limit).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub max_conns_per_ip: usize,
    /// Close a connection that sends no complete line for this many seconds
    /// (default, or 0: never).
    #[arg(long, value_name = "SECONDS", value_parser = seconds)]
    pub idle_timeout: Option<Duration>,
    /// Lines a second one connection may send; past it the server reads
    /// that connection more slowly (TCP backpressure), dropping nothing.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_lines_per_sec: Option<u32>,
    /// Close a connection whose pending replies the client takes none of
    /// for this many seconds (it does not read); 0 turns this off.
    #[arg(long, value_name = "SECONDS", default_value = "30", value_parser = seconds)]
    pub write_timeout: Duration,
    /// Speak TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) for --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Speak TLS with a throwaway self-signed certificate; its SHA-256
    /// fingerprint is printed at start (for `connect --pin`).
    #[arg(long, conflicts_with = "tls_cert")]
    pub tls_self_signed: bool,
    /// Require client certificates signed by a CA in this PEM file (mutual TLS).
    #[arg(long, value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,
    /// Seconds a client has to finish its TLS handshake (with
    /// --proxy-protocol, to send its PROXY header and, with TLS, finish
    /// the handshake after it; on the --web listener, to send its whole
    /// HTTP request too).
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = seconds)]
    pub tls_handshake_timeout: Duration,
    /// Behind a load balancer (HAProxy send-proxy or send-proxy-v2, nginx
    /// proxy_protocol, cloud load balancers): every connection must start
    /// with a PROXY protocol header (v1 or v2) giving the client's real
    /// address, which --allow/--deny, --max-conns-per-ip, the logs and the
    /// metrics then see. A connection without a valid header is refused
    /// (`ERR no valid PROXY protocol header`). Only load balancers should
    /// be able to reach a server started with it.
    #[arg(long)]
    pub proxy_protocol: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics (ADDR as for
    /// --listen).
    #[arg(long, value_name = "ADDR", value_parser = listen_addr)]
    pub metrics_listen: Option<SocketAddr>,
    /// Also listen for browsers at ADDR: GET / is a chat page, GET /ws a
    /// WebSocket whose messages are lines, in the same rooms and under the
    /// same limits as TCP clients (HTTPS and WSS with --tls). ADDR as for
    /// --listen.
    #[arg(long, value_name = "ADDR", value_parser = listen_addr)]
    pub web: Option<SocketAddr>,
    /// A page origin allowed to open a WebSocket (e.g.
    /// https://chat.example.com; * for any); repeatable. Default: pages
    /// from the host the browser connected to.
    #[arg(long, value_name = "ORIGIN", requires = "web")]
    pub web_origin: Vec<String>,
    /// How log lines look.
    #[arg(long, value_name = "FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// Event-loop threads (0: one per CPU available; chat always runs one).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub workers: usize,
    /// Chat: lines of a room replayed to whoever joins it.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub history: usize,
    /// Chat: rooms whose last member left that keep their history for the
    /// next to join; past it the one emptied longest ago forgets. 0: a
    /// room forgets its history as it empties.
    #[arg(long, value_name = "N", default_value_t = sockline::mode::HISTORY_ROOMS)]
    pub history_rooms: usize,
    /// Chat: rooms span every sockline pointed at this Redis
    /// (redis://[USER:PASSWORD@]HOST:PORT[/DB], or rediss:// for TLS);
    /// Redis puts each room's lines in one order for every node.
    #[arg(long, value_name = "URL")]
    pub redis: Option<String>,
    /// Chat with a rediss:// (TLS) --redis: trust the CA certificates in
    /// this PEM file instead of the system's roots.
    #[arg(long, value_name = "FILE", requires = "redis")]
    pub redis_ca: Option<PathBuf>,
    /// Chat with a rediss:// --redis: present this client certificate chain
    /// (PEM) to Redis (mutual TLS); needs --redis-key.
    #[arg(long, value_name = "FILE", requires_all = ["redis", "redis_key"])]
    pub redis_cert: Option<PathBuf>,
    /// The private key (PEM) for --redis-cert.
    #[arg(long, value_name = "FILE", requires = "redis_cert")]
    pub redis_key: Option<PathBuf>,
    /// Chat with --redis: this node's name in the cluster (default:
    /// HOSTNAME-PID).
    #[arg(long, value_name = "NAME", requires = "redis")]
    pub node: Option<String>,
    /// Bytes of messages from others (chat) a client may leave unread
    /// before it is disconnected as too slow.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_queue: u64,
    /// Log only warnings and errors.
    #[arg(short, long, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Also log every received line.
    #[arg(short, long)]
    pub verbose: bool,
}

/// The flags of chat alone: given with another mode, they are a mistake.
pub const CHAT_FLAGS: [&str; 8] = [
    "history",
    "history_rooms",
    "redis",
    "redis_ca",
    "redis_cert",
    "redis_key",
    "node",
    "max_queue",
];

/// Parses the command line; a chat flag with another mode is an error
/// (exit 2) that says which mode it belongs to.
pub fn parse() -> Cli {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let (Command::Serve(args), Some(("serve", serve))) = (&cli.command, matches.subcommand()) {
        let given =
            |id: &&&str| serve.value_source(id) == Some(clap::parser::ValueSource::CommandLine);
        let misplaced = match (&args.exec, args.mode) {
            (None, _) if given(&&"exec_grace") => Some("--exec-grace belongs to --exec".into()),
            (Some(_), _) | (None, Mode::Ack | Mode::Echo) => {
                CHAT_FLAGS.iter().find(given).map(|flag| {
                    let flag = flag.replace('_', "-");
                    match &args.exec {
                        Some(_) => format!("--{flag} belongs to --mode chat, not --exec"),
                        None => {
                            let mode = format!("{:?}", args.mode).to_lowercase();
                            format!("--{flag} belongs to --mode chat, not --mode {mode}")
                        }
                    }
                })
            }
            (None, Mode::Chat) => None,
        };
        if let Some(message) = misplaced {
            let mut command = Cli::command();
            command.build();
            let serve = command
                .find_subcommand_mut("serve")
                .expect("a serve command");
            serve
                .error(clap::error::ErrorKind::ArgumentConflict, message)
                .exit();
        }
    }
    cli
}

/// Log line formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// For people.
    Human,
    /// One JSON object per line, for machines.
    Json,
}

/// The built-in protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Answer every line with " MSG Received" (the tutorial's server).
    Ack,
    /// Send every line back.
    Echo,
    /// One conversation for many clients: names, rooms, /help.
    Chat,
}

#[derive(Debug, clap::Args)]
pub struct ConnectArgs {
    /// Server address: HOST:PORT, or HOST with PORT after it (as nc takes
    /// it).
    pub addr: String,
    /// The port, when HOST and PORT are given apart.
    pub port: Option<u16>,
    /// Seconds to wait for connecting, and for the server to close after BYE.
    #[arg(long, value_name = "SECONDS", default_value = "5", value_parser = seconds)]
    pub timeout: Duration,
    /// Speak TLS (the server's certificate is checked against the public
    /// roots, --ca, or --pin); --ca, --pin, --insecure and --cert imply it.
    #[arg(long)]
    pub tls: bool,
    /// Trust the CA certificates in this PEM file.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Accept only the server certificate with this SHA-256 fingerprint
    /// (as `serve --tls-self-signed` prints it).
    #[arg(long, value_name = "SHA256", conflicts_with = "ca")]
    pub pin: Option<String>,
    /// Accept any server certificate: encrypted, but not authenticated.
    #[arg(long, conflicts_with_all = ["ca", "pin"])]
    pub insecure: bool,
    /// Present this client certificate chain (PEM); needs --key.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// The private key (PEM) for --cert.
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Print the server's bytes as they are. By default, on a terminal,
    /// control characters are shown escaped (^[ for ESC), so a server or a
    /// chat member cannot drive your terminal; piped output is never escaped.
    #[arg(long)]
    pub raw: bool,
}

impl ConnectArgs {
    /// `HOST:PORT`, from one argument or two (`[IPv6]:PORT` for an IPv6
    /// host given apart from its port).
    pub fn target(&self) -> String {
        match self.port {
            None => self.addr.clone(),
            Some(port) if self.addr.contains(':') && !self.addr.starts_with('[') => {
                format!("[{}]:{port}", self.addr)
            }
            Some(port) => format!("{}:{port}", self.addr),
        }
    }

    /// The TLS settings, if --tls or a flag that implies it.
    pub fn tls(&self) -> Option<sockline::tls::ClientTls> {
        let tls = self.tls || self.ca.is_some() || self.pin.is_some() || self.insecure;
        (tls || self.cert.is_some()).then(|| sockline::tls::ClientTls {
            ca: self.ca.clone(),
            pin: self.pin.clone(),
            insecure: self.insecure,
            identity: self.cert.clone().zip(self.key.clone()),
        })
    }
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Server address, HOST:PORT, or ws://HOST:PORT/PATH for a WebSocket
    /// endpoint (each line one message). fanout: several, comma-separated
    /// (HOST:PORT,HOST:PORT), spread the members over those servers
    /// round-robin, as --also does.
    pub addr: String,
    /// fanout: one more server address (repeatable); members are spread
    /// over all addresses round-robin, e.g. the nodes of a cluster.
    #[arg(long, value_name = "ADDR")]
    pub also: Vec<String>,
    /// rr: request/reply throughput and latency; idle: cost of held
    /// connections; fanout: chat room delivery.
    #[arg(long, value_enum, default_value_t = sockline::loadgen::Scenario::Rr)]
    pub scenario: sockline::loadgen::Scenario,
    /// Connections (fanout: room members).
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..))]
    pub conns: u64,
    /// rr: request lines in flight per connection.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub pipeline: u64,
    /// rr and fanout: seconds to send for.
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = seconds)]
    pub duration: Duration,
    /// rr: total requests to send; wins over --duration.
    #[arg(long, value_name = "N")]
    pub requests: Option<u64>,
    /// The request line (rr, idle).
    #[arg(long, value_name = "LINE", default_value = "hello")]
    pub payload: String,
    /// Each reply must equal its request line, or it counts as an error.
    #[arg(long)]
    pub verify_echo: bool,
    /// idle: seconds to hold all connections before each sends its line.
    #[arg(long, value_name = "SECONDS", default_value = "1", value_parser = seconds)]
    pub hold: Duration,
    /// fanout: how many members send.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub senders: usize,
    /// fanout: lines per second per sender.
    #[arg(long, value_name = "N", default_value_t = 10.0)]
    pub rate: f64,
    /// fanout: spread the senders evenly over one period instead of having
    /// them send on the same tick.
    #[arg(long)]
    pub stagger: bool,
    /// Server process id: report its CPU per reply and memory per
    /// connection. Repeatable: CPU and memory are summed over all the given
    /// processes (a cluster's nodes and Redis).
    #[arg(long, value_name = "PID")]
    pub server_pid: Vec<u32>,
    /// Seconds to wait for a connect, or for a reply that is owed, before
    /// counting an error.
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = seconds)]
    pub timeout: Duration,
    /// Print a JSON object (an array with --sweep) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// rr once per connection count, e.g. 1,10,100,1000; one row each.
    #[arg(long, value_name = "N,N,...", value_delimiter = ',', value_parser = clap::value_parser!(u64).range(1..))]
    pub sweep: Vec<u64>,
    /// With --sweep: draw throughput and p99 latency against connections
    /// into this SVG file.
    #[arg(long, value_name = "FILE", requires = "sweep")]
    pub plot: Option<std::path::PathBuf>,
}

impl BenchArgs {
    /// The library's options for these flags.
    pub fn options(&self) -> sockline::loadgen::BenchOptions {
        sockline::loadgen::BenchOptions {
            addr: self.addr.clone(),
            also: self.also.clone(),
            scenario: self.scenario,
            conns: usize::try_from(self.conns).unwrap_or(usize::MAX),
            pipeline: usize::try_from(self.pipeline).unwrap_or(usize::MAX),
            duration: self.duration,
            requests: self.requests,
            payload: self.payload.clone(),
            verify_echo: self.verify_echo,
            hold: self.hold,
            senders: self.senders,
            rate: self.rate,
            stagger: self.stagger,
            server_pid: self.server_pid.first().copied(),
            also_pids: self.server_pid.iter().skip(1).copied().collect(),
            timeout: self.timeout,
            progress: true,
        }
    }

    /// The --sweep connection counts.
    pub fn sweep(&self) -> Vec<usize> {
        self.sweep
            .iter()
            .map(|&n| usize::try_from(n).unwrap_or(usize::MAX))
            .collect()
    }
}

/// An address to listen on: `PORT` (on 127.0.0.1, as a local tool
/// should), `IP:PORT`, `[IPv6]:PORT` or `HOST:PORT` (its first address).
pub fn listen_addr(s: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    let wrong = || format!("expected PORT, IP:PORT or HOST:PORT, not {s:?}");
    if !s.contains(':') {
        return Err(wrong());
    }
    match s.to_socket_addrs() {
        Ok(mut addrs) => addrs.next().ok_or_else(wrong),
        Err(e) => Err(format!("cannot resolve {s}: {e}")),
    }
}

/// A network for --allow/--deny: `CIDR`, or one address (a /32 or /128).
pub fn network(s: &str) -> Result<ipnet::IpNet, String> {
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("expected an address or a CIDR network (10.0.0.0/8), not {s:?}"))
}

/// A duration in seconds (`1.5`): a finite number, at least zero.
pub fn seconds(s: &str) -> Result<Duration, String> {
    s.parse::<f64>()
        .ok()
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        .ok_or_else(|| format!("expected a number of seconds, not {s:?}"))
}
