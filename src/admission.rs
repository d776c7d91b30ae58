//! Who may connect and how many at once: the policy applied at accept.
//!
//! It lives apart from the event loop so that the rules read in one place
//! and the loop only asks: [`Admission::admit`] for a new connection,
//! [`Admission::release`] when an admitted one ends. A refused client gets
//! one line saying why ([`Refusal::line`]) and is counted under
//! [`Refusal::label`].
//!
//! With the PROXY protocol (`Config::proxy_protocol`) the client's address
//! is known only once its header is read, so admission comes in two steps:
//! [`Admission::reserve`] at accept holds one of `max_conns` (a connection
//! waiting for its header counts as open), and
//! [`Admission::admit_reserved`] applies the access lists and the count per
//! address to the client's real address; [`Admission::unreserve`] gives
//! back the slot of a connection that ended without a valid header.
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

/// Why a connection was refused (at accept, or once its PROXY header was read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_conns` reached.
    Full,
    /// `--allow` / `--deny`.
    Denied,
    /// `max_conns_per_ip` reached.
    PerIp,
    /// `proxy_protocol`, and the connection did not start with a valid
    /// PROXY protocol header (or ended, or timed out, before one).
    Proxy,
}

impl Refusal {
    /// Why, in a few words (for logs).
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Full => "server full",
            Refusal::Denied => "access denied",
            Refusal::PerIp => "too many connections from your address",
            Refusal::Proxy => "no valid PROXY protocol header",
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
            Refusal::Proxy => "proxy_header",
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
        if !self.access.permits(ip) {
            return Err(Refusal::Denied);
        }
        self.reserve()?;
        self.count(ip).inspect_err(|_| self.unreserve())
    }

    /// Holds one of `max_conns` for a connection whose client is not known
    /// yet (its PROXY header is on its way), or says the server is full.
    pub fn reserve(&self) -> Result<(), Refusal> {
        let open = &self.metrics.open;
        if open.fetch_add(1, Ordering::Relaxed) >= self.max_conns as u64 {
            open.fetch_sub(1, Ordering::Relaxed);
            return Err(Refusal::Full);
        }
        Ok(())
    }

    /// Admits client `ip` of a connection that holds a
    /// [reservation](Self::reserve), or says why it is refused (and gives
    /// the reservation back).
    pub fn admit_reserved(&self, ip: IpAddr) -> Result<(), Refusal> {
        let admitted = match self.access.permits(ip) {
            true => self.count(ip),
            false => Err(Refusal::Denied),
        };
        admitted.inspect_err(|_| self.unreserve())
    }

    /// Gives back a reservation whose connection was never admitted.
    pub fn unreserve(&self) {
        self.metrics.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Counts a connection from `ip` against `max_per_ip`.
    fn count(&self, ip: IpAddr) -> Result<(), Refusal> {
        if self.max_per_ip > 0 {
            let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            let count = per_ip.entry(ip).or_default();
            if *count >= self.max_per_ip {
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
    fn a_reservation_holds_a_slot_until_the_client_is_known() {
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let access = Access {
            allow: vec![],
            deny: vec!["10.9.0.0/16".parse().unwrap()],
        };
        let admission = admission(access, 2, 1);
        let open = || admission.metrics.open.load(Ordering::Relaxed);
        assert_eq!(admission.reserve(), Ok(()));
        assert_eq!(admission.reserve(), Ok(()));
        assert_eq!(admission.reserve(), Err(Refusal::Full));
        assert_eq!(open(), 2);
        // The reservations become connections, or are given back.
        assert_eq!(admission.admit_reserved(a), Ok(()));
        assert_eq!(admission.admit_reserved(a), Err(Refusal::PerIp));
        assert_eq!(open(), 1);
        assert_eq!(admission.reserve(), Ok(()));
        let denied = "10.9.0.1".parse().unwrap();
        assert_eq!(admission.admit_reserved(denied), Err(Refusal::Denied));
        assert_eq!(admission.reserve(), Ok(()));
        admission.unreserve();
        assert_eq!(open(), 1);
        admission.release(a);
        assert_eq!(open(), 0);
        assert_eq!(admission.admit(a), Ok(()));
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
