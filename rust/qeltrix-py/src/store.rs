//! Containers on object storage (`s3://BUCKET/KEY`): ranged reads and multipart uploads done by
//! the `object_store` crate on a small tokio runtime, with the GIL released.
//!
//! A [`StoreObject`] is a container source behind the same seam as a file descriptor
//! ([`crate::io::RandomSource::Store`]). Opening costs one GET of the object's first bytes (the
//! header; the response also gives the size, ETag and version), and loading the index one
//! suffix GET (trailer, footer and signature section together). Every later GET is a ranged GET
//! pinned to the ETag seen at open (`If-Match`): an object overwritten during a read fails
//! with a clear error instead of mixing two versions. Reads of a run of frames are coalesced
//! into one GET ([`StoreObject::prefetch`]), and never is an object fetched whole to read part of
//! it; a long sequential read is one streamed GET ([`StoreObject::stream`], [`crate::objstream`]).
//!
//! A [`StoreUpload`] is a container sink: a multipart upload whose parts are sent in parallel
//! (bounded: `concurrency` parts in flight of `part_size` bytes each) while the pipeline
//! encrypts. Nothing is visible under the key until `complete`; `abort` (or dropping an
//! unfinished upload) removes every part sent.
use crate::error::{io_error, Error, Result};
use crate::objstream::{ObjectStream, Request};
use bytes::Bytes;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, MultipartUpload, ObjectStore, PutPayload, RetryConfig,
};
use pyo3::prelude::*;
use qeltrix_server::gateway::{SinkObject, SinkStore};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::task::JoinSet;

/// Bytes of prefetched frames kept per object (the windows of [`StoreObject::prefetch`]): a
/// few coalesced reads, so an open object costs at most this much beside the block cache.
const WINDOW_BYTES: usize = 64 << 20;

/// Default of `QELTRIX_S3_READAHEAD_BYTES`: fetched frame bytes held by all open objects of
/// the process together (windows and reads ahead in flight), beyond each one's newest window.
const DEFAULT_HELD_CAP: u64 = 256 << 20;

/// Bytes held in the windows of every open object, plus reads ahead in flight.
pub(crate) static HELD: AtomicU64 = AtomicU64::new(0);

/// The process-wide cap on [`HELD`]: `QELTRIX_S3_READAHEAD_BYTES` (checked by the Python layer).
pub(crate) fn held_cap() -> u64 {
    static CAP: OnceLock<u64> = OnceLock::new();
    *CAP.get_or_init(|| {
        std::env::var("QELTRIX_S3_READAHEAD_BYTES")
            .ok()
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v >= 0.0)
            .map_or(DEFAULT_HELD_CAP, |v| v as u64)
    })
}

/// Runs `(start, end)` fetched, each with the offset the server answered from and its bytes.
type Fetched = Vec<(u64, u64, u64, Bytes)>;

/// A read ahead in flight: runs of object bytes fetched in the background while the reader
/// decrypts what it has, `reserved` bytes counted in [`HELD`] until it lands.
struct Ahead {
    reserved: u64,
    task: tokio::task::JoinHandle<std::result::Result<Fetched, object_store::Error>>,
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("qeltrix-store")
            .enable_all()
            .build()
            .expect("tokio runtime for object storage")
    })
}

/// One line, whatever the store's error chain looks like.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A store error as a `QeltrixIOError`-bound [`Error`] naming the URL.
pub(crate) fn store_error(url: &str, e: object_store::Error) -> Error {
    use object_store::Error as E;
    let kind = match &e {
        E::NotFound { .. } => std::io::ErrorKind::NotFound,
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => std::io::ErrorKind::PermissionDenied,
        _ => std::io::ErrorKind::Other,
    };
    if e.to_string().contains("<Code>NoSuchBucket</Code>") {
        // A listing of a missing bucket: S3's answer, not the whole XML of it.
        return Error::Io(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{url}: no such bucket"),
        ));
    }
    let msg = match &e {
        E::NotFound { .. } => format!("{url}: no such object (or no such bucket)"),
        E::Precondition { .. } => {
            format!("{url} was replaced while it was being read (its ETag changed since open): open it again")
        }
        E::AlreadyExists { .. } => format!("{url} already exists"),
        E::PermissionDenied { source, .. } | E::Unauthenticated { source, .. } => {
            format!("{url}: access denied: {}", one_line(&source.to_string()))
        }
        E::Generic { source, .. } => format!("{url}: {}", one_line(&source.to_string())),
        other => format!("{url}: {}", one_line(&other.to_string())),
    };
    Error::Io(std::io::Error::new(kind, msg))
}

/// Whether `path` names an object now (a `HEAD`; any error but "not found" is an error).
async fn exists(store: &AmazonS3, path: &Path, url: &str) -> Result<bool> {
    match store.head(path).await {
        Ok(_) => Ok(true),
        Err(object_store::Error::NotFound { .. }) => Ok(false),
        Err(e) => Err(store_error(url, e)),
    }
}

fn already_exists(message: String) -> Error {
    Error::Io(std::io::Error::new(std::io::ErrorKind::AlreadyExists, message))
}

