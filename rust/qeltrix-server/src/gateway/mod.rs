//! GatewayServer loops (FORMAT.md section 12 "Streams"; docs/DESIGN.md "Servers").
//!
//! Each accepted connection is a task on one of a few asynchronous workers ([`aio`]: one per
//! core, also the crypto workers) from its session handshake to its end ([`conn`]); threads
//! do not grow with connections, whether open or being set up. A connection runs one *seal
//! pump* or *open pump* per direction. A seal pump reads plaintext, cuts it into frames (a
//! frame is sealed when its block is full or the source has nothing more ready, so
//! interactive protocols see no added delay) and writes them; an open pump reads frames,
//! authenticates each completely before forwarding a byte of it, and half-closes its
//! destination on the `FINAL` frame. Writes that wait give backpressure, so memory per
//! connection is bounded by a few blocks whatever the peers do. A sink's file or object
//! writes run on each worker's small blocking pool ([`sink`]).
//!
//! A cut is never a clean end (FORMAT.md section 12): a destination is half-closed only after
//! a `FINAL` frame (or, on the sealing side, after its source half-closed); any error aborts
//! the whole connection, resetting (RST) both sockets of both directions. Until the first
//! stream header has authenticated, a peer can make the gateway hold at most
//! `MAX_STREAM_HEADER_LEN` bytes, for at most the handshake timeout (section 12.2).
//!
//! The cryptography is behind [`Keyring`] and [`StreamKeys`]; the pyo3 glue implements
//! them over `qeltrix_v6._crypto`.

mod aio;
mod conn;
mod gate;
mod pumps;
mod sink;
mod stats;

pub use gate::CryptoGate;
use pumps::*;
use sink::*;
pub use sink::{recover_stream, Recovered, SinkObject, SinkStore};
use stats::*;
pub use stats::{Aggregate, ConnSnapshot, ConnStats};

use crate::LogLevel;
use qeltrix_format::header::HEADER_FIXED_LEN;
use qeltrix_format::signature::{Digest, SIGNATURE_LEN, SIGNER_PUB_LEN};
pub use qeltrix_format::MAX_STREAM_HEADER_LEN;
use qeltrix_format::{
    container_tail, frame_len, read_full, BlockMeta, Header, Index, IndexEntry, SignatureAccumulator, TailCrypto,
    INDEX_FLAG_INCOMPLETE, META_FLAG_FINAL, META_FRAME_LEN, TAG_LEN,
};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// What a gateway does with each accepted connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Encrypt what the client sends and send the V6 stream back to it.
    Reflect,
    /// Encrypt toward `target` (another gateway); decrypt the replies.
    Router,
    /// Decrypt a V6 stream toward `target` (the plaintext side); encrypt the replies.
    Decrypt,
    /// Store each incoming stream as a container in `sink_dir`.
    Sink,
}

/// Gateway settings.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub mode: Mode,
    pub listen: SocketAddr,
    /// `host:port`, resolved for each connection.
    pub target: Option<String>,
    pub sink_dir: Option<PathBuf>,
    /// Store the sink's streams here (object storage) rather than in `sink_dir`.
    pub sink_store: Option<Arc<dyn SinkStore>>,
    /// Sink input is plaintext to seal here, rather than a V6 stream to store as it is.
    pub sink_raw: bool,
    pub block_size: u32,
    /// How long a partial block waits for more input; zero seals as soon as nothing more is
    /// ready to read.
    pub flush_delay: Duration,
    pub max_connections: usize,
    pub idle_timeout: Duration,
    /// From accept until the peer's session and first stream header have authenticated
    /// (FORMAT.md section 12.2): a silent or slow unauthenticated peer is dropped after it.
    pub handshake_timeout: Duration,
    pub connect_timeout: Duration,
    /// Largest `block_size` accepted from a peer's stream header.
    pub max_peer_block_size: u32,
    /// Listen backlog.
    pub backlog: i32,
    /// Interval of the aggregate stats log line; zero disables it.
    pub stats_interval: Duration,
    /// Serve Prometheus `/metrics` and `/healthz` on this address too.
    pub metrics_addr: Option<SocketAddr>,
}

impl GatewayConfig {
    /// Defaults for `mode` on `listen`.
    pub fn new(mode: Mode, listen: SocketAddr) -> GatewayConfig {
        GatewayConfig {
            mode,
            listen,
            target: None,
            sink_dir: None,
            sink_store: None,
            sink_raw: false,
            block_size: qeltrix_format::DEFAULT_BLOCK_SIZE,
            flush_delay: Duration::ZERO,
            max_connections: 1024,
            idle_timeout: Duration::from_secs(300),
            handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            max_peer_block_size: qeltrix_format::MAX_STREAM_BLOCK_SIZE,
            backlog: 1024,
            stats_interval: Duration::ZERO,
            metrics_addr: None,
        }
    }
}

