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
            bytes_in: t.bytes_in.load(Ordering::Relaxed) + open.iter().map(|s| s.bytes_in).sum::<u64>(),
            bytes_out: t.bytes_out.load(Ordering::Relaxed) + open.iter().map(|s| s.bytes_out).sum::<u64>(),
            blocks: t.blocks.load(Ordering::Relaxed) + open.iter().map(|s| s.blocks).sum::<u64>(),
        }
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