fn build_store(bucket: &str, options: &HashMap<String, String>, retry_seconds: f64) -> PyResult<Arc<AmazonS3>> {
    let mut b = AmazonS3Builder::new().with_bucket_name(bucket);
    for (k, v) in options {
        let key = k
            .parse()
            .map_err(|_| io_error(format!("unknown object-store setting {k:?}")))?;
        b = b.with_config(key, v);
    }
    let total = Duration::from_secs_f64(retry_seconds.clamp(0.0, 3600.0));
    b = b
        .with_retry(RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(50),
                max_backoff: Duration::from_secs(5),
                base: 2.0,
            },
            max_retries: 10,
            retry_timeout: total,
        })
        .with_client_options(
            ClientOptions::new()
                .with_allow_http(true)
                .with_connect_timeout(Duration::from_secs(10))
                .with_timeout(Duration::from_secs(120)),
        );
    Ok(Arc::new(b.build().map_err(|e| {
        io_error(format!("s3://{bucket}: {}", one_line(&e.to_string())))
    })?))
}

fn object_path(url: &str, key: &str) -> PyResult<Path> {
    Path::parse(key).map_err(|e| io_error(format!("{url}: bad object key: {}", one_line(&e.to_string()))))
}

/// An object opened for random reads, pinned to the version seen at open.
#[pyclass(frozen, module = "qeltrix_v6._core")]
pub struct StoreObject {
    store: Arc<AmazonS3>,
    path: Path,
    url: String,
    size: u64,
    etag: Option<String>,
    version: Option<String>,
    last_modified: i64,
    /// Bytes `[0, head.len())`, from the open GET.
    head: Bytes,
    /// Prefetched spans `(offset, bytes)`: the suffix and recent runs of frames, newest last.
    windows: Mutex<VecDeque<(u64, Bytes)>>,
    /// One fetch at a time per object, so threads needing the same window wait for one GET.
    fetching: Mutex<()>,
    /// A read past the prefetched windows fetches at least this many bytes (sequential unpack).
    readahead: AtomicU64,
    /// The read ahead in flight, if any ([`StoreObject::prefetch_runs_ahead`]).
    ahead: Mutex<Option<Ahead>>,
    /// Streamed GETs of long sequential reads ([`StoreObject::stream`]), at most [`MAX_STREAMS`].
    streams: Mutex<Vec<Arc<ObjectStream>>>,
    retry_total: Duration,
    gets: Arc<AtomicU64>,
}

/// Streamed GETs per object at once (concurrent downloads of one object); beyond this the
/// least recently read one is stopped.
const MAX_STREAMS: usize = 4;

/// A streamed GET starting or ending within this many bytes of the object's start or end
/// asks from its first byte, or to its last.
const STREAM_SNAP: u64 = 1 << 20;

impl StoreObject {
    /// A GET of `range`, pinned to the version seen at open.
    fn options(&self, range: GetRange) -> GetOptions {
        GetOptions {
            range: Some(range),
            if_match: self.etag.clone(),
            version: self.version.clone(),
            ..Default::default()
        }
    }

    fn get(&self, range: GetRange) -> Result<(u64, Bytes)> {
        self.gets.fetch_add(1, Ordering::Relaxed);
        let opts = self.options(range);
        let url = self.url.as_str();
        runtime().block_on(async {
            let r = self
                .store
                .get_opts(&self.path, opts)
                .await
                .map_err(|e| store_error(url, e))?;
            let start = r.range.start;
            Ok((start, r.bytes().await.map_err(|e| store_error(url, e))?))
        })
    }

    fn lookup(&self, pos: u64, out: &mut [u8]) -> bool {
        let end = pos + out.len() as u64;
        if end <= self.head.len() as u64 {
            out.copy_from_slice(&self.head[pos as usize..end as usize]);
            return true;
        }
        let windows = self.windows.lock().expect("windows lock");
        for (start, bytes) in windows.iter().rev() {
            if *start <= pos && end <= start + bytes.len() as u64 {
                let a = (pos - start) as usize;
                out.copy_from_slice(&bytes[a..a + out.len()]);
                return true;
            }
        }
        false
    }

    /// Whether object bytes `[start, end)` are held (the header or a prefetched window).
    pub fn covered(&self, start: u64, end: u64) -> bool {
        if end <= self.head.len() as u64 {
            return true;
        }
        let windows = self.windows.lock().expect("windows lock");
        windows.iter().any(|(s, b)| *s <= start && end <= s + b.len() as u64)
    }

    fn keep(&self, start: u64, bytes: Bytes) {
        self.keep_all(vec![(start, bytes)]);
    }

    /// Keep the spans of one fetch. Older windows are evicted, oldest first, beyond this
    /// object's cap (the newest window always stays) and beyond the process-wide cap (the
    /// spans of this fetch always stay: they hold what the caller is about to read).
    fn keep_all(&self, batch: Vec<(u64, Bytes)>) {
        let mut windows = self.windows.lock().expect("windows lock");
        let fresh = batch.len();
        for (start, bytes) in batch {
            HELD.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            windows.push_back((start, bytes));
        }
        let mut total: usize = windows.iter().map(|(_, b)| b.len()).sum();
        while (windows.len() > 1 && total > WINDOW_BYTES)
            || (windows.len() > fresh && HELD.load(Ordering::Relaxed) > held_cap())
        {
            let (_, b) = windows.pop_front().expect("non-empty");
            total -= b.len();
            HELD.fetch_sub(b.len() as u64, Ordering::Relaxed);
        }
    }

