//! Real headless Chromium (tests/common/browser.rs): the harness on a page
//! served by the test itself, then the built-in chat page of `serve --web`
//! with two browsers and a terminal (`sockline connect`) in one room.
//! Screenshots are kept in target/test-artifacts/.

mod common;

use common::browser::{Browser, artifacts_dir, processes_in_group, processes_using};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

/// An input and a log: Enter appends the typed line to the log, as text.
const PAGE: &str = r#"<!doctype html>
<html>
<head><meta charset="utf-8"><title>sockline browser harness</title></head>
<body style="font: 16px sans-serif">
<input id="input" autocomplete="off" autofocus>
<div id="log"></div>
<script>
const input = document.getElementById("input");
const log = document.getElementById("log");
input.addEventListener("keydown", (event) => {
  if (event.key !== "Enter") return;
  const line = document.createElement("div");
  line.textContent = input.value;
  log.appendChild(line);
  input.value = "";
});
</script>
</body>
</html>
"#;

/// Answers one request on `stream`: `PAGE` for `GET /`, 404 otherwise.
fn answer(mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request = String::new();
    if reader.read_line(&mut request).is_err() {
        return;
    }
    // The headers, up to the blank line.
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
        line.clear();
    }
    let (status, body) = if request.starts_with("GET / ") {
        ("200 OK", PAGE)
    } else {
        ("404 Not Found", "not found\n")
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes());
}

/// Serves `PAGE` at `/` (and 404 elsewhere) on 127.0.0.1, from a thread
/// that lives as long as the test process.
fn serve_page() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        // A thread for each connection: Chromium opens some it sends
        // nothing on (preconnects), which must not hold up the others.
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || answer(stream));
        }
    });
    addr
}

#[test]
fn two_sessions_type_into_a_static_page_and_markup_shows_as_text() {
    let url = format!("http://{}/", serve_page());
    let injection = "<img src=x onerror=alert(1)>";

    let alice = Browser::start("browser_static_alice");
    let bob = Browser::start("browser_static_bob");
    let sessions = [
        (alice.process_group(), alice.profile_dir().to_owned()),
        (bob.process_group(), bob.profile_dir().to_owned()),
    ];
    alice.goto(&url);
    bob.goto(&url);

    alice.type_line("input", "hello from alice");
    bob.type_line("input", "hello from bob");
    bob.type_line("input", injection);

    alice.wait_for_text("log", "hello from alice", Duration::from_secs(10));
    let shown = bob.wait_for_text("log", injection, Duration::from_secs(10));
    assert_eq!(shown, format!("hello from bob\n{injection}"));
    // Two sessions, two pages: alice's has only her line.
    assert_eq!(alice.text("log"), "hello from alice");

    // Shown as text, not made an element: no img anywhere, the characters
    // are in a text node, and no alert opened (WebDriver answers the next
    // command with "unexpected alert open", which fails the test).
    assert_eq!(bob.count("img"), 0, "the typed markup became an element");
    let last = bob.execute(
        "const log = document.getElementById(arguments[0]); \
         return [log.lastChild.textContent, log.lastChild.childNodes.length, \
                 log.lastChild.firstChild.nodeType];",
        &["log".into()],
    );
    assert_eq!(last, serde_json::json!([injection, 1, 3]));

    let shots = [alice.screenshot("page"), bob.screenshot("page")];
    for shot in &shots {
        assert!(shot.starts_with(artifacts_dir()), "{}", shot.display());
        let png = std::fs::read(shot).unwrap();
        assert!(
            png.len() > 1000,
            "{} is {} bytes",
            shot.display(),
            png.len()
        );
    }

    // Dropped, each leaves no process behind (chromedriver's process group,
    // or anything carrying the session's profile) and no profile.
    drop((alice, bob));
    for (group, profile) in &sessions {
        assert_eq!(
            processes_in_group(*group),
            Vec::<u32>::new(),
            "group {group}"
        );
        assert_eq!(processes_using(profile), Vec::<u32>::new(), "{profile:?}");
        assert!(!profile.exists(), "{profile:?} is left");
    }
}

/// The server's web address, from its `web listening on ADDR` line.
fn web_addr(server: &common::Binary) -> SocketAddr {
    (server.banner.lines())
        .find_map(|l| l.split("web listening on ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("a `web listening on` line")
        .parse()
        .unwrap()
}

/// `sockline connect ADDR` as a terminal member would run it: its stdin,
/// and its stdout's lines as they come.
struct Terminal {
    _child: common::KillOnDrop,
    stdin: std::process::ChildStdin,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Terminal {
    fn connect(addr: SocketAddr) -> Terminal {
        use std::process::{Command, Stdio};
        let mut child = common::KillOnDrop(
            Command::new(common::bin())
                .args(["connect", &addr.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Terminal {
            _child: child,
            stdin,
            lines,
        }
    }

    fn say(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
    }

    /// Reads until a line equal to `want`.
    fn wait_for(&self, want: &str) {
        let mut seen = Vec::new();
        loop {
            match self.lines.recv_timeout(Duration::from_secs(20)) {
                Ok(line) if line == want => return,
                Ok(line) => seen.push(line),
                Err(e) => panic!("no {want:?} ({e}); the terminal saw {seen:?}"),
            }
        }
    }
}

/// The built-in page, for real: two browsers and a terminal in one room.
#[test]
fn two_browsers_and_a_terminal_chat_in_one_room() {
    let server = common::serve_binary(&["--mode", "chat", "--web", "127.0.0.1:0"]);
    let page = format!("http://{}/", web_addr(&server));
    let wait = Duration::from_secs(20);
    let join = |test: &str, name: &str| {
        let browser = Browser::start(test);
        browser.goto(&page);
        browser.wait_for_text("log", "* welcome ", wait);
        browser.type_line("input", &format!("/nick {name}"));
        browser.wait_for_text("log", &format!("* you are now {name}"), wait);
        browser
    };
    let alice = join("chat-alice", "alice");
    let bob = join("chat-bob", "bob");
    let mut terminal = Terminal::connect(server.addr);
    terminal.say("/nick termy");
    terminal.wait_for("* you are now termy");

    alice.type_line("input", "hello from alice");
    bob.wait_for_text("log", "alice: hello from alice", wait);
    terminal.wait_for("alice: hello from alice");
    terminal.say("hi from the terminal");
    alice.wait_for_text("log", "termy: hi from the terminal", wait);
    bob.wait_for_text("log", "termy: hi from the terminal", wait);

    // Markup a member sends is shown as the characters it is, everywhere.
    let evil = "<img src=x onerror=alert(1)><b>bold?</b>";
    bob.type_line("input", evil);
    let shown = alice.wait_for_text("log", &format!("bob: {evil}"), wait);
    assert!(shown.contains(evil));
    assert_eq!(alice.count("#log img"), 0, "markup became an element");
    assert_eq!(alice.count("#log b"), 0, "markup became an element");
    terminal.wait_for(&format!("bob: {evil}"));
    // Who is in the room, as the page shows it.
    alice.wait_for_text("members", "termy", wait);
    // The page runs under its own Content-Security-Policy without a
    // complaint (its inline script and style are allowed by hash).
    for browser in [&alice, &bob] {
        let console = browser.console();
        assert!(
            console
                .iter()
                .all(|l| !l.contains("Content Security Policy")),
            "{console:?}"
        );
    }
    let screenshot = alice.screenshot("room");
    assert!(std::fs::metadata(&screenshot).unwrap().len() > 1000);
    bob.screenshot("room");
}
