//! The threads that decrypt response bodies, one step at a time.
//!
//! A step is short, bounded work (read and decrypt about `STEP_LEN` bytes) that never waits
//! for a client. Running steps on a few dedicated threads (about one per core) instead of
//! tokio's blocking pool keeps the number of threads contending for the binding's lock (the
//! Python GIL) at the number that can do useful work at once: with 64 busy connections the
//! blocking pool ran 64 threads taking turns at the GIL, and most of the server's CPU went to
//! waking them (profiled: 27% of samples in context switches against 26% in SHA-256 and
//! AES-GCM). A thread that finishes a step takes the next queued one without sleeping.
//!
//! Opening a container (which may run a passphrase KDF for seconds) stays on the blocking
//! pool, so it never delays the steps of other responses.
use crate::http::ThreadHooks;
use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    stop: bool,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
}

/// A fixed set of threads running queued steps in order.
pub struct StepPool {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl StepPool {
    /// Start `threads` threads (at least one), each running `hooks` as it starts and stops.
    pub fn new(threads: usize, hooks: Option<ThreadHooks>) -> io::Result<StepPool> {
        let shared = Arc::new(Shared::default());
        let mut handles = Vec::new();
        for n in 0..threads.max(1) {
            let (mine, hooks) = (shared.clone(), hooks.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("qeltrix-step-{n}"))
                .spawn(move || {
                    if let Some(h) = &hooks {
                        (h.on_start)();
                    }
                    work(&mine);
                    if let Some(h) = &hooks {
                        (h.on_stop)();
                    }
                });
            match spawned {
                Ok(h) => handles.push(h),
                Err(e) => {
                    let pool = StepPool {
                        shared,
                        threads: Mutex::new(handles),
                    };
                    pool.shutdown();
                    return Err(e);
                }
            }
        }
        Ok(StepPool {
            shared,
            threads: Mutex::new(handles),
        })
    }

    /// Queue `f`; its result arrives on the returned receiver. A step whose receiver is gone
    /// by the time a thread takes it (the response was dropped) is skipped.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> oneshot::Receiver<T> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            if tx.is_closed() {
                return;
            }
            // A step that panics drops `tx` (its response fails) but not the thread.
            if let Ok(r) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
                let _ = tx.send(r);
            }
        });
        let mut q = self.shared.queue.lock().expect("step queue lock");
        if !q.stop {
            q.jobs.push_back(job);
            drop(q);
            self.shared.ready.notify_one();
        }
        rx
    }

    /// Stop the threads after the steps they are running (queued ones are dropped, so their
    /// receivers see an error) and wait for them, unless called from one of them.
    pub fn shutdown(&self) {
        let dropped = {
            let mut q = self.shared.queue.lock().expect("step queue lock");
            q.stop = true;
            std::mem::take(&mut q.jobs)
        };
        drop(dropped);
        self.shared.ready.notify_all();
        let handles = std::mem::take(&mut *self.threads.lock().expect("step threads lock"));
        let me = std::thread::current().id();
        for h in handles {
            if h.thread().id() != me {
                let _ = h.join();
            }
        }
    }
}

impl Drop for StepPool {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn work(shared: &Shared) {
    loop {
        let job = {
            let mut q = shared.queue.lock().expect("step queue lock");
            loop {
                if q.stop {
                    return;
                }
                if let Some(j) = q.jobs.pop_front() {
                    break j;
                }
                q = shared.ready.wait(q).expect("step queue lock");
            }
        };
        job();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_every_step_and_stops() {
        let pool = StepPool::new(2, None).unwrap();
        let rxs: Vec<_> = (0..100u64).map(|i| pool.run(move || i * 2)).collect();
        let got: Vec<u64> = rxs.into_iter().map(|rx| rx.blocking_recv().unwrap()).collect();
        assert_eq!(got, (0..100u64).map(|i| i * 2).collect::<Vec<_>>());
        pool.shutdown();
        // After shutdown nothing runs: the receiver reports the step was dropped.
        assert!(pool.run(|| 1).blocking_recv().is_err());
    }

    #[test]
    fn a_panicking_step_fails_its_response_and_the_thread_goes_on() {
        let pool = StepPool::new(1, None).unwrap();
        let failed = pool.run(|| -> u32 { panic!("step failed") });
        assert!(failed.blocking_recv().is_err());
        assert_eq!(pool.run(|| 7).blocking_recv().unwrap(), 7);
    }

    #[test]
    fn a_step_whose_response_is_gone_is_skipped() {
        let pool = StepPool::new(1, None).unwrap();
        let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (gate_tx, gate_rx) = std::sync::mpsc::channel::<()>();
        // Occupy the only thread until the second step's receiver is dropped.
        let first = pool.run(move || gate_rx.recv().is_ok());
        let r = ran.clone();
        drop(pool.run(move || r.store(true, std::sync::atomic::Ordering::SeqCst)));
        gate_tx.send(()).unwrap();
        assert!(first.blocking_recv().unwrap());
        pool.shutdown();
        assert!(!ran.load(std::sync::atomic::Ordering::SeqCst));
    }
}