    /// Wait for the read ahead in flight, if any, and keep what it fetched.
    fn settle(&self) -> Result<()> {
        let Some(ahead) = self.ahead.lock().expect("ahead lock").take() else {
            return Ok(());
        };
        let r = runtime().block_on(ahead.task);
        HELD.fetch_sub(ahead.reserved, Ordering::Relaxed);
        let fetched = r
            .map_err(|e| Error::Internal(e.to_string()))?
            .map_err(|e| store_error(&self.url, e))?;
        let mut batch = Vec::with_capacity(fetched.len());
        for (a, b, start, bytes) in fetched {
            if start != a || (bytes.len() as u64) < b - a {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
            }
            batch.push((a, bytes));
        }
        self.keep_all(batch);
        Ok(())
    }

    /// Start fetching `runs` of object bytes in the background (one ranged GET each, in
    /// parallel) while the caller decrypts what it holds; the next fetch waits for them. Skipped
    /// when a read ahead is already in flight, or when it would take the process over its cap
    /// on fetched bytes (`QELTRIX_S3_READAHEAD_BYTES`): the reads then fetch when they need to.
    pub fn prefetch_runs_ahead(&self, runs: &[(u64, u64)]) {
        let mut slot = self.ahead.lock().expect("ahead lock");
        if slot.is_some() {
            return;
        }
        let todo: Vec<(u64, u64)> = runs
            .iter()
            .map(|&(a, b)| (a, b.min(self.size)))
            .filter(|&(a, b)| a < b && !self.covered(a, b))
            .collect();
        let reserved: u64 = todo.iter().map(|(a, b)| b - a).sum();
        if reserved == 0 || HELD.load(Ordering::Relaxed) + reserved > held_cap() {
            return;
        }
        HELD.fetch_add(reserved, Ordering::Relaxed);
        self.gets.fetch_add(todo.len() as u64, Ordering::Relaxed);
        let jobs: Vec<_> = todo
            .iter()
            .map(|&(a, b)| {
                (
                    a,
                    b,
                    self.store.clone(),
                    self.path.clone(),
                    self.options(GetRange::Bounded(a..b)),
                )
            })
            .collect();
        let task = runtime().spawn(async move {
            let mut set = JoinSet::new();
            for (a, b, store, path, opts) in jobs {
                set.spawn(async move {
                    let r = store.get_opts(&path, opts).await?;
                    let start = r.range.start;
                    Ok::<_, object_store::Error>((a, b, start, r.bytes().await?))
                });
            }
            let mut out = Vec::new();
            while let Some(r) = set.join_next().await {
                match r {
                    Ok(r) => out.push(r?),
                    Err(e) => {
                        return Err(object_store::Error::Generic {
                            store: "S3",
                            source: Box::new(e),
                        })
                    }
                }
            }
            Ok(out)
        });
        *slot = Some(Ahead { reserved, task });
    }

