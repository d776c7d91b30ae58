//! A real headless Chromium, driven over WebDriver: `chromedriver` (Debian
//! package chromium-driver) on a port of 127.0.0.1 the system picks, one
//! browser session per [`Browser`]. Both programs are installed by
//! scripts/test.sh; a test that needs them fails, saying so, where they are
//! missing.
//!
//! The WebDriver client is this file: W3C WebDriver is JSON over HTTP/1.1
//! and chromedriver listens on loopback, so a blocking request on a std
//! `TcpStream` with serde_json is all it takes (no async runtime, no TLS, no
//! new crates). Every call fails the test with what WebDriver answered.

use super::KillOnDrop;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The key WebDriver sends for Enter.
const ENTER: char = '\u{E007}';

/// How long one WebDriver command may take before the test fails (opening a
/// session starts Chromium: seconds on a loaded machine).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// One headless Chromium session and the chromedriver that runs it. Dropping
/// it closes the session, kills chromedriver and whatever it started, and
/// removes the session's profile directory.
pub struct Browser {
    /// Names the screenshots: `target/test-artifacts/{test}-{label}.png`.
    test: String,
    driver: KillOnDrop,
    port: u16,
    session: String,
    profile: PathBuf,
    /// chromedriver's output after its start line, read in the background.
    log: Option<JoinHandle<String>>,
}

/// Where screenshots are kept: `test-artifacts` in the target directory
/// (beside `CARGO_TARGET_TMPDIR`, which is `target/tmp`), created if needed.
pub fn artifacts_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = tmp.parent().unwrap_or(tmp).join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// `name` on PATH or in /usr/bin; fails the test, saying what installs it,
/// where it is neither.
fn program(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(["/usr/bin".into()]);
    for dir in dirs {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "{name} is not installed: the browser tests drive a real headless Chromium through \
         chromedriver; run scripts/test.sh or .ci/run (they install it), or as root: \
         apt-get install {package}"
    );
}

/// The live processes (not zombies) other than this one for which `keep`
/// holds, given their `/proc/PID/stat` fields after the command name
/// (state first) and their command line.
fn processes(keep: impl Fn(&[&str], &[u8]) -> bool) -> Vec<u32> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // PID (COMMAND) STATE PPID PGRP ...: the command may hold spaces.
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            fields.first().is_some_and(|&state| state != "Z") && keep(&fields, &cmdline)
        })
        .collect()
}

/// The live processes whose command line mentions `path` (a session's
/// profile directory: Chromium and all its helpers carry it).
pub fn processes_using(path: &Path) -> Vec<u32> {
    let needle = path.as_os_str().as_encoded_bytes();
    processes(|_, cmdline| cmdline.windows(needle.len()).any(|w| w == needle))
}

/// The live processes in process group `group`.
pub fn processes_in_group(group: u32) -> Vec<u32> {
    let group = group.to_string();
    processes(|fields, _| fields.get(2) == Some(&group.as_str()))
}

