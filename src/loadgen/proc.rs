//! The server's CPU time and resident memory, read from Linux's `/proc`.

use crate::error::describe;
use std::io;
use std::sync::Arc;

/// Clock ticks per second of `/proc/PID/stat`'s times. This is the kernel's
/// USER_HZ, 100 on every mainstream Linux architecture; reading
/// `sysconf(_SC_CLK_TCK)` would need `unsafe` or `libc` for no gain.
const CLK_TCK: u64 = 100;

/// The server processes being measured (one, or a cluster's nodes and
/// Redis): their CPU time and memory are summed.
#[derive(Debug, Clone)]
pub(super) struct ServerProc {
    pids: Arc<[u32]>,
}

impl ServerProc {
    /// Checks that every process can be read now, so a wrong pid is an error
    /// up front rather than missing fields at the end.
    pub fn open(pids: &[u32]) -> io::Result<Self> {
        for &pid in pids {
            check(pid)?;
        }
        Ok(ServerProc { pids: pids.into() })
    }

    /// User plus system CPU time so far, in µs (10 ms resolution per
    /// process), summed over the processes.
    pub fn cpu_us(&self) -> Option<u64> {
        self.pids.iter().map(|&pid| cpu_us(pid)).sum()
    }

    /// Each process's CPU time so far, in µs, in the order given; `None`
    /// for just one process, or when one cannot be read.
    pub fn cpu_us_each(&self) -> Option<Vec<u64>> {
        if self.pids.len() < 2 {
            return None;
        }
        self.pids.iter().map(|&pid| cpu_us(pid)).collect()
    }

    /// Resident set size now, in KiB, summed over the processes.
    pub fn rss_kib(&self) -> Option<u64> {
        self.pids.iter().map(|&pid| rss_kib(pid)).sum()
    }
}

fn check(pid: u32) -> io::Result<()> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot read {path} (is --server-pid {pid} running?): {}",
                describe(&e)
            ),
        )
    })?;
    parse_cpu_ticks(&stat).ok_or_else(|| io::Error::other(format!("cannot parse {path}")))?;
    Ok(())
}

/// One process's user plus system CPU time so far, in µs (10 ms
/// resolution); all its threads count.
fn cpu_us(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(parse_cpu_ticks(&stat)? * (1_000_000 / CLK_TCK))
}

/// One process's resident set size now, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_rss_kib(&status)
}

/// utime + stime, fields 14 and 15 of `/proc/PID/stat`. The command name
/// (field 2) may hold spaces, so fields are counted after its closing `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The `VmRSS:   1234 kB` line of `/proc/PID/status`.
fn parse_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_in_the_name() {
        let stat = "42 (a b) c) S 1 2 3 4 5 6 7 8 9 10 250 30 0 0 20 0 1 0 5 6 7";
        assert_eq!(parse_cpu_ticks(stat), Some(280));
    }

    #[test]
    fn parses_rss() {
        let status = "Name:\tsockline\nVmPeak:\t 9 kB\nVmRSS:\t    2048 kB\n";
        assert_eq!(parse_rss_kib(status), Some(2048));
    }

    #[test]
    fn reads_this_process() {
        let me = ServerProc::open(&[std::process::id(), std::process::id()]).unwrap();
        assert!(me.cpu_us().is_some());
        assert_eq!(me.cpu_us_each().unwrap().len(), 2);
        assert!(me.rss_kib().unwrap() > 0);
    }
}