    /// Object bytes `[start, end)` fetched in one ranged GET, unless already held.
    pub fn prefetch(&self, start: u64, end: u64) -> Result<()> {
        let end = end.min(self.size);
        if start >= end || self.covered(start, end) {
            return Ok(());
        }
        let _one = self.fetching.lock().expect("fetch lock");
        self.settle()?;
        if self.covered(start, end) {
            return Ok(());
        }
        let (at, bytes) = self.get(GetRange::Bounded(start..end))?;
        if at != start || (bytes.len() as u64) < end - start {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        self.keep(start, bytes);
        Ok(())
    }

    /// Several runs of object bytes, one ranged GET each, all in flight at once (the frames
    /// of one plaintext range that a permutation window scattered: one round trip, not one each).
    pub fn prefetch_runs(&self, runs: &[(u64, u64)]) -> Result<()> {
        {
            let _one = self.fetching.lock().expect("fetch lock");
            self.settle()?;
        }
        let todo = |me: &Self| -> Vec<(u64, u64)> {
            runs.iter()
                .map(|&(a, b)| (a, b.min(me.size)))
                .filter(|&(a, b)| a < b && !me.covered(a, b))
                .collect()
        };
        if todo(self).len() <= 1 {
            return todo(self).into_iter().try_for_each(|(a, b)| self.prefetch(a, b));
        }
        let _one = self.fetching.lock().expect("fetch lock");
        let todo = todo(self);
        self.gets.fetch_add(todo.len() as u64, Ordering::Relaxed);
        let url = self.url.as_str();
        let fetched = runtime().block_on(async {
            let mut set = JoinSet::new();
            for &(a, b) in &todo {
                let (store, path, opts) = (
                    self.store.clone(),
                    self.path.clone(),
                    self.options(GetRange::Bounded(a..b)),
                );
                set.spawn(async move {
                    let r = store.get_opts(&path, opts).await?;
                    let start = r.range.start;
                    Ok::<_, object_store::Error>((a, b, start, r.bytes().await?))
                });
            }
            let mut out = Vec::with_capacity(todo.len());
            while let Some(r) = set.join_next().await {
                out.push(r);
            }
            out
        });
        let mut batch = Vec::with_capacity(fetched.len());
        for r in fetched {
            let (a, b, start, bytes) = r
                .map_err(|e| Error::Internal(e.to_string()))?
                .map_err(|e| store_error(url, e))?;
            if start != a || (bytes.len() as u64) < b - a {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
            }
            batch.push((a, bytes));
        }
        self.keep_all(batch);
        Ok(())
    }

    /// The last `n` bytes of the object, in one suffix GET.
    pub fn prefetch_suffix(&self, n: u64) -> Result<()> {
        let n = n.min(self.size);
        if n == 0 || self.covered(self.size - n, self.size) {
            return Ok(());
        }
        let _one = self.fetching.lock().expect("fetch lock");
        let (at, bytes) = self.get(GetRange::Suffix(n))?;
        self.keep(at, bytes);
        Ok(())
    }

    /// Fill `out` from `pos`; a read past the end is `UnexpectedEof`.
    pub fn read_exact_at(&self, pos: u64, out: &mut [u8]) -> Result<()> {
        let end = pos.saturating_add(out.len() as u64);
        if end > self.size {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        if self.lookup(pos, out) {
            return Ok(());
        }
        let streams: Vec<Arc<ObjectStream>> = self.streams.lock().expect("streams lock").clone();
        for s in streams {
            if let Some(r) = s.read(pos, out) {
                return r;
            }
        }
        let ahead = self.readahead.load(Ordering::Relaxed);
        self.prefetch(pos, end.max(pos.saturating_add(ahead)))?;
        if self.lookup(pos, out) {
            return Ok(());
        }
        // Evicted by another thread's window in between: fetch exactly this.
        let (_, bytes) = self.get(GetRange::Bounded(pos..end))?;
        if bytes.len() != out.len() {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        out.copy_from_slice(&bytes);
        Ok(())
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn last_modified_secs(&self) -> i64 {
        self.last_modified
    }

    /// Whether a streamed GET serves object bytes `[start, end)` (has them, or will soon).
    pub fn streaming(&self, start: u64, end: u64) -> bool {
        let streams = self.streams.lock().expect("streams lock");
        streams.iter().any(|s| s.serves(start, end))
    }

    /// Stream object bytes `[start, end)` in one GET pinned to the ETag seen at open, for a
    /// long sequential read: [`Self::read_exact_at`] takes its bytes from the stream as they
    /// arrive (see [`crate::objstream`]). `behind`: bytes kept before the furthest byte read
    /// (the reader's permutation window). A no-op when a stream already serves `start`.
    pub fn stream(&self, start: u64, end: u64, behind: u64) {
        let end = end.min(self.size);
        if start >= end {
            return;
        }
        // Within a little of either end of the object, ask for the whole of it: a few bytes
        // more, and a store that keeps objects whole (moto) answers that range without
        // copying the object (S3 answers either the same way).
        let start = if start <= STREAM_SNAP { 0 } else { start };
        let end = if self.size - end <= STREAM_SNAP { self.size } else { end };
        let mut streams = self.streams.lock().expect("streams lock");
        streams.retain(|s| s.live());
        if streams.iter().any(|s| s.serves(start, start + 1)) {
            return;
        }
        if streams.len() >= MAX_STREAMS {
            let oldest = (0..streams.len())
                .min_by_key(|&i| streams[i].last_read())
                .expect("non-empty");
            streams.remove(oldest).stop();
        }
        let req = self.request();
        // No room under the cap (other downloads stream): reads fetch by ranged GETs instead.
        if let Some(s) = ObjectStream::start(runtime(), req, start, end, behind) {
            streams.push(s);
        }
    }

    /// What a stream of this object needs to send (and resend) its GET: pinned to the
    /// version seen at open.
    fn request(&self) -> Request {
        Request {
            store: self.store.clone(),
            path: self.path.clone(),
            url: self.url.clone(),
            if_match: self.etag.clone(),
            version: self.version.clone(),
            retry_total: self.retry_total,
            gets: self.gets.clone(),
        }
    }

    pub fn set_readahead(&self, n: u64) {
        self.readahead.store(n, Ordering::Relaxed);
    }
}

impl Drop for StoreObject {
    fn drop(&mut self) {
        if let Some(ahead) = self.ahead.get_mut().ok().and_then(Option::take) {
            ahead.task.abort();
            HELD.fetch_sub(ahead.reserved, Ordering::Relaxed);
        }
        if let Ok(streams) = self.streams.get_mut() {
            streams.drain(..).for_each(|s| s.stop());
        }
        if let Ok(windows) = self.windows.get_mut() {
            let held: usize = windows.iter().map(|(_, b)| b.len()).sum();
            HELD.fetch_sub(held as u64, Ordering::Relaxed);
        }
    }
}

#[pymethods]
impl StoreObject {
    /// Open `url` (`s3://bucket/key`): one GET of its first `head_bytes` bytes. `options` are
    /// object_store S3 settings (`aws_access_key_id`, `aws_region`, `aws_endpoint`...), resolved
    /// by the Python layer from the standard AWS environment and shared files.
    ///
    /// `whole`: the caller is about to read the whole container in order (a download, an
    /// unpack). The GET then asks for the whole object and goes on streaming it after the first
    /// `head_bytes` (see [`crate::objstream`]) while the caller reads the index with its suffix
    /// GET: two GETs at open as always, but the frames are on their way one round trip earlier.
    #[new]
    #[pyo3(signature = (url, bucket, key, options, head_bytes = 65536, retry_seconds = 30.0, whole = false))]
    #[allow(clippy::too_many_arguments)] // a constructor's keyword arguments
    fn open(
        py: Python<'_>,
        url: String,
        bucket: &str,
        key: &str,
        options: HashMap<String, String>,
        head_bytes: u64,
        retry_seconds: f64,
        whole: bool,
    ) -> PyResult<StoreObject> {
        let store = build_store(bucket, &options, retry_seconds)?;
        let path = object_path(&url, key)?;
        let head_bytes = head_bytes.max(1);
        let r = py.detach(|| -> Result<_> {
            let u = url.as_str();
            runtime().block_on(async {
                let range = if whole {
                    GetRange::Offset(0)
                } else {
                    GetRange::Bounded(0..head_bytes)
                };
                let opts = GetOptions {
                    range: Some(range),
                    ..Default::default()
                };
                match store.get_opts(&path, opts).await {
                    Ok(r) => {
                        let meta = r.meta.clone();
                        if !whole {
                            return Ok(Some((meta, r.bytes().await.map_err(|e| store_error(u, e))?, None)));
                        }
                        // The first `head_bytes` (or all there is), then the body goes on.
                        let mut body = r.into_stream();
                        let mut got: Vec<Bytes> = Vec::new();
                        let mut n = 0u64;
                        while n < head_bytes.min(meta.size) {
                            match futures::StreamExt::next(&mut body).await {
                                Some(chunk) => {
                                    let chunk = chunk.map_err(|e| store_error(u, e))?;
                                    n += chunk.len() as u64;
                                    got.push(chunk);
                                }
                                None => break,
                            }
                        }
                        let first = Bytes::from(got.concat());
                        let rest = (n < meta.size).then_some(body);
                        Ok(Some((meta, first, rest)))
                    }
                    // A zero-length object has no byte 0: S3 answers 416.
                    Err(object_store::Error::Generic { source, .. }) if source.to_string().contains("416") => Ok(None),
                    Err(e) => Err(store_error(u, e)),
                }
            })
        })?;
        let Some((meta, first, rest)) = r else {
            return Err(Error::Format(qeltrix_format::FormatError::Truncated(format!(
                "{url} is empty, not a container"
            )))
            .into());
        };
        let head = first.slice(..first.len().min(head_bytes as usize));
        let obj = StoreObject {
            store,
            path,
            url,
            size: meta.size,
            etag: meta.e_tag,
            version: meta.version,
            last_modified: meta.last_modified.timestamp(),
            head,
            windows: Mutex::new(VecDeque::new()),
            fetching: Mutex::new(()),
            readahead: AtomicU64::new(0),
            ahead: Mutex::new(None),
            streams: Mutex::new(Vec::new()),
            retry_total: Duration::from_secs_f64(retry_seconds.clamp(0.0, 3600.0)),
            gets: Arc::new(AtomicU64::new(1)),
        };
        // Not a container (or no room under the read-ahead cap): the rest of the body is
        // dropped, and reads fetch as they would have.
        let header = qeltrix_format::Header::peek_len(&first)
            .ok()
            .and_then(|n| first.get(..n as usize))
            .and_then(|h| qeltrix_format::Header::parse(h).ok());
        if let (Some(body), Some(header)) = (rest, header) {
            let span = (0, obj.size, crate::objstream::behind(&header));
            if let Some(s) = ObjectStream::adopt(runtime(), obj.request(), span, first, body) {
                obj.streams.lock().expect("streams lock").push(s);
            }
        }
        Ok(obj)
    }

    /// Bytes `[pos, pos + n)` of the object (clipped at its end), pinned to the ETag seen at open.
    fn read<'py>(&self, py: Python<'py>, pos: u64, n: u64) -> PyResult<Bound<'py, pyo3::types::PyBytes>> {
        let n = n.min(self.size.saturating_sub(pos));
        let mut buf = vec![0u8; usize::try_from(n).map_err(|_| io_error("read too large"))?];
        py.detach(|| self.read_exact_at(pos, &mut buf))?;
        Ok(pyo3::types::PyBytes::new(py, &buf))
    }

    /// Object size in bytes.
    #[getter(size)]
    fn py_size(&self) -> u64 {
        self.size
    }

    /// The ETag seen at open (every later GET is pinned to it), if the store gave one.
    #[getter]
    fn etag(&self) -> Option<String> {
        self.etag.clone()
    }

    /// Last-Modified at open, seconds since the epoch.
    #[getter]
    fn last_modified(&self) -> i64 {
        self.last_modified
    }

    /// GET requests sent for this object so far (the open's included).
    #[getter]
    fn gets(&self) -> u64 {
        self.gets.load(Ordering::Relaxed)
    }

    #[getter]
    fn url(&self) -> String {
        self.url.clone()
    }
}

/// One level of `s3://bucket/prefix` (`prefix` empty or ending in `/`): one ListObjectsV2 per
/// 1000 entries, `/`-delimited. Returns the sub-prefixes (relative names, without the
/// trailing `/`) and the objects as `(name, size, etag, last_modified_secs)`, names relative
/// to `prefix`.
#[pyfunction]
#[pyo3(signature = (url, bucket, prefix, options, retry_seconds = 30.0))]
#[allow(clippy::type_complexity)]
pub fn store_list(
    py: Python<'_>,
    url: &str,
    bucket: &str,
    prefix: &str,
    options: HashMap<String, String>,
    retry_seconds: f64,
) -> PyResult<(Vec<String>, Vec<(String, u64, Option<String>, i64)>)> {
    let store = build_store(bucket, &options, retry_seconds)?;
    let base = if prefix.is_empty() {
        None
    } else {
        Some(object_path(url, prefix)?)
    };
    let listing = py.detach(|| -> Result<_> {
        runtime()
            .block_on(store.list_with_delimiter(base.as_ref()))
            .map_err(|e| store_error(url, e))
    })?;
    let strip = |p: &Path| -> Option<String> {
        let s = p.as_ref();
        let rel = s.strip_prefix(prefix.trim_end_matches('/')).unwrap_or(s);
        let rel = rel.trim_start_matches('/');
        (!rel.is_empty() && !rel.contains('/')).then(|| rel.to_string())
    };
    let dirs = listing.common_prefixes.iter().filter_map(strip).collect();
    let objects = listing
        .objects
        .iter()
        .filter_map(|m| strip(&m.location).map(|n| (n, m.size, m.e_tag.clone(), m.last_modified.timestamp())))
        .collect();
    Ok((dirs, objects))
}

/// One multipart upload in progress.
struct Upload {
    upload: Box<dyn MultipartUpload>,
    buffer: Vec<u8>,
    /// Bytes handed to parts already (they can no longer be taken back).
    sent: u64,
    tasks: JoinSet<object_store::Result<()>>,
}

/// A multipart upload to one key: the core of [`StoreUpload`] (pack, rotate, recover) and of
/// a sink's streams ([`StoreSink`]). Blocking calls; the callers release the GIL.
pub struct Multipart {
    store: Arc<AmazonS3>,
    path: Path,
    url: String,
    part_size: usize,
    concurrency: usize,
    force: bool,
    /// Complete only if the object still has this ETag (a rotation in place).
    if_match: Option<String>,
    state: Mutex<Option<Upload>>,
}

impl Multipart {
    /// Start a multipart upload to `path` (`url` names it). Unless `force`, an existing object
    /// is refused now and again just before completing.
    #[allow(clippy::too_many_arguments)]
    fn start(
        store: Arc<AmazonS3>,
        path: Path,
        url: String,
        part_size: usize,
        concurrency: usize,
        force: bool,
        if_match: Option<String>,
    ) -> Result<Multipart> {
        let upload = {
            let u = url.as_str();
            runtime().block_on(async {
                if !force && exists(&store, &path, u).await? {
                    return Err(already_exists(format!(
                        "{u} already exists (use --force / overwrite=True to replace it)"
                    )));
                }
                store.put_multipart(&path).await.map_err(|e| store_error(u, e))
            })?
        };
        Ok(Multipart {
            store,
            path,
            url,
            part_size,
            concurrency: concurrency.max(1),
            force,
            if_match,
            state: Mutex::new(Some(Upload {
                upload,
                buffer: Vec::with_capacity(part_size),
                sent: 0,
                tasks: JoinSet::new(),
            })),
        })
    }

    fn fail(&self, up: Upload, e: Error) -> Error {
        self.abort_upload(up);
        e
    }

    fn abort_upload(&self, mut up: Upload) {
        runtime().block_on(async {
            up.tasks.shutdown().await;
            let _ = up.upload.abort().await;
        });
    }

    fn send_part(&self, up: &mut Upload) -> Result<()> {
        let data = std::mem::replace(&mut up.buffer, Vec::with_capacity(self.part_size));
        up.sent += data.len() as u64;
        let fut = up.upload.put_part(PutPayload::from(data));
        let url = self.url.as_str();
        runtime().block_on(async {
            up.tasks.spawn(fut);
            while up.tasks.len() > self.concurrency {
                if let Some(r) = up.tasks.join_next().await {
                    r.map_err(|e| Error::Internal(e.to_string()))?
                        .map_err(|e| store_error(url, e))?;
                }
            }
            Ok(())
        })
    }

    /// Append `data` to the upload; full parts go out while the next ones fill.
    pub fn write(&self, mut data: &[u8]) -> Result<()> {
        let mut guard = self.state.lock().expect("upload lock");
        let Some(mut up) = guard.take() else {
            return Err(io_error(format!("{}: the upload is closed", self.url)).into());
        };
        while !data.is_empty() {
            let room = self.part_size - up.buffer.len();
            let n = room.min(data.len());
            up.buffer.extend_from_slice(&data[..n]);
            data = &data[n..];
            if up.buffer.len() == self.part_size {
                if let Err(e) = self.send_part(&mut up) {
                    return Err(self.fail(up, e));
                }
            }
        }
        *guard = Some(up);
        Ok(())
    }

    /// Drop every byte written from `len` on; only bytes not yet sent in a part can be.
    fn truncate(&self, len: u64) -> Result<()> {
        let mut guard = self.state.lock().expect("upload lock");
        let Some(up) = guard.as_mut() else {
            return Err(io_error(format!("{}: the upload is closed", self.url)).into());
        };
        let keep = len
            .checked_sub(up.sent)
            .and_then(|k| usize::try_from(k).ok())
            .ok_or_else(|| io_error(format!("{}: cannot take back bytes already uploaded", self.url)))?;
        up.buffer.truncate(keep);
        Ok(())
    }

    /// Send the last part and complete the upload: the object appears whole, or not at all.
    fn finish(&self) -> Result<()> {
        let Some(mut up) = self.state.lock().expect("upload lock").take() else {
            return Err(io_error(format!("{}: the upload is closed", self.url)).into());
        };
        let url = self.url.as_str();
        if !up.buffer.is_empty() || up.tasks.is_empty() {
            // S3 needs at least one part, which may be empty.
            let data = std::mem::take(&mut up.buffer);
            let fut = up.upload.put_part(PutPayload::from(data));
            runtime().block_on(async { up.tasks.spawn(fut) });
        }
        let r = runtime().block_on(async {
            while let Some(r) = up.tasks.join_next().await {
                r.map_err(|e| Error::Internal(e.to_string()))?
                    .map_err(|e| store_error(url, e))?;
            }
            if !self.force && exists(&self.store, &self.path, url).await? {
                return Err(already_exists(format!(
                    "{url} was created by someone else during the upload: not replaced"
                )));
            }
            if let Some(tag) = &self.if_match {
                let replaced = match self.store.head(&self.path).await {
                    Ok(meta) => meta.e_tag.as_deref() != Some(tag.as_str()),
                    Err(object_store::Error::NotFound { .. }) => true,
                    Err(e) => return Err(store_error(url, e)),
                };
                if replaced {
                    return Err(Error::Io(std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        format!("{url} was replaced by another writer while it was being rewritten; nothing written"),
                    )));
                }
            }
            up.upload.complete().await.map(|_| ()).map_err(|e| store_error(url, e))
        });
        match r {
            Ok(()) => Ok(()),
            Err(e) => Err(self.fail(up, e)),
        }
    }

    /// Abort the upload: every part sent is deleted, nothing appears under the key.
    fn abort(&self) {
        if let Some(up) = self.state.lock().expect("upload lock").take() {
            self.abort_upload(up);
        }
    }
}

impl Drop for Multipart {
    fn drop(&mut self) {
        // An upload neither completed nor aborted (an error path that forgot, a sink stream
        // that failed): leave no parts.
        if let Some(up) = self.state.get_mut().ok().and_then(Option::take) {
            self.abort_upload(up);
        }
    }
}

/// A container being written to object storage as a multipart upload.
#[pyclass(frozen, module = "qeltrix_v6._core")]
pub struct StoreUpload(Multipart);

impl StoreUpload {
    /// Append `data` to the upload; full parts go out while the next ones fill.
    pub fn write(&self, data: &[u8]) -> Result<()> {
        self.0.write(data)
    }
}

#[pymethods]
impl StoreUpload {
    /// Start a multipart upload to `url`. Unless `force`, an existing object is refused now and
    /// again just before completing (S3 has no conditional multipart completion everywhere).
    /// With `if_match`, the upload completes only if the object still has that ETag just
    /// before (it replaces the object it was made from, and nobody else's).
    #[new]
    #[pyo3(signature = (url, bucket, key, options, part_size = 8 << 20, concurrency = 4, force = false, retry_seconds = 30.0, if_match = None))]
    #[allow(clippy::too_many_arguments)]
    fn create(
        py: Python<'_>,
        url: String,
        bucket: &str,
        key: &str,
        options: HashMap<String, String>,
        part_size: usize,
        concurrency: usize,
        force: bool,
        retry_seconds: f64,
        if_match: Option<String>,
    ) -> PyResult<StoreUpload> {
        check_part_size(part_size)?;
        let store = build_store(bucket, &options, retry_seconds)?;
        let path = object_path(&url, key)?;
        let up = py.detach(|| Multipart::start(store, path, url, part_size, concurrency, force, if_match))?;
        Ok(StoreUpload(up))
    }