/// Why a connection ended badly.
#[derive(Debug)]
pub enum GwError {
    Io(io::Error),
    /// A header, frame or tag failed authentication (no byte of it was forwarded).
    Auth(String),
    /// The peer broke the stream protocol (order, sizes, flags).
    Protocol(String),
    /// The stream ended before its `FINAL` frame.
    Truncated(String),
    /// The credential does not open the peer's stream.
    WrongKey(String),
}

impl fmt::Display for GwError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GwError::Io(e) => write!(f, "I/O error: {e}"),
            GwError::Auth(m) => write!(f, "authentication failed: {m}"),
            GwError::Protocol(m) => write!(f, "protocol error: {m}"),
            GwError::Truncated(m) => write!(f, "stream cut: {m}"),
            GwError::WrongKey(m) => write!(f, "wrong key: {m}"),
        }
    }
}

impl From<io::Error> for GwError {
    fn from(e: io::Error) -> Self {
        GwError::Io(e)
    }
}

impl From<qeltrix_format::FormatError> for GwError {
    fn from(e: qeltrix_format::FormatError) -> Self {
        GwError::Protocol(e.to_string())
    }
}

/// One step of a session handshake (FORMAT.md section 12.1).
#[derive(Debug, Clone, Copy)]
pub enum SessionStep<'a> {
    /// The initiator's `msg1`.
    Start,
    /// The responder's `msg2`, answering `msg1`.
    Respond(&'a [u8]),
    /// The initiator's `msg3` (empty when there is none), answering `msg2`.
    Finish(&'a [u8]),
    /// The responder checks `msg3`.
    Confirm(&'a [u8]),
}

/// Creates and accepts streams: the key material of a gateway.
pub trait Keyring: Send + Sync + 'static {
    type Keys: StreamKeys;
    /// What an authenticated peer handshake leaves behind (pinned-key mode).
    type Session: Send + Sync + 'static;
    /// A fresh session for one connection (FORMAT.md section 12.1), whose handshake the
    /// gateway runs with [`Keyring::session_msg_lens`] and [`Keyring::session_step`] between
    /// its own reads and writes; `None` when streams need no handshake (nothing exchanged).
    fn new_session(&self) -> Result<Option<Self::Session>, GwError>;
    /// The lengths of the handshake's messages `msg1`, `msg2` and `msg3` (0: no `msg3`).
    fn session_msg_lens(&self, _session: &Self::Session) -> Result<(usize, usize, usize), GwError> {
        Err(GwError::Protocol("this keyring has no session handshake".into()))
    }
    /// One handshake step: the message to send next (empty after [`SessionStep::Confirm`]).
    /// A peer whose key is not pinned is refused here.
    fn session_step(&self, _session: &Self::Session, _step: SessionStep<'_>) -> Result<Vec<u8>, GwError> {
        Err(GwError::Protocol("this keyring has no session handshake".into()))
    }
    /// A fresh outgoing stream (its header, and keys to seal with). `container_id` is set for
    /// reply streams, which must use the id bound to their request.
    fn new_stream(
        &self,
        session: Option<&Self::Session>,
        container_id: Option<[u8; 16]>,
        block_size: u32,
    ) -> Result<(Vec<u8>, Self::Keys), GwError>;
    /// Verify an incoming stream's header and return keys to open its frames.
    fn accept_stream(&self, session: Option<&Self::Session>, header: &Header) -> Result<Self::Keys, GwError>;
    /// The header a sink stores for a stream with keys `keys` (an accepted stream, or a raw
    /// sink's own): a session-derived MK must be re-wrapped under a long-term key, since the
    /// session that derived it is gone; when the sink signs ([`Keyring::sink_signer`]), the
    /// header has `SIGNED` set under its `header_mac` (FORMAT.md section 15).
    fn storage_header(
        &self,
        session: Option<&Self::Session>,
        header: &Header,
        keys: &Self::Keys,
    ) -> Result<Vec<u8>, GwError>;
    /// The Ed25519 public key (`signer_pub`) a sink signs what it stores with, or `None` when it
    /// stores unsigned containers.
    fn sink_signer(&self) -> Result<Option<[u8; SIGNER_PUB_LEN]>, GwError> {
        Ok(None)
    }
    /// `Ed25519-Sign(signer_priv, signed_message)` with the sink's signing key.
    fn sign(&self, _message: &[u8]) -> Result<[u8; SIGNATURE_LEN], GwError> {
        Err(GwError::Protocol("this gateway has no signing key".into()))
    }
    /// The `container_id` a reply to `request` must carry.
    fn reply_id(&self, request: &[u8; 16]) -> Result<[u8; 16], GwError>;
    /// One log line.
    fn log(&self, level: LogLevel, line: &str) {
        eprintln!("qeltrix gateway {level:?}: {line}");
    }
    /// Run a worker thread's whole body; a binding may set up per-thread state once here
    /// (the Python binding keeps a thread state, so each crypto call only takes the GIL).
    fn on_thread(&self, f: &mut (dyn FnMut() + Send)) {
        f()
    }
    /// Run several frames' crypto (of one or many connections) at once: an asynchronous
    /// worker hands over every frame ready on it, so a binding may serve the whole batch with
    /// one interpreter-lock acquisition and one call. Each job gets its own result. The
    /// default runs them one by one.
    fn run_frames(&self, jobs: &mut [FrameJob<Self::Keys>]) {
        for j in jobs {
            j.run();
        }
    }
}

/// One frame's crypto for [`Keyring::run_frames`]: the stream's keys and the buffers travel
/// with the job and come back with its result.
pub enum FrameJob<S> {
    /// Seal `pt[..pt_len]` as frame `block_index` into `frame` ([`StreamKeys::seal`]).
    Seal {
        keys: S,
        block_index: u64,
        flags: u8,
        pt: Vec<u8>,
        pt_len: usize,
        frame: Vec<u8>,
        result: Option<Result<(), GwError>>,
    },
    /// Open the frame at the start of `buf[..avail]` into `pt` ([`StreamKeys::open_frame`]).
    Open {
        keys: S,
        buf: Vec<u8>,
        avail: usize,
        pt: Vec<u8>,
        result: Option<Result<(BlockMeta, bool), GwError>>,
    },
}

impl<S: StreamKeys> FrameJob<S> {
    /// Run this job alone.
    pub fn run(&mut self) {
        match self {
            FrameJob::Seal {
                keys,
                block_index,
                flags,
                pt,
                pt_len,
                frame,
                result,
            } => *result = Some(keys.seal(*block_index, *flags, &pt[..*pt_len], frame)),
            FrameJob::Open {
                keys,
                buf,
                avail,
                pt,
                result,
            } => *result = Some(keys.open_frame(&buf[..*avail], pt)),
        }
    }

    /// Whether a result is set.
    pub fn done(&self) -> bool {
        match self {
            FrameJob::Seal { result, .. } => result.is_some(),
            FrameJob::Open { result, .. } => result.is_some(),
        }
    }

    /// Set the result to an error (a batch call that failed as a whole).
    pub fn fail(&mut self, e: GwError) {
        match self {
            FrameJob::Seal { result, .. } => *result = Some(Err(e)),
            FrameJob::Open { result, .. } => *result = Some(Err(e)),
        }
    }
}

/// Keys of one stream.
pub trait StreamKeys: Send + 'static {
    /// Seal `pt` as frame `block_index` into `frame` (replacing its contents).
    fn seal(&mut self, block_index: u64, meta_flags: u8, pt: &[u8], frame: &mut Vec<u8>) -> Result<(), GwError>;
    /// Open the V6-C metadata at the start of a frame.
    fn open_meta(&mut self, meta_frame: &[u8]) -> Result<BlockMeta, GwError>;
    /// Open `data_ct` into `pt` (replacing its contents), checking its SHA-256.
    fn open_data(&mut self, meta: &BlockMeta, data_ct: &[u8], pt: &mut Vec<u8>) -> Result<(), GwError>;
    /// Open the frame at the start of `buf` (its first `buf.len()` bytes have arrived): its
    /// metadata, and its data into `pt` when the whole frame is in `buf` (then `true`). The
    /// caller checks the metadata before it releases a byte of `pt`. The default makes the two
    /// calls; a binding may do both in one.
    fn open_frame(&mut self, buf: &[u8], pt: &mut Vec<u8>) -> Result<(BlockMeta, bool), GwError> {
        let meta = self.open_meta(&buf[..META_FRAME_LEN])?;
        let end = META_FRAME_LEN + meta.pt_len as usize + TAG_LEN;
        if buf.len() < end {
            return Ok((meta, false));
        }
        self.open_data(&meta, &buf[META_FRAME_LEN..end], pt)?;
        Ok((meta, true))
    }
    /// Seal an index as a footer that will start at `footer_offset`.
    fn seal_index(&mut self, index_pt: &[u8], footer_offset: u64) -> Result<Vec<u8>, GwError>;
    /// `frame_digest` of the frame starting with `meta_frame` (its first `META_FRAME_LEN`
    /// bytes; FORMAT.md section 15).
    fn frame_digest(&mut self, meta_frame: &[u8]) -> Result<Digest, GwError>;
    /// `SHA256(data)` (the header, digest-list and footer hashes of `signed_message`).
    fn sha256(&mut self, data: &[u8]) -> Result<Digest, GwError>;
}