impl Browser {
    /// Starts chromedriver and opens a headless Chromium session in it;
    /// `test` names the screenshots. Several may be open at once, each with
    /// a chromedriver, a Chromium and a profile of its own.
    pub fn start(test: &str) -> Browser {
        static SESSIONS: AtomicUsize = AtomicUsize::new(0);
        let chromedriver = program("chromedriver", "chromium-driver");
        let chromium = program("chromium", "chromium");
        let profile = std::env::temp_dir().join(format!(
            "sockline-browser-{}-{}-{test}",
            std::process::id(),
            SESSIONS.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).unwrap();

        // A free port, and another if chromedriver finds it taken after all
        // (its `--port=0` binds IPv6 and IPv4 apart and fails when the
        // second is taken). Its own process group, so that the Chromium it
        // starts can be killed with it. Chromium's crash handlers leave that
        // group: with its config (crash reports) and cache in the profile,
        // they carry the profile's path too, as Chromium does.
        let mut tries = 0;
        let (driver, stdout, stderr, port) = loop {
            tries += 1;
            let port = super::free_port();
            let mut driver = KillOnDrop(
                Command::new(&chromedriver)
                    .arg(format!("--port={port}"))
                    .args(["--log-level=WARNING"])
                    .env("XDG_CONFIG_HOME", profile.join("config"))
                    .env("XDG_CACHE_HOME", profile.join("cache"))
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .process_group(0)
                    .spawn()
                    .unwrap_or_else(|e| panic!("cannot run {} ({e})", chromedriver.display())),
            );
            let stderr = super::read_in_background(driver.stderr.take().unwrap());
            let mut stdout = BufReader::new(driver.stdout.take().unwrap());
            let mut banner = String::new();
            let started = loop {
                let mut line = String::new();
                if stdout.read_line(&mut line).unwrap_or(0) == 0 {
                    break false;
                }
                banner.push_str(&line);
                if line.contains("started successfully on port ") {
                    break true;
                }
            };
            if started {
                break (driver, stdout, stderr, port);
            }
            let _ = driver.kill();
            let log = stderr.join().unwrap_or_default();
            assert!(
                tries < 5,
                "chromedriver exited before listening: {banner}{log}"
            );
        };
        let stdout = super::read_in_background(stdout);
        let log = std::thread::spawn(move || {
            let (out, err) = (stdout.join(), stderr.join());
            out.unwrap_or_default() + &err.unwrap_or_default()
        });

        let mut browser = Browser {
            test: test.to_owned(),
            driver,
            port,
            session: String::new(),
            profile,
            log: Some(log),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match browser.request("GET", "/status", None) {
                Ok(status) if status["ready"] == true => break,
                other if Instant::now() >= deadline => {
                    panic!("chromedriver on port {port} is not ready: {other:?}")
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }

        let user_data_dir = format!("--user-data-dir={}", browser.profile.display());
        let capabilities = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "pageLoadStrategy": "normal",
                    "timeouts": { "implicit": 0, "pageLoad": 30_000, "script": 30_000 },
                    "goog:loggingPrefs": { "browser": "ALL" },
                    "goog:chromeOptions": {
                        "binary": chromium,
                        "args": [
                            "--headless=new",
                            // As root (CI), Chromium starts only without its
                            // sandbox; the tests load only their own pages.
                            "--no-sandbox",
                            "--disable-gpu",
                            "--disable-dev-shm-usage",
                            "--window-size=1024,768",
                            "--force-device-scale-factor=1",
                            "--hide-scrollbars",
                            "--no-first-run",
                            "--no-default-browser-check",
                            "--disable-extensions",
                            "--disable-background-networking",
                            "--disable-component-update",
                            "--disable-sync",
                            user_data_dir,
                        ],
                    },
                },
            },
        });
        let session = browser
            .request("POST", "/session", Some(&capabilities))
            .unwrap_or_else(|e| panic!("cannot open a Chromium session: {e}\n{}", browser.log()));
        browser.session = session["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no sessionId in {session}"))
            .to_owned();
        browser
    }

    /// The process group of chromedriver and the Chromium it started (its
    /// id is chromedriver's pid), killed on drop.
    pub fn process_group(&self) -> u32 {
        self.driver.id()
    }

    /// The session's Chromium profile (`--user-data-dir`), removed on drop.
    pub fn profile_dir(&self) -> &Path {
        &self.profile
    }

    /// Loads `url` and waits for its load event.
    pub fn goto(&self, url: &str) {
        self.command("POST", "/url", json!({ "url": url }));
    }

    /// Types `text` into the element with id `id`, then Enter.
    pub fn type_line(&self, id: &str, text: &str) {
        let element = self.element(id);
        let keys = format!("{text}{ENTER}");
        self.command(
            "POST",
            &format!("/element/{element}/value"),
            json!({ "text": keys }),
        );
    }

    /// The rendered text of the element with id `id` (as a person sees it:
    /// markup in it shows only if it is text).
    pub fn text(&self, id: &str) -> String {
        self.try_text(id)
            .unwrap_or_else(|e| panic!("{}: no text for #{id}: {e}", self.test))
    }

    /// Waits up to `timeout` for the text of the element with id `id` to
    /// contain `needle`, and returns that text. Fails the test with the text
    /// it last read, the page's console and a screenshot's path; at once if
    /// WebDriver answers anything but that there is no such element (yet),
    /// such as that an alert opened.
    pub fn wait_for_text(&self, id: &str, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let last = self.try_text(id);
            match &last {
                Ok(text) if text.contains(needle) => return text.clone(),
                Ok(_) => {}
                Err(e) if e.contains(": no such element:") => {}
                Err(e) if e.contains(": stale element reference:") => {}
                Err(e) => panic!("{}: waiting for {needle:?} in #{id}: {e}", self.test),
            }
            if Instant::now() >= deadline {
                let shot = self.screenshot("timeout");
                panic!(
                    "{}: #{id} did not show {needle:?} within {timeout:?}; it shows: {}\n\
                     browser console: {:?}\nscreenshot: {}",
                    self.test,
                    match &last {
                        Ok(text) => format!("{text:?}"),
                        Err(e) => format!("(nothing: {e})"),
                    },
                    self.console(),
                    shot.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// How many elements match the CSS selector `css`.
    pub fn count(&self, css: &str) -> usize {
        let found = self.command(
            "POST",
            "/elements",
            json!({ "using": "css selector", "value": css }),
        );
        found.as_array().map_or(0, Vec::len)
    }

    /// Runs `script` (a function body: `return` gives the result) in the page
    /// with `args` as `arguments`, and returns its result.
    pub fn execute(&self, script: &str, args: &[Value]) -> Value {
        self.command(
            "POST",
            "/execute/sync",
            json!({ "script": script, "args": args }),
        )
    }

    /// The page's console messages so far, levels and texts (each is
    /// returned once).
    pub fn console(&self) -> Vec<String> {
        let Ok(entries) = self.request(
            "POST",
            &format!("/session/{}/se/log", self.session),
            Some(&json!({ "type": "browser" })),
        ) else {
            return Vec::new();
        };
        let entries = entries.as_array().cloned().unwrap_or_default();
        entries
            .iter()
            .map(|e| {
                let level = e["level"].as_str().unwrap_or("?");
                format!("{level} {}", e["message"].as_str().unwrap_or("?"))
            })
            .collect()
    }

    /// Saves a screenshot of the viewport as
    /// `target/test-artifacts/{test}-{label}.png` and returns its path.
    pub fn screenshot(&self, label: &str) -> PathBuf {
        let encoded = self.command("GET", "/screenshot", Value::Null);
        let png = base64_decode(encoded.as_str().unwrap_or_default())
            .unwrap_or_else(|| panic!("{}: the screenshot is not base64", self.test));
        assert!(
            png.starts_with(b"\x89PNG\r\n\x1a\n"),
            "{}: the screenshot is not a PNG",
            self.test
        );
        let path = artifacts_dir().join(format!("{}-{label}.png", self.test));
        std::fs::write(&path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    /// The WebDriver reference of the element with id `id`.
    fn element(&self, id: &str) -> String {
        self.try_element(id)
            .unwrap_or_else(|e| panic!("{}: no element #{id}: {e}", self.test))
    }

    fn try_element(&self, id: &str) -> Result<String, String> {
        let quoted = id.replace('\\', "\\\\").replace('"', "\\\"");
        let found = self.session_request(
            "POST",
            "/element",
            json!({ "using": "css selector", "value": format!("[id=\"{quoted}\"]") }),
        )?;
        // The W3C element reference key.
        found["element-6066-11e4-a52e-4f735466cecf"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("no element reference in {found}"))
    }

    fn try_text(&self, id: &str) -> Result<String, String> {
        let element = self.try_element(id)?;
        let text = self.session_request("GET", &format!("/element/{element}/text"), Value::Null)?;
        Ok(text.as_str().unwrap_or_default().to_owned())
    }

    /// A command in this session; fails the test with WebDriver's answer.
    fn command(&self, method: &str, path: &str, body: Value) -> Value {
        self.session_request(method, path, body)
            .unwrap_or_else(|e| panic!("{}: {e}", self.test))
    }

    fn session_request(&self, method: &str, path: &str, body: Value) -> Result<Value, String> {
        let path = format!("/session/{}{path}", self.session);
        let body = (!body.is_null()).then_some(body);
        self.request(method, &path, body.as_ref())
    }

    /// One WebDriver request: the response's `value`, or what went wrong.
    fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
        let what = format!("{method} {path}");
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))
            .map_err(|e| format!("{what}: cannot reach chromedriver: {e}"))?;
        stream.set_read_timeout(Some(COMMAND_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(COMMAND_TIMEOUT)).unwrap();
        let body = body.map(Value::to_string).unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\
             Content-Type: application/json; charset=utf-8\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            self.port,
            body.len()
        );
        stream
            .write_all(head.as_bytes())
            .and_then(|()| stream.write_all(body.as_bytes()))
            .map_err(|e| format!("{what}: {e}"))?;
        let (status, body) = read_response(&stream).map_err(|e| format!("{what}: {e}"))?;
        let json: Value = serde_json::from_slice(&body).map_err(|e| {
            format!(
                "{what}: HTTP {status}, not JSON ({e}): {}",
                String::from_utf8_lossy(&body)
            )
        })?;
        let value = json.get("value").cloned().unwrap_or(Value::Null);
        if status == 200 {
            Ok(value)
        } else {
            Err(format!(
                "{what}: HTTP {status}: {}: {}",
                value["error"].as_str().unwrap_or("?"),
                value["message"].as_str().unwrap_or(&value.to_string())
            ))
        }
    }

    /// What chromedriver printed (only once it has exited).
    fn log(&mut self) -> String {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        match self.log.take() {
            Some(log) => format!("chromedriver said: {}", log.join().unwrap_or_default()),
            None => String::new(),
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            // Closes Chromium.
            let _ = self.request("DELETE", &format!("/session/{}", self.session), None);
        }
        // chromedriver, and anything left in its process group; then
        // whatever still carries the profile, wherever it went.
        use nix::sys::signal::{Signal, kill, killpg};
        use nix::unistd::Pid;
        let group = self.process_group();
        let _ = killpg(Pid::from_raw(group as i32), Signal::SIGKILL);
        let _ = self.driver.wait();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut left = processes_in_group(group);
            left.extend(processes_using(&self.profile));
            if left.is_empty() || Instant::now() >= deadline {
                break;
            }
            for pid in left {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Reads an HTTP/1.1 response: its status and body (by Content-Length,
/// chunked, or up to the close). chromedriver answers `Connection: close`
/// but may keep the socket open, so the body's length is what ends it.
fn read_response(stream: impl Read) -> Result<(u16, Vec<u8>), String> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    let mut read_line = |line: &mut String| -> Result<(), String> {
        line.clear();
        match reader.read_line(line) {
            Ok(0) => Err("closed mid-response".to_owned()),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("no answer: {e}")),
        }
    };
    read_line(&mut line)?;
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {line:?}"))?;
    let (mut length, mut chunked) = (None, false);
    loop {
        read_line(&mut line)?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<usize>().ok();
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        }
    }
    let mut body = Vec::new();
    let truncated = |e: std::io::Error| format!("truncated body: {e}");
    if chunked {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).map_err(truncated)?;
            let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|e| format!("bad chunk size {size:?}: {e}"))?;
            if size == 0 {
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            reader.read_exact(&mut body[start..]).map_err(truncated)?;
            reader.read_exact(&mut [0; 2]).map_err(truncated)?;
        }
    } else if let Some(length) = length {
        body.resize(length, 0);
        reader.read_exact(&mut body).map_err(truncated)?;
    } else {
        reader.read_to_end(&mut body).map_err(truncated)?;
    }
    Ok((status, body))
}

/// Standard base64 (padding optional); `None` if `text` is not base64.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut bits, mut count) = (0u32, 0);
    for byte in text
        .bytes()
        .filter(|b| !b.is_ascii_whitespace() && *b != b'=')
    {
        let value = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        bits = (bits << 6 | u32::from(value)) & 0xffff;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
        }
    }
    Some(out)
}
