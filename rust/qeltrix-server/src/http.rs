//! The SeekServer: HTTP/1.1 and HTTP/2 GET and HEAD over containers with RFC 9110 ranges,
//! conditional requests, keep-alive, bearer tokens, TLS, a connection limit and timeouts.
//!
//! HTTP/2 is spoken over TLS when the client picks `h2` by ALPN, and in clear text (h2c) when
//! a connection starts with the HTTP/2 preface (prior knowledge); hyper-util's `auto` builder
//! tells them apart. An HTTP/2 connection carries at most `H2_MAX_STREAMS` responses at once,
//! each pulled like an HTTP/1.1 body, so a stalled stream holds no thread either.
//!
//! Counters (`metrics.rs`) and the access log (`access_log.rs`) are kept by wrapping each
//! response body; [`ServerHandle::stop_draining`] stops accepting and lets responses in flight
//! finish for a bounded time.
//!
//! One tokio runtime on its own thread accepts connections; hyper parses HTTP. Opening a
//! container is blocking work on tokio's blocking pool; decryption runs on a few dedicated
//! step threads (`steppool.rs`), and a response never holds a thread while it waits for its
//! client: the body is pulled, and each step decrypts about `STEP_LEN` bytes (a block or a
//! few) and returns. The next step of a long range starts as soon as the previous one is
//! handed over (decrypt-ahead, within a server-wide budget), so a client that stops reading
//! holds its socket and at most two steps of plaintext, no thread, and is dropped after
//! `idle_timeout` without progress.
//!
//! A request is answered by the first of these checks that decides it: `Host` (400, RFC 9112
//! 3.2), a CORS preflight (204 or 403, `cors.rs`), method (405), bearer token or signed URL
//! (401, 403; `signed.rs`), a directory listing when enabled (`listing.rs`), path and
//! container (404, 403, 500), preconditions in RFC 9110 13.2.2 order (412, 304), then
//! `If-Range` and `Range` (206, 416, or 200; see `range.rs` for how a multi-range request is
//! bounded). CORS headers are added to every answer for an allowed origin.
use crate::access_log::{self, Entry, Tracked};
use crate::cors::{Cors, Preflight};
use crate::metrics::{self, Refusal, SeekStats};
use crate::path::{resolve_target, PathError};
use crate::plan::{plan, Part, Plan, Representation};
use crate::steppool::StepPool;
use crate::{listing, mime, signed, Container, LogLevel, OpenError, Opener, ReadError, UrlSignature};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::HashMap;
use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch, Semaphore};
use tokio_rustls::rustls;

/// Plaintext one step produces for a response before it returns (it may overshoot by up to
/// one chunk the container emits, i.e. one block).
const STEP_LEN: u64 = 256 * 1024;

/// Responses at once on one HTTP/2 connection (SETTINGS_MAX_CONCURRENT_STREAMS). Each holds at
/// most one step of plaintext and `H2_SEND_BUF` of frames, so one connection stays within a
/// few tens of MiB however its streams stall.
const H2_MAX_STREAMS: u32 = 32;
/// Bytes hyper buffers per HTTP/2 stream beyond what the peer's window lets out.
const H2_SEND_BUF: usize = 256 * 1024;
/// SETTINGS_MAX_HEADER_LIST_SIZE: requests here are a path and a few headers.
const H2_MAX_HEADER_LIST: u32 = 16 * 1024;
/// `Cache-Control` unless configured: any cache may keep a copy only for this user, and must
/// not transform (recompress, transcode) the bytes a range refers to.
pub const DEFAULT_CACHE_CONTROL: &str = "private, no-transform";
/// Plaintext all responses together may hold in steps decrypted ahead of their client. A
/// response that cannot get a share of it decrypts one step at a time (as when its client
/// reads slowly anyway), so 600 clients that stop reading cost one step each, plus this.
const AHEAD_BUDGET: u64 = 32 << 20;

/// A share of [`AHEAD_BUDGET`], given back on drop.
struct AheadTicket(Arc<AtomicU64>);

impl AheadTicket {
    fn take(budget: &Arc<AtomicU64>) -> Option<AheadTicket> {
        budget
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used + STEP_LEN <= AHEAD_BUDGET).then_some(used + STEP_LEN)
            })
            .ok()
            .map(|_| AheadTicket(budget.clone()))
    }
}

impl Drop for AheadTicket {
    fn drop(&mut self) {
        self.0.fetch_sub(STEP_LEN, Ordering::AcqRel);
    }
}

/// Server settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub addr: SocketAddr,
    pub root: PathBuf,
    pub token: Option<String>,
    /// Accept signed URLs (checked by [`Opener::check_url_signature`]); without a token they
    /// are required.
    pub signed_urls: bool,
    /// Origins whose pages may read responses (empty: no CORS headers, OPTIONS is 405).
    pub cors: Cors,
    /// `Cache-Control` of container responses.
    pub cache_control: HeaderValue,
    /// Answer `GET /dir/` with a listing of the containers and subdirectories there.
    pub list: bool,
    /// PEM certificate chain and private key files.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub max_connections: usize,
    /// Connections at once from one client IP address; more are refused (closed at accept).
    pub max_connections_per_client: usize,
    /// Upper bound of tokio's blocking pool (opening containers).
    pub max_blocking_threads: usize,
    /// Threads decrypting response bodies, one step at a time (see `steppool.rs`).
    pub step_threads: usize,
    /// A request's headers must arrive within this time (slow-loris bound).
    pub header_timeout: Duration,
    /// A connection with no traffic for this long is closed.
    pub idle_timeout: Duration,
    /// Open containers kept (their index and block cache stay warm).
    pub open_cache: usize,
    pub access_log: bool,
    /// Line format of the access log (when `access_log`).
    pub access_log_format: access_log::Format,
    /// Serve Prometheus `/metrics` and `/healthz` on this address too.
    pub metrics_addr: Option<SocketAddr>,
    pub worker_threads: usize,
    /// Run on every server thread as it starts and stops (a binding sets up per-thread state
    /// once: the Python binding keeps a thread state so each decryption only takes the GIL).
    pub thread_hooks: Option<ThreadHooks>,
    /// Object storage instead of a directory: `root` is a URL prefix, not a path; the opener
    /// gets `a/b.mp4.qltx` for `GET /a/b.mp4` and resolves it itself, and an open container is
    /// reused for this long before it is opened again (an object has no cheap `stat`).
    pub remote: Option<Duration>,
}

/// Per-thread setup and teardown for the server's threads.
#[derive(Clone)]
pub struct ThreadHooks {
    pub on_start: Arc<dyn Fn() + Send + Sync>,
    pub on_stop: Arc<dyn Fn() + Send + Sync>,
}

impl std::fmt::Debug for ThreadHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ThreadHooks")
    }
}

impl Config {
    /// Defaults for a server on `addr` over `root`.
    pub fn new(addr: SocketAddr, root: PathBuf) -> Config {
        Config {
            addr,
            root,
            token: None,
            signed_urls: false,
            cors: Cors::default(),
            cache_control: HeaderValue::from_static(DEFAULT_CACHE_CONTROL),
            list: false,
            tls: None,
            max_connections: 1024,
            max_connections_per_client: 64,
            max_blocking_threads: 512,
            step_threads: std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 16),
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            open_cache: 64,
            access_log: false,
            access_log_format: access_log::Format::Combined,
            metrics_addr: None,
            worker_threads: 2,
            thread_hooks: None,
            remote: None,
        }
    }
}

