//! GatewayServer loops (FORMAT.md section 12 "Streams"; DESIGN.md "Servers").
//!
//! One thread per direction of each connection: a *seal pump* reads plaintext, cuts it into
//! frames (a frame is sealed when its block is full or the source has nothing more ready,
//! so interactive protocols see no added delay) and writes them; an *open pump* reads
//! frames, authenticates each completely before forwarding a byte of it, and half-closes its
//! destination on the `FINAL` frame. Blocking writes give backpressure, so memory per
//! connection is two blocks per direction whatever the peers do.
//!
//! A cut is never a clean end (FORMAT.md section 12): a destination is half-closed only after
//! a `FINAL` frame (or, on the sealing side, after its source half-closed); any error aborts
//! the whole connection, resetting (RST) both sockets of both directions. Until the first
//! stream header has authenticated, a peer can make the gateway hold at most
//! `MAX_STREAM_HEADER_LEN` bytes, for at most the handshake timeout (section 12.2).
//!
//! The cryptography is behind [`Keyring`] and [`StreamKeys`]; the pyo3 glue implements
//! them over `qeltrix_v6._crypto`.
use crate::LogLevel;
use qeltrix_format::header::HEADER_FIXED_LEN;
use qeltrix_format::signature::{Digest, SIGNATURE_LEN, SIGNER_PUB_LEN};
pub use qeltrix_format::MAX_STREAM_HEADER_LEN;
use qeltrix_format::{
    frame_len, signed_message, BlockMeta, Header, Index, IndexEntry, SignatureAccumulator, Trailer,
    INDEX_FLAG_INCOMPLETE, META_FLAG_FINAL, META_FRAME_LEN, TAG_LEN,
};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
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
}

