//! One streamed GET for a long sequential read of an object (a whole download, `unpack`,
//! `recover`): object bytes `[start, end)` arrive in a single GET pinned to the ETag seen at
//! open, consumed incrementally with bounded memory. For a read of the whole container that
//! GET is the open's own ([`ObjectStream::adopt`]): it asked for the whole object, and the
//! body goes on after the header it was opened for.
//!
//! A background task pulls the response body chunk by chunk into a queue; readers take their
//! bytes from it (waiting for them if they have not arrived yet). The task stops pulling (and
//! TCP back-pressure stops the server) once it holds [`STREAM_AHEAD`] bytes beyond the furthest
//! byte read, or as soon as anything is beyond it while the process holds more fetched bytes
//! than `QELTRIX_S3_READAHEAD_BYTES`. Bytes more than `behind` before the furthest byte read
//! are dropped (`behind` covers a permutation window: a sequential read of a permuted
//! container reads its frames in a shuffled order within it, so those are still needed; a
//! frame read later than that is fetched by a ranged GET). A finished stream drops its bytes
//! once it has not been read for [`DONE_IDLE`]. A body that breaks is resumed
//! from the byte it reached by a new ranged GET with the same `If-Match`; resuming gives up
//! once no byte has arrived for the retry time. A stream nobody reads for [`STREAM_IDLE`]
//! stops, and reads then fetch as they did without it.
use crate::error::{Error, Result};
use crate::store::{held_cap, store_error, HELD};
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::aws::AmazonS3;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Bytes a stream pulls beyond the furthest byte read before it waits.
pub const STREAM_AHEAD: u64 = 16 << 20;

/// Most bytes a stream keeps before the furthest byte read.
const STREAM_BEHIND_MAX: u64 = 128 << 20;

/// Bytes a stream of a container with `header` keeps before the furthest byte read: a
/// sequential read of a permuted container reads the frames of a window in a shuffled order,
/// and readers on several threads (unpack) a few blocks apart, so a window and some blocks.
pub fn behind(header: &qeltrix_format::Header) -> u64 {
    let frame = qeltrix_format::frame_len(header.block_size.max(1));
    let window = u64::from(header.perm_window.max(1));
    (window + 16).saturating_mul(frame).clamp(4 << 20, STREAM_BEHIND_MAX)
}

/// What every live stream may come to hold (`behind + STREAM_AHEAD` each), against the
/// process-wide cap `QELTRIX_S3_READAHEAD_BYTES`: a stream that would not fit is not started,
/// and its reads fetch by ranged GETs as they did without streams. A stream keeps its `behind`
/// bytes even while the cap pauses it, so without this a server with many downloads of
/// different objects at once would hold `behind` per download beyond the cap.
static RESERVED: AtomicU64 = AtomicU64::new(0);
/// A stream nobody reads for this long stops (its reader went away).
const STREAM_IDLE: Duration = Duration::from_secs(10);
/// A stream whose every byte has arrived drops what it still holds once nobody has read it
/// for this long (its reader is done).
const DONE_IDLE: Duration = Duration::from_secs(1);

/// How a stream ended.
enum End {
    /// Every byte arrived.
    Done,
    /// Stopped (idle, or replaced): reads it cannot serve fetch as they would without it.
    Stopped,
    /// Failed for good: reads of bytes it has not delivered get this error.
    Failed(std::io::ErrorKind, String),
}

struct Queue {
    /// Arrived bytes `[kept_from, filled)`, contiguous, oldest first.
    chunks: VecDeque<(u64, Bytes)>,
    kept_from: u64,
    filled: u64,
    /// Bytes in `chunks` (counted in [`HELD`]).
    held: u64,
    /// The furthest byte any read asked for.
    read_to: u64,
    last_read: Instant,
    end: Option<End>,
}

