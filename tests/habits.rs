//! The habits users bring from nc, socat, redis-cli and wrk (issue 13):
//! addresses as they type them, errors that name what they are about.

mod common;

use common::{bin, run, serve_binary};
use std::process::Command;
use std::time::Duration;

fn sockline(args: &[&str], input: &str) -> common::Finished {
    run(
        Command::new(bin()).args(args),
        input,
        Duration::from_secs(20),
    )
}

#[test]
fn a_bare_port_and_host_names_are_addresses() {
    // A bare port listens on 127.0.0.1; a host name resolves.
    let server = serve_binary(&["--listen", "0"]);
    assert!(server.addr.ip().is_loopback(), "{}", server.addr);
    let named = serve_binary(&["--listen", "localhost:0"]);
    assert!(named.addr.ip().is_loopback(), "{}", named.addr);
    // connect HOST PORT, as nc takes it, and a host name.
    let port = server.addr.port().to_string();
    let done = sockline(&["connect", "127.0.0.1", &port], "hello\nBYE\n");
    assert_eq!(
        done.stdout, " MSG Received\n MSG Received\n",
        "{}",
        done.stderr
    );
    assert!(done.status.success());
    let named = format!("localhost:{}", named.addr.port());
    let done = sockline(&["connect", &named], "hi\nbye\n");
    assert_eq!(
        done.stdout, " MSG Received\n MSG Received\n",
        "{}",
        done.stderr
    );
    // Garbage is refused by the argument parser, with exit code 2.
    let done = sockline(&["serve", "--listen", "nohost"], "");
    assert_eq!(done.status.code(), Some(2));
    assert!(
        done.stderr.contains("expected PORT, IP:PORT or HOST:PORT"),
        "{}",
        done.stderr
    );
}

#[test]
fn allow_and_deny_take_a_bare_address() {
    let denied = serve_binary(&["--deny", "127.0.0.1"]);
    let port = denied.addr.port().to_string();
    let done = sockline(&["connect", "127.0.0.1", &port], "hello\n");
    assert!(done.stdout.contains("ERR access denied"), "{}", done.stdout);
    let allowed = serve_binary(&["--allow", "127.0.0.1", "--allow", "::1"]);
    let port = allowed.addr.port().to_string();
    let done = sockline(&["connect", "127.0.0.1", &port], "hello\nbye\n");
    assert_eq!(done.stdout, " MSG Received\n MSG Received\n");
}

#[test]
fn a_listener_that_cannot_bind_is_named_in_the_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let at = taken.local_addr().unwrap().to_string();
    for (flag, words) in [
        ("--listen", "cannot listen on"),
        ("--metrics-listen", "cannot listen for metrics on"),
        ("--web", "cannot listen for browsers on"),
    ] {
        let mut args = vec!["serve", flag, &at];
        if flag != "--listen" {
            args.extend(["--listen", "0"]);
        }
        let done = sockline(&args, "");
        assert_eq!(done.status.code(), Some(1), "{flag}");
        assert_eq!(
            done.stderr.lines().last().unwrap(),
            format!("sockline: {words} {at}: address in use"),
            "{flag}"
        );
    }
}

#[test]
fn a_flag_of_another_mode_is_an_error_that_names_its_mode() {
    for (args, flag, mode) in [
        (&["--history", "5"][..], "--history", "ack"),
        (
            &["--mode", "echo", "--max-queue", "5"][..],
            "--max-queue",
            "echo",
        ),
        (
            &["--mode", "ack", "--redis", "redis://127.0.0.1:1"][..],
            "--redis",
            "ack",
        ),
    ] {
        let done = sockline(&[&["serve", "--listen", "0"][..], args].concat(), "");
        assert_eq!(done.status.code(), Some(2), "{args:?}");
        let first = done.stderr.lines().next().unwrap_or_default().to_owned();
        assert_eq!(
            first,
            format!("error: {flag} belongs to --mode chat, not --mode {mode}")
        );
    }
    let done = sockline(&["serve", "--listen", "0", "--max-conns", "0"], "");
    assert_eq!(done.status.code(), Some(2));
    assert!(done.stderr.contains("--max-conns"), "{}", done.stderr);
}