/// A running server; dropping it does not stop it, [`ServerHandle::stop`] does.
pub struct ServerHandle {
    local_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    /// `Some(drain)` once stopping: let responses in flight finish for up to `drain`.
    shutdown: watch::Sender<Option<Duration>>,
    stats: Arc<SeekStats>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl ServerHandle {
    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The bound metrics address, if `Config::metrics_addr` was set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The server's counters (live).
    pub fn stats(&self) -> Arc<SeekStats> {
        self.stats.clone()
    }

    /// Stop accepting, close connections and join the server thread.
    pub fn stop(&mut self) {
        self.stop_draining(Duration::ZERO);
    }

    /// Stop accepting new connections (the listener is closed), let responses in flight
    /// finish for up to `drain` (idle keep-alive connections are closed at once, HTTP/2 ones
    /// get GOAWAY), then close what is left and join the server thread. Returns how many
    /// connections were still open when the drain time ran out.
    pub fn stop_draining(&mut self, drain: Duration) -> u64 {
        let _ = self.shutdown.send(Some(drain));
        match self.thread.take() {
            Some(t) => t.join().unwrap_or(0),
            None => 0,
        }
    }

    /// Whether the server thread is still running.
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}

fn load_tls(cert: &Path, key: &Path) -> io::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad =
        |what: &str, e: &dyn std::fmt::Display| io::Error::new(io::ErrorKind::InvalidInput, format!("{what}: {e}"));
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad("reading TLS certificate", &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("parsing TLS certificate", &e))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad("reading TLS private key", &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("TLS configuration", &e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| bad("TLS certificate/key", &e))?;
    let mut config = config;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Bind and start serving on a new thread.
pub fn start<O: Opener>(config: Config, opener: O) -> io::Result<ServerHandle> {
    let root = if config.remote.is_some() {
        config.root.clone()
    } else {
        config
            .root
            .canonicalize()
            .map_err(|e| io::Error::new(e.kind(), format!("root directory {}: {e}", config.root.display())))?
    };
    if config.remote.is_none() && !root.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a directory", root.display()),
        ));
    }
    let tls = match &config.tls {
        Some((c, k)) => Some(load_tls(c, k)?),
        None => None,
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder
        .worker_threads(config.worker_threads.max(1))
        .max_blocking_threads(config.max_blocking_threads.max(1))
        .thread_name("qeltrix-seek")
        .enable_all();
    if let Some(hooks) = &config.thread_hooks {
        let (start, stop) = (hooks.on_start.clone(), hooks.on_stop.clone());
        builder.on_thread_start(move || start()).on_thread_stop(move || stop());
    }
    let runtime = builder.build()?;
    let std_listener = std::net::TcpListener::bind(config.addr)?;
    std_listener.set_nonblocking(true)?;
    let local_addr = std_listener.local_addr()?;
    let metrics_listener = match config.metrics_addr {
        Some(addr) => {
            let l = std::net::TcpListener::bind(addr)
                .map_err(|e| io::Error::new(e.kind(), format!("metrics address {addr}: {e}")))?;
            l.set_nonblocking(true)?;
            Some(l)
        }
        None => None,
    };
    let metrics_addr = metrics_listener.as_ref().map(|l| l.local_addr()).transpose()?;
    let (shutdown, mut shutdown_rx) = watch::channel(None);
    let stats = Arc::new(SeekStats::default());
    let steps = Arc::new(StepPool::new(config.step_threads, config.thread_hooks.clone())?);
    let step_pool = steps.clone();
    let state = Arc::new(State {
        steps,
        ahead_budget: Arc::new(AtomicU64::new(0)),
        stats: stats.clone(),
        stop: shutdown_rx.clone(),
        config: Config { root, ..config },
        opener,
        cache: Mutex::new(HashMap::new()),
        limit: Arc::new(Semaphore::new(0)),
        per_client: Mutex::new(HashMap::new()),
        boundary: AtomicU64::new(0),
        valid_urls: signed::ValidCache::default(),
    });
    state.limit.add_permits(state.config.max_connections);
    let thread = std::thread::Builder::new()
        .name("qeltrix-seek-accept".into())
        .spawn(move || {
            let cut = runtime.block_on(async move {
                let (metrics_stop, metrics_stop_rx) = watch::channel(false);
                if let Some(l) = metrics_listener {
                    match TcpListener::from_std(l) {
                        Ok(l) => {
                            let source: Arc<dyn metrics::MetricsSource> = state.stats.clone();
                            tokio::spawn(metrics::serve(l, source, metrics_stop_rx));
                        }
                        Err(e) => state.opener.log(LogLevel::Error, &format!("metrics listener: {e}")),
                    }
                }
                let listener = match TcpListener::from_std(std_listener) {
                    Ok(l) => l,
                    Err(e) => {
                        state.opener.log(LogLevel::Error, &format!("listener: {e}"));
                        return 0;
                    }
                };
                loop {
                    tokio::select! {
                        _ = shutdown_rx.changed() => break,
                        accepted = listener.accept() => match accepted {
                            Ok((stream, peer)) => {
                                let state = state.clone();
                                let tls = tls.clone();
                                tokio::spawn(async move { state.connection(stream, peer, tls).await });
                            }
                            Err(e) => {
                                // EMFILE and friends: back off instead of spinning.
                                state.opener.log(LogLevel::Warning, &format!("accept failed: {e}"));
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        }
                    }
                }
                // New connections are refused from here on; those open finish what is in
                // flight (each connection task saw the same signal) until the drain time ends.
                drop(listener);
                state.stats.draining.store(true, Ordering::Relaxed);
                let drain = shutdown_rx.borrow().unwrap_or_default();
                let deadline = tokio::time::Instant::now() + drain;
                while state.stats.connections_active.load(Ordering::Relaxed) > 0
                    && tokio::time::Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                let _ = metrics_stop.send(true);
                state.stats.connections_active.load(Ordering::Relaxed)
            });
            runtime.shutdown_timeout(Duration::from_secs(2));
            step_pool.shutdown();
            cut
        })?;
    Ok(ServerHandle {
        local_addr,
        metrics_addr,
        shutdown,
        stats,
        thread: Some(thread),
    })
}

type FileStamp = (u64, Option<SystemTime>, u64);
type OpenCache<C> = Mutex<HashMap<PathBuf, (Arc<C>, FileStamp)>>;

/// A container ready to serve: the open container, the file's mtime, the URL's last segment.
type Opened<C> = (Arc<C>, Option<SystemTime>, String);

struct State<O: Opener> {
    config: Config,
    opener: O,
    /// Where response bodies are decrypted.
    steps: Arc<StepPool>,
    /// Bytes of steps decrypted ahead, over all responses (see [`AHEAD_BUDGET`]).
    ahead_budget: Arc<AtomicU64>,
    cache: OpenCache<O::C>,
    limit: Arc<Semaphore>,
    /// Open connections per client address.
    per_client: Mutex<HashMap<IpAddr, usize>>,
    boundary: AtomicU64,
    stats: Arc<SeekStats>,
    /// The stop signal: `Some(drain)` once the server stops accepting.
    stop: watch::Receiver<Option<Duration>>,
    valid_urls: signed::ValidCache,
}

/// One connection counted against its client address; uncounted on drop.
struct ClientSlot<O: Opener> {
    state: Arc<State<O>>,
    ip: IpAddr,
}

impl<O: Opener> Drop for ClientSlot<O> {
    fn drop(&mut self) {
        self.state.stats.connections_active.fetch_sub(1, Ordering::Relaxed);
        let mut map = self.state.per_client.lock().expect("per-client lock");
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Blocking: plaintext `[pos, pos + len)` from its start, stopping after about `STEP_LEN`.
type ReadStep = Arc<dyn Fn(u64, u64) -> StepResult + Send + Sync>;
/// The authenticated chunks a step produced, and the error that stopped it early, if any:
/// chunks before a damaged block are still sent, then the connection is cut.
type StepResult = (Vec<Bytes>, Option<ReadError>);

/// A response body produced on demand: nothing is decrypted until hyper asks for more, and
/// then at most one step ahead of what hyper has taken.
///
/// When a step's chunks arrive, the next step of the same part starts at once on the step
/// pool (decrypt-ahead), so a long range is decrypted on one thread while the previous step
/// is written to the socket on another. A response therefore holds at most two steps of
/// plaintext (the chunks not yet taken and the step ahead) and never a thread: a step runs to
/// its end without waiting for the client.
struct Stream {
    /// Chunks decrypted and not yet handed to hyper (at most one step).
    ready: VecDeque<Bytes>,
    /// What is left to send; the front part's `first` advances as steps complete.
    parts: VecDeque<Part>,
    /// The step under way on the step pool, and how many bytes it was asked for.
    step: Option<(oneshot::Receiver<StepResult>, u64)>,
    steps: Arc<StepPool>,
    /// Held while `step` is a step decrypted ahead (until its chunks become the current ones).
    ahead: Option<AheadTicket>,
    ahead_budget: Arc<AtomicU64>,
    read: ReadStep,
    /// A read error to report once the chunks before it are sent.
    failed: Option<ReadError>,
    /// Bytes of the body not yet handed to hyper.
    remaining: u64,
}

impl Stream {
    /// The next chunk, starting a decryption step if none is ready.
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, io::Error>>> {
        loop {
            if let Some(b) = self.ready.pop_front() {
                return Poll::Ready(Some(Ok(b)));
            }
            if let Some(e) = self.failed.take() {
                return Poll::Ready(Some(Err(io::Error::other(e.0))));
            }
            if let Some((task, asked)) = &mut self.step {
                let asked = *asked;
                let (chunks, failed) = match Pin::new(task).poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(r)) => r,
                    Poll::Ready(Err(_)) => {
                        // The step panicked, or the server is stopping.
                        return Poll::Ready(Some(Err(io::Error::other("decryption step did not complete"))));
                    }
                };
                self.step = None;
                self.ahead = None;
                let got: u64 = chunks.iter().map(|c| c.len() as u64).sum();
                if got > asked || (got == 0 && failed.is_none()) {
                    return Poll::Ready(Some(Err(io::Error::other("container returned a wrong length"))));
                }
                let part = self.parts.front_mut().expect("a step has a part");
                part.first += got;
                if part.first > part.last {
                    self.parts.pop_front();
                }
                self.ready.extend(chunks);
                self.failed = failed;
                if self.failed.is_none() {
                    self.start_ahead();
                }
                continue;
            }
            let Some(part) = self.parts.front_mut() else {
                return Poll::Ready(None);
            };
            if let Some(h) = part.head.take() {
                return Poll::Ready(Some(Ok(h)));
            }
            if part.last < part.first {
                self.parts.pop_front();
                continue;
            }
            let (pos, len) = (part.first, part.last - part.first + 1);
            self.start_step(pos, len);
        }
    }

    fn start_step(&mut self, pos: u64, len: u64) {
        let read = self.read.clone();
        self.step = Some((self.steps.run(move || read(pos, len)), len));
    }

    /// Decrypt ahead: start the next step of the current part if its data comes next (a part
    /// whose multipart head is not sent yet waits, so the head goes first).
    fn start_ahead(&mut self) {
        if let Some(part) = self.parts.front() {
            if part.head.is_none() && part.first <= part.last {
                let Some(ticket) = AheadTicket::take(&self.ahead_budget) else {
                    return;
                };
                let (pos, len) = (part.first, part.last - part.first + 1);
                self.start_step(pos, len);
                self.ahead = Some(ticket);
            }
        }
    }
}

/// The open-cache key of a container, or of one member of an archive (the archive's path, a
/// NUL, the member: no file name holds a NUL, so it names nothing else).
fn cache_key(path: &Path, member: Option<&str>) -> PathBuf {
    match member {
        None => path.to_path_buf(),
        Some(m) => {
            let mut key = path.as_os_str().to_owned();
            key.push("\0");
            key.push(m);
            PathBuf::from(key)
        }
    }
}

/// The name the Content-Type comes from: the decoded last segment that was resolved
/// (`/file%2Etxt` is `file.txt`; RFC 9110 4.2.3 makes them the same URI).
fn content_name(url_path: &str) -> String {
    let name = url_path.rsplit('/').next().unwrap_or_default();
    percent_encoding::percent_decode_str(name)
        .decode_utf8_lossy()
        .into_owned()
}

/// `GET /a/b.mp4` -> `a/b.mp4.qltx`: the object key under a remote root, with the same
/// per-segment rules as [`resolve`] (no `..`, no hidden names, nothing empty).
fn remote_key(url_path: &str) -> Result<PathBuf, PathError> {
    let rel = url_path.strip_prefix('/').ok_or(PathError::Rejected)?;
    if rel.is_empty() {
        return Err(PathError::NotFound);
    }
    let mut segs = Vec::new();
    for raw in rel.split('/') {
        segs.push(crate::path::decode_segment(raw)?.into_owned());
    }
    Ok(PathBuf::from(format!(
        "{}{}",
        segs.join("/"),
        crate::path::CONTAINER_SUFFIX
    )))
}

/// Milliseconds since the epoch: when a remote container was opened.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn stamp(meta: &std::fs::Metadata) -> FileStamp {
    use std::os::unix::fs::MetadataExt;
    (meta.len(), meta.modified().ok(), meta.ino())
}

