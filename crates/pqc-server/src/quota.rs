//! New accounts per network address and hour.
//!
//! Every account holds prekeys and key packages on the relay's disk, and a
//! connection may register only one (then it is logged in), but nothing
//! stopped one machine from opening connection after connection. The quota
//! is a token bucket per source address: `per_hour` registrations at once,
//! then one more every `3600 / per_hour` seconds. An IPv6 address counts by
//! its /64 prefix (what one host or one home network is given), an
//! IPv4-mapped one as the IPv4 address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Addresses tracked before the full buckets (addresses quiet for an hour)
/// are forgotten.
const TRACKED: usize = 16_384;

const HOUR: Duration = Duration::from_secs(3600);

/// Registrations per source address (see the module documentation).
#[derive(Debug)]
pub(crate) struct RegistrationQuota {
    per_hour: u32,
    buckets: Mutex<HashMap<Source, Bucket>>,
}

/// An IPv4 address, or an IPv6 address's /64 prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    V4(u32),
    V6(u64),
}

impl From<IpAddr> for Source {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Source::V4(v4.into()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source::V4(v4.into()),
                None => Source::V6((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

/// A token bucket: the tokens it held at `at`. Its refill rate (tokens
/// per second) and capacity are the caller's, so a table of buckets that
/// share them stores neither (the quota here, a connection's request limit
/// in `conn`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// A bucket holding `full` tokens at `now`.
    pub(crate) fn full(full: f64, now: Instant) -> Self {
        Self { tokens: full, at: now }
    }

    /// The tokens at `now`: refilled since `at` at `rate` per second, at
    /// most `full`.
    fn level(&self, now: Instant, rate: f64, full: f64) -> f64 {
        (self.tokens + now.saturating_duration_since(self.at).as_secs_f64() * rate).min(full)
    }

    /// Refills the bucket to `now`, then takes `cost` tokens, or all there
    /// are if fewer.
    pub(crate) fn charge(&mut self, now: Instant, rate: f64, full: f64, cost: f64) {
        self.tokens = (self.level(now, rate, full) - cost).max(0.0);
        self.at = now;
    }

    /// Refills the bucket to `now`, then takes `cost` tokens if there are
    /// that many.
    pub(crate) fn take(&mut self, now: Instant, rate: f64, full: f64, cost: f64) -> bool {
        self.tokens = self.level(now, rate, full);
        self.at = now;
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }
}

impl RegistrationQuota {
    /// `per_hour` registrations per address and hour; 0: no limit.
    pub(crate) fn new(per_hour: u32) -> Self {
        Self { per_hour, buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes one registration for `ip` at `now`, or says how long until
    /// the next one is allowed.
    pub(crate) fn take(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        if self.per_hour == 0 {
            return Ok(());
        }
        let full = f64::from(self.per_hour);
        let rate = full / HOUR.as_secs_f64();
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() >= TRACKED {
            buckets.retain(|_, b| b.level(now, rate, full) < full);
        }
        let b = buckets.entry(Source::from(ip)).or_insert(Bucket::full(full, now));
        if b.take(now, rate, full, 1.0) { Ok(()) } else { Err(Duration::from_secs_f64((1.0 - b.tokens) / rate)) }
    }

    /// Gives back a registration taken for `ip` that did not happen (the
    /// name was taken, the store failed).
    pub(crate) fn refund(&self, ip: IpAddr) {
        if self.per_hour == 0 {
            return;
        }
        let full = f64::from(self.per_hour);
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(b) = buckets.get_mut(&Source::from(ip)) {
            b.tokens = (b.tokens + 1.0).min(full);
        }
    }
}

/// Connections that have not logged in yet, per source address (counted
/// like registrations: an IPv6 address by its /64). A connection holds a
/// slot of `max_connections` from its first packet until it logs in or
/// the login timeout ends it; without this, one machine could hold them all
/// by opening connections and never logging in.
#[derive(Debug)]
pub(crate) struct PendingLogins {
    max: u32,
    counts: Mutex<HashMap<Source, u32>>,
}

/// One connection counted in [`PendingLogins`] until it logs in or ends.
#[derive(Debug)]
pub(crate) struct PendingLogin {
    table: std::sync::Arc<PendingLogins>,
    source: Source,
    counted: bool,
}

impl PendingLogins {
    /// At most `max` connections not logged in per address; 0: no limit.
    pub(crate) fn new(max: u32) -> Self {
        Self { max, counts: Mutex::new(HashMap::new()) }
    }

    /// Counts a new connection from `ip`, or refuses it (`None`) at the limit.
    pub(crate) fn admit(table: &std::sync::Arc<Self>, ip: IpAddr) -> Option<PendingLogin> {
        let source = Source::from(ip);
        let mut counts = table.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let n = counts.entry(source).or_insert(0);
        if table.max != 0 && *n >= table.max {
            return None;
        }
        *n += 1;
        Some(PendingLogin { table: table.clone(), source, counted: true })
    }
}

impl PendingLogin {
    /// The connection logged in: it no longer counts.
    pub(crate) fn logged_in(&mut self) {
        if std::mem::take(&mut self.counted) {
            let mut counts = self.table.counts.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(n) = counts.get_mut(&self.source) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    counts.remove(&self.source);
                }
            }
        }
    }
}

impl Drop for PendingLogin {
    fn drop(&mut self) {
        self.logged_in();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_charge_empties_the_bucket_but_never_below_zero() {
        let t0 = Instant::now();
        let mut b = Bucket::full(2.0, t0);
        b.charge(t0, 1.0, 2.0, 1.5);
        assert!(b.take(t0, 1.0, 2.0, 0.5));
        assert!(!b.take(t0, 1.0, 2.0, 0.1));
        b.charge(t0, 1.0, 2.0, 5.0);
        // Empty, not in debt: one second refills one token.
        assert!(b.take(t0 + Duration::from_secs(1), 1.0, 2.0, 1.0));
    }

    #[test]
    fn pending_logins_are_counted_per_address_until_login_or_end() {
        let t = std::sync::Arc::new(PendingLogins::new(2));
        let a = PendingLogins::admit(&t, ip("192.0.2.1")).unwrap();
        let mut b = PendingLogins::admit(&t, ip("192.0.2.1")).unwrap();
        assert!(PendingLogins::admit(&t, ip("192.0.2.1")).is_none());
        assert!(PendingLogins::admit(&t, ip("192.0.2.2")).is_some(), "another address");
        b.logged_in();
        b.logged_in();
        let c = PendingLogins::admit(&t, ip("192.0.2.1")).unwrap();
        drop((a, b, c));
        assert!(t.counts.lock().unwrap().is_empty(), "nothing left counted");
        let none = std::sync::Arc::new(PendingLogins::new(0));
        let held: Vec<_> = (0..100).map(|_| PendingLogins::admit(&none, ip("192.0.2.1")).unwrap()).collect();
        drop(held);
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_address_gets_its_quota_then_one_more_per_interval() {
        let q = RegistrationQuota::new(3);
        let t0 = Instant::now();
        for _ in 0..3 {
            q.take(ip("192.0.2.7"), t0).unwrap();
        }
        let wait = q.take(ip("192.0.2.7"), t0).unwrap_err();
        assert_eq!(wait.as_secs(), 1200, "one more every 20 minutes");
        // Another address is counted on its own.
        q.take(ip("192.0.2.8"), t0).unwrap();
        // 20 minutes later: exactly one more.
        let later = t0 + Duration::from_secs(1201);
        q.take(ip("192.0.2.7"), later).unwrap();
        assert!(q.take(ip("192.0.2.7"), later).is_err());
        // A refund gives one back, never more than the quota.
        q.refund(ip("192.0.2.7"));
        q.take(ip("192.0.2.7"), later).unwrap();
        for _ in 0..10 {
            q.refund(ip("192.0.2.8"));
        }
        for _ in 0..3 {
            q.take(ip("192.0.2.8"), later).unwrap();
        }
        assert!(q.take(ip("192.0.2.8"), later).is_err());
    }

    #[test]
    fn ipv6_counts_by_its_64_prefix_and_mapped_ipv4_as_ipv4() {
        let q = RegistrationQuota::new(2);
        let t0 = Instant::now();
        q.take(ip("2001:db8:1:2::1"), t0).unwrap();
        q.take(ip("2001:db8:1:2:ffff::9"), t0).unwrap();
        assert!(q.take(ip("2001:db8:1:2::abcd"), t0).is_err(), "same /64");
        q.take(ip("2001:db8:1:3::1"), t0).unwrap();
        q.take(ip("198.51.100.1"), t0).unwrap();
        q.take(ip("::ffff:198.51.100.1"), t0).unwrap();
        assert!(q.take(ip("198.51.100.1"), t0).is_err(), "the mapped form is the same address");
    }

    #[test]
    fn zero_means_no_limit_and_quiet_addresses_are_forgotten() {
        let q = RegistrationQuota::new(0);
        let t0 = Instant::now();
        for _ in 0..1000 {
            q.take(ip("192.0.2.1"), t0).unwrap();
        }
        let q = RegistrationQuota::new(1);
        for i in 0..TRACKED as u32 {
            q.take(IpAddr::V4(i.into()), t0).unwrap();
        }
        // An hour later every bucket is full again: the next new address
        // clears them out instead of growing the table.
        q.take(ip("203.0.113.5"), t0 + HOUR).unwrap();
        assert_eq!(q.buckets.lock().unwrap().len(), 1);
    }
}
