//! Server counters.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters (monotonic unless noted).
#[derive(Debug, Default)]
pub struct Metrics {
    /// Open connections (gauge).
    pub connections_current: AtomicU64,
    /// Accepted connections.
    pub connections_total: AtomicU64,
    /// Envelopes stored.
    pub messages_queued: AtomicU64,
    /// Envelopes and room entries handed to a recipient: pushed inline or
    /// returned by a fetch (one fetched again after a reconnect counts again).
    pub messages_delivered: AtomicU64,
    /// Completed TLS handshakes.
    pub handshakes_ok: AtomicU64,
    /// Failed TLS handshakes.
    pub handshakes_failed: AtomicU64,
    /// Requests refused by the rate limit.
    pub refused_rate_limited: AtomicU64,
    /// Frames or uploads refused as too large.
    pub refused_too_large: AtomicU64,
    /// Connections refused at the connection cap.
    pub refused_connection_cap: AtomicU64,
    /// Connections closed for a malformed frame.
    pub malformed_frames: AtomicU64,
    /// Connections closed for not logging in within `login_timeout_secs`
    /// (including handshakes that did not finish in time).
    pub refused_login_timeout: AtomicU64,
    /// Connections closed for a frame slower than `frame_timeout_secs`.
    pub refused_frame_timeout: AtomicU64,
    /// Connections closed after `max_auth_attempts` failed Register/Login.
    pub refused_auth_attempts: AtomicU64,
    /// Registrations refused by `registrations_per_hour` (per source address).
    pub refused_registration_quota: AtomicU64,
    /// Connections closed for leaving more pushes unread than their limit.
    pub refused_push_backlog: AtomicU64,
    /// New connections asked to prove their address (QUIC Retry) because
    /// most connection slots were taken, or their address had as many
    /// connections waiting to log in as allowed.
    pub address_validations: AtomicU64,
    /// Connections refused because their (proven) address had
    /// `max_pending_logins_per_address` connections waiting to log in.
    pub refused_pending_logins: AtomicU64,
    /// Logins refused because the account had `max_connections_per_user`
    /// connections already.
    pub refused_connections_per_user: AtomicU64,
    /// Failed Register/Login requests (bad signature, name taken, unknown user).
    pub auth_failed: AtomicU64,
    /// Accounts created.
    pub registrations: AtomicU64,
    /// Group commits of the database thread (that succeeded).
    pub store_commits: AtomicU64,
    /// Group commits that `fdatasync`ed the mailbox log (envelopes came):
    /// `messages_queued` over this is the envelopes per disk flush.
    pub mailbox_syncs: AtomicU64,
    /// Handshakes per negotiated key-exchange group.
    pub tls_groups: Mutex<BTreeMap<String, u64>>,
}

/// Increments a counter.
pub(crate) fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    /// Records a negotiated group.
    pub fn record_group(&self, name: String) {
        let mut g = self.tls_groups.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *g.entry(name).or_insert(0) += 1;
    }

    fn scalars(&self) -> Vec<(&'static str, &'static str, u64)> {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("pqc_connections_current", "gauge", l(&self.connections_current)),
            ("pqc_connections_total", "counter", l(&self.connections_total)),
            ("pqc_messages_queued_total", "counter", l(&self.messages_queued)),
            ("pqc_messages_delivered_total", "counter", l(&self.messages_delivered)),
            ("pqc_handshakes_ok_total", "counter", l(&self.handshakes_ok)),
            ("pqc_handshakes_failed_total", "counter", l(&self.handshakes_failed)),
            ("pqc_refused_rate_limited_total", "counter", l(&self.refused_rate_limited)),
            ("pqc_refused_too_large_total", "counter", l(&self.refused_too_large)),
            ("pqc_refused_connection_cap_total", "counter", l(&self.refused_connection_cap)),
            ("pqc_malformed_frames_total", "counter", l(&self.malformed_frames)),
            ("pqc_refused_login_timeout_total", "counter", l(&self.refused_login_timeout)),
            ("pqc_refused_frame_timeout_total", "counter", l(&self.refused_frame_timeout)),
            ("pqc_refused_auth_attempts_total", "counter", l(&self.refused_auth_attempts)),
            ("pqc_refused_registration_quota_total", "counter", l(&self.refused_registration_quota)),
            ("pqc_refused_push_backlog_total", "counter", l(&self.refused_push_backlog)),
            ("pqc_address_validations_total", "counter", l(&self.address_validations)),
            ("pqc_refused_pending_logins_total", "counter", l(&self.refused_pending_logins)),
            ("pqc_refused_connections_per_user_total", "counter", l(&self.refused_connections_per_user)),
            ("pqc_auth_failed_total", "counter", l(&self.auth_failed)),
            ("pqc_registrations_total", "counter", l(&self.registrations)),
            ("pqc_store_commits_total", "counter", l(&self.store_commits)),
            ("pqc_mailbox_syncs_total", "counter", l(&self.mailbox_syncs)),
        ]
    }

    /// Prometheus text exposition.
    pub fn prometheus(&self, queued_now: u64) -> String {
        let mut out = String::new();
        for (name, kind, v) in self.scalars() {
            let _ = writeln!(out, "# TYPE {name} {kind}\n{name} {v}");
        }
        let _ = writeln!(out, "# TYPE pqc_mailbox_envelopes gauge\npqc_mailbox_envelopes {queued_now}");
        let _ = writeln!(out, "# TYPE pqc_tls_group_total counter");
        for (g, n) in self.tls_groups.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter() {
            let _ = writeln!(out, "pqc_tls_group_total{{group=\"{g}\"}} {n}");
        }
        out
    }

    /// JSON status.
    pub fn json(&self, queued_now: u64) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for (name, _, v) in self.scalars() {
            m.insert(name.trim_start_matches("pqc_").trim_end_matches("_total").to_string(), v.into());
        }
        m.insert("mailbox_envelopes".into(), queued_now.into());
        let groups: serde_json::Map<String, serde_json::Value> = self
            .tls_groups
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (k.clone(), (*v).into()))
            .collect();
        m.insert("tls_groups".into(), groups.into());
        m.insert("status".into(), "ok".into());
        serde_json::Value::Object(m)
    }
}
