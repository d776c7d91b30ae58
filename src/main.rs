//! The `sockline` binary: parse the command line, start logging, run the
//! library, and turn any error into one line and an exit code.

#![forbid(unsafe_code)]

mod cli;

use anyhow::{Context, Result};
use cli::{Command, LogFormat, Mode, ServeArgs};
use sockline::{Config, Shutdown, mode, server};
use std::process::ExitCode;
use std::sync::Arc;

fn main() -> ExitCode {
    let cli = cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Connect(args) => {
            sockline::client::run(&args.target(), args.timeout, args.tls().as_ref(), args.raw)
                .map_err(anyhow::Error::from)
        }
        Command::Bench(args) => sockline::loadgen::command(
            &args.options(),
            &args.sweep(),
            args.json,
            args.plot.as_deref(),
        )
        .map_err(anyhow::Error::from),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut command = cli::Cli::command();
            clap_complete::generate(shell, &mut command, "sockline", &mut std::io::stdout());
            Ok(())
        }
        Command::Man { command } => man(command.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sockline: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> Result<()> {
    init_logging(args.quiet, args.verbose, args.log_format);
    let say = Say {
        json: args.log_format == LogFormat::Json,
    };
    let redis_tls = redis_tls(&args)?;
    if let Some(url) = &args.redis {
        mode::check_url(url, redis_tls.as_ref()).map_err(anyhow::Error::msg)?;
    }
    if let Err(e) = server::raise_fd_limit() {
        tracing::warn!(error = %e, "cannot raise the open-file limit");
    }
    let listener = server::bind(args.listen).map_err(|e| listen_error("", args.listen, &e))?;
    let shutdown = Shutdown::new();

    let tls = tls_config(&args, &say)?;
    let config = Config {
        max_line: usize::try_from(args.max_line).unwrap_or(usize::MAX),
        max_conns: args.max_conns,
        drain_timeout: args.drain_timeout,
        workers: args.workers,
        access: server::Access {
            allow: args.allow,
            deny: args.deny,
        },
        max_conns_per_ip: args.max_conns_per_ip,
        idle_timeout: args.idle_timeout.filter(|t| !t.is_zero()),
        max_lines_per_sec: args.max_lines_per_sec,
        max_queue: usize::try_from(args.max_queue).unwrap_or(usize::MAX),
        metrics: Default::default(),
        tls,
        handshake_timeout: args.tls_handshake_timeout,
        write_timeout: Some(args.write_timeout).filter(|t| !t.is_zero()),
        proxy_protocol: args.proxy_protocol,
        web_origins: sockline::web::Origins {
            allowed: args.web_origin.clone(),
        },
        exec: (args.exec.clone())
            .map(|command| sockline::exec::Exec::new(command, args.exec_grace)),
    };
    let (metrics, drain, json) = (config.metrics.clone(), args.drain_timeout, say.json);
    let quiet = args.quiet;
    shutdown
        .trigger_on_signals_then(move || {
            if quiet {
                return;
            }
            let open = metrics.open.load(std::sync::atomic::Ordering::Relaxed);
            let plural = if open == 1 { "" } else { "s" };
            let message = format!(
                "draining {open} connection{plural} (at most {} s); Ctrl-C again to stop now",
                drain.as_secs_f64()
            );
            Say { json }.line(&message, &[("draining", open.to_string())]);
        })
        .context("cannot install signal handlers")?;
    summarize(config.metrics.clone());
    if let Some(at) = args.metrics_listen {
        let metrics_listener =
            std::net::TcpListener::bind(at).map_err(|e| listen_error(" for metrics", at, &e))?;
        let at = metrics_listener.local_addr()?;
        say.line(
            &format!("metrics at http://{at}/metrics"),
            &[("metrics", at.to_string())],
        );
        sockline::metrics::serve(metrics_listener, config.metrics.clone())
            .context("cannot start the metrics server")?;
    }
    let listeners = Listeners {
        lines: listener,
        web: match args.web {
            Some(at) => {
                let web = server::bind(at).map_err(|e| listen_error(" for browsers", at, &e))?;
                let scheme = if config.tls.is_some() {
                    "https"
                } else {
                    "http"
                };
                let at = web.local_addr()?;
                let url = format!("{scheme}://{at}/");
                let fields = [("web", at.to_string()), ("url", url.clone())];
                say.line(&format!("web listening on {at} ({url})"), &fields);
                Some(web)
            }
            None => None,
        },
    };
    // Last: tools wait for this line (the web one, if any, came first).
    let addr = listeners.lines.local_addr()?;
    let (mode, message) = match &args.exec {
        Some(command) => (
            "exec".into(),
            format!("exec mode ({command}), listening on {addr}"),
        ),
        None => (
            format!("{:?}", args.mode).to_lowercase(),
            format!("{:?} mode, listening on {addr}", args.mode),
        ),
    };
    say.line(&message, &[("listen", addr.to_string()), ("mode", mode)]);
    match args.mode {
        // With --exec (which excludes --mode) the helper processes answer,
        // and the protocol is never asked.
        Mode::Ack => listeners.run(mode::Ack, config, shutdown),
        Mode::Echo => listeners.run(mode::Echo, config, shutdown),
        Mode::Chat => {
            let rooms = mode::LocalRooms::new(args.history).history_rooms(args.history_rooms);
            match &args.redis {
                None => listeners.run(mode::Chat::with_rooms(rooms), config, shutdown),
                Some(url) => {
                    let node = args.node.clone().unwrap_or_else(default_node);
                    let fields = [("redis", url.clone()), ("node", node.clone())];
                    let message = format!("chat rooms through Redis at {url}, as node {node}");
                    say.line(&message, &fields);
                    let mut rooms = mode::RedisRooms::new(url, &node, rooms, args.history);
                    if let Some(certs) = redis_tls {
                        rooms = rooms.tls(certs);
                    }
                    listeners.run(mode::Chat::with_rooms(rooms), config, shutdown)
                }
            }
        }
    }
    .context("server failed")
}

/// Connection churn, once a second when there was any, at the default log
/// level: a burst of thousands of connections is a line a second, not a
/// line each (`-v` shows each).
fn summarize(metrics: Arc<sockline::metrics::Metrics>) {
    // The baseline now, not when the thread first runs (which on a busy
    // machine can be after the first connections came and went).
    // TLS failures read before the churn: a part of its closed.
    let mut last_tls = metrics.tls_failed();
    let mut last = metrics.churn();
    let spawned = std::thread::Builder::new()
        .name("summary".into())
        .spawn(move || {
            loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
                let tls = metrics.tls_failed();
                let now = metrics.churn();
                let tls_failed = tls - last_tls;
                last_tls = tls;
                let opened = now.0 - last.0;
                let closed = now.1 - last.1;
                let deltas: Vec<(&str, u64)> = (now.2.iter().zip(last.2))
                    .map(|(&(why, n), (_, was))| (why, n - was))
                    .filter(|&(_, n)| n > 0)
                    .collect();
                last = now;
                let refused: u64 = deltas.iter().map(|(_, n)| n).sum();
                if opened == 0 && closed == 0 && refused == 0 {
                    continue;
                }
                let reasons: Vec<String> = (deltas.iter())
                    .map(|(why, n)| format!("{n} {why}"))
                    .collect();
                let refused_for = reasons.join(", ");
                // Fields that would be 0 are left out (`None` is not shown).
                let some = |n: u64| (n > 0).then_some(n);
                tracing::info!(
                    opened,
                    closed,
                    tls_failed = some(tls_failed),
                    refused = some(refused),
                    refused_for = (refused > 0).then_some(refused_for.as_str()),
                    "connections in the last second"
                );
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no connection summaries");
    }
}

/// The server's own start-up lines (where it listens, the TLS fingerprint):
/// always shown, also with `-q`, for people as `sockline: ...`, for
/// machines (`--log-format json`) as one JSON object like the log's, with
/// the facts as fields.
struct Say {
    json: bool,
}

impl Say {
    fn line(&self, message: &str, fields: &[(&str, String)]) {
        if !self.json {
            eprintln!("sockline: {message}");
            return;
        }
        use tracing_subscriber::fmt::format::Writer;
        use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
        let mut timestamp = String::new();
        let _ = SystemTime.format_time(&mut Writer::new(&mut timestamp));
        let mut all = serde_json::Map::new();
        all.insert("message".into(), message.into());
        for (name, value) in fields {
            all.insert((*name).into(), value.as_str().into());
        }
        let line = serde_json::json!({
            "timestamp": timestamp,
            "level": "INFO",
            "fields": all,
            "target": "sockline",
        });
        eprintln!("{line}");
    }
}

/// Prints sockline(1), or sockline-COMMAND(1).
fn man(command: Option<&str>) -> Result<()> {
    use clap::CommandFactory;
    let mut top = cli::Cli::command();
    top.build();
    let page = match command {
        None => top,
        Some(name) => {
            let Some(sub) = top.find_subcommand(name) else {
                anyhow::bail!("no command {name:?} (serve, connect, bench, completions, man)");
            };
            let title: &'static str = format!("sockline-{name}").leak();
            sub.clone().name(title).version(env!("CARGO_PKG_VERSION"))
        }
    };
    clap_mangen::Man::new(page).render(&mut std::io::stdout())?;
    Ok(())
}

/// `cannot listen[ for WHAT] on ADDR: address in use`: which listener, and
/// the reason as a short phrase.
fn listen_error(what: &str, at: std::net::SocketAddr, e: &std::io::Error) -> anyhow::Error {
    let why = sockline::error::describe(e);
    anyhow::anyhow!("cannot listen{what} on {at}: {why}")
}

/// The lines listener, and the web one if asked for.
struct Listeners {
    lines: std::net::TcpListener,
    web: Option<std::net::TcpListener>,
}

impl Listeners {
    fn run<P: sockline::Protocol>(
        self,
        proto: P,
        config: Config,
        shutdown: Shutdown,
    ) -> std::io::Result<()> {
        match self.web {
            None => server::run(self.lines, proto, config, shutdown),
            Some(web) => server::run_with_web(self.lines, web, proto, config, shutdown),
        }
    }
}

/// A node name unique enough: this host's name and this process's id.
fn default_node() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host = host.trim();
    let host = if host.is_empty() { "sockline" } else { host };
    format!("{host}-{}", std::process::id())
}

/// The certificates for a rediss:// --redis from the --redis-ca,
/// --redis-cert and --redis-key flags, if any.
fn redis_tls(args: &ServeArgs) -> Result<Option<redis::TlsCertificates>> {
    let identity = args.redis_cert.as_deref().zip(args.redis_key.as_deref());
    if args.redis_ca.is_none() && identity.is_none() {
        return Ok(None);
    }
    Ok(Some(sockline::tls::redis_certificates(
        args.redis_ca.as_deref(),
        identity,
    )?))
}

/// The server's TLS config from the --tls-* flags, if any.
fn tls_config(args: &ServeArgs, say: &Say) -> Result<Option<Arc<rustls::ServerConfig>>> {
    use sockline::tls;
    let client_ca = args.tls_client_ca.as_deref();
    let config = if args.tls_self_signed {
        let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
        if !args.listen.ip().is_unspecified() {
            names.push(args.listen.ip().to_string());
        }
        let made = tls::self_signed(names)?;
        let fingerprint = tls::fingerprint(&made.cert);
        let message =
            format!("TLS with a self-signed certificate, SHA-256 fingerprint {fingerprint}");
        say.line(&message, &[("fingerprint", fingerprint.clone())]);
        tls::server_config(vec![made.cert], made.key, client_ca)?
    } else if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        tls::server_config(tls::load_certs(cert)?, tls::load_key(key)?, client_ca)?
    } else if client_ca.is_some() {
        anyhow::bail!("--tls-client-ca needs --tls-cert and --tls-key, or --tls-self-signed");
    } else {
        return Ok(None);
    };
    Ok(Some(config))
}

/// Colour on a terminal only, and never with `NO_COLOR` set (no-color.org).
fn colour() -> bool {
    let off = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    !off && std::io::IsTerminal::is_terminal(&std::io::stderr())
}

fn init_logging(quiet: bool, verbose: bool, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    // Our own lines at the level asked for; libraries' only when they warn.
    let default = if quiet {
        "warn"
    } else if verbose {
        "warn,sockline=debug"
    } else {
        "warn,sockline=info"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour())
        .with_target(false);
    match format {
        LogFormat::Human => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
}