/// A partial block of at least this many bytes marks a bulk flow.
const BULK_THRESHOLD: usize = 64 << 10;
/// How long a bulk flow's partial block waits for more input before it is sealed.
const BULK_WAIT: Duration = Duration::from_millis(1);

/// Closed connections kept for `stats()`.
const CLOSED_KEPT: usize = 1000;

struct Gateway<K: Keyring> {
    config: GatewayConfig,
    keyring: K,
    stop: AtomicBool,
    next_id: AtomicU64,
    active: AtomicUsize,
    open: Mutex<HashMap<u64, Arc<ConnStats>>>,
    closed: Mutex<VecDeque<ConnSnapshot>>,
    totals: Totals,
    gate: Arc<CryptoGate>,
    /// Set when the gateway stops accepting (a drain): `/healthz` answers 503.
    draining: AtomicBool,
    /// Notified when the gateway stops, and when a connection ends after that: a worker ends
    /// once both hold (`stop` set, none `active`), without waking to poll for it.
    ended: tokio::sync::Notify,
    /// Where router and decrypt connections run once their streams are set up.
    workers: std::sync::OnceLock<aio::Workers<K>>,
}

/// A running gateway.
pub struct GatewayHandle {
    local_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    stats: Arc<dyn StatsSource>,
    stop: Box<dyn Fn() + Send + Sync>,
    /// Disconnected once the accept loop has closed the listener.
    accepting: Option<std::sync::mpsc::Receiver<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    metrics_stop: Option<tokio::sync::watch::Sender<bool>>,
    metrics_thread: Option<std::thread::JoinHandle<()>>,
}

