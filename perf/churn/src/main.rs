//! Connection churn for perf/exec.sh: CONNS threads, each in a loop for
//! SECONDS: connect, send one line, read the line echoed back, close. Blocking
//! sockets and a thread per client: the least work per connection a client
//! can do, so the server, not this, is what is measured. Prints one JSON
//! object: connections completed, errors, connections/s, latency (connect to
//! echo read) p50/p99, and this process's own CPU (utime + stime).
//!
//!   churn ADDR [CONNS] [SECONDS] [LINE]     (defaults 16, 5, "hello")

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One connection: connect, send `line`, read until the echo's newline, close
/// (by dropping the stream). The echo must equal the line.
fn once(addr: &str, line: &[u8], buf: &mut [u8]) -> Result<(), String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    s.write_all(line).map_err(|e| format!("write: {e}"))?;
    let mut got = 0;
    while got == 0 || buf[got - 1] != b'\n' {
        if got == buf.len() {
            return Err("reply too long".into());
        }
        match s.read(&mut buf[got..]) {
            Ok(0) => return Err(format!("closed after {got} bytes")),
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    if &buf[..got] != line {
        return Err(format!(
            "echo mismatch: {:?}",
            String::from_utf8_lossy(&buf[..got])
        ));
    }
    Ok(())
}

/// This process's utime + stime in µs (fields 14 and 15 of /proc/self/stat,
/// in ticks of 1/100 s).
fn own_cpu_us() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(") ").map(|(_, rest)| rest).unwrap_or("");
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    f.get(11)
        .zip(f.get(12))
        .map_or(0, |(u, s)| (u + s) * 10_000)
}

#[derive(Default)]
struct Tally {
    done: u64,
    errors: u64,
    first_error: Option<String>,
    latencies_us: Vec<u32>,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(addr) = args.get(1).cloned() else {
        eprintln!("usage: churn ADDR [CONNS] [SECONDS] [LINE]");
        std::process::exit(2);
    };
    let conns: usize = args.get(2).map_or(16, |x| x.parse().expect("CONNS"));
    let seconds: f64 = args.get(3).map_or(5.0, |x| x.parse().expect("SECONDS"));
    let line = format!("{}\n", args.get(4).map_or("hello", String::as_str)).into_bytes();

    let tally = Arc::new(Mutex::new(Tally::default()));
    let cpu_before = own_cpu_us();
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let threads: Vec<_> = (0..conns)
        .map(|_| {
            let (addr, line, tally) = (addr.clone(), line.clone(), Arc::clone(&tally));
            std::thread::spawn(move || {
                let mut mine = Tally::default();
                let mut buf = vec![0u8; line.len() + 1024];
                while Instant::now() < deadline {
                    let t = Instant::now();
                    match once(&addr, &line, &mut buf) {
                        Ok(()) => {
                            mine.done += 1;
                            mine.latencies_us
                                .push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                        }
                        Err(e) => {
                            mine.errors += 1;
                            mine.first_error.get_or_insert(e);
                            // A refused or reset connect: do not spin.
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                }
                let mut all = tally.lock().unwrap();
                all.done += mine.done;
                all.errors += mine.errors;
                if all.first_error.is_none() {
                    all.first_error = mine.first_error;
                }
                all.latencies_us.append(&mut mine.latencies_us);
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu_us = own_cpu_us().saturating_sub(cpu_before);
    let mut all = tally.lock().unwrap();
    all.latencies_us.sort_unstable();
    let pct = |p: f64| -> u32 {
        let v = &all.latencies_us;
        if v.is_empty() {
            0
        } else {
            v[((v.len() - 1) as f64 * p).round() as usize]
        }
    };
    let first_error = match &all.first_error {
        Some(e) => format!("\"{}\"", e.replace('\\', "\\\\").replace('"', "\\\"")),
        None => "null".into(),
    };
    println!(
        "{{\"conns\": {conns}, \"completed\": {}, \"errors\": {}, \"first_error\": {first_error}, \
         \"elapsed_s\": {elapsed:.3}, \"conns_per_s\": {:.1}, \"p50_us\": {}, \"p99_us\": {}, \
         \"client_cpu_us\": {cpu_us}, \"client_cpu_us_per_conn\": {:.2}}}",
        all.done,
        all.errors,
        all.done as f64 / elapsed,
        pct(0.5),
        pct(0.99),
        cpu_us as f64 / all.done.max(1) as f64,
    );
}
