//! Who may connect and how many at once: the policy applied at accept.
//!
//! It lives apart from the event loop so that the rules read in one place
//! and the loop only asks: [`Admission::admit`] for a new connection,
//! [`Admission::release`] when an admitted one ends. A refused client gets
//! one line saying why ([`Refusal::line`]) and is counted under
//! [`Refusal::label`].
//!
//! Every worker shares one `Admission`. The count of open connections is the
//! `connections_open` gauge itself, claimed with an atomic add (given back
//! when over the limit), so admitting takes no lock; only the optional count
//! per address (`max_conns_per_ip`) needs a mutex.

use crate::metrics::Metrics;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// Why a connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_conns` reached.
    Full,
    /// `--allow` / `--deny`.
    Denied,
    /// `max_conns_per_ip` reached.
    PerIp,
}

impl Refusal {
    /// Why, in a few words (for logs).
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Full => "server full",
            Refusal::Denied => "access denied",
            Refusal::PerIp => "too many connections from your address",
        }
    }

    /// The one line the refused client gets, without its terminator (the
    /// connection's framing adds it).
    pub fn line(self) -> Vec<u8> {
        format!("ERR {}", self.reason()).into_bytes()
    }

    /// Its metric label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Full => "full",
            Refusal::Denied => "denied",
            Refusal::PerIp => "per_ip",
        }
    }
}

/// Allow and deny lists of networks. An address in a denied network is
/// refused; with any allowed network, an address in none of them is too.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// Networks that may connect (empty: everyone not denied).
    pub allow: Vec<ipnet::IpNet>,
    /// Networks that may not.
    pub deny: Vec<ipnet::IpNet>,
}

impl Access {
    /// Whether `ip` may connect.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        let within = |nets: &[ipnet::IpNet]| nets.iter().any(|net| net.contains(&ip));
        !within(&self.deny) && (self.allow.is_empty() || within(&self.allow))
    }
}

/// The admission counts: connections open in all, and per address.
#[derive(Debug)]
pub struct Admission {
    access: Access,
    max_conns: usize,
    /// 0: no limit per address.
    max_per_ip: usize,
    /// Its `open` gauge is the count of admitted connections.
    metrics: Arc<Metrics>,
    /// Open connections per address, kept only with `max_per_ip`.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

impl Admission {
    /// Admits by `access`, at most `max_conns` at once, and at most
    /// `max_per_ip` from one address (0: no limit), counting in `metrics`.
    pub fn new(access: Access, max_conns: usize, max_per_ip: usize, metrics: Arc<Metrics>) -> Self {
        Admission {
            access,
            max_conns,
            max_per_ip,
            metrics,
            per_ip: Mutex::default(),
        }
    }

    /// Counts a new connection from `ip`, or says why it is refused.
    pub fn admit(&self, ip: IpAddr) -> Result<(), Refusal> {
        let open = &self.metrics.open;
        if !self.access.permits(ip) {
            return Err(Refusal::Denied);
        }
        if open.fetch_add(1, Ordering::Relaxed) >= self.max_conns as u64 {
            open.fetch_sub(1, Ordering::Relaxed);
            return Err(Refusal::Full);
        }
        if self.max_per_ip > 0 {
            let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            let count = per_ip.entry(ip).or_default();
            if *count >= self.max_per_ip {
                open.fetch_sub(1, Ordering::Relaxed);
                return Err(Refusal::PerIp);
            }
            *count += 1;
        }
        Ok(())
    }

    /// Forgets an admitted connection from `ip`.
    pub fn release(&self, ip: IpAddr) {
        self.metrics.open.fetch_sub(1, Ordering::Relaxed);
        if self.max_per_ip > 0 {
            let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(count) = per_ip.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(access: Access, max_conns: usize, max_per_ip: usize) -> Admission {
        Admission::new(access, max_conns, max_per_ip, Arc::default())
    }

    #[test]
    fn counts_up_to_the_limits_and_releases() {
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let admission = admission(Access::default(), 3, 2);
        assert_eq!(admission.admit(a), Ok(()));
        assert_eq!(admission.admit(a), Ok(()));
        assert_eq!(admission.admit(a), Err(Refusal::PerIp));
        assert_eq!(admission.admit(b), Ok(()));
        assert_eq!(admission.admit(b), Err(Refusal::Full));
        assert_eq!(admission.metrics.open.load(Ordering::Relaxed), 3);
        admission.release(a);
        assert_eq!(admission.admit(b), Ok(()));
        assert_eq!(admission.metrics.open.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn deny_wins_over_allow() {
        let access = Access {
            allow: vec!["10.0.0.0/8".parse().unwrap()],
            deny: vec!["10.1.0.0/16".parse().unwrap()],
        };
        assert!(access.permits("10.2.3.4".parse().unwrap()));
        assert!(!access.permits("10.1.3.4".parse().unwrap()));
        assert!(!access.permits("192.168.0.1".parse().unwrap()));
        // An IPv4-mapped IPv6 address is its IPv4 address.
        assert!(access.permits("::ffff:10.2.3.4".parse().unwrap()));
        let admission = admission(access, 10, 0);
        assert_eq!(
            admission.admit("10.1.0.1".parse().unwrap()),
            Err(Refusal::Denied)
        );
    }
}