impl GatewayHandle {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Per-connection counters (open ones and the most recent closed ones).
    pub fn connections(&self) -> Vec<ConnSnapshot> {
        self.stats.connections()
    }

    /// Aggregate counters.
    pub fn aggregate(&self) -> Aggregate {
        self.stats.aggregate()
    }

    /// The bound metrics address, if `GatewayConfig::metrics_addr` was set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Stop accepting (the start of a drain): open connections go on, `/metrics` still
    /// answers and `/healthz` says `draining`.
    pub fn stop_accepting(&mut self) {
        (self.stop)();
        if let Some(accepting) = self.accepting.take() {
            let _ = accepting.recv();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }

    /// Stop accepting and serving metrics; open connections end on their own (or at their
    /// idle timeout).
    pub fn stop(&mut self) {
        self.stop_accepting();
        if let Some(tx) = self.metrics_stop.take() {
            let _ = tx.send(true);
        }
        if let Some(t) = self.metrics_thread.take() {
            let _ = t.join();
        }
    }
}

fn bind(addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

/// Bind and start a gateway.
pub fn start_gateway<K: Keyring>(config: GatewayConfig, keyring: K) -> io::Result<GatewayHandle> {
    let invalid = |m: &str| io::Error::new(io::ErrorKind::InvalidInput, m.to_owned());
    match config.mode {
        Mode::Router | Mode::Decrypt if config.target.is_none() => return Err(invalid("this mode needs a target")),
        Mode::Sink if config.sink_store.is_none() && config.sink_dir.as_ref().is_none_or(|d| !d.is_dir()) => {
            return Err(invalid("sink mode needs an existing sink directory"))
        }
        _ => {}
    }
    let listener = bind(config.listen, config.backlog)?;
    let local_addr = listener.local_addr()?;
    let metrics_listener = match config.metrics_addr {
        Some(addr) => {
            let l = TcpListener::bind(addr)
                .map_err(|e| io::Error::new(e.kind(), format!("metrics address {addr}: {e}")))?;
            l.set_nonblocking(true)?;
            Some(l)
        }
        None => None,
    };
    let gw = Arc::new(Gateway {
        config,
        keyring,
        stop: AtomicBool::new(false),
        next_id: AtomicU64::new(1),
        active: AtomicUsize::new(0),
        open: Mutex::new(HashMap::new()),
        closed: Mutex::new(VecDeque::new()),
        totals: Totals::default(),
        gate: Arc::new(CryptoGate::per_core()),
        draining: AtomicBool::new(false),
        ended: tokio::sync::Notify::new(),
        workers: std::sync::OnceLock::new(),
    });
    {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        // One worker per two cores, at least one. Most of a small frame's work is done under
        // the interpreter's one lock (the `cryptography` calls' setup), so more workers in
        // one process mostly wait for each other: pgbench -S through a pair on 2 cores cost
        // 64-72 us of relay CPU per transaction with one worker per gateway, 72-89 with two,
        // while bulk flows (whose AEAD and SHA-256 run without the lock) moved the same bytes
        // either way (benches/GATEWAY-APPS.md). `QELTRIX_GW_WORKERS` overrides it (for
        // benchmarks, as `QELTRIX_GW_CRYPTO_SLOTS` does for the gate).
        let n = std::env::var("QELTRIX_GW_WORKERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or((cores / 2).max(1));
        let _ = gw.workers.set(aio::Workers::start(&gw, n)?);
    }
    // Connections are accepted on the first worker; `stop_accepting` returns once the
    // listener is closed (`accepting` disconnects).
    let wake = Arc::new(tokio::sync::Notify::new());
    let (accepting_tx, accepting) = std::sync::mpsc::channel::<()>();
    listener.set_nonblocking(true)?;
    gw.workers
        .get()
        .expect("started above")
        .spawn_task(gw.clone().accept_loop(listener, wake.clone(), accepting_tx));
    let mut threads = Vec::new();
    if !gw.config.stats_interval.is_zero() {
        let gw = gw.clone();
        threads.push(
            std::thread::Builder::new()
                .name("qeltrix-gw-stats".into())
                .spawn(move || {
                    let mut waited = Duration::ZERO;
                    while !gw.stop.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(100));
                        waited += Duration::from_millis(100);
                        if waited >= gw.config.stats_interval {
                            waited = Duration::ZERO;
                            let a = gw.aggregate();
                            gw.keyring.log(
                                LogLevel::Info,
                                &format!(
                            "stats: {} connections ({} active, {} refused, {} failed), {} B in, {} B out, {} blocks",
                            a.connections, a.active, a.refused, a.failed, a.bytes_in, a.bytes_out, a.blocks
                        ),
                            );
                        }
                    }
                })?,
        );
    }
    let (metrics_addr, metrics_stop, metrics_thread) = match metrics_listener {
        Some(l) => {
            let addr = l.local_addr()?;
            let (tx, rx) = tokio::sync::watch::channel(false);
            let source: Arc<dyn crate::metrics::MetricsSource> = gw.clone();
            let t = std::thread::Builder::new()
                .name("qeltrix-gw-metrics".into())
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
                    if let Ok(rt) = rt {
                        rt.block_on(async move {
                            if let Ok(l) = tokio::net::TcpListener::from_std(l) {
                                crate::metrics::serve(l, source, rx).await;
                            }
                        });
                    }
                })?;
            (Some(addr), Some(tx), Some(t))
        }
        None => (None, None, None),
    };
    let stopper = gw.clone();
    let stop = Box::new(move || {
        stopper.draining.store(true, Ordering::SeqCst);
        stopper.stop.store(true, Ordering::SeqCst);
        stopper.ended.notify_waiters();
        wake.notify_one();
    });
    Ok(GatewayHandle {
        local_addr,
        metrics_addr,
        stats: gw,
        stop,
        accepting: Some(accepting),
        threads,
        metrics_stop,
        metrics_thread,
    })
}