#[test]
fn completions_and_man_pages_come_from_the_same_definitions() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let done = sockline(&["completions", shell], "");
        assert!(done.status.success(), "{shell}: {}", done.stderr);
        // Every command and a flag of serve are in the script.
        for word in ["serve", "connect", "bench", "max-line"] {
            assert!(done.stdout.contains(word), "{shell} lacks {word}");
        }
    }
    let bash = sockline(&["completions", "bash"], "").stdout;
    let dir = std::env::temp_dir().join(format!("sockline-completion-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("sockline.bash"), &bash).unwrap();
    // bash itself takes the script and completes `sockline se` to serve.
    let check = format!(
        "source {}/sockline.bash; COMP_WORDS=(sockline se); COMP_CWORD=1; _sockline sockline se sockline; echo ${{COMPREPLY[@]}}",
        dir.display()
    );
    let out = Command::new("bash").args(["-c", &check]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "serve");
    let _ = std::fs::remove_dir_all(&dir);

    let page = sockline(&["man"], "");
    assert!(page.stdout.starts_with(".ie"), "{}", page.stdout);
    assert!(page.stdout.contains(".TH sockline 1"));
    let serve = sockline(&["man", "serve"], "").stdout;
    assert!(serve.contains(".TH sockline-serve 1"));
    assert!(serve.contains("\\-\\-web"), "the page lacks --web");
    let done = sockline(&["man", "nope"], "");
    assert_eq!(done.status.code(), Some(1));
}

/// `sockline serve EXTRA` with its stderr on a pseudo-terminal, `env`
/// set: what it printed once a client came and went.
fn serve_on_a_terminal(env: &[(&str, &str)]) -> String {
    use nix::pty::openpty;
    use std::io::Read;
    use std::process::Stdio;
    let pty = openpty(None, None).expect("openpty");
    let mut child = common::KillOnDrop(
        Command::new(bin())
            .args(["serve", "--listen", "0"])
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(pty.slave))
            .spawn()
            .unwrap(),
    );
    let mut master = std::fs::File::from(pty.master);
    let mut seen = Vec::new();
    let mut buf = [0; 4096];
    // Up to the end of the `listening on` line (a read may stop within
    // the address), then one client.
    let whole = |seen: &[u8]| {
        let text = String::from_utf8_lossy(seen);
        text.find("listening on ")
            .is_some_and(|at| text[at..].contains('\n'))
    };
    while !whole(&seen) {
        let n = master.read(&mut buf).unwrap();
        seen.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&seen).into_owned();
    let at = text.find("listening on ").unwrap() + "listening on ".len();
    let addr: std::net::SocketAddr = text[at..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    drop(std::net::TcpStream::connect(addr).unwrap());
    while !String::from_utf8_lossy(&seen).contains("connections in the last second") {
        let n = master.read(&mut buf).unwrap();
        seen.extend_from_slice(&buf[..n]);
    }
    let _ = child.kill();
    String::from_utf8_lossy(&seen).into_owned()
}

#[test]
fn colour_only_on_a_terminal_and_never_with_no_color() {
    let coloured = serve_on_a_terminal(&[]);
    assert!(
        coloured.contains("\x1b["),
        "no colour on a terminal: {coloured:?}"
    );
    let plain = serve_on_a_terminal(&[("NO_COLOR", "1")]);
    assert!(
        !plain.contains('\x1b'),
        "colour despite NO_COLOR: {plain:?}"
    );
    // Piped (as every other test runs it): none.
    let server = serve_binary(&[]);
    drop(std::net::TcpStream::connect(server.addr).unwrap());
    assert!(!server.banner.contains('\x1b'));
}

#[test]
fn json_logs_are_one_object_a_line_start_up_lines_included() {
    use std::io::BufRead;
    use std::process::Stdio;
    let mut child = common::KillOnDrop(
        Command::new(bin())
            .args(["serve", "--listen", "0", "--log-format", "json"])
            .args(["--metrics-listen", "0", "--web", "0", "--tls-self-signed"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut fields = serde_json::Map::new();
    for line in stderr.lines() {
        let line = line.unwrap();
        let object: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let these = object["fields"].as_object().expect("fields").clone();
        fields.extend(these);
        if fields.contains_key("listen") {
            break;
        }
    }
    for name in ["fingerprint", "metrics", "web", "url", "listen", "mode"] {
        assert!(fields.contains_key(name), "no {name} in {fields:?}");
    }
    let listen: std::net::SocketAddr = fields["listen"].as_str().unwrap().parse().unwrap();
    assert!(listen.ip().is_loopback());
}

#[test]
fn json_logs_carry_the_peer_the_line_and_the_reason_as_fields() {
    let mut server = serve_binary(&["--log-format", "json", "-v"]);
    let mut client = common::connect(server.addr);
    let peer = client.local_addr().unwrap().to_string();
    common::send(&mut client, b"hello json\nBYE\n");
    assert_eq!(
        common::read_to_close(&mut client),
        b" MSG Received\n".repeat(2)
    );
    let pid = server.child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    assert!(common::wait_within(&mut server.child, Duration::from_secs(10)).is_some());
    let log = std::mem::replace(&mut server.stderr, std::thread::spawn(String::new))
        .join()
        .unwrap();
    let mut objects = Vec::new();
    for line in server.banner.lines().chain(log.lines()) {
        let object: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let fields = object["fields"].as_object().expect("fields").clone();
        // The facts are fields: none is inside the message.
        let message = fields["message"].as_str().expect("a message");
        for fact in [peer.as_str(), "hello json", "closed by protocol"] {
            assert!(!message.contains(fact), "{fact:?} in the message: {line}");
        }
        objects.push(fields);
    }
    let about = |message: &str| -> Vec<&serde_json::Map<String, serde_json::Value>> {
        (objects.iter())
            .filter(|fields| {
                fields["message"] == message && fields.get("peer") == Some(&peer.clone().into())
            })
            .collect()
    };
    let lines: Vec<_> = about("line received")
        .iter()
        .map(|fields| fields["line"].clone())
        .collect();
    assert_eq!(lines, ["hello json", "BYE"], "{log}");
    let closed = about("connection closed");
    assert_eq!(closed.len(), 1, "{log}");
    assert_eq!(closed[0]["reason"], "closed by protocol", "{log}");
}

#[test]
fn ctrl_c_says_it_drains_and_a_second_one_stops_at_once() {
    let mut server = serve_binary(&["--drain-timeout", "30"]);
    // A client that sends and never reads: its replies hold the drain.
    let stuck = common::connect(server.addr);
    let lines = "x\n".repeat(1 << 20);
    let writer = {
        let mut stuck = stuck.try_clone().unwrap();
        std::thread::spawn(move || {
            use std::io::Write;
            let _ = stuck.write_all(lines.as_bytes());
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let pid = server.child.id().to_string();
    let int = |pid: &str| {
        let status = Command::new("kill").args(["-INT", pid]).status().unwrap();
        assert!(status.success());
    };
    int(&pid);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "it did not drain"
    );
    int(&pid);
    let status = common::wait_within(&mut server.child, Duration::from_secs(5))
        .expect("the second Ctrl-C did not stop it at once");
    assert_eq!(status.code(), Some(130));
    let log = std::mem::replace(&mut server.stderr, std::thread::spawn(String::new))
        .join()
        .unwrap();
    assert!(
        log.contains("draining 1 connection (at most 30 s); Ctrl-C again to stop now"),
        "{log}"
    );
    let _ = stuck.shutdown(std::net::Shutdown::Both);
    let _ = writer.join();
}

#[test]
fn a_burst_of_refusals_is_a_line_a_second_unless_verbose() {
    for verbose in [false, true] {
        let mut args = vec!["--max-conns", "1"];
        if verbose {
            args.push("-v");
        }
        let (_server, log, addr) = serve_with_log(&args);
        let _first = common::connect(addr);
        std::thread::sleep(Duration::from_millis(100));
        for _ in 0..200 {
            let mut refused = common::connect(addr);
            let _ = common::read_to_close(&mut refused);
        }
        // Until the summaries have told all 200 (each refusal's own line,
        // with -v, comes before the summary that counts it).
        let (mut refused, mut summaries, mut each) = (0, 0, 0);
        while refused < 200 {
            let line = (log.recv_timeout(Duration::from_secs(20)))
                .unwrap_or_else(|_| panic!("summaries told {refused} refusals of 200"));
            each += usize::from(line.ends_with(" reason=\"server full\""));
            if line.contains("connections in the last second") {
                summaries += 1;
                refused += field(&line, "refused");
            }
        }
        assert_eq!(refused, 200);
        match verbose {
            // A line a second, not a line each (the burst takes a second
            // or two, more on a loaded machine).
            false => {
                assert_eq!(each, 0);
                assert!(summaries < 20, "{summaries} summaries");
            }
            true => assert_eq!(each, 200),
        }
    }
}

#[test]
fn the_summary_counts_tls_failures() {
    let (_server, log, addr) = serve_with_log(&["--tls-self-signed"]);
    // Plain text to a TLS server: its handshake fails.
    let mut plain = common::connect(addr);
    common::send(&mut plain, b"hello\n");
    let _ = common::read_to_close(&mut plain);
    // Opened and closed may fall in two summaries: the counts add up.
    let (mut closed, mut tls_failed, mut seen) = (0, 0, String::new());
    while closed < 1 {
        let line = log
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("no summary of the close in 20 s:\n{seen}"));
        if line.contains("connections in the last second") {
            closed += field(&line, "closed");
            tls_failed += field(&line, "tls_failed");
        }
        seen.push_str(&line);
        seen.push('\n');
    }
    assert_eq!((closed, tls_failed), (1, 1), "{seen}");
}

/// `sockline serve --listen 0 ARGS...`, its stderr line by line through a
/// channel (so a test waits for what it needs, not for a fixed time), and
/// its address.
fn serve_with_log(
    args: &[&str],
) -> (
    common::KillOnDrop,
    std::sync::mpsc::Receiver<String>,
    std::net::SocketAddr,
) {
    use std::io::BufRead;
    use std::process::Stdio;
    let mut child = common::KillOnDrop(
        Command::new(bin())
            .args(["serve", "--listen", "0"])
            .args(args)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (lines, log) = std::sync::mpsc::channel();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let banner = (0..10)
        .map(|_| log.recv_timeout(Duration::from_secs(20)).unwrap())
        .find(|line| line.contains("listening on "))
        .unwrap();
    let addr = banner.rsplit(' ').next().unwrap().parse().unwrap();
    (child, log, addr)
}

/// The number after ` NAME=` in a log line, or 0.
fn field(line: &str, name: &str) -> u64 {
    (line.split(&format!(" {name}=")).nth(1))
        .and_then(|rest| rest.split(' ').next()?.parse::<u64>().ok())
        .unwrap_or(0)
}

#[test]
fn help_texts_name_values_as_the_readme_does() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let words = [
        "ADDR", "BYTES", "CIDR", "FILE", "FORMAT", "LINE", "MODE", "N", "NAME", "ORIGIN", "PID",
        "SCENARIO", "SECONDS", "URL", "SHA256", "SHELL", "COMMAND",
    ];
    for command in ["serve", "connect", "bench"] {
        let help = sockline(&[command, "--help"], "").stdout;
        for line in help.lines().filter(|l| l.trim_start().starts_with("--")) {
            let Some(name) = line.split('<').nth(1).and_then(|r| r.split('>').next()) else {
                continue;
            };
            let name = name.trim_end_matches(",N,...");
            assert!(words.contains(&name), "{command}: <{name}> in {line:?}");
        }
    }
    // Each of the README's flag tables uses the same words.
    for word in ["ADDR", "BYTES", "CIDR", "FILE", "N"] {
        assert!(readme.contains(&format!(" {word}`")), "README lacks {word}");
    }
    // Where 0 means something, the help says what.
    let serve = sockline(&["serve", "--help"], "").stdout;
    for flag in [
        "--max-conns-per-ip",
        "--idle-timeout",
        "--write-timeout",
        "--workers",
        "--history-rooms",
    ] {
        let at = serve.find(&format!("{flag} <")).unwrap();
        let text = &serve[at..];
        let text = &text[..text[2..]
            .find("\n      --")
            .map_or(text.len(), |end| end + 2)];
        assert!(
            text.contains("0"),
            "{flag} does not say what 0 means: {text}"
        );
    }
}