/// A streamed GET of object bytes `[start, end)`.
pub struct ObjectStream {
    start: u64,
    end: u64,
    /// Bytes kept before the furthest byte read.
    behind: u64,
    /// A read may wait for bytes up to this far beyond what has arrived.
    reach: u64,
    queue: Mutex<Queue>,
    arrived: Condvar,
    room: tokio::sync::Notify,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// This stream's share of [`RESERVED`], given back once when it stops holding bytes.
    reserved: AtomicU64,
}

/// What the task needs to send (and resend) its GET.
pub struct Request {
    pub store: Arc<AmazonS3>,
    pub path: Path,
    pub url: String,
    pub if_match: Option<String>,
    pub version: Option<String>,
    pub retry_total: Duration,
    pub gets: Arc<AtomicU64>,
}

impl ObjectStream {
    /// Start streaming `[start, end)` on `rt`. `behind`: bytes kept before the furthest read.
    /// `None` when the streams already running leave no room for it under the cap.
    pub fn start(rt: &tokio::runtime::Runtime, req: Request, start: u64, end: u64, behind: u64) -> Option<Arc<Self>> {
        let s = Self::reserve(start, end, behind)?;
        let task = rt.spawn(pump(s.clone(), req, None));
        *s.task.lock().expect("task lock") = Some(task);
        Some(s)
    }

    /// A stream of `[start, end)` whose GET has already been answered (an open that reads the
    /// whole object): `first` holds its bytes from `start`, `body` the rest as it arrives.
    /// `None` (and the body dropped) when there is no room for it under the cap.
    pub fn adopt(
        rt: &tokio::runtime::Runtime,
        req: Request,
        (start, end, behind): (u64, u64, u64),
        first: Bytes,
        body: BoxStream<'static, object_store::Result<Bytes>>,
    ) -> Option<Arc<Self>> {
        let s = Self::reserve(start, end, behind)?;
        s.push(first);
        let task = rt.spawn(pump(s.clone(), req, Some(body)));
        *s.task.lock().expect("task lock") = Some(task);
        Some(s)
    }

    fn reserve(start: u64, end: u64, behind: u64) -> Option<Arc<Self>> {
        let share = behind.saturating_add(STREAM_AHEAD);
        let fits = |r: u64| r.checked_add(share).filter(|&n| n <= held_cap());
        RESERVED.fetch_update(Ordering::SeqCst, Ordering::SeqCst, fits).ok()?;
        Some(Arc::new(ObjectStream {
            start,
            end,
            behind,
            reach: behind + STREAM_AHEAD,
            queue: Mutex::new(Queue {
                chunks: VecDeque::new(),
                kept_from: start,
                filled: start,
                held: 0,
                read_to: start,
                last_read: Instant::now(),
                end: None,
            }),
            arrived: Condvar::new(),
            room: tokio::sync::Notify::new(),
            task: Mutex::new(None),
            reserved: AtomicU64::new(share),
        }))
    }

    /// Give this stream's share of the cap back (once).
    fn unreserve(&self) {
        RESERVED.fetch_sub(self.reserved.swap(0, Ordering::SeqCst), Ordering::SeqCst);
    }

    /// Stop the stream: its task ends, its bytes are dropped.
    pub fn stop(&self) {
        if let Some(t) = self.task.lock().expect("task lock").take() {
            t.abort();
        }
        let mut q = self.queue.lock().expect("stream lock");
        if q.end.is_none() {
            q.end = Some(End::Stopped);
        }
        release(&mut q, u64::MAX);
        drop(q);
        self.unreserve();
        self.arrived.notify_all();
    }

    /// Whether this stream serves a read of `[a, b)` (it has, or will soon have, those bytes).
    pub fn serves(&self, a: u64, b: u64) -> bool {
        let q = self.queue.lock().expect("stream lock");
        self.serves_locked(&q, a, b)
    }

    fn serves_locked(&self, q: &Queue, a: u64, b: u64) -> bool {
        if a < q.kept_from || a < self.start || b > self.end {
            return false;
        }
        match q.end {
            Some(End::Stopped) | Some(End::Done) => b <= q.filled,
            Some(End::Failed(..)) => true,
            None => b <= q.filled.max(q.read_to) + self.reach,
        }
    }