impl<K: Keyring> Gateway<K> {
    async fn accept_loop(
        self: Arc<Self>,
        listener: TcpListener,
        wake: Arc<tokio::sync::Notify>,
        accepting: std::sync::mpsc::Sender<()>,
    ) {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                self.keyring
                    .log(LogLevel::Error, &format!("cannot accept connections: {e}"));
                return;
            }
        };
        loop {
            let conn = tokio::select! {
                c = listener.accept() => c,
                _ = wake.notified() => break,
            };
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            // Handed to a worker as a plain socket, registered there.
            let (stream, peer) = match conn.and_then(|(s, peer)| Ok((s.into_std()?, peer))) {
                Ok(s) => s,
                Err(e) => {
                    self.keyring.log(LogLevel::Warning, &format!("accept failed: {e}"));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            if self.active.load(Ordering::SeqCst) >= self.config.max_connections {
                self.totals.refused.fetch_add(1, Ordering::Relaxed);
                self.keyring.log(
                    LogLevel::Warning,
                    &format!(
                        "connection from {peer} refused: connection limit ({}) reached",
                        self.config.max_connections
                    ),
                );
                continue;
            }
            self.active.fetch_add(1, Ordering::SeqCst);
            self.totals.connections.fetch_add(1, Ordering::Relaxed);
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let stats = Arc::new(ConnStats::new(id, peer));
            self.open.lock().expect("stats lock").insert(id, stats.clone());
            match self.workers.get() {
                Some(w) => w.spawn(self.clone(), stream, stats),
                None => self.finish(&stats, Err(GwError::Protocol("no worker for this connection".into()))),
            }
        }
        drop(listener);
        drop(accepting);
    }

    fn finish(&self, stats: &Arc<ConnStats>, result: Result<(), GwError>) {
        *stats.ended.lock().expect("stats lock") = Some(Instant::now());
        let snap_now = stats.snapshot();
        let (level, outcome) = match &result {
            Ok(()) => (LogLevel::Info, "clean".to_owned()),
            Err(e) => {
                self.totals.failed.fetch_add(1, Ordering::Relaxed);
                if stats.preauth_deadline_ms.load(Ordering::Relaxed) != u64::MAX {
                    self.totals.handshake_failures.fetch_add(1, Ordering::Relaxed);
                }
                *stats.error.lock().expect("stats lock") = Some(e.to_string());
                let level = if matches!(e, GwError::Io(_)) {
                    LogLevel::Info
                } else {
                    LogLevel::Warning
                };
                (level, format!("aborted (reset): {e}"))
            }
        };
        // One line per connection, at its end (what an operator greps for).
        self.keyring.log(
            level,
            &format!(
                "connection {} from {} to {} ({}): {outcome}; {} B in, {} B out, {} frames, {:.3} s",
                stats.id,
                stats.peer,
                self.describe_target(),
                self.mode_name(),
                snap_now.bytes_in,
                snap_now.bytes_out,
                snap_now.blocks,
                snap_now.duration.as_secs_f64(),
            ),
        );
        let snap = stats.snapshot();
        self.totals.bytes_in.fetch_add(snap.bytes_in, Ordering::Relaxed);
        self.totals.bytes_out.fetch_add(snap.bytes_out, Ordering::Relaxed);
        self.totals.blocks.fetch_add(snap.blocks, Ordering::Relaxed);
        self.open.lock().expect("stats lock").remove(&stats.id);
        let mut closed = self.closed.lock().expect("stats lock");
        if closed.len() >= CLOSED_KEPT {
            closed.pop_front();
        }
        closed.push_back(snap);
        drop(closed);
        self.active.fetch_sub(1, Ordering::SeqCst);
        if self.stop.load(Ordering::SeqCst) {
            self.ended.notify_waiters();
        }
    }

    fn mode_name(&self) -> &'static str {
        match self.config.mode {
            Mode::Reflect => "reflect",
            Mode::Router => "router",
            Mode::Decrypt => "decrypt",
            Mode::Sink => "sink",
        }
    }

    fn describe_target(&self) -> String {
        match (&self.config.target, &self.config.sink_dir) {
            (Some(t), _) => t.clone(),
            (None, _) if self.config.sink_store.is_some() => self
                .config
                .sink_store
                .as_ref()
                .map(|s| s.describe())
                .unwrap_or_default(),
            (None, Some(d)) => d.display().to_string(),
            (None, None) => "itself".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats() -> Arc<ConnStats> {
        Arc::new(ConnStats::new(1, "127.0.0.1:1".parse().expect("addr")))
    }

    fn pumps() -> Pumps {
        Pumps {
            idle: Duration::from_secs(30),
            flush_delay: Duration::ZERO,
            stats: stats(),
        }
    }

    #[test]
    fn a_pooled_short_buffer_still_reads_a_whole_small_frame_at_once() {
        // A buffer from the pool keeps the length of its last use (here a small frame's, as
        // long as the metadata and a bit): the read window is still OPENER_INITIAL bytes.
        for len in [1, META_FRAME_LEN + 30] {
            let mut frames = FrameOpener::new(256 << 10);
            frames.set_buf(vec![7u8; len]);
            assert_eq!(frames.space().len(), 16 << 10, "pooled buffer of {len} bytes");
        }
    }

    /// A connected pair over loopback: (accepted side, connecting side).
    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let c = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (a, _) = l.accept().expect("accept");
        a.set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
        (a, c)
    }

    /// [`aio::read_stream_header`] from `s` on a runtime of its own.
    fn read_header(p: &Pumps, s: TcpStream) -> Result<Header, GwError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let s = aio::to_async(s)?;
            aio::read_stream_header(p, &s, Side::Client, 16 << 20).await
        })
    }

    /// The 44-byte fixed part of a stream header declaring `header_len`.
    fn fixed_header(header_len: u32) -> Vec<u8> {
        let mut h = b"QLTXV6\r\n".to_vec();
        h.extend_from_slice(&1u16.to_le_bytes());
        h.extend_from_slice(&header_len.to_le_bytes());
        h.extend_from_slice(&[0, 0, 1, 0]);
        h.extend_from_slice(&(64u32 << 10).to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        h.extend_from_slice(&[7; 16]);
        h.extend_from_slice(&1u16.to_le_bytes());
        assert_eq!(h.len(), HEADER_FIXED_LEN);
        h
    }

    #[test]
    fn a_declared_header_over_the_stream_limit_is_refused_before_reading_it() {
        let (a, mut c) = pair();
        c.write_all(&fixed_header(1 << 20)).expect("write");
        // Nothing more is sent: the refusal must not wait for the declared bytes.
        match read_header(&pumps(), a) {
            Err(GwError::Protocol(m)) => assert!(m.contains("at most 4096"), "{m}"),
            other => panic!("expected a protocol error, got {other:?}"),
        }
    }

    #[test]
    fn a_stream_header_with_signed_set_is_refused() {
        for (flags, refused) in [(0u16, None), (2, Some("must not be signed"))] {
            let stanza = qeltrix_format::Stanza {
                kind: 16,
                body: Vec::new(),
            };
            let mut h = Header::encode_unsealed(flags, 1, 64 << 10, 0, [7; 16], &[stanza], 0).expect("encode");
            h.extend_from_slice(&[0; 64]); // header_sha256 || header_mac: checked later, by the keyring
            let (a, mut c) = pair();
            c.write_all(&h).expect("write");
            match (read_header(&pumps(), a), refused) {
                (Ok(parsed), None) => assert_eq!(parsed.encoded, h),
                (Err(GwError::Protocol(m)), Some(why)) => assert!(m.contains(why), "{m}"),
                (other, _) => panic!("flags {flags}: {other:?}"),
            }
        }
    }

    /// Stream keys whose "crypto" is plain copying: enough to check how a sink lays out what it
    /// stores, with no Python.
    struct PlainKeys;

    impl StreamKeys for PlainKeys {
        fn seal(&mut self, _: u64, _: u8, _: &[u8], _: &mut Vec<u8>) -> Result<(), GwError> {
            unreachable!()
        }
        fn open_meta(&mut self, _: &[u8]) -> Result<BlockMeta, GwError> {
            unreachable!()
        }
        fn open_data(&mut self, _: &BlockMeta, _: &[u8], _: &mut Vec<u8>) -> Result<(), GwError> {
            unreachable!()
        }
        fn seal_index(&mut self, index_pt: &[u8], _: u64) -> Result<Vec<u8>, GwError> {
            let mut footer = vec![0; 12];
            footer.extend_from_slice(index_pt);
            footer.extend_from_slice(&[0; TAG_LEN]);
            Ok(footer)
        }
        fn frame_digest(&mut self, meta_frame: &[u8]) -> Result<Digest, GwError> {
            assert_eq!(meta_frame.len(), META_FRAME_LEN);
            Ok([meta_frame[0]; 32])
        }
        fn sha256(&mut self, data: &[u8]) -> Result<Digest, GwError> {
            Ok([data.len() as u8; 32])
        }
    }

    /// A signing keyring whose signature is the message's first 64 bytes.
    struct Signing;

    impl Keyring for Signing {
        type Keys = PlainKeys;
        type Session = ();
        fn new_session(&self) -> Result<Option<()>, GwError> {
            Ok(None)
        }
        fn new_stream(&self, _: Option<&()>, _: Option<[u8; 16]>, _: u32) -> Result<(Vec<u8>, PlainKeys), GwError> {
            unreachable!()
        }
        fn accept_stream(&self, _: Option<&()>, _: &Header) -> Result<PlainKeys, GwError> {
            unreachable!()
        }
        fn storage_header(&self, _: Option<&()>, h: &Header, _: &PlainKeys) -> Result<Vec<u8>, GwError> {
            Ok(h.encoded.clone())
        }
        fn reply_id(&self, r: &[u8; 16]) -> Result<[u8; 16], GwError> {
            Ok(*r)
        }
        fn sink_signer(&self) -> Result<Option<[u8; 32]>, GwError> {
            Ok(Some([9; 32]))
        }
        fn sign(&self, message: &[u8]) -> Result<[u8; 64], GwError> {
            Ok(message[..64].try_into().expect("165 bytes"))
        }
    }

    /// An object store in memory: `sent` bytes of each object are "uploaded" (cannot be taken
    /// back), the rest buffered, as in a multipart upload.
    #[derive(Debug, Default)]
    struct MemStore {
        done: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    }

    struct MemObject {
        name: String,
        data: Vec<u8>,
        sent: usize,
        done: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    }

    impl SinkStore for MemStore {
        fn describe(&self) -> String {
            "mem://".into()
        }
        fn create(&self, name: &str) -> io::Result<Box<dyn SinkObject>> {
            Ok(Box::new(MemObject {
                name: format!("mem://{name}"),
                data: Vec::new(),
                sent: 0,
                done: self.done.clone(),
            }))
        }
    }

    impl Write for MemObject {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.data.extend_from_slice(buf);
            // Everything but the last 64 bytes has gone out as parts.
            self.sent = self.data.len().saturating_sub(64).max(self.sent);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl SinkObject for MemObject {
        fn name(&self) -> String {
            self.name.clone()
        }
        fn truncate(&mut self, len: u64) -> io::Result<()> {
            if (len as usize) < self.sent {
                return Err(io::Error::other("already sent"));
            }
            self.data.truncate(len as usize);
            Ok(())
        }
        fn commit(self: Box<Self>) -> io::Result<String> {
            self.done.lock().expect("lock").insert(self.name.clone(), self.data);
            Ok(self.name)
        }
    }

    #[test]
    fn a_sink_store_gets_the_bytes_a_sink_directory_gets_and_nothing_until_finished() {
        let dir = std::env::temp_dir().join(format!("qeltrix-sink-store-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let header = vec![0xAB; 128];
        let store = MemStore::default();
        let mut file = SinkFile::create(&dir, 1, &header, true).expect("create");
        let mut object = SinkFile::create_in(&store, 1, &header, true).expect("create");
        let mut keys = PlainKeys;
        for i in 0..3u8 {
            let meta_frame = [i + 1; META_FRAME_LEN];
            for f in [&mut file, &mut object] {
                f.frame(&mut keys, &meta_frame, &[i; 10 + TAG_LEN], 10).expect("frame");
            }
        }
        // A half-written frame after the last recorded one is dropped at finish, if still buffered.
        file.file.write_all(&[0xEE; 50]).expect("write");
        object.file.write_all(&[0xEE; 50]).expect("write");
        assert!(
            store.done.lock().expect("lock").is_empty(),
            "nothing visible before finish"
        );
        let path = file.finish(&Signing, &mut keys, true).expect("finish");
        let name = object.finish(&Signing, &mut keys, true).expect("finish");
        let on_disk = std::fs::read(&path).expect("read");
        std::fs::remove_dir_all(&dir).expect("cleanup");
        assert!(name.starts_with("mem://stream-") && name.ends_with("-1.qltx"), "{name}");
        assert_eq!(store.done.lock().expect("lock")[&name], on_disk);

        // Bytes already sent cannot be taken back: finishing fails (the caller's drop aborts).
        let mut object = SinkFile::create_in(&store, 2, &header, false).expect("create");
        object.file.write_all(&[0xEE; 500]).expect("write");
        assert!(object.finish(&Signing, &mut keys, true).is_err());
        assert_eq!(store.done.lock().expect("lock").len(), 1);
    }

    #[test]
    fn a_signing_sink_appends_footer_signature_section_and_trailer_even_when_cut() {
        let dir = std::env::temp_dir().join(format!("qeltrix-sink-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let header = vec![0xAB; 128];
        let mut file = SinkFile::create(&dir, 1, &header, true).expect("create");
        let mut keys = PlainKeys;
        for i in 0..3u8 {
            let meta_frame = [i + 1; META_FRAME_LEN];
            file.frame(&mut keys, &meta_frame, &[0; 10 + TAG_LEN], 10)
                .expect("frame");
        }
        // A half-written frame after the last recorded one is dropped at finish.
        file.file.write_all(&[0xEE; 50]).expect("write");
        let path = file.finish(&Signing, &mut keys, true).expect("finish");
        let c = std::fs::read(&path).expect("read");
        std::fs::remove_dir_all(&dir).expect("cleanup");
        let trailer =
            qeltrix_format::Trailer::parse_with(&c[c.len() - qeltrix_format::TRAILER_LEN..], c.len() as u64, 128, true)
                .expect("a signed container's trailer");
        let frames_len = 3 * (META_FRAME_LEN + 10 + TAG_LEN) as u64;
        assert_eq!(trailer.footer_offset, 128 + frames_len);
        let sig_at = (trailer.footer_offset + trailer.footer_len) as usize;
        let section = qeltrix_format::SignatureSection::parse(&c[sig_at..c.len() - qeltrix_format::TRAILER_LEN], 3)
            .expect("a section for 3 frames");
        assert_eq!(section.signer_pub, [9; 32]);
        for i in 0..3 {
            assert_eq!(section.frame_digest(i), Some(&[i as u8 + 1; 32][..]));
        }
        // The signature covers signed_message, which starts with SIG_LABEL and SHA256(header).
        assert_eq!(&section.signature[..21], b"qeltrix-v6 signature\0");
        assert_eq!(section.signature[21..53], [128; 32]);
    }

    #[test]
    fn a_silent_peer_misses_the_handshake_deadline() {
        let (a, _c) = pair();
        let p = pumps();
        p.stats.preauth_deadline_ms.store(100, Ordering::Relaxed);
        let err = read_header(&p, a).expect_err("must time out");
        assert!(err.to_string().contains("handshake timeout"), "{err}");
        p.stats.authenticated();
        assert!(!p.stats.past_deadline());
    }

    #[test]
    fn abort_resets_the_peer_instead_of_ending_cleanly() {
        let (a, mut c) = pair();
        let p = pumps();
        // What a connection's task does on an error: its sockets reset when closed, and a
        // read of an aborted connection fails, never with a clean end of input.
        set_reset_on_close(&a);
        p.stats.aborted.store(true, Ordering::SeqCst);
        match read_header(&p, a) {
            Err(GwError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::ConnectionAborted),
            other => panic!("expected an aborted read, got {other:?}"),
        }
        let mut buf = [0u8; 8];
        c.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let e = c.read(&mut buf).expect_err("a reset, not an end of input");
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
    }
}