    /// Send the last part and complete the upload: the object appears whole, or not at all.
    fn complete(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.0.finish())?;
        Ok(())
    }

    /// Abort the upload: every part sent is deleted, nothing appears under the key.
    fn abort(&self, py: Python<'_>) {
        py.detach(|| self.0.abort());
    }

    #[getter]
    fn url(&self) -> String {
        self.0.url.clone()
    }
}

fn check_part_size(part_size: usize) -> PyResult<()> {
    if !(5 << 20..=5 << 30).contains(&part_size) {
        return Err(pyo3::exceptions::PyValueError::new_err(
            "part_size must be between 5 MiB and 5 GiB (S3's multipart limits)",
        ));
    }
    Ok(())
}

/// An I/O error for the gateway's sink loop, keeping the message.
fn to_io(e: Error) -> std::io::Error {
    match e {
        Error::Io(e) => e,
        other => std::io::Error::other(other.to_string()),
    }
}

/// Where a sink gateway stores its streams on object storage: one multipart upload per stream,
/// to `PREFIX/stream-MS-ID.qltx` (the name a sink directory would use).
#[derive(Debug)]
struct SinkTarget {
    store: Arc<AmazonS3>,
    /// `s3://bucket/`
    base: String,
    /// Empty or ending in `/`.
    prefix: String,
    part_size: usize,
    concurrency: usize,
}

