//! Plumbing shared by the pack and unpack pipelines: cancellation, the first error, bounded
//! waits that notice cancellation, Ctrl-C, and throttled progress callbacks.
use crate::error::{Error, Result};
use crate::io::PyBuf;
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use pyo3::prelude::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often blocked stages look at the cancel flag, and the writer at Ctrl-C.
pub const POLL: Duration = Duration::from_millis(50);
/// Smallest interval between two progress callbacks.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// State every stage of one pipeline shares.
#[derive(Default)]
pub struct Shared {
    cancelled: AtomicBool,
    error: Mutex<Option<Error>>,
}

impl Shared {
    /// Record the first error and stop every stage.
    pub fn fail(&self, e: Error) {
        let mut slot = self.error.lock().expect("error lock");
        if slot.is_none() {
            *slot = Some(e);
        }
        self.cancelled.store(true, Ordering::SeqCst);
    }

    /// Whether a stage failed or the user interrupted.
    pub fn cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// The first recorded error, if any.
    pub fn take_error(&self) -> Option<Error> {
        self.error.lock().expect("error lock").take()
    }

    /// Receive, waking up to notice cancellation. `None` when cancelled or disconnected.
    pub fn recv<T>(&self, rx: &Receiver<T>) -> Option<T> {
        loop {
            if self.cancelled() {
                return None;
            }
            match rx.recv_timeout(POLL) {
                Ok(v) => return Some(v),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Send, giving up when cancelled or disconnected (returns false).
    pub fn send<T>(&self, tx: &Sender<T>, mut v: T) -> bool {
        loop {
            if self.cancelled() {
                return false;
            }
            match tx.send_timeout(v, POLL) {
                Ok(()) => return true,
                Err(crossbeam_channel::SendTimeoutError::Timeout(back)) => v = back,
                Err(crossbeam_channel::SendTimeoutError::Disconnected(_)) => return false,
            }
        }
    }

    /// Run a stage, recording its error; a panic is recorded as [`Error::Internal`] so the
    /// other stages stop and the caller gets an exception instead of a hang.
    pub fn run(&self, f: impl FnOnce() -> Result<()>) {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => self.fail(e),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                self.fail(Error::Internal(format!("a pipeline stage panicked: {what}")));
            }
        }
    }

    /// The coordinating thread's wait for the next message: `Ok(None)` on a timeout (after
    /// looking at Ctrl-C), the first error once cancelled, and an error when every producer is
    /// gone before the work is done (a stage that died must not leave the writer waiting).
    pub fn recv_or_fail<T>(&self, rx: &Receiver<T>, what: &str) -> Result<Option<T>> {
        match rx.recv_timeout(POLL) {
            Ok(v) => Ok(Some(v)),
            Err(e) => {
                if e == RecvTimeoutError::Timeout {
                    self.check_signals();
                }
                if self.cancelled() {
                    return Err(self
                        .take_error()
                        .unwrap_or_else(|| Error::Internal(format!("{what} was cancelled"))));
                }
                if e == RecvTimeoutError::Disconnected {
                    return Err(Error::Internal(format!("every stage stopped before {what} finished")));
                }
                Ok(None)
            }
        }
    }

    /// Called by the coordinating thread between waits: Ctrl-C becomes a pipeline error.
    pub fn check_signals(&self) {
        if let Err(e) = Python::attach(|py| py.check_signals()) {
            self.fail(Error::Py(e));
        }
    }
}

/// Equal-sized buffers shared by the stages of one pipeline, made on first need up to `cap`.
///
/// Making all of them before the first block is read cost a pack ~8 ms of serial start
/// (70 zero-filled 256 KiB buffers: page faults and memset on one thread) whatever the input
/// size; made on demand, a small input makes a few, and a large one makes the rest on the
/// stage that needs them while the others work. The bound on memory is unchanged: `cap`.
pub struct BufPool {
    tx: Sender<PyBuf>,
    rx: Receiver<PyBuf>,
    made: AtomicUsize,
    cap: usize,
    size: usize,
}

impl BufPool {
    pub fn new(cap: usize, size: usize) -> BufPool {
        let (tx, rx) = bounded(cap);
        BufPool {
            tx,
            rx,
            made: AtomicUsize::new(0),
            cap,
            size,
        }
    }

