//! `serve --exec` (issue 14): a helper process per client, with real
//! programs (`cat`, `tr`, `sh`, `yes`, `sleep`, Python), the real binary
//! and real sockets. Processes are checked in `/proc`: their parent, their
//! process group, and that none is left behind as a zombie.

mod common;

use common::{Binary, bin, connect, metric, read_to_close, scrape, serve_binary};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

/// A process as `/proc/PID/stat` shows it.
#[derive(Debug, Clone, Copy)]
struct Proc {
    pid: u32,
    #[allow(dead_code)]
    state: char,
    ppid: u32,
    pgrp: u32,
}

fn procs() -> Vec<Proc> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(after) = stat.rfind(')').map(|at| &stat[at + 2..]) else {
            continue;
        };
        let fields: Vec<&str> = after.split_whitespace().collect();
        let (Some(state), Some(Ok(ppid)), Some(Ok(pgrp))) = (
            fields.first().and_then(|f| f.chars().next()),
            fields.get(1).map(|f| f.parse::<i64>()),
            fields.get(2).map(|f| f.parse::<i64>()),
        ) else {
            panic!("cannot read /proc/{pid}/stat: {stat:?}");
        };
        if state == 'X' {
            // Dead, being released this instant (its parent and group
            // read as 0 and -1): gone.
            continue;
        }
        let (ppid, pgrp) = (ppid as u32, pgrp as u32);
        all.push(Proc {
            pid,
            state,
            ppid,
            pgrp,
        });
    }
    all
}

/// The server's children (helpers, and orphans it adopted), zombies too.
fn children_of(server: u32) -> Vec<Proc> {
    procs().into_iter().filter(|p| p.ppid == server).collect()
}

/// Every process of group `pgrp`, zombies too.
fn group(pgrp: u32) -> Vec<Proc> {
    procs().into_iter().filter(|p| p.pgrp == pgrp).collect()
}