impl SinkStore for SinkTarget {
    fn describe(&self) -> String {
        format!("{}{}", self.base, self.prefix)
    }

    fn create(&self, name: &str) -> std::io::Result<Box<dyn SinkObject>> {
        let key = format!("{}{name}", self.prefix);
        let url = format!("{}{key}", self.base);
        let path = Path::parse(&key).map_err(|e| std::io::Error::other(format!("{url}: bad object key: {e}")))?;
        let up = Multipart::start(
            self.store.clone(),
            path,
            url,
            self.part_size,
            self.concurrency,
            false,
            None,
        )
        .map_err(to_io)?;
        Ok(Box::new(up))
    }
}

impl std::io::Write for Multipart {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Multipart::write(self, buf).map_err(to_io)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl SinkObject for Multipart {
    fn name(&self) -> String {
        self.url.clone()
    }
    fn truncate(&mut self, len: u64) -> std::io::Result<()> {
        Multipart::truncate(self, len).map_err(to_io)
    }
    fn commit(self: Box<Self>) -> std::io::Result<String> {
        self.finish().map_err(to_io)?;
        Ok(self.url.clone())
    }
}

/// A sink gateway's object-storage destination (`qeltrix gateway --mode sink --sink-dir
/// s3://BUCKET/PREFIX`), handed to `GatewayCore`.
#[pyclass(frozen, module = "qeltrix_v6._core")]
pub struct StoreSink {
    target: Arc<SinkTarget>,
}

impl StoreSink {
    pub fn target(&self) -> Arc<dyn SinkStore> {
        self.target.clone()
    }
}

#[pymethods]
impl StoreSink {
    /// Store streams under `prefix` (empty or ending in `/`) of `bucket`, each through a
    /// multipart upload of `part_size` parts, `concurrency` in flight.
    #[new]
    #[pyo3(signature = (bucket, prefix, options, part_size = 8 << 20, concurrency = 4, retry_seconds = 30.0))]
    fn new(
        bucket: &str,
        prefix: &str,
        options: HashMap<String, String>,
        part_size: usize,
        concurrency: usize,
        retry_seconds: f64,
    ) -> PyResult<StoreSink> {
        check_part_size(part_size)?;
        if !(prefix.is_empty() || prefix.ends_with('/')) {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "prefix is empty or ends with /",
            ));
        }
        Ok(StoreSink {
            target: Arc::new(SinkTarget {
                store: build_store(bucket, &options, retry_seconds)?,
                base: format!("s3://{bucket}/"),
                prefix: prefix.to_string(),
                part_size,
                concurrency,
            }),
        })
    }

    /// `s3://bucket/prefix/`
    #[getter]
    fn url(&self) -> String {
        self.target.describe()
    }
}