enum Body {
    Empty,
    Full(Option<Bytes>),
    Stream(Box<Stream>),
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match &mut *self {
            Body::Empty => Poll::Ready(None),
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Stream(s) => match s.poll_chunk(cx) {
                Poll::Ready(Some(Ok(b))) => match s.remaining.checked_sub(b.len() as u64) {
                    Some(r) => {
                        s.remaining = r;
                        Poll::Ready(Some(Ok(Frame::data(b))))
                    }
                    None => Poll::Ready(Some(Err(io::Error::other("response longer than announced")))),
                },
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
                Poll::Ready(None) if s.remaining > 0 => {
                    Poll::Ready(Some(Err(io::Error::other("response ended early"))))
                }
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Full(b) => b.is_none(),
            Body::Stream(s) => s.remaining == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Stream(s) => SizeHint::with_exact(s.remaining),
        }
    }
}

fn simple(status: StatusCode, msg: &str) -> Response<Body> {
    let mut r = Response::new(Body::Full(Some(Bytes::from(format!("{msg}\n")))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// 301 to `location` (a path, already percent-encoded).
fn redirect(location: &str) -> Response<Body> {
    let mut r = simple(StatusCode::MOVED_PERMANENTLY, &format!("moved to {location}"));
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether a request's `Host` is acceptable (RFC 9112 3.2): a server must answer 400 to an
/// HTTP/1.1 request without one, and to any request with more than one `Host` line or an
/// invalid value. HTTP/1.0 may omit it. Hosts are not matched against a list: any name is
/// served, as the root is the same for all.
///
/// HTTP/2 carries the host in `:authority` (hyper puts it in the request URI as `authority`),
/// and `Host` only if the client sends one (RFC 9113 8.3.1): one of them is required, and when
/// both are present they must be the same.
fn host_is_valid(headers: &HeaderMap, version: hyper::Version, authority: Option<&str>) -> bool {
    let mut lines = headers.get_all(header::HOST).iter();
    if version >= hyper::Version::HTTP_2 {
        return match (authority, lines.next(), lines.next()) {
            (_, Some(_), Some(_)) | (None, None, _) => false,
            (Some(a), None, _) => host_value_is_valid(a),
            (None, Some(h), None) => h.to_str().is_ok_and(host_value_is_valid),
            (Some(a), Some(h), None) => h.as_bytes() == a.as_bytes() && host_value_is_valid(a),
        };
    }
    match (lines.next(), lines.next()) {
        (None, _) => version < hyper::Version::HTTP_11,
        (Some(v), None) => v.to_str().is_ok_and(host_value_is_valid),
        (Some(_), Some(_)) => false,
    }
}

/// `Host = uri-host [ ":" port ]` (RFC 9110 7.2, RFC 3986 3.2.2): an IP-literal in brackets or
/// a reg-name (unreserved, pct-encoded, sub-delims; an IPv4 address is one), then digits.
/// Empty is valid: a client sends it when the target URI has no authority.
fn host_value_is_valid(value: &str) -> bool {
    let unreserved_or_sub_delim = |b: u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&b);
    let (host, port) = if let Some(literal) = value.strip_prefix('[') {
        let Some((inside, after)) = literal.split_once(']') else {
            return false;
        };
        if inside.is_empty() || !inside.bytes().all(|b| unreserved_or_sub_delim(b) || b == b':') {
            return false;
        }
        match after.strip_prefix(':') {
            Some(port) => ("", port),
            None if after.is_empty() => ("", ""),
            None => return false,
        }
    } else {
        value.split_once(':').unwrap_or((value, ""))
    };
    let bytes = host.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if bytes.len() > i + 2 && bytes[i + 1].is_ascii_hexdigit() && bytes[i + 2].is_ascii_hexdigit() => {
                i += 3
            }
            b if unreserved_or_sub_delim(b) => i += 1,
            _ => return false,
        }
    }
    port.bytes().all(|b| b.is_ascii_digit())
}

/// The token of `Authorization: Bearer <token>`. The scheme is case-insensitive (RFC 9110
/// 11.1) and followed by one or more spaces (`credentials = auth-scheme [ 1*SP token68 ]`,
/// 11.4).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start_matches(' ').trim_end())
}