    /// A free buffer: a returned one, else a new one while fewer than `cap` exist, else the
    /// next one returned. `Ok(None)` when the pipeline is cancelled while waiting.
    pub fn take(&self, shared: &Shared) -> Result<Option<PyBuf>> {
        if let Ok(b) = self.rx.try_recv() {
            return Ok(Some(b));
        }
        let below_cap = |n: usize| (n < self.cap).then_some(n + 1);
        if self
            .made
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, below_cap)
            .is_ok()
        {
            return Ok(Some(Python::attach(|py| PyBuf::new(py, self.size))?));
        }
        Ok(shared.recv(&self.rx))
    }

    /// The most buffers this pool makes.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Return a buffer taken from this pool (never blocks: the channel holds `cap`).
    pub fn give(&self, b: PyBuf) {
        let _ = self.tx.try_send(b);
    }
}

/// Throttled `progress(done, total)` callback.
pub struct Progress {
    callback: Option<Py<PyAny>>,
    total: Option<u64>,
    last: Instant,
}

impl Progress {
    pub fn new(callback: Option<Py<PyAny>>, total: Option<u64>) -> Progress {
        Progress {
            callback,
            total,
            last: Instant::now(),
        }
    }

    /// Report `done` bytes; `force` for the final call.
    pub fn update(&mut self, done: u64, force: bool) -> Result<()> {
        let Some(cb) = &self.callback else { return Ok(()) };
        if !force && self.last.elapsed() < PROGRESS_EVERY {
            return Ok(());
        }
        self.last = Instant::now();
        Python::attach(|py| crate::calls::progress(py, cb, done, self.total))?;
        Ok(())
    }
}

/// A `seconds` argument (a timeout or interval) as a `Duration`, raised to at least `min`; NaN,
/// infinite or out-of-range values are a `ValueError` (`Duration::from_secs_f64` would panic).
pub fn seconds(name: &str, value: f64, min: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(value.max(min)).map_err(|_| {
        pyo3::exceptions::PyValueError::new_err(format!("{name} must be a number of seconds, not {value}"))
    })
}

/// Number of worker threads: the caller's choice, else one per core.
pub fn worker_count(requested: Option<usize>) -> usize {
    requested
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
        .min(64)
}

/// Run `f` on this (non-Python) thread with a Python thread state kept for its whole life,
/// without holding the GIL: each later `Python::attach` in `f` then only takes the GIL instead
/// of creating and destroying a thread state, which matters at one crypto call per frame.
/// `f` and its result are `Send` (pyo3's `Ungil` check on `detach`): nothing GIL-bound crosses.
pub fn with_thread_state<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    Python::attach(|py| py.detach(f))
}

thread_local! {
    /// The state `attach_thread` saved, for `detach_thread` to restore.
    static KEPT: std::cell::Cell<Option<(pyo3::ffi::PyGILState_STATE, usize)>> = const { std::cell::Cell::new(None) };
}

/// Give this (non-Python) thread a Python thread state for the rest of its life, without
/// holding the GIL: a pooled thread (tokio's) cannot wrap its whole life in a closure the way
/// [`with_thread_state`] does, so this pairs with [`detach_thread`] in start/stop hooks.
pub fn attach_thread() {
    // SAFETY: PyGILState_Ensure may be called on any thread once the interpreter is running
    // (the extension module is loaded, so it is); PyEval_SaveThread then releases the GIL it
    // took, keeping the thread state, which `detach_thread` restores on this same thread.
    unsafe {
        let state = pyo3::ffi::PyGILState_Ensure();
        let ts = pyo3::ffi::PyEval_SaveThread();
        KEPT.set(Some((state, ts as usize)));
    }
}

/// Undo [`attach_thread`] on the same thread (at its end).
pub fn detach_thread() {
    if let Some((state, ts)) = KEPT.take() {
        // SAFETY: restores exactly the thread state saved by `attach_thread` on this thread,
        // then releases the GILState reference it took, in reverse order.
        unsafe {
            pyo3::ffi::PyEval_RestoreThread(ts as *mut pyo3::ffi::PyThreadState);
            pyo3::ffi::PyGILState_Release(state);
        }
    }
}
