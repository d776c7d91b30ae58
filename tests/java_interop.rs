//! The tutorial's Java programs (tests/java/) and ours interoperate: its
//! client against our server, our client against its server. Needs a JDK
//! (`javac` and `java` on PATH); CI installs one.

mod common;

use common::{Finished, KillOnDrop};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long any one step may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(30);

/// The Java programs compiled into a fresh directory, removed on drop.
struct Classes {
    dir: PathBuf,
}

impl Classes {
    fn compile() -> Classes {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir =
            std::env::temp_dir().join(format!("sockline-java-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let classes = Classes { dir };
        let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/java");
        let output = Command::new("javac")
            .arg("-d")
            .arg(&classes.dir)
            .arg(sources.join("Server.java"))
            .arg(sources.join("client.java"))
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run javac ({e}): these tests need a JDK (javac and java) on PATH")
            });
        assert!(
            output.status.success(),
            "javac failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        classes
    }

    /// `java -cp DIR ARGS...`
    fn java(&self, args: &[&str]) -> Command {
        let mut command = Command::new("java");
        command.arg("-cp").arg(&self.dir).args(args);
        command
    }
}

impl Drop for Classes {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `command` with `input` on stdin, then EOF; kills it and fails the
/// test if it runs past the deadline.
fn run(command: &mut Command, input: &str) -> Finished {
    common::run(command, input, DEADLINE)
}

#[test]
fn tutorial_client_talks_to_our_server() {
    let classes = Classes::compile();
    let server = common::serve_binary(&[]);
    let port = server.addr.port().to_string();
    let done = run(&mut classes.java(&["client", &port]), "hello\nBYE\n");
    assert!(done.status.success(), "stderr: {}", done.stderr);
    assert_eq!(
        done.stdout,
        "Server:  MSG Received\nServer:  MSG Received\n"
    );
}

#[test]
fn our_client_talks_to_tutorial_server() {
    let classes = Classes::compile();
    let port = common::free_port();
    let _server = KillOnDrop(
        classes
            .java(&["Server", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start java Server"),
    );
    wait_until_serving(port);
    let done = run(
        Command::new(common::bin()).args(["connect", &format!("127.0.0.1:{port}")]),
        "hi\nBYE\n",
    );
    assert!(done.status.success(), "stderr: {}", done.stderr);
    assert_eq!(done.stdout, " MSG Received\n MSG Received\n");
}

/// Waits until the Java server answers on `port`. The probe says BYE and
/// reads the reply: the tutorial server dies of a NullPointerException on a
/// client that disconnects without sending a line.
fn wait_until_serving(port: u16) {
    let until = Instant::now() + DEADLINE;
    loop {
        if let Ok(mut probe) = TcpStream::connect(("127.0.0.1", port)) {
            probe.set_read_timeout(Some(DEADLINE)).unwrap();
            probe.write_all(b"BYE\n").unwrap();
            let mut reply = String::new();
            probe.read_to_string(&mut reply).unwrap();
            assert_eq!(reply, " MSG Received\n", "unexpected probe reply");
            return;
        }
        assert!(
            Instant::now() < until,
            "java Server not listening on {port} after {DEADLINE:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
