//! Per-connection and aggregate counters of a gateway (`stats()`, the stats log line).
use super::*;

/// Live counters of one connection.
#[derive(Debug)]
pub struct ConnStats {
    pub id: u64,
    pub peer: SocketAddr,
    pub(super) started: Instant,
    pub(super) ended: Mutex<Option<Instant>>,
    /// Bytes received from the accepted peer.
    pub bytes_in: AtomicU64,
    /// Bytes sent to the accepted peer.
    pub bytes_out: AtomicU64,
    /// Frames sealed plus frames opened.
    pub blocks: AtomicU64,
    pub(super) last_activity_ms: AtomicU64,
    /// Milliseconds after `started` by which the peer must have authenticated; `u64::MAX`
    /// once it has (or when nothing needs authenticating).
    pub(super) preauth_deadline_ms: AtomicU64,
    /// Set when the connection is aborted: every pump stops at its next read or write.
    pub(super) aborted: AtomicBool,
    pub(super) error: Mutex<Option<String>>,
}

/// A copy of one connection's counters.
#[derive(Debug, Clone)]
pub struct ConnSnapshot {
    pub id: u64,
    pub peer: SocketAddr,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub blocks: u64,
    pub duration: Duration,
    pub open: bool,
    pub error: Option<String>,
}

impl ConnStats {
    /// Counters of a connection accepted now: no deadline set, not aborted.
    pub(super) fn new(id: u64, peer: SocketAddr) -> ConnStats {
        ConnStats {
            id,
            peer,
            started: Instant::now(),
            ended: Mutex::new(None),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            blocks: AtomicU64::new(0),
            last_activity_ms: AtomicU64::new(0),
            preauth_deadline_ms: AtomicU64::new(u64::MAX),
            aborted: AtomicBool::new(false),
            error: Mutex::new(None),
        }
    }

    pub(super) fn touch(&self) {
        self.last_activity_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    pub(super) fn idle_for(&self) -> Duration {
        let now = self.started.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_activity_ms.load(Ordering::Relaxed)))
    }

    pub(super) fn past_deadline(&self) -> bool {
        let deadline = self.preauth_deadline_ms.load(Ordering::Relaxed);
        deadline != u64::MAX && self.started.elapsed().as_millis() as u64 >= deadline
    }

    pub(super) fn authenticated(&self) {
        self.preauth_deadline_ms.store(u64::MAX, Ordering::Relaxed);
    }

    pub(super) fn snapshot(&self) -> ConnSnapshot {
        let ended = *self.ended.lock().expect("stats lock");
        ConnSnapshot {
            id: self.id,
            peer: self.peer,
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            blocks: self.blocks.load(Ordering::Relaxed),
            duration: ended.unwrap_or_else(Instant::now) - self.started,
            open: ended.is_none(),
            error: self.error.lock().expect("stats lock").clone(),
        }
    }
}

#[derive(Default)]
pub(super) struct Totals {
    pub(super) connections: AtomicU64,
    pub(super) refused: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) handshake_failures: AtomicU64,
    pub(super) bytes_in: AtomicU64,
    pub(super) bytes_out: AtomicU64,
    pub(super) blocks: AtomicU64,
}

/// Aggregate counters since start.
#[derive(Debug, Clone, Default)]
pub struct Aggregate {
    pub connections: u64,
    pub active: u64,
    pub refused: u64,
    pub failed: u64,
    pub handshake_failures: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub blocks: u64,
}

pub(super) trait StatsSource: Send + Sync {
    fn connections(&self) -> Vec<ConnSnapshot>;
    fn aggregate(&self) -> Aggregate;
}

impl<K: Keyring> StatsSource for Gateway<K> {
    fn connections(&self) -> Vec<ConnSnapshot> {
        let mut out: Vec<ConnSnapshot> = self.closed.lock().expect("stats lock").iter().cloned().collect();
        out.extend(self.open.lock().expect("stats lock").values().map(|s| s.snapshot()));
        out.sort_by_key(|s| s.id);
        out
    }

    fn aggregate(&self) -> Aggregate {
        let t = &self.totals;
        let open: Vec<ConnSnapshot> = self
            .open
            .lock()
            .expect("stats lock")
            .values()
            .map(|s| s.snapshot())
            .collect();
        Aggregate {
            connections: t.connections.load(Ordering::Relaxed),
            active: self.active.load(Ordering::Relaxed) as u64,
            refused: t.refused.load(Ordering::Relaxed),
            failed: t.failed.load(Ordering::Relaxed),
            handshake_failures: t.handshake_failures.load(Ordering::Relaxed),
            bytes_in: t.bytes_in.load(Ordering::Relaxed) + open.iter().map(|s| s.bytes_in).sum::<u64>(),
            bytes_out: t.bytes_out.load(Ordering::Relaxed) + open.iter().map(|s| s.bytes_out).sum::<u64>(),
            blocks: t.blocks.load(Ordering::Relaxed) + open.iter().map(|s| s.blocks).sum::<u64>(),
        }
    }
}