impl GatewayConfig {
    /// Defaults for `mode` on `listen`.
    pub fn new(mode: Mode, listen: SocketAddr) -> GatewayConfig {
        GatewayConfig {
            mode,
            listen,
            target: None,
            sink_dir: None,
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

/// Creates and accepts streams: the key material of a gateway.
pub trait Keyring: Send + Sync + 'static {
    type Keys: StreamKeys;
    /// What an authenticated peer handshake leaves behind (pinned-key mode).
    type Session: Send + Sync;
    /// Pinned-key mode: run the peer handshake (FORMAT.md section 12.1) over `send`/`recv`
    /// before any stream; a peer whose key is not pinned is refused here. Shared-key mode
    /// returns `None` without a byte exchanged.
    fn handshake(
        &self,
        initiator: bool,
        send: &mut dyn FnMut(&[u8]) -> io::Result<()>,
        recv: &mut dyn FnMut(&mut [u8]) -> io::Result<()>,
    ) -> Result<Option<Self::Session>, GwError>;
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
    /// Run a connection thread's whole body; a binding may set up per-thread state once here
    /// (the Python binding keeps a thread state, so each crypto call only takes the GIL).
    fn on_thread(&self, f: &mut (dyn FnMut() + Send)) {
        f()
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
    /// Seal an index as a footer that will start at `footer_offset`.
    fn seal_index(&mut self, index_pt: &[u8], footer_offset: u64) -> Result<Vec<u8>, GwError>;
    /// `frame_digest` of the frame starting with `meta_frame` (its first `META_FRAME_LEN`
    /// bytes; FORMAT.md section 15).
    fn frame_digest(&mut self, meta_frame: &[u8]) -> Result<Digest, GwError>;
    /// `SHA256(data)` (the header, digest-list and footer hashes of `signed_message`).
    fn sha256(&mut self, data: &[u8]) -> Result<Digest, GwError>;
}

/// Live counters of one connection.
#[derive(Debug)]
pub struct ConnStats {
    pub id: u64,
    pub peer: SocketAddr,
    started: Instant,
    ended: Mutex<Option<Instant>>,
    /// Bytes received from the accepted peer.
    pub bytes_in: AtomicU64,
    /// Bytes sent to the accepted peer.
    pub bytes_out: AtomicU64,
    /// Frames sealed plus frames opened.
    pub blocks: AtomicU64,
    last_activity_ms: AtomicU64,
    /// Milliseconds after `started` by which the peer must have authenticated; `u64::MAX`
    /// once it has (or when nothing needs authenticating).
    preauth_deadline_ms: AtomicU64,
    /// Set when the connection is aborted: every pump stops at its next read or write.
    aborted: AtomicBool,
    error: Mutex<Option<String>>,
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
    fn new(id: u64, peer: SocketAddr) -> ConnStats {
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

    fn touch(&self) {
        self.last_activity_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let now = self.started.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_activity_ms.load(Ordering::Relaxed)))
    }

    fn past_deadline(&self) -> bool {
        let deadline = self.preauth_deadline_ms.load(Ordering::Relaxed);
        deadline != u64::MAX && self.started.elapsed().as_millis() as u64 >= deadline
    }

    fn authenticated(&self) {
        self.preauth_deadline_ms.store(u64::MAX, Ordering::Relaxed);
    }

    fn snapshot(&self) -> ConnSnapshot {
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
}

#[derive(Default)]
struct Totals {
    connections: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    blocks: AtomicU64,
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

/// A running gateway.
pub struct GatewayHandle {
    local_addr: SocketAddr,
    stats: Arc<dyn StatsSource>,
    stop: Box<dyn Fn() + Send + Sync>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

trait StatsSource: Send + Sync {
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

    /// Stop accepting and wait for the listener thread; open connections end on their own
    /// (or at their idle timeout).
    pub fn stop(&mut self) {
        (self.stop)();
        for t in self.threads.drain(..) {
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
        Mode::Sink if config.sink_dir.as_ref().is_none_or(|d| !d.is_dir()) => {
            return Err(invalid("sink mode needs an existing sink directory"))
        }
        _ => {}
    }
    let listener = bind(config.listen, config.backlog)?;
    let local_addr = listener.local_addr()?;
    let gw = Arc::new(Gateway {
        config,
        keyring,
        stop: AtomicBool::new(false),
        next_id: AtomicU64::new(1),
        active: AtomicUsize::new(0),
        open: Mutex::new(HashMap::new()),
        closed: Mutex::new(VecDeque::new()),
        totals: Totals::default(),
    });
    let mut threads = Vec::new();
    {
        let gw = gw.clone();
        threads.push(
            std::thread::Builder::new()
                .name("qeltrix-gw-accept".into())
                .spawn(move || gw.accept_loop(listener))?,
        );
    }
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
    let stopper = gw.clone();
    let stop = Box::new(move || {
        stopper.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&local_addr, Duration::from_secs(1));
    });
    Ok(GatewayHandle {
        local_addr,
        stats: gw,
        stop,
        threads,
    })
}

impl<K: Keyring> Gateway<K> {
    fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        for conn in listener.incoming() {
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            let stream = match conn {
                Ok(s) => s,
                Err(e) => {
                    self.keyring.log(LogLevel::Warning, &format!("accept failed: {e}"));
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
            };
            let peer = stream.peer_addr().unwrap_or(self.config.listen);
            if self.active.load(Ordering::SeqCst) >= self.config.max_connections {
                self.totals.refused.fetch_add(1, Ordering::Relaxed);
                self.keyring.log(
                    LogLevel::Warning,
                    &format!(
                        "connection limit ({}) reached; refusing {peer}",
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
            let gw = self.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("qeltrix-gw-{id}"))
                .spawn(move || {
                    let mut result = None;
                    gw.keyring.on_thread(&mut || result = Some(gw.handle(&stream, &stats)));
                    let result =
                        result.unwrap_or_else(|| Err(GwError::Protocol("connection thread did not run".into())));
                    if result.is_err() {
                        // Errors before the pumps started (session, header) abort too.
                        set_reset_on_close(&stream);
                    }
                    // Free the slot before the peer sees the close, so a client that
                    // retries at once is not refused.
                    gw.finish(&stats, result);
                    drop(stream);
                });
            if let Err(e) = spawned {
                self.keyring
                    .log(LogLevel::Error, &format!("cannot start a connection thread: {e}"));
                self.active.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    fn finish(&self, stats: &Arc<ConnStats>, result: Result<(), GwError>) {
        *stats.ended.lock().expect("stats lock") = Some(Instant::now());
        if let Err(e) = &result {
            self.totals.failed.fetch_add(1, Ordering::Relaxed);
            *stats.error.lock().expect("stats lock") = Some(e.to_string());
            let level = if matches!(e, GwError::Io(_)) {
                LogLevel::Info
            } else {
                LogLevel::Warning
            };
            self.keyring.log(
                level,
                &format!("connection {} from {} aborted (reset): {e}", stats.id, stats.peer),
            );
        }
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
    }

    fn connect_target(&self) -> Result<TcpStream, GwError> {
        let target = self.config.target.as_deref().expect("checked at start");
        let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{target} did not resolve"));
        for addr in target.to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, self.config.connect_timeout) {
                Ok(s) => {
                    self.prepare(&s)?;
                    return Ok(s);
                }
                Err(e) => last = e,
            }
        }
        Err(GwError::Io(io::Error::new(
            last.kind(),
            format!("connecting to {target}: {last}"),
        )))
    }

    fn prepare(&self, s: &TcpStream) -> io::Result<()> {
        s.set_nodelay(true)?;
        // Reads and writes wake up at least this often to check the connection's overall
        // idleness, its handshake deadline and whether it was aborted.
        let tick = self
            .config
            .idle_timeout
            .min(self.config.handshake_timeout)
            .clamp(Duration::from_millis(10), Duration::from_secs(1));
        s.set_read_timeout(Some(tick))?;
        s.set_write_timeout(Some(tick))?;
        Ok(())
    }

    /// Run `f` inside the keyring's per-thread setup (see [`Keyring::on_thread`]).
    fn run_on_thread<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let mut f = Some(f);
        let mut out = None;
        self.keyring.on_thread(&mut || out = f.take().map(|f| f()));
        out.expect("on_thread runs its closure once")
    }

    /// Run the keyring's peer handshake (if any) on `s`.
    fn handshake(&self, p: &Pumps, s: &TcpStream, side: Side, initiator: bool) -> Result<Option<K::Session>, GwError> {
        self.keyring.handshake(
            initiator,
            &mut |data| p.write_all(&mut &*s, side, data),
            &mut |buf| match p.read_full(s, side, buf) {
                Ok(true) => Ok(()),
                Ok(false) => Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed during the handshake",
                )),
                Err(e) => Err(e),
            },
        )
    }

    fn handle(&self, client: &TcpStream, stats: &Arc<ConnStats>) -> Result<(), GwError> {
        self.prepare(client)?;
        if self.config.mode != Mode::Reflect && !(self.config.mode == Mode::Sink && self.config.sink_raw) {
            let ms = self.config.handshake_timeout.as_millis().min(u128::from(u64::MAX - 1)) as u64;
            stats.preauth_deadline_ms.store(ms, Ordering::Relaxed);
        }
        let p = Pumps {
            idle: self.config.idle_timeout,
            flush_delay: self.config.flush_delay,
            stats: stats.clone(),
        };
        let bs = self.config.block_size;
        let max_bs = self.config.max_peer_block_size;
        let nop = &mut |_: &mut K::Keys, _: u32, _: &[u8]| Ok(());
        match self.config.mode {
            Mode::Reflect => {
                let (header, mut keys) = self.keyring.new_stream(None, None, bs)?;
                p.write_all(&mut &*client, Side::Client, &header)?;
                let r = p.seal(client, Side::Client, &mut &*client, Side::Client, &mut keys, bs, nop);
                after(&p, &r, &[client], client);
                r
            }
            Mode::Router => {
                let peer = self.connect_target()?;
                let session = self.handshake(&p, &peer, Side::Other, true);
                if session.is_err() {
                    set_reset_on_close(&peer);
                }
                let session = session?;
                // The peer is the gateway this one chose to connect to; its reply header is
                // bounded by MAX_STREAM_HEADER_LEN and the idle timeout from here.
                stats.authenticated();
                let session = session.as_ref();
                let (header, mut keys) = self.keyring.new_stream(session, None, bs)?;
                let request_id = Header::parse(&header)
                    .map_err(|e| GwError::Protocol(e.to_string()))?
                    .container_id;
                let reply_id = self.keyring.reply_id(&request_id)?;
                std::thread::scope(|scope| {
                    let up = scope.spawn(|| {
                        self.run_on_thread(|| {
                            let r = p
                                .write_all(&mut &peer, Side::Other, &header)
                                .map_err(GwError::Io)
                                .and_then(|()| {
                                    p.seal(
                                        client,
                                        Side::Client,
                                        &mut &peer,
                                        Side::Other,
                                        &mut keys,
                                        bs,
                                        &mut |_, _, _| Ok(()),
                                    )
                                });
                            after(&p, &r, &[client, &peer], &peer);
                            r
                        })
                    });
                    let down = (|| {
                        let h = read_stream_header(&p, &peer, Side::Other, max_bs)?;
                        if h.container_id != reply_id {
                            return Err(GwError::Auth("the reply stream is not bound to this connection".into()));
                        }
                        let mut keys = self.keyring.accept_stream(session, &h)?;
                        p.open(&peer, Side::Other, &mut keys, h.block_size, &mut |_, _, _, _, pt| {
                            p.write_all(&mut &*client, Side::Client, pt).map_err(GwError::Io)
                        })
                    })();
                    after(&p, &down, &[client, &peer], client);
                    join_both(up.join(), down)
                })
            }
            Mode::Decrypt => {
                let session = self.handshake(&p, client, Side::Client, false)?;
                let session = session.as_ref();
                let h = read_stream_header(&p, client, Side::Client, max_bs)?;
                // Authenticated under this connection's fresh session before the target is
                // contacted: a replayed or reflected stream never reaches it.
                let mut in_keys = self.keyring.accept_stream(session, &h)?;
                stats.authenticated();
                let reply_id = self.keyring.reply_id(&h.container_id)?;
                let target = self.connect_target()?;
                std::thread::scope(|scope| {
                    let down = scope.spawn(|| {
                        self.run_on_thread(|| {
                            let r = self.keyring.new_stream(session, Some(reply_id), bs).and_then(
                                |(reply_header, mut keys)| {
                                    p.write_all(&mut &*client, Side::Client, &reply_header)?;
                                    p.seal(
                                        &target,
                                        Side::Other,
                                        &mut &*client,
                                        Side::Client,
                                        &mut keys,
                                        bs,
                                        &mut |_, _, _| Ok(()),
                                    )
                                },
                            );
                            after(&p, &r, &[client, &target], client);
                            r
                        })
                    });
                    let up = p.open(
                        client,
                        Side::Client,
                        &mut in_keys,
                        h.block_size,
                        &mut |_, _, _, _, pt| p.write_all(&mut &target, Side::Other, pt).map_err(GwError::Io),
                    );
                    after(&p, &up, &[client, &target], &target);
                    join_both(down.join(), up)
                })
            }
            Mode::Sink => {
                let r = self.sink(client, &p);
                if r.is_err() {
                    abort(&p, &[client]);
                }
                r
            }
        }
    }

    fn sink(&self, client: &TcpStream, p: &Pumps) -> Result<(), GwError> {
        let dir = self.config.sink_dir.as_deref().expect("checked at start");
        let bs = self.config.block_size;
        let session = if self.config.sink_raw {
            None
        } else {
            self.handshake(p, client, Side::Client, false)?
        };
        let session = session.as_ref();
        let (header, mut keys, block_size) = if self.config.sink_raw {
            let (h, k) = self.keyring.new_stream(None, None, bs)?;
            (Header::parse(&h).map_err(|e| GwError::Protocol(e.to_string()))?, k, bs)
        } else {
            let h = read_stream_header(p, client, Side::Client, self.config.max_peer_block_size)?;
            let k = self.keyring.accept_stream(session, &h)?;
            p.stats.authenticated();
            let block_size = h.block_size;
            (h, k, block_size)
        };
        let header_bytes = self.keyring.storage_header(session, &header, &keys)?;
        let signs = self.keyring.sink_signer()?.is_some();
        let stored_header = Header::parse(&header_bytes).map_err(|e| GwError::Protocol(e.to_string()))?;
        if stored_header.signed() != signs || stored_header.container_id != header.container_id {
            return Err(GwError::Protocol(
                "the header to store disagrees with the stream (container_id) or with the sink's signing key (SIGNED)"
                    .into(),
            ));
        }
        let mut file = SinkFile::create(dir, p.stats.id, &header_bytes, signs)?;
        let r = if self.config.sink_raw {
            let SinkFile { file: out, stored, .. } = &mut file;
            p.seal(
                client,
                Side::Client,
                out,
                Side::Other,
                &mut keys,
                bs,
                &mut |keys, pt_len, frame| stored.add(keys, frame, frame.len() as u64, pt_len),
            )
        } else {
            p.open(
                client,
                Side::Client,
                &mut keys,
                block_size,
                &mut |keys, meta_frame, ct, meta, _| file.frame(keys, meta_frame, ct, meta.pt_len),
            )
        };
        let path = file.finish(&self.keyring, &mut keys, r.is_err())?;
        let state = if r.is_ok() {
            "complete"
        } else {
            "INCOMPLETE (cut before its FINAL frame)"
        };
        self.keyring.log(
            LogLevel::Info,
            &format!("connection {}: stored {} ({state})", p.stats.id, path.display()),
        );
        if r.is_ok() && !self.config.sink_raw {
            // Acknowledge durable storage with an empty reply stream bound to the request, so
            // a router in front of the sink ends cleanly and its client sees a half-close.
            let container_id = header.container_id;
            let (reply, mut reply_keys) =
                self.keyring
                    .new_stream(session, Some(self.keyring.reply_id(&container_id)?), bs)?;
            let mut frame = Vec::new();
            reply_keys.seal(0, META_FLAG_FINAL, &[], &mut frame)?;
            p.write_all(&mut &*client, Side::Client, &reply)?;
            p.write_all(&mut &*client, Side::Client, &frame)?;
            let _ = client.shutdown(Shutdown::Write);
        }
        r
    }
}

/// After one direction ends: a clean end (a `FINAL` frame, or the source's half-close on the
/// sealing side) half-closes the destination; an error aborts the connection (`sockets`).
fn after(p: &Pumps, r: &Result<(), GwError>, sockets: &[&TcpStream], dst: &TcpStream) {
    if r.is_ok() && !p.stats.aborted.load(Ordering::SeqCst) {
        let _ = dst.shutdown(Shutdown::Write);
    } else {
        abort(p, sockets);
    }
}

/// Abort a connection: its sockets are reset (RST, not FIN) when they are closed, and every
/// pump blocked on them wakes up and stops without sending a `FINAL` frame.
fn abort(p: &Pumps, sockets: &[&TcpStream]) {
    p.stats.aborted.store(true, Ordering::SeqCst);
    for s in sockets {
        set_reset_on_close(s);
        // Wakes a blocked reader without sending anything (SHUT_WR would send a FIN, which
        // a plaintext peer would take for a clean end); a blocked writer wakes at its tick.
        let _ = s.shutdown(Shutdown::Read);
    }
}

/// `SO_LINGER` with timeout 0: closing the socket sends a TCP RST.
fn set_reset_on_close(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
}

fn join_both(other: std::thread::Result<Result<(), GwError>>, this: Result<(), GwError>) -> Result<(), GwError> {
    let other = other.unwrap_or_else(|_| Err(GwError::Protocol("a connection thread panicked".into())));
    // Report the real cause: an error is often the consequence of the other side's (an
    // abort wakes the other pump with an "aborted" error).
    fn rank(r: &Result<(), GwError>) -> u8 {
        match r {
            Ok(()) => 0,
            Err(GwError::Io(e)) if e.kind() == io::ErrorKind::ConnectionAborted => 1,
            Err(GwError::Io(_)) => 2,
            Err(GwError::Truncated(_)) => 3,
            Err(_) => 4,
        }
    }
    if rank(&other) > rank(&this) {
        other
    } else {
        this
    }
}

fn aborted_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "the connection was aborted")
}

/// Receives each authenticated frame: `(keys, meta_frame, data_ct, meta, plaintext)`.
type Deliver<'a, S> = dyn FnMut(&mut S, &[u8], &[u8], &BlockMeta, &[u8]) -> Result<(), GwError> + 'a;

/// Told of each frame a seal pump wrote: `(keys, pt_len, frame)`.
type OnFrame<'a, S> = dyn FnMut(&mut S, u32, &[u8]) -> Result<(), GwError> + 'a;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    /// The accepted peer: its bytes count in the connection's stats.
    Client,
    Other,
}

#[derive(Clone)]
struct Pumps {
    idle: Duration,
    flush_delay: Duration,
    stats: Arc<ConnStats>,
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

impl Pumps {
    fn count(&self, side: Side, n: usize, incoming: bool) {
        self.stats.touch();
        if side == Side::Client {
            let c = if incoming {
                &self.stats.bytes_in
            } else {
                &self.stats.bytes_out
            };
            c.fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    /// Block until some bytes or end of input; the connection's idle timeout applies.
    fn read_some(&self, s: &TcpStream, side: Side, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            self.check_alive()?;
            match (&*s).read(buf) {
                Ok(n) => {
                    // An abort's SHUT_RD reads as end of input: never take it for a clean end.
                    self.check_alive()?;
                    self.count(side, n, true);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => self.check_idle()?,
                Err(e) => return Err(e),
            }
        }
    }

    /// Fails once the connection was aborted or its peer missed the handshake deadline.
    fn check_alive(&self) -> io::Result<()> {
        if self.stats.aborted.load(Ordering::SeqCst) {
            return Err(aborted_error());
        }
        if self.stats.past_deadline() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the peer did not authenticate within the handshake timeout",
            ));
        }
        Ok(())
    }

    fn check_idle(&self) -> io::Result<()> {
        self.check_alive()?;
        if self.stats.idle_for() >= self.idle {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "connection idle too long"));
        }
        Ok(())
    }