/// An `If-Match` / `If-None-Match` field value: `*` or a list of entity-tags (RFC 9110 8.8.3).
#[derive(Debug, PartialEq, Eq)]
enum TagList<'a> {
    Any,
    /// `(weak, opaque-tag including its quotes)`
    Tags(Vec<(bool, &'a str)>),
}

/// Parse `"*" / #entity-tag`, joined from all field lines; `None` if it is not one.
fn parse_tag_list(value: &str) -> Option<TagList<'_>> {
    let is_ows = |c: char| c == ' ' || c == '\t';
    if value.trim_matches(is_ows) == "*" {
        return Some(TagList::Any);
    }
    let mut tags = Vec::new();
    let mut rest = value;
    loop {
        rest = rest.trim_start_matches(|c| is_ows(c) || c == ',');
        if rest.is_empty() {
            break;
        }
        let weak = rest.starts_with("W/");
        if weak {
            rest = &rest[2..];
        }
        // opaque-tag = DQUOTE *etagc DQUOTE; etagc = %x21 / %x23-7E / obs-text
        let inner = rest.strip_prefix('"')?;
        let end = inner.find('"')?;
        if !inner[..end].bytes().all(|b| b == 0x21 || (0x23..=0x7e).contains(&b)) {
            return None;
        }
        tags.push((weak, &rest[..end + 2]));
        rest = inner[end + 1..].trim_start_matches(is_ows);
        if !rest.is_empty() && !rest.starts_with(',') {
            return None;
        }
    }
    (!tags.is_empty()).then_some(TagList::Tags(tags))
}

/// All field lines of a list-valued header, joined as RFC 9110 5.3 allows; `None` if absent.
/// A line that is not visible ASCII makes the whole value unparseable (`Some("")`).
fn joined(headers: &HeaderMap, name: &header::HeaderName) -> Option<String> {
    let mut lines = headers.get_all(name).iter().peekable();
    lines.peek()?;
    let parts: Option<Vec<&str>> = lines.map(|v| v.to_str().ok()).collect();
    Some(parts.map(|p| p.join(", ")).unwrap_or_default())
}

/// A single HTTP-date header; absent, repeated or invalid dates are ignored (RFC 9110 13.1.3,
/// 13.1.4: "including when the field value appears to be a list of dates").
fn single_date(headers: &HeaderMap, name: &header::HeaderName) -> Option<httpdate::HttpDate> {
    let mut lines = headers.get_all(name).iter();
    let (Some(v), None) = (lines.next(), lines.next()) else {
        return None;
    };
    v.to_str().ok()?.parse().ok()
}

/// The outcome of RFC 9110 13.2.2 steps 1-4 for a GET or HEAD of an existing representation.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Precondition {
    /// Go on to the Range (step 5) and the normal response.
    Proceed,
    /// 304: the client's copy is current.
    NotModified,
    /// 412: If-Match or If-Unmodified-Since is false.
    Failed,
}

/// Evaluate the preconditions in the order of RFC 9110 13.2.2, for a representation whose
/// strong `etag` is given with its quotes and whose Last-Modified is `mtime`.
///
/// 1. If-Match (13.1.1, strong comparison; `*` is true as the representation exists): false
///    gives 412. An unparseable value is false.
/// 2. Otherwise If-Unmodified-Since (13.1.4, ignored without a valid single date or an mtime):
///    modified after the date gives 412.
/// 3. If-None-Match (13.1.2, weak comparison): a match gives 304 for GET and HEAD.
/// 4. Otherwise If-Modified-Since (13.1.3): not modified since the date gives 304.
///
/// These run before the Range (step 5), so a failing precondition is 412 whether or not a
/// Range is present, and they are only reached for a representation that exists and may be
/// served (13.2.1: a 401, 403 or 404 takes precedence).
pub(crate) fn evaluate_preconditions(headers: &HeaderMap, etag: &str, mtime: Option<SystemTime>) -> Precondition {
    let bare = etag.trim_start_matches("W/");
    let last_modified = mtime.map(httpdate::HttpDate::from);
    if let Some(value) = joined(headers, &header::IF_MATCH) {
        let matches = match parse_tag_list(&value) {
            Some(TagList::Any) => true,
            Some(TagList::Tags(tags)) => tags.iter().any(|&(weak, t)| !weak && t == etag),
            None => false,
        };
        if !matches {
            return Precondition::Failed;
        }
    } else if let (Some(since), Some(lm)) = (single_date(headers, &header::IF_UNMODIFIED_SINCE), last_modified) {
        if lm > since {
            return Precondition::Failed;
        }
    }
    if let Some(value) = joined(headers, &header::IF_NONE_MATCH) {
        let matches = match parse_tag_list(&value) {
            Some(TagList::Any) => true,
            Some(TagList::Tags(tags)) => tags.iter().any(|&(_, t)| t == bare),
            None => false,
        };
        if matches {
            return Precondition::NotModified;
        }
    } else if let (Some(since), Some(lm)) = (single_date(headers, &header::IF_MODIFIED_SINCE), last_modified) {
        if lm <= since {
            return Precondition::NotModified;
        }
    }
    Precondition::Proceed
}