impl<K: Keyring> crate::metrics::MetricsSource for Gateway<K> {
    fn metrics(&self) -> Vec<crate::metrics::Metric> {
        use crate::metrics::Metric;
        use crate::metrics::MetricType::{Counter, Gauge};
        let a = self.aggregate();
        let g = &self.gate;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mode = self.mode_name();
        vec![
            Metric::new(
                "qeltrix_gateway_connections_active",
                "Connections open now.",
                Gauge,
                a.active,
            ),
            Metric::new(
                "qeltrix_gateway_connections_total",
                "Connections accepted (refused ones not included).",
                Counter,
                a.connections,
            ),
            Metric::new(
                "qeltrix_gateway_connections_refused_total",
                "Connections closed at accept: the connection limit was reached.",
                Counter,
                a.refused,
            ),
            Metric::new(
                "qeltrix_gateway_connections_aborted_total",
                "Connections that ended with an error (both sides reset), handshake failures included.",
                Counter,
                a.failed,
            ),
            Metric::new(
                "qeltrix_gateway_handshake_failures_total",
                "Connections that ended before their peer's session and stream header authenticated.",
                Counter,
                a.handshake_failures,
            ),
            Metric::new(
                "qeltrix_gateway_received_bytes_total",
                "Bytes received from accepted clients.",
                Counter,
                a.bytes_in,
            ),
            Metric::new(
                "qeltrix_gateway_sent_bytes_total",
                "Bytes sent to accepted clients.",
                Counter,
                a.bytes_out,
            ),
            Metric::new(
                "qeltrix_gateway_frames_total",
                "Frames sealed plus frames opened.",
                Counter,
                a.blocks,
            ),
            Metric::new(
                "qeltrix_gateway_crypto_queue_depth",
                "Crypto calls waiting for a slot now.",
                Gauge,
                get(&g.waiting),
            ),
            Metric::new(
                "qeltrix_gateway_crypto_slots",
                "Crypto calls that may run at once.",
                Gauge,
                g.slots as u64,
            ),
            Metric::new(
                "qeltrix_gateway_crypto_calls_total",
                "Frame crypto calls made (a worker's batch of ready frames is one call).",
                Counter,
                get(&g.calls),
            ),
            Metric::new(
                "qeltrix_gateway_crypto_wait_microseconds_total",
                "Time frame crypto calls waited for a slot.",
                Counter,
                get(&g.wait_ns) / 1000,
            ),
            Metric::new(
                "qeltrix_gateway_crypto_busy_microseconds_total",
                "Time spent inside frame crypto calls.",
                Counter,
                get(&g.busy_ns) / 1000,
            ),
            Metric::new("qeltrix_gateway_info", "The gateway's mode.", Gauge, 1).label("mode", mode),
        ]
    }

    fn healthy(&self) -> bool {
        !self.draining.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_counts_until_it_ends() {
        let s = ConnStats::new(7, "127.0.0.1:9".parse().unwrap());
        s.bytes_in.fetch_add(100, Ordering::Relaxed);
        s.blocks.fetch_add(2, Ordering::Relaxed);
        let open = s.snapshot();
        assert_eq!((open.id, open.bytes_in, open.blocks, open.open), (7, 100, 2, true));
        *s.ended.lock().unwrap() = Some(Instant::now());
        *s.error.lock().unwrap() = Some("reset".into());
        let closed = s.snapshot();
        assert!(!closed.open);
        assert_eq!(closed.error.as_deref(), Some("reset"));
        // A closed connection's duration stops growing.
        assert_eq!(closed.duration, s.snapshot().duration);
    }

    #[test]
    fn the_pre_authentication_deadline_ends_when_the_peer_authenticates() {
        let s = ConnStats::new(1, "127.0.0.1:9".parse().unwrap());
        assert!(!s.past_deadline(), "no deadline until one is set");
        s.preauth_deadline_ms.store(0, Ordering::Relaxed);
        assert!(s.past_deadline());
        s.authenticated();
        assert!(!s.past_deadline());
    }
}