/// A sequential `Read` over an opened object: from its stream, else ranged GETs of
/// [`RECOVER_READ`] bytes each.
struct ObjectReader<'a> {
    obj: &'a StoreObject,
    pos: u64,
}

/// Bytes fetched per GET when an object is read from start to end (recover).
const RECOVER_READ: u64 = 8 << 20;

impl std::io::Read for ObjectReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.obj.size.saturating_sub(self.pos)) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.obj.read_exact_at(self.pos, &mut buf[..n]).map_err(to_io)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Where a recovered container goes: a file, or a multipart upload the caller completes.
enum RecoverOut<'a> {
    File(std::io::BufWriter<std::fs::File>),
    Upload(&'a Multipart),
}

impl std::io::Write for RecoverOut<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            RecoverOut::File(f) => f.write(buf),
            RecoverOut::Upload(u) => {
                u.write(buf).map_err(to_io)?;
                Ok(buf.len())
            }
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            RecoverOut::File(f) => f.flush(),
            RecoverOut::Upload(_) => Ok(()),
        }
    }
}

/// Rebuild the index of a stored stream on object storage (`src`, opened; read from start to
/// end in one streamed GET pinned to its ETag) into `dst`: a path, or a `StoreUpload` the
/// caller completes. `keys` open its header. Returns `(blocks, pt_len, complete, why_stopped,
/// kept_len)`, `kept_len` the bytes of `src` kept (header and authenticated frames).
#[pyfunction]
#[allow(clippy::type_complexity)]
pub fn recover_stream_store(
    py: Python<'_>,
    src: Py<StoreObject>,
    dst: &Bound<'_, PyAny>,
    keys: Py<PyAny>,
) -> PyResult<(u64, u64, bool, Option<String>, u64)> {
    let upload = dst.cast::<StoreUpload>().ok().map(|u| u.clone().unbind());
    let path: Option<std::path::PathBuf> = if upload.is_none() { Some(dst.extract()?) } else { None };
    let obj = src.get();
    let r = py.detach(|| -> std::result::Result<_, String> {
        let mut prefix = vec![0u8; qeltrix_format::header::HEADER_FIXED_LEN];
        obj.read_exact_at(0, &mut prefix)
            .map_err(|e| format!("reading the header: {e}"))?;
        let header_len = qeltrix_format::Header::peek_len(&prefix).map_err(|e| e.to_string())?;
        let mut bytes = vec![0u8; header_len as usize];
        obj.read_exact_at(0, &mut bytes)
            .map_err(|e| format!("reading the header: {e}"))?;
        let header = qeltrix_format::Header::parse(&bytes).map_err(|e| e.to_string())?;
        let mut out = match (&path, &upload) {
            (Some(p), _) => RecoverOut::File(std::io::BufWriter::new(
                std::fs::File::options()
                    .write(true)
                    .truncate(true)
                    .open(p)
                    .map_err(|e| format!("{}: {e}", p.display()))?,
            )),
            (None, Some(u)) => RecoverOut::Upload(&u.get().0),
            (None, None) => unreachable!("a path or an upload"),
        };
        obj.set_readahead(RECOVER_READ);
        // Read from start to end: one streamed GET (kept a little behind for BufReader's reads).
        obj.stream(u64::from(header_len), obj.size, 4 << 20);
        let mut reader = std::io::BufReader::with_capacity(
            1 << 20,
            ObjectReader {
                obj,
                pos: u64::from(header_len),
            },
        );
        let mut keys = crate::gateway::PyStreamKeys::new(keys);
        let rec = qeltrix_server::gateway::recover_stream(&mut reader, &header, &mut keys, &mut out)
            .map_err(|e| e.to_string())?;
        if let RecoverOut::File(f) = out {
            let file = f.into_inner().map_err(|e| e.to_string())?;
            file.sync_all().map_err(|e| e.to_string())?;
        }
        Ok(rec)
    });
    let rec = r.map_err(io_error)?;
    Ok((rec.blocks, rec.pt_len, rec.complete, rec.stopped, rec.kept_len))
}