/// Polls `done` until it holds or `within` passed.
fn eventually(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + within;
    loop {
        if done() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `sockline serve --exec COMMAND EXTRA...` with metrics on a free port.
fn exec(command: &str, extra: &[&str]) -> (Binary, SocketAddr) {
    let mut args = vec!["--exec", command, "--metrics-listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let server = serve_binary(&args);
    let at = server
        .banner
        .find("metrics at http://")
        .expect("metrics line");
    let rest = &server.banner[at + "metrics at http://".len()..];
    let metrics = rest[..rest.find("/metrics").unwrap()].parse().unwrap();
    (server, metrics)
}

fn read_line(reader: &mut impl BufRead) -> String {
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    line
}

/// No child of the server is left, zombie or not.
fn assert_no_children(server: &Binary) {
    let pid = server.child.id();
    assert!(
        eventually(Duration::from_secs(10), || children_of(pid).is_empty()),
        "left behind: {:?}",
        children_of(pid)
    );
}

#[test]
fn each_client_gets_its_own_child_in_its_own_group_with_the_tcpserver_environment() {
    let command = "echo $$; echo $PROTO $TCPREMOTEIP $TCPREMOTEPORT $TCPLOCALIP $TCPLOCALPORT; cat";
    let (server, _) = exec(command, &[]);
    let (a, b) = (connect(server.addr), connect(server.addr));
    let mut pids = Vec::new();
    for client in [&a, &b] {
        let mut reader = BufReader::new(client.try_clone().unwrap());
        let pid: u32 = read_line(&mut reader).trim().parse().unwrap();
        let env = read_line(&mut reader);
        let local = client.local_addr().unwrap();
        let expected = format!(
            "TCP 127.0.0.1 {} 127.0.0.1 {}\n",
            local.port(),
            server.addr.port()
        );
        assert_eq!(env, expected);
        let me = procs().into_iter().find(|p| p.pid == pid).expect("running");
        assert_eq!(me.ppid, server.child.id(), "a child of the server");
        assert_eq!(me.pgrp, pid, "a process group of its own");
        // It talks to this client alone.
        let mut writer = client.try_clone().unwrap();
        writer.write_all(format!("to {pid}\n").as_bytes()).unwrap();
        assert_eq!(read_line(&mut reader), format!("to {pid}\n"));
        pids.push(pid);
    }
    assert_ne!(pids[0], pids[1]);
    drop((a, b));
    assert_no_children(&server);
}

#[test]
fn bytes_pass_unchanged_both_ways_at_once() {
    // No line rewriting: \r\n, NUL and a last line without \n stay as they
    // are; tr changes only the letters.
    let (server, _) = exec("tr a-z A-Z", &[]);
    let mut client = connect(server.addr);
    client.write_all(b"one\r\ntwo\0three\nno newline").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_close(&mut client), b"ONE\r\nTWO\0THREE\nNO NEWLINE");

    // 8 MiB through cat while both directions flow (far more than a pipe
    // or a socket buffer holds).
    let (server, _) = exec("cat", &[]);
    let client = connect(server.addr);
    let data: Vec<u8> = (0..8u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
    let mut writer = client.try_clone().unwrap();
    let sent = data.clone();
    let sender = std::thread::spawn(move || {
        writer.write_all(&sent).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let mut client = client;
    let back = read_to_close(&mut client);
    sender.join().unwrap();
    assert_eq!(back.len(), data.len());
    assert!(back == data, "the bytes came back changed");
    assert_no_children(&server);
}

#[test]
fn a_python_script_answers_each_line_as_it_comes() {
    let script = "import sys\nfor line in sys.stdin:\n    print(line.strip()[::-1], flush=True)";
    let command = format!("python3 -u -c '{script}'");
    let (server, _) = exec(&command, &[]);
    let client = connect(server.addr);
    let mut reader = BufReader::new(client.try_clone().unwrap());
    let mut writer = client;
    for word in ["hello", "sockline", "stressed"] {
        writer.write_all(format!("{word}\n").as_bytes()).unwrap();
        let reversed: String = word.chars().rev().collect();
        assert_eq!(read_line(&mut reader), format!("{reversed}\n"));
    }
}

#[test]
fn a_child_that_exits_at_once_has_its_output_delivered_then_the_connection_closes() {
    let (server, metrics) = exec("echo bye now; echo oops >&2; exit 3", &[]);
    for _ in 0..3 {
        let mut client = connect(server.addr);
        assert_eq!(read_to_close(&mut client), b"bye now\n");
    }
    assert_no_children(&server);
    let text = scrape(metrics, "/metrics");
    assert_eq!(metric(&text, "sockline_exec_started_total"), 3);
    assert_eq!(metric(&text, "sockline_exec_exits_total{status=\"3\"}"), 3);
    assert_eq!(metric(&text, "sockline_exec_children"), 0);
    assert_eq!(
        metric(&text, "sockline_disconnects_total{reason=\"child_exited\"}"),
        3
    );
    // Its stderr is in the server's log, line by line, with the peer.
    let mut server = server;
    server.child.kill().unwrap();
    let log = server.stderr.join().unwrap();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("child stderr")).collect();
    assert_eq!(lines.len(), 3, "{log}");
    assert!(
        lines
            .iter()
            .all(|l| l.contains("line=oops") && l.contains("peer=127.0.0.1:"))
    );
}

#[test]
fn a_command_that_cannot_start_gets_its_client_an_err_line_and_the_server_goes_on() {
    let (server, _) = exec("no-such-program-here", &[]);
    for _ in 0..2 {
        let mut client = connect(server.addr);
        assert_eq!(
            read_to_close(&mut client),
            b"ERR cannot start the command\n"
        );
    }
    assert_no_children(&server);
    let mut server = server;
    server.child.kill().unwrap();
    let log = server.stderr.join().unwrap();
    assert!(
        log.contains("not found"),
        "the shell's word is logged: {log}"
    );
}

#[test]
fn out_of_file_descriptors_a_client_is_told_and_the_others_are_served() {
    // With 48 descriptors, a few helpers fit (each holds a socket, three
    // pipes and a pidfd); the next client is told, and once the others
    // leave, clients are served again.
    let mut server = common::KillOnDrop(
        Command::new("prlimit")
            .args(["--nofile=48:48", bin(), "serve", "--listen", "127.0.0.1:0"])
            .args(["--exec", "cat"])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("prlimit (util-linux) runs sockline"),
    );
    let mut stderr = BufReader::new(server.stderr.take().unwrap());
    let line = read_line(&mut stderr);
    let addr: SocketAddr = line.trim().rsplit(' ').next().unwrap().parse().unwrap();
    let mut held = Vec::new();
    let told = loop {
        assert!(held.len() < 40, "never ran out of descriptors");
        let client = connect(addr);
        (&client).write_all(b"ping\n").unwrap();
        let mut reply = [0; 5];
        (&client).read_exact(&mut reply).unwrap();
        if &reply != b"ping\n" {
            let mut rest = Vec::new();
            let mut client = client;
            client.read_to_end(&mut rest).unwrap();
            break [&reply[..], &rest].concat();
        }
        held.push(client);
    };
    assert_eq!(told, b"ERR cannot start the command\n");
    assert!(held.len() >= 3, "only {} helpers fit", held.len());
    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    let mut client = connect(addr);
    client.write_all(b"again\n").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_close(&mut client), b"again\n");
    server.kill().unwrap();
    let mut log = String::new();
    stderr.read_to_string(&mut log).unwrap();
    assert!(log.contains("cannot start the command"), "{log}");
}

#[test]
fn a_flooding_child_is_held_back_by_a_client_that_does_not_read() {
    let (server, metrics) = exec("yes", &[]);
    let rss_before = common::rss_kib(server.child.id());
    let mut client = connect(server.addr);
    let mut first = [0; 4];
    client.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"y\ny\n");
    // The client reads nothing more: `yes` ends up blocked on a full pipe.
    // (The shell may run yes as a child of its own: look in its group.)
    let shell = children_of(server.child.id())[0].pid;
    let blocked = || {
        let wchan = |p: &Proc| std::fs::read_to_string(format!("/proc/{}/wchan", p.pid));
        let wchan: String = group(shell).iter().flat_map(wchan).collect();
        let out = scrape(metrics, "/metrics");
        (
            wchan.contains("pipe"),
            metric(&out, "sockline_bytes_out_total"),
        )
    };
    assert!(
        eventually(Duration::from_secs(10), || {
            let (a, out1) = blocked();
            std::thread::sleep(Duration::from_millis(200));
            let (b, out2) = blocked();
            a && b && out1 == out2
        }),
        "yes never blocked"
    );
    let (_, out) = blocked();
    assert!(
        out < 64 << 20,
        "{out} bytes sent to a client that reads none"
    );
    let grown = common::rss_kib(server.child.id()).saturating_sub(rss_before);
    assert!(grown < 16 << 10, "the server grew by {grown} KiB");
    // The client leaves: yes gets EPIPE and is gone.
    drop(client);
    assert_no_children(&server);
}

#[test]
fn a_flooding_client_is_held_back_by_a_child_that_does_not_read() {
    let (server, metrics) = exec("sleep 60", &["--exec-grace", "1"]);
    let rss_before = common::rss_kib(server.child.id());
    let client = connect(server.addr);
    client
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let chunk = vec![b'x'; 64 << 10];
    let mut sent = 0usize;
    let mut writer = client.try_clone().unwrap();
    while writer.write_all(&chunk).is_ok() {
        sent += chunk.len();
        assert!(sent < 512 << 20, "the server took 512 MiB from a client");
    }
    let text = scrape(metrics, "/metrics");
    let taken = metric(&text, "sockline_bytes_in_total");
    assert!(
        taken < 32 << 20,
        "{taken} bytes read for a child that reads none"
    );
    let grown = common::rss_kib(server.child.id()).saturating_sub(rss_before);
    assert!(grown < 16 << 10, "the server grew by {grown} KiB");
    // The client resets (a FIN would wait behind the bytes the server
    // does not take); sleep does not read its stdin, so it gets SIGTERM
    // after the grace.
    socket2::SockRef::from(&client)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop((client, writer));
    assert_no_children(&server);
    let text = scrape(metrics, "/metrics");
    assert_eq!(
        metric(&text, "sockline_exec_exits_total{status=\"SIGTERM\"}"),
        1
    );
}

#[test]
fn a_child_that_ignores_sigterm_gets_sigkill_and_its_whole_group_goes() {
    // The shell ignores SIGTERM, and so do the sleeps it starts.
    let command = "trap '' TERM; echo ready; while :; do sleep 1; done";
    let (server, metrics) = exec(command, &["--exec-grace", "1"]);
    let mut client = connect(server.addr);
    let mut ready = [0; 6];
    client.read_exact(&mut ready).unwrap();
    let shell = children_of(server.child.id())[0].pid;
    assert!(eventually(Duration::from_secs(5), || group(shell).len() >= 2));
    client.shutdown(Shutdown::Write).unwrap();
    // Grace, SIGTERM (ignored), grace, SIGKILL: the group is gone.
    assert!(
        eventually(Duration::from_secs(10), || group(shell).is_empty()),
        "still there: {:?}",
        group(shell)
    );
    assert_eq!(read_to_close(&mut client), b"");
    assert_no_children(&server);
    let text = scrape(metrics, "/metrics");
    assert_eq!(
        metric(&text, "sockline_exec_exits_total{status=\"SIGKILL\"}"),
        1
    );
}

#[test]
fn what_a_shell_starts_does_not_outlive_it() {
    // The shell leaves a sleep behind when cat ends: the sleep is in its
    // group, gets SIGTERM, and is reaped by the server, not left a zombie.
    let (server, _) = exec("sleep 300 & echo started; cat", &[]);
    let mut client = connect(server.addr);
    let mut started = [0; 8];
    client.read_exact(&mut started).unwrap();
    let shell = children_of(server.child.id())[0].pid;
    assert!(eventually(Duration::from_secs(5), || group(shell).len() == 3));
    client.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_close(&mut client), b"");
    assert!(
        eventually(Duration::from_secs(10), || group(shell).is_empty()),
        "left: {:?}",
        group(shell)
    );
    assert_no_children(&server);
}

#[test]
fn a_burst_of_a_thousand_short_connections_leaves_no_zombie() {
    let (server, metrics) = exec("echo hi", &[]);
    let addr = server.addr;
    let threads: Vec<_> = (0..20)
        .map(|_| {
            std::thread::spawn(move || {
                for _ in 0..50 {
                    let mut client = connect(addr);
                    assert_eq!(read_to_close(&mut client), b"hi\n");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_no_children(&server);
    let text = scrape(metrics, "/metrics");
    assert_eq!(metric(&text, "sockline_exec_started_total"), 1000);
    assert_eq!(
        metric(&text, "sockline_exec_exits_total{status=\"0\"}"),
        1000
    );
    assert_eq!(metric(&text, "sockline_exec_children"), 0);
}

#[test]
fn the_server_limits_apply_to_helpers_too() {
    // --max-conns: one child each; past it, ERR server full.
    let (server, metrics) = exec("cat", &["--max-conns", "2"]);
    let (a, b) = (connect(server.addr), connect(server.addr));
    for client in [&a, &b] {
        (&*client).write_all(b"hi\n").unwrap();
        let mut reply = [0; 3];
        (&*client).read_exact(&mut reply).unwrap();
    }
    let mut third = connect(server.addr);
    assert_eq!(read_to_close(&mut third), b"ERR server full\n");
    assert_eq!(children_of(server.child.id()).len(), 2);
    let text = scrape(metrics, "/metrics");
    assert_eq!(metric(&text, "sockline_exec_children"), 2);
    drop((a, b));
    assert_no_children(&server);

    // --idle-timeout: a silent client is told, and its child goes.
    let (server, _) = exec("cat", &["--idle-timeout", "1"]);
    let mut client = connect(server.addr);
    let told = read_to_close(&mut client);
    assert!(told.starts_with(b"ERR idle timeout"), "{told:?}");
    assert_no_children(&server);

    // --deny: no child at all.
    let (server, _) = exec("cat", &["--deny", "127.0.0.1"]);
    let mut client = connect(server.addr);
    assert_eq!(read_to_close(&mut client), b"ERR access denied\n");
    assert!(children_of(server.child.id()).is_empty());
}

#[test]
fn over_tls_the_child_sees_plain_text_and_the_client_certificate() {
    let pki = common::pki::Pki::new("exec");
    let tls = pki.serve_args();
    let (server, _) = exec(
        "echo \"$TLSCLIENTSUBJECT\"; cat",
        &tls.each_ref().map(String::as_str),
    );
    let mut client = pki.client(server.addr, true);
    client.write_all(b"secret\n").unwrap();
    client.flush().unwrap();
    let mut reader = BufReader::new(client);
    let subject = read_line(&mut reader);
    assert!(subject.starts_with("CN="), "{subject:?}");
    assert_eq!(read_line(&mut reader), "secret\n");
    drop(reader);
    assert_no_children(&server);
}

#[test]
fn a_shutdown_ends_the_children_within_the_drain_timeout() {
    // cat ends when its stdin closes; the one that ignores SIGTERM is
    // SIGKILLed before the drain timeout.
    let command = "read first; echo \"$first\"; if [ \"$first\" = stubborn ]; then trap '' TERM; \
                   while :; do sleep 1; done; fi; cat";
    let (server, _) = exec(command, &["--drain-timeout", "2", "--exec-grace", "30"]);
    let (mut polite, mut stubborn) = (connect(server.addr), connect(server.addr));
    polite.write_all(b"polite\n").unwrap();
    stubborn.write_all(b"stubborn\n").unwrap();
    let (mut a, mut b) = ([0; 7], [0; 9]);
    polite.read_exact(&mut a).unwrap();
    stubborn.read_exact(&mut b).unwrap();
    let pid = server.child.id();
    let groups: Vec<u32> = children_of(pid).iter().map(|p| p.pgrp).collect();
    assert_eq!(groups.len(), 2);
    let started = Instant::now();
    let mut server = server;
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(read_to_close(&mut polite), b"");
    let exited = common::wait_within(&mut server.child, Duration::from_secs(20));
    assert!(exited.is_some(), "the server did not stop");
    assert!(started.elapsed() < Duration::from_secs(10));
    for pgrp in groups {
        assert!(
            eventually(Duration::from_secs(5), || group(pgrp).is_empty()),
            "group {pgrp} outlived the server: {:?}",
            group(pgrp)
        );
    }
    let _ = read_to_close(&mut stubborn);
}

#[test]
fn exec_takes_the_place_of_a_mode_and_of_the_web_listener() {
    let done = Command::new(bin())
        .args(["serve", "--mode", "echo", "--exec", "cat"])
        .output()
        .unwrap();
    assert_eq!(done.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(stderr.contains("--exec"), "{stderr}");
    let done = Command::new(bin())
        .args(["serve", "--web", "0", "--exec", "cat"])
        .output()
        .unwrap();
    assert_eq!(done.status.code(), Some(2));
    // Flags of another mode, or of --exec without it, say where they belong.
    for (args, says) in [
        (
            &["--exec", "cat", "--history", "3"][..],
            "--history belongs to --mode chat, not --exec",
        ),
        (&["--exec-grace", "3"][..], "--exec-grace belongs to --exec"),
    ] {
        let done = Command::new(bin())
            .arg("serve")
            .args(args)
            .output()
            .unwrap();
        assert_eq!(done.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&done.stderr);
        assert!(stderr.contains(says), "{stderr}");
    }
}

#[test]
fn behind_a_proxy_the_child_sees_the_client_s_address() {
    let (server, _) = exec(
        "echo $TCPREMOTEIP $TCPREMOTEPORT; cat",
        &["--proxy-protocol"],
    );
    let mut client = connect(server.addr);
    client
        .write_all(b"PROXY TCP4 192.0.2.7 127.0.0.1 4242 5000\r\nhello\n")
        .unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_close(&mut client), b"192.0.2.7 4242\nhello\n");
    assert_no_children(&server);
}

#[test]
fn a_client_that_stops_reading_is_cut_by_the_write_timeout_and_its_child_goes() {
    let (server, metrics) = exec("yes", &["--write-timeout", "1"]);
    let client = connect(server.addr);
    assert!(
        eventually(Duration::from_secs(20), || {
            let text = scrape(metrics, "/metrics");
            metric(&text, "sockline_disconnects_total{reason=\"too_slow\"}") == 1
        }),
        "never cut"
    );
    assert_no_children(&server);
    drop(client);
}

#[test]
fn a_plain_command_is_started_without_a_shell_and_any_other_through_one() {
    let comm = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    for (command, program) in [("cat", "cat\n"), ("cat | cat", "sh\n")] {
        let (server, _) = exec(command, &[]);
        let client = connect(server.addr);
        (&client).write_all(b"x\n").unwrap();
        let mut echo = [0; 2];
        (&client).read_exact(&mut echo).unwrap();
        let children = children_of(server.child.id());
        assert_eq!(children.len(), 1, "{children:?}");
        assert_eq!(comm(children[0].pid), program, "{command}");
        assert_eq!(children[0].pgrp, children[0].pid);
    }
}

#[test]
fn one_long_stderr_write_does_not_stall_the_connection() {
    // 1 MiB in one write(2) to stderr: the server logs it in pieces and
    // keeps reading until the pipe is dry, so the child gets on.
    let (server, _) = exec(
        "dd if=/dev/zero bs=1M count=1 status=none >&2; echo done",
        &[],
    );
    let mut client = connect(server.addr);
    assert_eq!(read_to_close(&mut client), b"done\n");
    assert_no_children(&server);
}

#[test]
fn what_leaves_its_group_is_reaped_too() {
    // setsid puts the sleep in a session and group of its own: no signal
    // to the helper's group reaches it, but as the server is its
    // subreaper, it is reaped when it exits, not left a zombie.
    let (server, _) = exec("setsid sleep 0.3 & sleep 0.1; echo hi", &[]);
    for _ in 0..3 {
        let mut client = connect(server.addr);
        assert_eq!(read_to_close(&mut client), b"hi\n");
    }
    assert_no_children(&server);
}

#[test]
fn a_reused_process_number_is_not_signalled_for_a_group_that_is_gone() {
    // Client 1's shell exits, leaving a setsid'd sleep that holds its
    // output open, so its connection outlives the group. The next child
    // is given the shell's old number (ns_last_pid), and must not get
    // client 1's grace signals.
    let command = "read x; if [ \"$x\" = first ]; then setsid sleep 6 & sleep 0.3; echo $$; exit; fi; exec cat";
    let (server, _) = exec(command, &["--exec-grace", "1"]);
    let (second, reused) = (0..5)
        .find_map(|_| {
            let mut first = connect(server.addr);
            first.write_all(b"first\n").unwrap();
            first.shutdown(Shutdown::Write).unwrap();
            let mut reader = BufReader::new(first);
            let old: u32 = read_line(&mut reader).trim().parse().unwrap();
            assert!(eventually(Duration::from_secs(5), || group(old).is_empty()));
            std::fs::write("/proc/sys/kernel/ns_last_pid", (old - 1).to_string())
                .expect("write ns_last_pid (the tests run as root)");
            let second = connect(server.addr);
            (&second).write_all(b"second\n").unwrap();
            (&second).write_all(b"ping\n").unwrap();
            let mut echo = [0; 5];
            (&second).read_exact(&mut echo).unwrap();
            let pids: Vec<u32> = children_of(server.child.id())
                .iter()
                .filter(|p| p.pgrp == p.pid)
                .map(|p| p.pid)
                .collect();
            pids.contains(&old).then_some((second, reader))
        })
        .expect("the old number was never given again");
    // Past client 1's grace and its double: the cat of client 2 still answers.
    std::thread::sleep(Duration::from_secs(3));
    (&second).write_all(b"still\n").unwrap();
    let mut echo = [0; 6];
    (&second).read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"still\n");
    drop(reused);
}