impl<O: Opener> State<O> {
    async fn connection(self: Arc<Self>, stream: TcpStream, peer: SocketAddr, tls: Option<tokio_rustls::TlsAcceptor>) {
        let Ok(permit) = self.limit.clone().try_acquire_owned() else {
            self.stats.refused(Refusal::TotalLimit);
            self.opener.log(
                LogLevel::Warning,
                &format!(
                    "connection limit ({}) reached; refusing {peer}",
                    self.config.max_connections
                ),
            );
            return;
        };
        let ip = peer.ip();
        {
            let mut map = self.per_client.lock().expect("per-client lock");
            let n = map.entry(ip).or_insert(0);
            if *n >= self.config.max_connections_per_client {
                drop(map);
                self.stats.refused(Refusal::PerClientLimit);
                self.opener.log(
                    LogLevel::Warning,
                    &format!(
                        "per-client connection limit ({}) reached; refusing {peer}",
                        self.config.max_connections_per_client
                    ),
                );
                return;
            }
            *n += 1;
        }
        SeekStats::add(&self.stats.connections_total, 1);
        SeekStats::add(&self.stats.connections_active, 1);
        let slot = ClientSlot {
            state: self.clone(),
            ip,
        };
        let _ = stream.set_nodelay(true);
        match tls {
            Some(acceptor) => match tokio::time::timeout(self.config.header_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls_stream)) => {
                    self.serve_io(
                        TokioIo::new(IdleIo::new(
                            tls_stream,
                            self.config.idle_timeout,
                            self.config.header_timeout,
                        )),
                        peer,
                    )
                    .await
                }
                Ok(Err(e)) => {
                    SeekStats::add(&self.stats.tls_handshake_failures, 1);
                    self.opener
                        .log(LogLevel::Info, &format!("TLS handshake with {peer} failed: {e}"))
                }
                Err(_) => {
                    SeekStats::add(&self.stats.tls_handshake_failures, 1);
                    self.opener
                        .log(LogLevel::Info, &format!("TLS handshake with {peer} timed out"))
                }
            },
            None => {
                self.serve_io(
                    TokioIo::new(IdleIo::new(
                        stream,
                        self.config.idle_timeout,
                        self.config.header_timeout,
                    )),
                    peer,
                )
                .await
            }
        }
        drop(slot);
        drop(permit);
    }

    async fn serve_io<I>(self: &Arc<Self>, io: I, peer: SocketAddr)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let state = self.clone();
        let h2_seen = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let state = state.clone();
            if req.version() == hyper::Version::HTTP_2 && !h2_seen.swap(true, Ordering::Relaxed) {
                SeekStats::add(&state.stats.http2_connections, 1);
            }
            async move { Ok::<_, std::convert::Infallible>(state.handle(req, peer).await) }
        });
        let mut builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.config.header_timeout)
            .max_buf_size(64 * 1024);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(H2_MAX_STREAMS)
            .max_frame_size(16 * 1024)
            .max_header_list_size(H2_MAX_HEADER_LIST)
            .max_send_buf_size(H2_SEND_BUF)
            .keep_alive_interval(None);
        let conn = builder.serve_connection(io, service);
        let mut conn = std::pin::pin!(conn);
        let mut stop = self.stop.clone();
        // On drain, an HTTP/1.1 connection finishes the response under way and closes; an
        // HTTP/2 one sends GOAWAY and finishes its open streams.
        let ended = tokio::select! {
            r = conn.as_mut() => r,
            _ = async {
                if stop.wait_for(Option::is_some).await.is_err() {
                    std::future::pending::<()>().await;
                }
            } => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = ended {
            // A client that goes away, resets or times out is routine, not a server error:
            // an info line (its responses are in the access log with the bytes really sent).
            if self.config.access_log {
                self.opener
                    .log(LogLevel::Info, &format!("connection from {peer} closed early: {e}"));
            }
        }
    }

    async fn handle(self: &Arc<Self>, req: Request<Incoming>, peer: SocketAddr) -> Response<Tracked<Body>> {
        let entry = self.config.access_log.then(|| {
            // The path only: a query string may carry a URL signature.
            Entry::new(peer, req.method(), req.uri().path(), req.version(), req.headers())
        });
        let origin = req.headers().get(header::ORIGIN).cloned();
        let mut resp = self.respond(req).await;
        resp.headers_mut()
            .insert(header::SERVER, HeaderValue::from_static("qeltrix-v6"));
        // The Content-Type comes from the file name, and `.html` is served as text/html: a
        // browser must not guess another type from the bytes (a text file that sniffs as
        // HTML would run script on this origin). On every response this handler makes,
        // errors included; hyper's own 400/431 for unparseable requests carry no body type.
        resp.headers_mut()
            .insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        self.config.cors.decorate(origin.as_ref(), resp.headers_mut());
        let status = resp.status().as_u16();
        let log = entry.map(|entry| {
            let state = self.clone();
            let sink: access_log::Sink = Arc::new(move |line: &str| state.opener.access(line));
            (entry, self.config.access_log_format, sink)
        });
        resp.map(|body| Tracked::new(body, self.stats.clone(), status, log))
    }

    async fn respond(self: &Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        // Request bodies are not expected; drain a little so keep-alive survives a small one.
        drop(body.collect());
        let authority = parts.uri.authority().map(|a| a.as_str());
        if !host_is_valid(&parts.headers, parts.version, authority) {
            // The request's target is ambiguous; do not read another request after it (an
            // HTTP/2 stream ends by itself, and has no Connection header).
            let mut r = simple(StatusCode::BAD_REQUEST, "one valid Host header is required");
            if parts.version < hyper::Version::HTTP_2 {
                r.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            return r;
        }
        let head = parts.method == Method::HEAD;
        if parts.method == Method::OPTIONS {
            // A preflight carries no credentials (Fetch standard): answered before auth.
            match self.config.cors.preflight(&parts.headers) {
                Some(Preflight::Allowed(headers)) => {
                    let mut r = Response::new(Body::Empty);
                    *r.status_mut() = StatusCode::NO_CONTENT;
                    r.headers_mut().extend(headers);
                    return r;
                }
                Some(Preflight::Refused) => {
                    return simple(
                        StatusCode::FORBIDDEN,
                        "this origin may not read from this server (CORS)",
                    )
                }
                None => {}
            }
        }
        if parts.method != Method::GET && !head {
            let mut r = simple(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD are supported");
            let allow = if self.config.cors.enabled() {
                "GET, HEAD, OPTIONS"
            } else {
                "GET, HEAD"
            };
            r.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
            return r;
        }
        if let Some(r) = self.authorize(&parts).await {
            return r;
        }
        if self.config.list && listing::is_directory_url(parts.uri.path()) {
            return self.listing(&parts, head).await;
        }
        let root = self.config.root.clone();
        let url_path = parts.uri.path().to_owned();
        let opened = match self.open_if_cached(&root, &url_path) {
            Some(hit) => Ok(Ok(hit)),
            None => {
                let state = self.clone();
                let query = parts.uri.query().map(str::to_owned);
                let whole = !head && reads_whole(&parts.headers);
                tokio::task::spawn_blocking(move || {
                    let opened = state.open(&root, &url_path, whole);
                    match opened {
                        Err(r) if r.status() == StatusCode::NOT_FOUND && state.config.list => {
                            // `/dir` names a listable directory: send the client to `/dir/`, as nginx.
                            Err(listing::redirect_to_directory(&root, &url_path, query.as_deref())
                                .map(|location| Box::new(redirect(&location)))
                                .unwrap_or(r))
                        }
                        other => other,
                    }
                })
                .await
            }
        };
        let (container, mtime, name) = match opened {
            Ok(Ok(v)) => v,
            Ok(Err(r)) => return *r,
            Err(e) => return simple(StatusCode::INTERNAL_SERVER_ERROR, &format!("internal error: {e}")),
        };
        self.serve_container(&parts.headers, head, container, mtime, &name)
            .await
    }

    /// `None` if the request may be served: no credential is configured, its bearer token is
    /// right, or its URL's signature holds (`signed.rs`); else the refusal.
    async fn authorize(self: &Arc<Self>, parts: &hyper::http::request::Parts) -> Option<Response<Body>> {
        let token = self.config.token.as_ref();
        if token.is_none() && !self.config.signed_urls {
            return None;
        }
        if let Some(token) = token {
            let ok = parts
                .headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(bearer_token)
                .is_some_and(|t| constant_time_eq(t.trim().as_bytes(), token.as_bytes()));
            if ok {
                return None;
            }
        }
        if self.config.signed_urls && signed::carries_signature(parts.uri.query()) {
            let (path, query) = (parts.uri.path(), parts.uri.query().unwrap_or_default());
            if self.valid_urls.holds(path, query) {
                return None;
            }
            let state = self.clone();
            let (path, query) = (path.to_owned(), query.to_owned());
            let outcome = tokio::task::spawn_blocking(move || {
                let outcome = state.opener.check_url_signature(&path, &query);
                if outcome == UrlSignature::Valid {
                    state.valid_urls.insert(&path, &query);
                }
                outcome
            })
            .await
            .unwrap_or(UrlSignature::Invalid);
            return signed::refusal(outcome).map(|(status, msg)| simple(status, msg));
        }
        if token.is_none() {
            return Some(simple(
                StatusCode::FORBIDDEN,
                "this server serves signed URLs only (qx-expires and qx-sig; see 'qeltrix sign-url')",
            ));
        }
        let msg = if self.config.signed_urls {
            "a valid bearer token or signed URL is required"
        } else {
            "a valid bearer token is required"
        };
        let mut r = simple(StatusCode::UNAUTHORIZED, msg);
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"qeltrix\""),
        );
        Some(r)
    }

    /// `GET /dir/` with `--list`: the directory's containers and subdirectories.
    async fn listing(self: &Arc<Self>, parts: &hyper::http::request::Parts, head: bool) -> Response<Body> {
        let root = self.config.root.clone();
        let url_path = parts.uri.path().to_owned();
        let Ok(Ok(found)) = tokio::task::spawn_blocking(move || listing::list(&root, &url_path)).await else {
            return simple(StatusCode::NOT_FOUND, "not found");
        };
        let accept = parts.headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
        let (body, ctype) = if listing::wants_json(parts.uri.query(), accept) {
            (listing::json(&found), "application/json")
        } else {
            (listing::html(&found), "text/html; charset=utf-8")
        };
        let body = Bytes::from(body);
        Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, ctype)
            .header(header::CONTENT_LENGTH, body.len())
            // The directory changes whenever a file is added: always ask again.
            .header(header::CACHE_CONTROL, "no-cache")
            .header(header::VARY, "Accept")
            // Names are escaped; this is the second wall: the page may load and run nothing.
            .header(header::CONTENT_SECURITY_POLICY, "default-src 'none'")
            .body(if head { Body::Empty } else { Body::Full(Some(body)) })
            .expect("valid response")
    }

    /// The container for a URL path if it is open and its file unchanged; `None` when it must
    /// be opened (or answered with an error) by [`Self::open`]. Only path resolution and a
    /// `stat`, like nginx's open-file cache: no thread hand-off for the common case, which
    /// profiling showed costing more CPU than the HTTP handling of a range request.
    fn open_if_cached(&self, root: &Path, url_path: &str) -> Option<Opened<O::C>> {
        if let Some(ttl) = self.config.remote {
            let key = remote_key(url_path).ok()?;
            let cache = self.cache.lock().expect("cache lock");
            let (c, s) = cache
                .get(&key)
                .filter(|(_, s)| now_ms().saturating_sub(s.2) < ttl.as_millis() as u64)?;
            SeekStats::add(&self.stats.open_cache_hits, 1);
            return Some((c.clone(), s.1, content_name(url_path)));
        }
        let (path, member) = resolve_target(root, url_path).ok()?;
        let st = stamp(&std::fs::metadata(&path).ok()?);
        self.cached(&cache_key(&path, member.as_deref()), st, url_path)
    }

    /// The open container for `path` if its file still has stamp `st` (counted as a hit).
    fn cached(&self, path: &Path, st: FileStamp, url_path: &str) -> Option<Opened<O::C>> {
        let cache = self.cache.lock().expect("cache lock");
        let (c, s) = cache.get(path).filter(|(_, s)| *s == st)?;
        SeekStats::add(&self.stats.open_cache_hits, 1);
        Some((c.clone(), s.1, content_name(url_path)))
    }

    /// Resolve and open (or reuse) the container for a URL path; `whole`: the request reads
    /// all of it, in order. Blocking.
    fn open(&self, root: &Path, url_path: &str, whole: bool) -> Result<Opened<O::C>, Box<Response<Body>>> {
        // Object storage serves whole containers (no archive members yet); files may name a
        // member of an archive after the archive's path.
        let (path, member, key, st) = if self.config.remote.is_some() {
            if let Some(hit) = self.open_if_cached(root, url_path) {
                return Ok(hit);
            }
            let key = remote_key(url_path).map_err(|_| Box::new(simple(StatusCode::NOT_FOUND, "not found")))?;
            (key.clone(), None, key, (0, None, now_ms()))
        } else {
            let (path, member) = match resolve_target(root, url_path) {
                Ok(p) => p,
                Err(PathError::NotFound | PathError::Rejected) => {
                    return Err(Box::new(simple(StatusCode::NOT_FOUND, "not found")))
                }
            };
            let meta = std::fs::metadata(&path).map_err(|_| Box::new(simple(StatusCode::NOT_FOUND, "not found")))?;
            let st = stamp(&meta);
            let key = cache_key(&path, member.as_deref());
            if let Some(hit) = self.cached(&key, st, url_path) {
                return Ok(hit);
            }
            (path, member, key, st)
        };
        let name = content_name(url_path);
        SeekStats::add(&self.stats.open_cache_misses, 1);
        let opened = match &member {
            None if whole => self.opener.open_whole(&path),
            None => self.opener.open(&path),
            Some(m) => self.opener.open_member(&path, m),
        };
        if matches!(
            opened,
            Err(OpenError::WrongKey(_) | OpenError::Damaged(_) | OpenError::Io(_))
        ) {
            SeekStats::add(&self.stats.unlock_failures, 1);
        }
        match opened {
            Ok(c) => {
                // An object's Last-Modified comes from the store, the same on every replica.
                let st = if self.config.remote.is_some() {
                    (0, c.mtime(), st.2)
                } else {
                    st
                };
                let mut cache = self.cache.lock().expect("cache lock");
                if cache.len() >= self.config.open_cache {
                    if let Some(k) = cache.keys().next().cloned() {
                        cache.remove(&k);
                    }
                }
                cache.insert(key, (c.clone(), st));
                Ok((c, st.1, name))
            }
            Err(OpenError::NotFound) => Err(Box::new(simple(StatusCode::NOT_FOUND, "not found"))),
            Err(OpenError::WrongKey(m)) => {
                self.opener.log(LogLevel::Warning, &format!("{}: {m}", path.display()));
                Err(Box::new(simple(
                    StatusCode::FORBIDDEN,
                    "this server's key does not open this container",
                )))
            }
            Err(OpenError::Damaged(m)) | Err(OpenError::Io(m)) => {
                self.opener.log(LogLevel::Error, &format!("{}: {m}", path.display()));
                Err(Box::new(simple(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the container cannot be read (see the server log)",
                )))
            }
        }
    }

    async fn serve_container(
        self: &Arc<Self>,
        headers: &HeaderMap,
        head: bool,
        container: Arc<O::C>,
        mtime: Option<SystemTime>,
        name: &str,
    ) -> Response<Body> {
        let etag = format!("\"{}\"", container.etag_id());
        let last_modified = mtime.map(httpdate::fmt_http_date);
        let rep = Representation {
            len: container.pt_len(),
            etag: &etag,
            mtime,
            last_modified: last_modified.as_deref(),
            content_type: mime::content_type(name),
        };
        let mut base = Response::builder()
            .header(header::ACCEPT_RANGES, "bytes")
            .header(header::ETAG, &etag)
            .header(header::CACHE_CONTROL, self.config.cache_control.clone());
        if let Some(lm) = &last_modified {
            base = base.header(header::LAST_MODIFIED, lm);
        }
        let boundary = || {
            format!(
                "qeltrix-{:016x}{:08x}",
                self.boundary.fetch_add(1, Ordering::Relaxed),
                std::process::id()
            )
        };
        let (status, parts, content_type, content_len) = match plan(headers, &rep, boundary) {
            Plan::NotModified => {
                return base
                    .status(StatusCode::NOT_MODIFIED)
                    .body(Body::Empty)
                    .expect("valid response");
            }
            Plan::PreconditionFailed => {
                return base
                    .status(StatusCode::PRECONDITION_FAILED)
                    .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
                    .body(Body::Full(Some(Bytes::from_static(b"precondition failed\n"))))
                    .expect("valid response");
            }
            Plan::Unsatisfiable => {
                return base
                    .status(StatusCode::RANGE_NOT_SATISFIABLE)
                    .header(header::CONTENT_RANGE, format!("bytes */{}", rep.len))
                    .header(header::CONTENT_LENGTH, 0)
                    .body(Body::Empty)
                    .expect("valid response");
            }
            Plan::Send {
                status,
                content_type,
                content_range,
                content_len,
                parts,
            } => {
                if let Some(cr) = content_range {
                    base = base.header(header::CONTENT_RANGE, cr);
                }
                (status, parts, content_type, content_len)
            }
        };
        let base = base
            .status(status)
            .header(header::CONTENT_TYPE, content_type)
            .header(header::CONTENT_LENGTH, content_len);
        if head || content_len == 0 {
            return base.body(Body::Empty).expect("valid response");
        }
        let state = self.clone();
        let read: ReadStep = Arc::new(move |pos, len| {
            let mut chunks = Vec::new();
            let mut got = 0u64;
            let r = container.read(pos, len, &mut |chunk| {
                got += chunk.len() as u64;
                chunks.push(chunk);
                got < STEP_LEN
            });
            if let Err(e) = &r {
                state.opener.log(LogLevel::Error, &format!("read failed: {}", e.0));
            }
            (chunks, r.err())
        });
        let mut stream = Box::new(Stream {
            ready: VecDeque::new(),
            parts: parts.into(),
            step: None,
            steps: self.steps.clone(),
            ahead: None,
            ahead_budget: self.ahead_budget.clone(),
            read,
            failed: None,
            remaining: content_len,
        });
        // Decrypt the first chunk before answering so that a container failing authentication
        // in the first block gets a clean 500 instead of a cut 200.
        match std::future::poll_fn(|cx| stream.poll_chunk(cx)).await {
            Some(Ok(first)) => {
                stream.ready.push_front(first);
                base.body(Body::Stream(stream)).expect("valid response")
            }
            Some(Err(_)) | None => simple(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the container cannot be read (see the server log)",
            ),
        }
    }
}

