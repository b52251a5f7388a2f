//! The crypto gate: at most a few connection threads (about one per core) are inside a crypto
//! call at once, whatever the number of connections.
//!
//! Each crypto call of the Python binding takes the interpreter lock; with hundreds of
//! connection threads all asking for it, every frame waits behind the others' lock hand-offs
//! (each AEAD and hash call releases and re-takes it). Behind the gate, the few threads inside
//! take turns on the lock and the others wait on a plain condition variable, in arrival order
//! for all practical purposes. The gate also counts what `/metrics` reports: calls waiting
//! (the crypto queue depth), calls made, and the time spent waiting and inside.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Instant;

#[derive(Debug)]
pub struct CryptoGate {
    /// Free slots, and calls waiting on `cv` for one.
    free: Mutex<(usize, usize)>,
    cv: Condvar,
    /// Calls waiting for a slot now.
    pub waiting: AtomicU64,
    /// Calls inside now.
    pub running: AtomicU64,
    /// Calls made.
    pub calls: AtomicU64,
    /// Total nanoseconds calls waited for a slot.
    pub wait_ns: AtomicU64,
    /// Total nanoseconds calls spent inside.
    pub busy_ns: AtomicU64,
    pub slots: usize,
}

impl CryptoGate {
    /// A gate with `slots` slots (at least one).
    pub fn new(slots: usize) -> CryptoGate {
        let slots = slots.max(1);
        CryptoGate {
            free: Mutex::new((slots, 0)),
            cv: Condvar::new(),
            waiting: AtomicU64::new(0),
            running: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            wait_ns: AtomicU64::new(0),
            busy_ns: AtomicU64::new(0),
            slots,
        }
    }

    /// One slot per core the process may run on.
    pub fn per_core() -> CryptoGate {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let slots = std::env::var("QELTRIX_GW_CRYPTO_SLOTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(cores);
        CryptoGate::new(slots)
    }

    /// Run `f` in a slot: at once when one is free, else after waiting for one.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> T {
        let mut waited = None;
        {
            let mut free = self.free.lock().expect("gate lock");
            if free.0 == 0 {
                waited = Some(Instant::now());
                self.waiting.fetch_add(1, Ordering::Relaxed);
                free.1 += 1;
                while free.0 == 0 {
                    free = self.cv.wait(free).expect("gate lock");
                }
                free.1 -= 1;
                self.waiting.fetch_sub(1, Ordering::Relaxed);
            }
            free.0 -= 1;
        }
        let t1 = Instant::now();
        self.running.fetch_add(1, Ordering::Relaxed);
        // The slot is given back even if `f` panics.
        struct Release<'a>(&'a CryptoGate, Instant);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                let g = self.0;
                g.busy_ns
                    .fetch_add(self.1.elapsed().as_nanos() as u64, Ordering::Relaxed);
                g.running.fetch_sub(1, Ordering::Relaxed);
                let mut free = g.free.lock().expect("gate lock");
                free.0 += 1;
                // A notification is a system call (futex wake) even with no one waiting: the
                // usual case, one call per frame, pays none.
                if free.1 > 0 {
                    g.cv.notify_one();
                }
            }
        }
        let _release = Release(self, t1);
        self.calls.fetch_add(1, Ordering::Relaxed);
        if let Some(t0) = waited {
            self.wait_ns.fetch_add((t1 - t0).as_nanos() as u64, Ordering::Relaxed);
        }
        f()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn never_more_than_its_slots_inside() {
        let gate = Arc::new(CryptoGate::new(2));
        let inside = Arc::new(AtomicU64::new(0));
        let most = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let (gate, inside, most) = (gate.clone(), inside.clone(), most.clone());
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        gate.run(|| {
                            let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(n, Ordering::SeqCst);
                            std::thread::yield_now();
                            inside.fetch_sub(1, Ordering::SeqCst);
                        });
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert!(most.load(Ordering::SeqCst) <= 2);
        assert_eq!(gate.calls.load(Ordering::SeqCst), 16 * 50);
        assert_eq!(gate.waiting.load(Ordering::SeqCst), 0);
    }
}