    /// When the last read happened (the least recently read stream is replaced first).
    pub fn last_read(&self) -> Instant {
        self.queue.lock().expect("stream lock").last_read
    }

    /// Whether the stream still runs or holds bytes.
    pub fn live(&self) -> bool {
        let q = self.queue.lock().expect("stream lock");
        match q.end {
            None | Some(End::Failed(..)) => true,
            Some(End::Stopped) => false,
            Some(End::Done) => !q.chunks.is_empty(),
        }
    }

    /// Fill `out` with bytes from `pos`, waiting for them to arrive; `None` when this stream
    /// does not serve that read.
    pub fn read(&self, pos: u64, out: &mut [u8]) -> Option<Result<()>> {
        let end = pos + out.len() as u64;
        let mut q = self.queue.lock().expect("stream lock");
        if !self.serves_locked(&q, pos, end) {
            return None;
        }
        q.last_read = Instant::now();
        if end > q.read_to {
            q.read_to = end;
            self.room.notify_one();
        }
        while q.filled < end {
            match &q.end {
                Some(End::Failed(kind, msg)) => return Some(Err(Error::Io(std::io::Error::new(*kind, msg.clone())))),
                Some(_) => return None,
                None => {}
            }
            q = self.arrived.wait(q).expect("stream lock");
        }
        if pos < q.kept_from {
            return None;
        }
        let first = q.chunks.partition_point(|(s, c)| s + c.len() as u64 <= pos);
        let mut at = pos;
        let mut done = 0;
        for (s, c) in q.chunks.range(first..) {
            if done == out.len() {
                break;
            }
            let a = (at - s) as usize;
            let n = (c.len() - a).min(out.len() - done);
            out[done..done + n].copy_from_slice(&c[a..a + n]);
            done += n;
            at += n as u64;
        }
        debug_assert_eq!(done, out.len());
        let keep_from = q.read_to.saturating_sub(self.behind);
        release(&mut q, keep_from);
        Some(Ok(()))
    }

    fn push(&self, bytes: Bytes) {
        let mut q = self.queue.lock().expect("stream lock");
        let n = bytes.len() as u64;
        let at = q.filled;
        q.filled += n;
        q.held += n;
        HELD.fetch_add(n, Ordering::Relaxed);
        q.chunks.push_back((at, bytes));
        drop(q);
        self.arrived.notify_all();
    }

    fn finish(&self, end: End) {
        let mut q = self.queue.lock().expect("stream lock");
        if q.end.is_none() {
            q.end = Some(end);
        }
        let stopped = matches!(q.end, Some(End::Stopped));
        if stopped {
            release(&mut q, u64::MAX);
        }
        drop(q);
        if stopped {
            self.unreserve();
        }
        self.arrived.notify_all();
    }

    /// Wait until the stream may pull more: `false` when it should stop (stopped, or idle).
    async fn room(&self) -> bool {
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let q = self.queue.lock().expect("stream lock");
                if q.end.is_some() {
                    return false;
                }
                let ahead = q.filled.saturating_sub(q.read_to);
                let pause = ahead > 0 && (ahead >= STREAM_AHEAD || HELD.load(Ordering::Relaxed) > held_cap());
                if !pause {
                    return true;
                }
                if q.last_read.elapsed() >= STREAM_IDLE {
                    return false;
                }
            }
            let _ = tokio::time::timeout(STREAM_IDLE, notified).await;
        }
    }
}

/// Drop the chunks wholly before `keep_from`.
fn release(q: &mut Queue, keep_from: u64) {
    while let Some((s, c)) = q.chunks.front() {
        let end = s + c.len() as u64;
        if end > keep_from {
            break;
        }
        q.kept_from = end;
        q.held -= c.len() as u64;
        HELD.fetch_sub(c.len() as u64, Ordering::Relaxed);
        q.chunks.pop_front();
    }
    if q.chunks.is_empty() {
        q.kept_from = q.filled;
    }
}