    /// Fill `buf`; `Ok(false)` when the input ended before its first byte.
    fn read_full(&self, s: &TcpStream, side: Side, buf: &mut [u8]) -> io::Result<bool> {
        let mut got = 0;
        while got < buf.len() {
            let n = self.read_some(s, side, &mut buf[got..])?;
            if n == 0 {
                if got == 0 {
                    return Ok(false);
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "stream cut inside a frame",
                ));
            }
            got += n;
        }
        Ok(true)
    }

    /// Bytes that are ready now (or within `flush_delay`): `None` when there are none.
    fn recv_ready(&self, s: &TcpStream, side: Side, buf: &mut [u8], wait: Duration) -> io::Result<Option<usize>> {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        use rustix::net::{recv, RecvFlags};
        if !wait.is_zero() {
            let t = Timespec {
                tv_sec: wait.as_secs() as _,
                tv_nsec: wait.subsec_nanos() as _,
            };
            let mut fds = [PollFd::new(s, PollFlags::IN)];
            if poll(&mut fds, Some(&t))? == 0 {
                return Ok(None);
            }
        }
        loop {
            match recv(s, &mut *buf, RecvFlags::DONTWAIT) {
                Ok((n, _)) => {
                    // As in read_some: an abort's SHUT_RD is not the source's clean end.
                    self.check_alive()?;
                    self.count(side, n, true);
                    return Ok(Some(n));
                }
                Err(rustix::io::Errno::AGAIN) => return Ok(None),
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn write_all(&self, w: &mut dyn Write, side: Side, data: &[u8]) -> io::Result<()> {
        let mut pos = 0;
        while pos < data.len() {
            match w.write(&data[pos..]) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => {
                    pos += n;
                    self.count(side, n, false);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => {
                    if self.stats.aborted.load(Ordering::SeqCst) {
                        return Err(aborted_error());
                    }
                    if self.stats.idle_for() >= self.idle {
                        return Err(io::Error::new(io::ErrorKind::TimedOut, "the receiver stopped reading"));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Read plaintext from `src`, write frames to `dst`, end with a `FINAL` frame at end of
    /// input. `on_frame(keys, pt_len, frame)` is told of every frame written.
    #[allow(clippy::too_many_arguments)] // the two sides and their roles
    fn seal<S: StreamKeys>(
        &self,
        src: &TcpStream,
        src_side: Side,
        dst: &mut dyn Write,
        dst_side: Side,
        keys: &mut S,
        block_size: u32,
        on_frame: &mut OnFrame<'_, S>,
    ) -> Result<(), GwError> {
        let bs = block_size as usize;
        let mut buf = vec![0u8; bs];
        let mut frame = Vec::with_capacity(frame_len(block_size) as usize);
        let mut block_index = 0u64;
        let mut last_full = false;
        loop {
            let mut filled = self.read_some(src, src_side, &mut buf)?;
            let mut eof = filled == 0;
            while !eof && filled < bs {
                // A bulk flow (the last frame was full, or plenty is arriving) waits briefly for
                // a full block: fewer, larger frames. An interactive flow is sealed at once.
                let bulk = last_full || filled >= BULK_THRESHOLD.min(bs / 2);
                let wait = if bulk {
                    self.flush_delay.max(BULK_WAIT)
                } else {
                    self.flush_delay
                };
                match self.recv_ready(src, src_side, &mut buf[filled..], wait)? {
                    Some(0) => eof = true,
                    Some(n) => filled += n,
                    None => break,
                }
            }
            last_full = filled == bs;
            let flags = if eof { META_FLAG_FINAL } else { 0 };
            keys.seal(block_index, flags, &buf[..filled], &mut frame)?;
            self.write_all(dst, dst_side, &frame)?;
            self.stats.blocks.fetch_add(1, Ordering::Relaxed);
            on_frame(&mut *keys, filled as u32, &frame)?;
            block_index += 1;
            if eof {
                return Ok(());
            }
        }
    }

    /// Read frames from `src`; hand each fully authenticated frame to `deliver(meta_frame,
    /// data_ct, meta, plaintext)`; stop after the `FINAL` frame.
    fn open<S: StreamKeys>(
        &self,
        src: &TcpStream,
        side: Side,
        keys: &mut S,
        block_size: u32,
        deliver: &mut Deliver<'_, S>,
    ) -> Result<(), GwError> {
        let mut meta_frame = [0u8; META_FRAME_LEN];
        let mut ct = Vec::new();
        let mut pt = Vec::new();
        let mut expect = 0u64;
        loop {
            let complete = self.read_full(src, side, &mut meta_frame).map_err(cut)?;
            if !complete {
                return Err(GwError::Truncated(format!(
                    "the stream ended after {expect} frames without its FINAL frame"
                )));
            }
            let meta = keys.open_meta(&meta_frame)?;
            if meta.block_index != expect {
                return Err(GwError::Auth(format!(
                    "frame {} arrived where frame {expect} was due",
                    meta.block_index
                )));
            }
            if meta.pt_len > block_size || (meta.pt_len == 0 && !meta.is_final()) {
                return Err(GwError::Protocol(format!("frame {expect} has pt_len {}", meta.pt_len)));
            }
            ct.resize(meta.pt_len as usize + TAG_LEN, 0);
            if !self.read_full(src, side, &mut ct).map_err(cut)? {
                return Err(GwError::Truncated(format!("the stream ended inside frame {expect}")));
            }
            keys.open_data(&meta, &ct, &mut pt)?;
            self.stats.blocks.fetch_add(1, Ordering::Relaxed);
            deliver(&mut *keys, &meta_frame, &ct, &meta, &pt)?;
            expect += 1;
            if meta.is_final() {
                return Ok(());
            }
        }
    }
}

fn cut(e: io::Error) -> GwError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        GwError::Truncated(e.to_string())
    } else {
        GwError::Io(e)
    }
}

/// Read and parse a stream header (bounded by `MAX_STREAM_HEADER_LEN`).
fn read_stream_header(p: &Pumps, s: &TcpStream, side: Side, max_block_size: u32) -> Result<Header, GwError> {
    let mut buf = vec![0u8; HEADER_FIXED_LEN];
    if !p.read_full(s, side, &mut buf).map_err(cut)? {
        return Err(GwError::Truncated(
            "the peer closed before sending a stream header".into(),
        ));
    }
    let header_len = Header::peek_len(&buf).map_err(|e| GwError::Protocol(e.to_string()))?;
    // Before anything is allocated: the peer has not authenticated yet.
    if header_len > MAX_STREAM_HEADER_LEN {
        return Err(GwError::Protocol(format!(
            "the stream header declares {header_len} bytes; a stream header is at most {MAX_STREAM_HEADER_LEN}"
        )));
    }
    buf.resize(header_len as usize, 0);
    if !p.read_full(s, side, &mut buf[HEADER_FIXED_LEN..]).map_err(cut)? {
        return Err(GwError::Truncated("the stream header is cut short".into()));
    }
    let header = Header::parse(&buf).map_err(|e| GwError::Protocol(e.to_string()))?;
    if header.permuted() {
        return Err(GwError::Protocol("a stream must not be permuted".into()));
    }
    // A stream has no signature section (a sink that signs sets SIGNED on the header it
    // stores, not on the wire): FORMAT.md section 12.
    if header.signed() {
        return Err(GwError::Protocol("a stream must not be signed (SIGNED is set)".into()));
    }
    if header.block_size > max_block_size {
        return Err(GwError::Protocol(format!(
            "the peer's block_size {} exceeds this gateway's limit {max_block_size}",
            header.block_size
        )));
    }
    Ok(header)
}

/// What a sink has recorded of the frames it stored: their index entries and, when it signs,
/// their `frame_digest`s (32 bytes per frame, the only memory that grows with the stream).
struct Stored {
    offset: u64,
    entries: Vec<IndexEntry>,
    digests: Option<SignatureAccumulator>,
}

impl Stored {
    /// Record the frame of `frame_len` bytes just written at `self.offset`; `meta_frame` is its
    /// start (at least its first `META_FRAME_LEN` bytes).
    fn add<S: StreamKeys>(
        &mut self,
        keys: &mut S,
        meta_frame: &[u8],
        frame_len: u64,
        pt_len: u32,
    ) -> Result<(), GwError> {
        if let Some(digests) = self.digests.as_mut() {
            let head = meta_frame
                .get(..META_FRAME_LEN)
                .ok_or_else(|| GwError::Protocol("a frame shorter than its metadata".into()))?;
            let digest = keys.frame_digest(head)?;
            digests.push(&digest).map_err(|e| GwError::Protocol(e.to_string()))?;
        }
        self.entries.push(IndexEntry {
            frame_offset: self.offset,
            pt_len,
        });
        self.offset = self
            .offset
            .checked_add(frame_len)
            .ok_or_else(|| GwError::Protocol("the stored stream outgrows u64 offsets".into()))?;
        Ok(())
    }
}

/// A stream being stored: `.NAME.part` until it ends, then `NAME` with an index (and, for a
/// signing sink, a signature section: FORMAT.md section 15).
struct SinkFile {
    file: File,
    tmp: PathBuf,
    dest: PathBuf,
    header: Vec<u8>,
    stored: Stored,
}

impl SinkFile {
    fn create(dir: &Path, id: u64, header: &[u8], signed: bool) -> io::Result<SinkFile> {
        let ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let name = format!("stream-{ms}-{id}.qltx");
        let tmp = dir.join(format!(".{name}.part"));
        let mut file = File::options().write(true).create_new(true).open(&tmp)?;
        file.write_all(header)?;
        Ok(SinkFile {
            file,
            tmp,
            dest: dir.join(name),
            header: header.to_vec(),
            stored: Stored {
                offset: header.len() as u64,
                entries: Vec::new(),
                digests: signed.then(SignatureAccumulator::new),
            },
        })
    }

    fn frame<S: StreamKeys>(&mut self, keys: &mut S, meta_frame: &[u8], ct: &[u8], pt_len: u32) -> Result<(), GwError> {
        self.file.write_all(meta_frame)?;
        self.file.write_all(ct)?;
        self.stored
            .add(keys, meta_frame, (meta_frame.len() + ct.len()) as u64, pt_len)
    }

    /// Append the index (flagged `INCOMPLETE` when the stream was cut), the signature section
    /// when the sink signs (a cut stream's too: it vouches for what was received), and the
    /// trailer; sync, and move the file to its final name.
    fn finish<K: Keyring>(mut self, keyring: &K, keys: &mut K::Keys, incomplete: bool) -> Result<PathBuf, GwError> {
        let footer_offset = self.stored.offset;
        // Bytes written after the last recorded frame (a write or digest that failed half way)
        // are dropped, so that the footer starts where the index says.
        self.file.set_len(footer_offset)?;
        self.file.seek(SeekFrom::Start(footer_offset))?;
        let flags = if incomplete { INDEX_FLAG_INCOMPLETE } else { 0 };
        let index = Index::new(std::mem::take(&mut self.stored.entries), flags)
            .map_err(|e| GwError::Protocol(e.to_string()))?;
        let footer = keys.seal_index(&index.encode(), footer_offset)?;
        self.file.write_all(&footer)?;
        if let Some(digests) = self.stored.digests.take() {
            let section = sign_stored(
                keyring,
                keys,
                &self.header,
                digests,
                &footer,
                footer_offset,
                index.block_count(),
            )?;
            self.file.write_all(&section)?;
        }
        let trailer = Trailer {
            footer_offset,
            footer_len: footer.len() as u64,
        };
        self.file.write_all(&trailer.encode())?;
        self.file.sync_all()?;
        std::fs::rename(&self.tmp, &self.dest)?;
        Ok(self.dest)
    }
}

/// The signature section of a stored stream (FORMAT.md section 15.1): hash the header, the
/// frame digests and the footer, and have the sink's key sign `signed_message`.
fn sign_stored<K: Keyring>(
    keyring: &K,
    keys: &mut K::Keys,
    header: &[u8],
    digests: SignatureAccumulator,
    footer: &[u8],
    footer_offset: u64,
    block_count: u64,
) -> Result<Vec<u8>, GwError> {
    let format = |e: qeltrix_format::FormatError| GwError::Protocol(e.to_string());
    let signer_pub = keyring
        .sink_signer()?
        .ok_or_else(|| GwError::Protocol("this sink has no signing key".into()))?;
    let message = signed_message(
        &keys.sha256(header)?,
        block_count,
        &keys.sha256(digests.frame_digests().map_err(format)?)?,
        &keys.sha256(footer)?,
        footer_offset,
        &signer_pub,
    );
    let signature = keyring.sign(&message)?;
    digests.finish(block_count, signer_pub, signature).map_err(format)
}

/// What [`recover_stream`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    pub blocks: u64,
    pub pt_len: u64,
    /// The stream ended with its `FINAL` frame.
    pub complete: bool,
    /// Why scanning stopped, when it stopped before a `FINAL` frame.
    pub stopped: Option<String>,
}

/// Rebuild a container from a stored stream whose index is missing (FORMAT.md section 12):
/// copy `header` and every frame that authenticates, in order, to `dst`, then append an
/// index (`INCOMPLETE` unless a `FINAL` frame was seen) and a trailer.
pub fn recover_stream<S: StreamKeys>(
    src: &mut dyn Read,
    header: &Header,
    keys: &mut S,
    dst: &mut dyn Write,
) -> Result<Recovered, GwError> {
    dst.write_all(&header.encoded)?;
    let mut offset = header.encoded.len() as u64;
    let mut entries = Vec::new();
    let mut meta_frame = [0u8; META_FRAME_LEN];
    let mut ct = Vec::new();
    let mut pt = Vec::new();
    let mut complete = false;
    let mut stopped = None;
    let mut pt_len = 0u64;
    loop {
        match read_exactly(src, &mut meta_frame) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                stopped = Some(format!("cut inside frame {}: {e}", entries.len()));
                break;
            }
        }
        let meta = match keys.open_meta(&meta_frame) {
            Ok(m) if m.block_index == entries.len() as u64 && m.pt_len <= header.block_size => m,
            Ok(_) => {
                stopped = Some(format!("frame {} is out of order or oversized", entries.len()));
                break;
            }
            Err(e) => {
                stopped = Some(format!("frame {}: {e}", entries.len()));
                break;
            }
        };
        ct.resize(meta.pt_len as usize + TAG_LEN, 0);
        if !matches!(read_exactly(src, &mut ct), Ok(true)) {
            stopped = Some(format!("cut inside frame {}", entries.len()));
            break;
        }
        if let Err(e) = keys.open_data(&meta, &ct, &mut pt) {
            stopped = Some(format!("frame {}: {e}", entries.len()));
            break;
        }
        dst.write_all(&meta_frame)?;
        dst.write_all(&ct)?;
        entries.push(IndexEntry {
            frame_offset: offset,
            pt_len: meta.pt_len,
        });
        offset += (META_FRAME_LEN + ct.len()) as u64;
        pt_len += u64::from(meta.pt_len);
        if meta.is_final() {
            complete = true;
            break;
        }
    }
    let blocks = entries.len() as u64;
    let flags = if complete { 0 } else { INDEX_FLAG_INCOMPLETE };
    let index = Index::new(entries, flags).map_err(|e| GwError::Protocol(e.to_string()))?;
    let footer = keys.seal_index(&index.encode(), offset)?;
    dst.write_all(&footer)?;
    dst.write_all(
        &Trailer {
            footer_offset: offset,
            footer_len: footer.len() as u64,
        }
        .encode(),
    )?;
    Ok(Recovered {
        blocks,
        pt_len,
        complete,
        stopped: if complete { None } else { stopped },
    })
}

fn read_exactly(src: &mut dyn Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match src.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
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

    /// A connected pair over loopback: (accepted side, connecting side).
    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let c = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (a, _) = l.accept().expect("accept");
        a.set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
        (a, c)
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
        match read_stream_header(&pumps(), &a, Side::Client, 16 << 20) {
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
            match (read_stream_header(&pumps(), &a, Side::Client, 16 << 20), refused) {
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
        fn handshake(
            &self,
            _: bool,
            _: &mut dyn FnMut(&[u8]) -> io::Result<()>,
            _: &mut dyn FnMut(&mut [u8]) -> io::Result<()>,
        ) -> Result<Option<()>, GwError> {
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
        let trailer = Trailer::parse_with(&c[c.len() - qeltrix_format::TRAILER_LEN..], c.len() as u64, 128, true)
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
        let err = read_stream_header(&p, &a, Side::Client, 16 << 20).expect_err("must time out");
        assert!(err.to_string().contains("handshake timeout"), "{err}");
        p.stats.authenticated();
        assert!(!p.stats.past_deadline());
    }

    #[test]
    fn abort_resets_the_peer_instead_of_ending_cleanly() {
        let (a, mut c) = pair();
        let p = pumps();
        abort(&p, &[&a]);
        // A pump blocked on `a` wakes up with an error, never with a clean end of input.
        let mut buf = [0u8; 8];
        let e = p.read_some(&a, Side::Client, &mut buf).expect_err("aborted");
        assert_eq!(e.kind(), io::ErrorKind::ConnectionAborted);
        drop(a);
        c.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let e = c.read(&mut buf).expect_err("a reset, not an end of input");
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
    }

    #[test]
    fn join_both_reports_the_cause_not_the_consequence() {
        let aborted = || Err(GwError::Io(aborted_error()));
        let cut = || Err(GwError::Truncated("cut".into()));
        assert!(matches!(join_both(Ok(aborted()), cut()), Err(GwError::Truncated(_))));
        assert!(matches!(join_both(Ok(cut()), aborted()), Err(GwError::Truncated(_))));
        let auth = Err(GwError::Auth("bad tag".into()));
        assert!(matches!(join_both(Ok(auth), cut()), Err(GwError::Auth(_))));
        assert!(join_both(Ok(Ok(())), Ok(())).is_ok());
    }
}