/// An I/O wrapper that fails with `TimedOut` when no byte moves in either direction for
/// `idle`: closes keep-alive connections that went quiet and readers that stopped reading.
/// The first byte must come within `first` (the header timeout): hyper's HTTP/1.1 header
/// timeout only starts once the protocol is known, i.e. after the first bytes arrived.
struct IdleIo<T> {
    inner: T,
    idle: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl<T> IdleIo<T> {
    fn new(inner: T, idle: Duration, first: Duration) -> IdleIo<T> {
        IdleIo {
            inner,
            idle,
            deadline: Box::pin(tokio::time::sleep(first.min(idle))),
        }
    }

    fn touch(&mut self) {
        self.deadline.as_mut().reset(tokio::time::Instant::now() + self.idle);
    }

    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(io::ErrorKind::TimedOut, "connection idle")),
            Poll::Pending => Ok(()),
        }
    }
}

use std::future::Future;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

impl<T: AsyncRead + Unpin> AsyncRead for IdleIo<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.touch();
                }
                Poll::Ready(r)
            }
            Poll::Pending => match self.check(cx) {
                Err(e) => Poll::Ready(Err(e)),
                Ok(()) => Poll::Pending,
            },
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleIo<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, data) {
            Poll::Ready(Ok(n)) => {
                self.touch();
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match self.check(cx) {
                Err(e) => Poll::Ready(Err(e)),
                Ok(()) => Poll::Pending,
            },
        }
    }

    /// Forwarded, so hyper writes body chunks with `writev` straight from the decrypted
    /// blocks; without it hyper copies every body byte into its own buffer first.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(Ok(n)) => {
                self.touch();
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match self.check(cx) {
                Err(e) => Poll::Ready(Err(e)),
                Ok(()) => Poll::Pending,
            },
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Whether a GET with these headers reads the whole body in order: no `Range`, or the one
/// range from byte 0 to the end (`bytes=0-`, what a browser's first request of a video sends).
fn reads_whole(headers: &hyper::HeaderMap) -> bool {
    match headers.get(header::RANGE) {
        None => true,
        Some(v) => v.to_str().is_ok_and(|r| r.trim().eq_ignore_ascii_case("bytes=0-")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Header lines of a table case, in order.
    type Lines<'a> = &'a [(&'static str, &'a str)];

    fn headers(lines: Lines) -> HeaderMap {
        let mut h = HeaderMap::new();
        for &(name, value) in lines {
            h.append(name, HeaderValue::from_str(value).unwrap());
        }
        h
    }

    #[test]
    fn hosts() {
        use hyper::Version;
        let h11 = Version::HTTP_11;
        let cases: &[(Lines, Version, bool)] = &[
            (&[("host", "example.com")], h11, true),
            (&[("host", "example.com:8080")], h11, true),
            (&[("host", "127.0.0.1:80")], h11, true),
            (&[("host", "[::1]:8080")], h11, true),
            (&[("host", "[::1]")], h11, true),
            (&[("host", "xn--bcher-kva.example")], h11, true),
            (&[("host", "a%41b")], h11, true),
            (&[("host", "")], h11, true),
            (&[], h11, false),
            (&[], Version::HTTP_10, true),
            (&[("host", "a"), ("host", "a")], h11, false),
            (&[("host", "a"), ("host", "b")], Version::HTTP_10, false),
            (&[("host", "a b")], h11, false),
            (&[("host", "a/b")], h11, false),
            (&[("host", "a@b")], h11, false),
            (&[("host", "a:b")], h11, false),
            (&[("host", "a:1:2")], h11, false),
            (&[("host", "[::1")], h11, false),
            (&[("host", "[]")], h11, false),
            (&[("host", "[::1]x")], h11, false),
            (&[("host", "a%4")], h11, false),
            (&[("host", "a%zz")], h11, false),
        ];
        for (lines, version, want) in cases {
            assert_eq!(
                host_is_valid(&headers(lines), *version, None),
                *want,
                "{lines:?} {version:?}"
            );
        }
        // HTTP/2: `:authority` (the URI's authority) stands for Host.
        let h2 = Version::HTTP_2;
        let cases: &[(Lines, Option<&str>, bool)] = &[
            (&[], Some("example.com:443"), true),
            (&[("host", "example.com")], None, true),
            (&[("host", "example.com")], Some("example.com"), true),
            (&[("host", "other.example")], Some("example.com"), false),
            (&[("host", "a"), ("host", "a")], Some("a"), false),
            (&[], None, false),
            (&[], Some("a b"), false),
        ];
        for (lines, authority, want) in cases {
            assert_eq!(
                host_is_valid(&headers(lines), h2, *authority),
                *want,
                "{lines:?} {authority:?}"
            );
        }
    }

    #[test]
    fn bearer_tokens() {
        let cases: &[(&str, Option<&str>)] = &[
            ("Bearer abc", Some("abc")),
            ("bearer abc", Some("abc")),
            ("BEARER  abc", Some("abc")),
            ("Bearer abc ", Some("abc")),
            ("Basic abc", None),
            ("Bearerabc", None),
            ("Bearer", None),
        ];
        for (value, want) in cases {
            assert_eq!(bearer_token(value), *want, "{value:?}");
        }
    }

    #[test]
    fn tag_lists() {
        use TagList::*;
        let cases: &[(&str, Option<TagList>)] = &[
            ("*", Some(Any)),
            (" * ", Some(Any)),
            ("\"a\"", Some(Tags(vec![(false, "\"a\"")]))),
            ("W/\"a\", \"b\"", Some(Tags(vec![(true, "\"a\""), (false, "\"b\"")]))),
            ("\"a,b\"", Some(Tags(vec![(false, "\"a,b\"")]))),
            (" , \"a\" ,, ", Some(Tags(vec![(false, "\"a\"")]))),
            ("", None),
            ("a", None),
            ("\"a", None),
            ("\"a\" \"b\"", None),
            ("\"a\", *", None),
            ("w/\"a\"", None),
            ("\"a b\"", None),
        ];
        for (value, want) in cases {
            assert_eq!(&parse_tag_list(value), want, "{value:?}");
        }
    }

    #[test]
    fn preconditions_in_rfc_9110_order() {
        use Precondition::*;
        let etag = "\"v1\"";
        let mtime = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        let (before, same, after) = (
            "Wed, 21 Oct 2015 07:27:59 GMT",
            "Wed, 21 Oct 2015 07:28:00 GMT",
            "Wed, 21 Oct 2015 07:28:01 GMT",
        );
        let cases: &[(Lines, Option<SystemTime>, Precondition)] = &[
            (&[], Some(mtime), Proceed),
            // 1. If-Match, strong comparison.
            (&[("if-match", "\"v1\"")], Some(mtime), Proceed),
            (&[("if-match", "\"v0\", \"v1\"")], Some(mtime), Proceed),
            (&[("if-match", "\"v0\""), ("if-match", "\"v1\"")], Some(mtime), Proceed),
            (&[("if-match", "*")], Some(mtime), Proceed),
            (&[("if-match", "\"v0\"")], Some(mtime), Failed),
            (&[("if-match", "W/\"v1\"")], Some(mtime), Failed),
            (&[("if-match", "garbage")], Some(mtime), Failed),
            // If-Match decides; If-Unmodified-Since is then ignored.
            (
                &[("if-match", "\"v1\""), ("if-unmodified-since", before)],
                Some(mtime),
                Proceed,
            ),
            // 2. If-Unmodified-Since.
            (&[("if-unmodified-since", before)], Some(mtime), Failed),
            (&[("if-unmodified-since", same)], Some(mtime), Proceed),
            (&[("if-unmodified-since", after)], Some(mtime), Proceed),
            (&[("if-unmodified-since", "yesterday")], Some(mtime), Proceed),
            (
                &[("if-unmodified-since", before), ("if-unmodified-since", before)],
                Some(mtime),
                Proceed,
            ),
            (&[("if-unmodified-since", before)], None, Proceed),
            // 3. If-None-Match, weak comparison.
            (&[("if-none-match", "\"v1\"")], Some(mtime), NotModified),
            (&[("if-none-match", "W/\"v1\"")], Some(mtime), NotModified),
            (&[("if-none-match", "*")], Some(mtime), NotModified),
            (&[("if-none-match", "\"v0\"")], Some(mtime), Proceed),
            (
                &[("if-none-match", "\"v0\""), ("if-modified-since", after)],
                Some(mtime),
                Proceed,
            ),
            // 4. If-Modified-Since.
            (&[("if-modified-since", same)], Some(mtime), NotModified),
            (&[("if-modified-since", before)], Some(mtime), Proceed),
            (&[("if-modified-since", same)], None, Proceed),
            // A failing step 1 or 2 wins over a step 3 or 4 that would give 304.
            (
                &[("if-match", "\"v0\""), ("if-none-match", "\"v1\"")],
                Some(mtime),
                Failed,
            ),
            (
                &[("if-unmodified-since", before), ("if-modified-since", same)],
                Some(mtime),
                Failed,
            ),
        ];
        for (lines, mtime, want) in cases {
            assert_eq!(
                &evaluate_preconditions(&headers(lines), etag, *mtime),
                want,
                "{lines:?}"
            );
        }
    }
}