impl Drop for ObjectStream {
    fn drop(&mut self) {
        if let Ok(q) = self.queue.get_mut() {
            HELD.fetch_sub(q.held, Ordering::Relaxed);
            q.held = 0;
        }
        self.unreserve();
    }
}

/// The stream's task: one GET of `[start, end)` (or the rest of `adopted`, a GET answered
/// before the stream began), resumed where it broke.
async fn pump(
    s: Arc<ObjectStream>,
    req: Request,
    mut adopted: Option<BoxStream<'static, object_store::Result<Bytes>>>,
) {
    let mut pos = s.queue.lock().expect("stream lock").filled;
    let mut progress = Instant::now();
    let mut backoff = Duration::from_millis(50);
    while pos < s.end {
        if !s.room().await {
            s.finish(End::Stopped);
            return;
        }
        let body = match adopted.take() {
            Some(body) => body,
            None => {
                req.gets.fetch_add(1, Ordering::Relaxed);
                let opts = GetOptions {
                    range: Some(GetRange::Bounded(pos..s.end)),
                    if_match: req.if_match.clone(),
                    version: req.version.clone(),
                    ..Default::default()
                };
                // The client retries 5xx and failed connections itself, within the retry time.
                let r = match req.store.get_opts(&req.path, opts).await {
                    Ok(r) => r,
                    Err(e) => return s.finish(failed(store_error(&req.url, e))),
                };
                if r.range.start != pos {
                    return s.finish(End::Failed(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("{}: the store answered a range from the wrong offset", req.url),
                    ));
                }
                r.into_stream()
            }
        };
        if !pull(&s, &req, body, &mut pos, &mut progress, &mut backoff).await {
            return;
        }
        if pos < s.end && s.queue.lock().expect("stream lock").end.is_some() {
            return;
        }
    }
    s.finish(End::Done);
    // The bytes kept behind the last read go once the reader is done.
    loop {
        let idle = s.queue.lock().expect("stream lock").last_read.elapsed();
        if idle >= DONE_IDLE {
            let mut q = s.queue.lock().expect("stream lock");
            release(&mut q, u64::MAX);
            drop(q);
            s.unreserve();
            return;
        }
        tokio::time::sleep(DONE_IDLE - idle).await;
    }
}

/// Take `body`'s bytes into the stream until it ends, breaks or the stream should pause;
/// `false` when the stream has failed for good (the task ends).
async fn pull(
    s: &ObjectStream,
    req: &Request,
    mut body: BoxStream<'static, object_store::Result<Bytes>>,
    pos: &mut u64,
    progress: &mut Instant,
    backoff: &mut Duration,
) -> bool {
    loop {
        match body.next().await {
            Some(Ok(bytes)) => {
                *pos += bytes.len() as u64;
                s.push(bytes);
                *progress = Instant::now();
                *backoff = Duration::from_millis(50);
                if *pos >= s.end || !s.room().await {
                    return true;
                }
            }
            Some(Err(e)) => {
                // A body that broke (a dropped connection, a timeout): resumed from `pos`,
                // unless nothing has arrived for the whole retry time.
                if progress.elapsed() >= req.retry_total {
                    s.finish(failed(store_error(&req.url, e)));
                    return false;
                }
                tokio::time::sleep(*backoff).await;
                *backoff = (*backoff * 2).min(Duration::from_secs(5));
                return true;
            }
            None if *pos < s.end => {
                // A body shorter than asked without an error: resumed like a broken one.
                if progress.elapsed() >= req.retry_total {
                    s.finish(End::Failed(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("{}: the store's answer ended early", req.url),
                    ));
                    return false;
                }
                tokio::time::sleep(*backoff).await;
                *backoff = (*backoff * 2).min(Duration::from_secs(5));
                return true;
            }
            None => return true,
        }
    }
}

fn failed(e: Error) -> End {
    match e {
        Error::Io(e) => End::Failed(e.kind(), e.to_string()),
        other => End::Failed(std::io::ErrorKind::Other, other.to_string()),
    }
}
