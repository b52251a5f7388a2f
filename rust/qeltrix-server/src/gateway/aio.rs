//! Connections on a few asynchronous workers (one per two cores): each accepted connection
//! is a task on one of them from its session handshake to its end ([`super::conn`]), and the
//! worker also seals and opens the frames of every connection on it, so it is the crypto
//! worker too. Threads do not grow with open connections, nor with handshakes in progress.
//!
//! Semantics are those of FORMAT.md section 12: frames are authenticated whole before a byte
//! is forwarded, a destination is half-closed only after `FINAL` (or the sealing side's
//! source half-closed), and any error resets both sockets.
use super::*;
use tokio::net::TcpStream as AsyncStream;

/// The data phase of a router or decrypt connection, once its streams are set up.
pub(super) enum Handoff<K: Keyring> {
    Router {
        header: Vec<u8>,
        keys: K::Keys,
        reply_id: [u8; 16],
        session: Option<K::Session>,
    },
    Decrypt {
        reply_header: Vec<u8>,
        reply_keys: K::Keys,
        in_keys: K::Keys,
        in_block_size: u32,
    },
}

/// Where a pump's output goes.
pub(super) enum Dst<'a> {
    /// This socket, as this side's bytes.
    Socket(&'a AsyncStream, Side),
    /// Each whole frame to a sink's stored stream.
    Sink(&'a mut SinkWriter),
}

pub(super) fn keys_lost() -> GwError {
    GwError::Io(io::Error::other("the crypto worker stopped"))
}

/// The workers: one single-threaded runtime each, in a thread the keyring set up, with the
/// batcher that runs the crypto of every connection on it. A runtime's blocking pool (a
/// sink's file or object writes, name lookups of the target) is bounded too.
pub(super) struct Workers<K: Keyring> {
    workers: Vec<(tokio::runtime::Handle, Arc<Batcher<K>>)>,
    next: AtomicUsize,
}

/// A job and where its result goes.
type Queued<S> = (FrameJob<S>, tokio::sync::oneshot::Sender<FrameJob<S>>);

/// The crypto of one worker's connections. A connection's task queues its frame and waits; the
/// batcher task, woken by the first job, runs after the tasks already ready on the worker
/// (which queue theirs too), then hands everything queued to [`Keyring::run_frames`] at once.
/// It never waits for more jobs than are there: a lone frame is a batch of one.
pub(super) struct Batcher<K: Keyring> {
    queue: Mutex<Vec<Queued<K::Keys>>>,
    wake: tokio::sync::Notify,
    /// Buffers of this worker's connections between uses: a connection holds a buffer only
    /// while it reads into it, or while its frame or plaintext waits to be written.
    pool: Mutex<Vec<Vec<u8>>>,
    /// Read permits: at most this many of the worker's connections hold a read buffer for a
    /// frame being read and sealed at once, however many are ready.
    reads: tokio::sync::Semaphore,
    /// Connections on this worker now.
    conns: AtomicUsize,
}

/// When a connection's task runs its frame's crypto itself instead of queueing it for the
/// batcher task. A frame run at once is written at once, so the next relay (or the
/// application) starts on it while this worker seals or opens the next one: with a few
/// connections that pipelining keeps both cores busy (pgbench `-c 8` through a pair: about
/// 10% more transactions, and less CPU per transaction). With many, the cores are busy anyway,
/// and a batch's frames reach the next process together, which then wakes once for them
/// (redis `-c 50`: about 4% less CPU per request, relays and Redis together, than one frame
/// at a time). `QELTRIX_GW_INLINE` = `never`,
/// `always` (whenever no batch is queued), `lone` (one connection) or a number of connections
/// on the worker up to which frames run at once (default [`INLINE_CONNS`]). Undocumented: a
/// benchmark knob, as `QELTRIX_GW_WORKERS`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Inline {
    Never,
    Always,
    UpTo(usize),
}

/// Connections on a worker up to which its frames run at once (see [`Inline`]).
const INLINE_CONNS: usize = 16;

fn inline_mode() -> Inline {
    static MODE: std::sync::OnceLock<Inline> = std::sync::OnceLock::new();
    *MODE.get_or_init(|| match std::env::var("QELTRIX_GW_INLINE").as_deref() {
        Ok("never") => Inline::Never,
        Ok("always") => Inline::Always,
        Ok("lone") => Inline::UpTo(1),
        Ok(n) => Inline::UpTo(n.parse().unwrap_or(INLINE_CONNS)),
        Err(_) => Inline::UpTo(INLINE_CONNS),
    })
}

/// Threads of a worker's blocking pool (a sink's writes, name lookups).
const BLOCKING_THREADS: usize = 4;

/// Read permits per worker.
const READ_PERMITS: usize = 16;

/// A batch holds frames up to about this many bytes (the rest waits for the next one), which
/// bounds the buffers a binding lends to one call.
const BATCH_BYTES: usize = 4 << 20;
/// Buffers a worker keeps for reuse.
const POOL_KEEP: usize = 16;

fn job_bytes<S>(j: &FrameJob<S>) -> usize {
    match j {
        FrameJob::Seal { pt_len, .. } => *pt_len,
        FrameJob::Open { avail, .. } => *avail,
    }
}

impl<K: Keyring> Batcher<K> {
    fn new() -> Batcher<K> {
        Batcher {
            queue: Mutex::new(Vec::new()),
            wake: tokio::sync::Notify::new(),
            pool: Mutex::new(Vec::new()),
            reads: tokio::sync::Semaphore::new(READ_PERMITS),
            conns: AtomicUsize::new(0),
        }
    }

    /// A buffer from the pool (its length is whatever it had).
    fn take(&self) -> Vec<u8> {
        self.pool.lock().expect("buffer pool").pop().unwrap_or_default()
    }

    /// Give a buffer back (dropped when the pool is full).
    fn give(&self, buf: Vec<u8>) {
        if buf.capacity() == 0 {
            return;
        }
        let mut pool = self.pool.lock().expect("buffer pool");
        if pool.len() < POOL_KEEP {
            pool.push(buf);
        }
    }

    /// Run `job` in the next batch, or at once on this task when nothing could join it (see
    /// [`Inline`]); the job comes back with its result.
    async fn run(&self, gw: &Gateway<K>, job: FrameJob<K::Keys>) -> Result<FrameJob<K::Keys>, GwError> {
        let inline = match inline_mode() {
            Inline::Never => false,
            Inline::Always => true,
            Inline::UpTo(n) => self.conns.load(Ordering::Relaxed) <= n,
        };
        if inline && self.queue.lock().expect("batch queue").is_empty() {
            // No hand-off: no queue, no wake-up of the batcher task, no channel.
            let mut jobs = [job];
            gw.gate.run(|| gw.keyring.run_frames(&mut jobs));
            let [job] = jobs;
            return Ok(job);
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.queue.lock().expect("batch queue").push((job, tx));
        self.wake.notify_one();
        rx.await
            .map_err(|_| GwError::Io(io::Error::other("the crypto worker stopped")))
    }

    async fn serve(&self, gw: &Gateway<K>) {
        let mut jobs = Vec::new();
        let mut replies = Vec::new();
        loop {
            self.wake.notified().await;
            let queued = {
                let mut q = self.queue.lock().expect("batch queue");
                let (mut n, mut bytes) = (0, 0);
                while n < q.len() && (n == 0 || bytes + job_bytes(&q[n].0) <= BATCH_BYTES) {
                    bytes += job_bytes(&q[n].0);
                    n += 1;
                }
                if n < q.len() {
                    // More than a batch: the rest goes in the next one.
                    self.wake.notify_one();
                }
                q.drain(..n).collect::<Vec<_>>()
            };
            if queued.is_empty() {
                continue;
            }
            for (job, tx) in queued {
                jobs.push(job);
                replies.push(tx);
            }
            gw.gate.run(|| gw.keyring.run_frames(&mut jobs));
            for (job, tx) in jobs.drain(..).zip(replies.drain(..)) {
                // A connection that ended meanwhile no longer waits: its job is dropped.
                let _ = tx.send(job);
            }
        }
    }
}

impl<K: Keyring> Workers<K> {
    pub(super) fn start(gw: &Arc<Gateway<K>>, n: usize) -> io::Result<Workers<K>> {
        let mut workers = Vec::new();
        for i in 0..n.max(1) {
            let (tx, rx) = std::sync::mpsc::channel();
            let gw = gw.clone();
            let batcher = Arc::new(Batcher::new());
            let b = batcher.clone();
            std::thread::Builder::new()
                .name(format!("qeltrix-gw-worker-{i}"))
                .spawn(move || {
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .max_blocking_threads(BLOCKING_THREADS)
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = tx.send(Ok(rt.handle().clone()));
                    gw.keyring.on_thread(&mut || {
                        // Runs until the gateway stopped and no connection is left.
                        rt.block_on(async {
                            let ended = async {
                                loop {
                                    // Registered before the check, so a stop or a connection's
                                    // end in between still wakes it.
                                    let n = gw.ended.notified();
                                    tokio::pin!(n);
                                    n.as_mut().enable();
                                    if gw.stop.load(Ordering::SeqCst) && gw.active.load(Ordering::SeqCst) == 0 {
                                        break;
                                    }
                                    n.await;
                                }
                            };
                            tokio::select! {
                                _ = ended => {}
                                _ = b.serve(&gw) => {}
                            }
                        })
                    });
                })?;
            let handle = rx
                .recv()
                .map_err(|_| io::Error::other("a gateway worker did not start"))??;
            workers.push((handle, batcher));
        }
        Ok(Workers {
            workers,
            next: AtomicUsize::new(0),
        })
    }

    /// Run `task` on the first worker.
    pub(super) fn spawn_task(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.workers[0].0.spawn(task);
    }

    /// Run an accepted connection on the next worker, from its handshake to its end.
    pub(super) fn spawn(&self, gw: Arc<Gateway<K>>, client: TcpStream, stats: Arc<ConnStats>) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.workers.len();
        let (handle, batcher) = &self.workers[i];
        let batcher = batcher.clone();
        batcher.conns.fetch_add(1, Ordering::Relaxed);
        handle.spawn(async move {
            super::conn::connection(gw, &batcher, client, stats).await;
            batcher.conns.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

pub(super) fn to_async(s: TcpStream) -> io::Result<AsyncStream> {
    s.set_nonblocking(true)?;
    AsyncStream::from_std(s)
}

/// The data phase of a router or decrypt connection between client `c` and other side `o`.
pub(super) async fn run<K: Keyring>(
    p: &Pumps,
    gw: &Gateway<K>,
    b: &Batcher<K>,
    c: &AsyncStream,
    o: &AsyncStream,
    h: Handoff<K>,
) -> Result<(), GwError> {
    let bs = gw.config.block_size;
    let max_bs = gw.config.max_peer_block_size;
    match h {
        Handoff::Router {
            header,
            keys,
            reply_id,
            session,
        } => {
            let up = send_stream(p, gw, b, (c, Side::Client), (o, Side::Other), &header, keys, bs);
            let down = async {
                let hdr = read_stream_header(p, o, Side::Other, max_bs).await?;
                if hdr.container_id != reply_id {
                    return Err(GwError::Auth("the reply stream is not bound to this connection".into()));
                }
                let keys = gw.keyring.accept_stream(session.as_ref(), &hdr)?;
                recv_stream(p, gw, b, (o, Side::Other), (c, Side::Client), keys, hdr.block_size).await
            };
            tokio::try_join!(up, down).map(|_| ())
        }
        Handoff::Decrypt {
            reply_header,
            reply_keys,
            in_keys,
            in_block_size,
        } => {
            let down = send_stream(
                p,
                gw,
                b,
                (o, Side::Other),
                (c, Side::Client),
                &reply_header,
                reply_keys,
                bs,
            );
            let up = recv_stream(p, gw, b, (c, Side::Client), (o, Side::Other), in_keys, in_block_size);
            tokio::try_join!(up, down).map(|_| ())
        }
    }
}

/// A whole outgoing stream to `dst`: its header, frames of what `src` sends, and a half-close
/// after the `FINAL` frame.
#[allow(clippy::too_many_arguments)] // the two sides and the stream
pub(super) async fn send_stream<K: Keyring>(
    p: &Pumps,
    gw: &Gateway<K>,
    b: &Batcher<K>,
    (src, src_side): (&AsyncStream, Side),
    (dst, dst_side): (&AsyncStream, Side),
    header: &[u8],
    keys: K::Keys,
    block_size: u32,
) -> Result<(), GwError> {
    write_all(p, dst, dst_side, header).await?;
    let keys = &mut Some(keys);
    seal(p, gw, b, src, src_side, Dst::Socket(dst, dst_side), keys, block_size).await?;
    shutdown_write(dst);
    Ok(())
}

/// A whole incoming stream from `src`, each frame authenticated before its plaintext goes to
/// `dst`, which is half-closed after the `FINAL` frame.
#[allow(clippy::too_many_arguments)] // the two sides and the stream
async fn recv_stream<K: Keyring>(
    p: &Pumps,
    gw: &Gateway<K>,
    b: &Batcher<K>,
    (src, src_side): (&AsyncStream, Side),
    (dst, dst_side): (&AsyncStream, Side),
    keys: K::Keys,
    block_size: u32,
) -> Result<(), GwError> {
    let keys = &mut Some(keys);
    open(p, gw, b, src, src_side, Dst::Socket(dst, dst_side), keys, block_size).await?;
    shutdown_write(dst);
    Ok(())
}

pub(super) fn shutdown_write(s: &AsyncStream) {
    let _ = socket2::SockRef::from(s).shutdown(Shutdown::Write);
}

/// How often a waiting read or write checks the connection's idle timeout (and its handshake
/// deadline before it authenticated).
fn tick(p: &Pumps) -> Duration {
    let deadline = p.stats.preauth_deadline_ms.load(Ordering::Relaxed);
    let t = if deadline == u64::MAX {
        p.idle
    } else {
        p.idle.min(Duration::from_millis(deadline))
    };
    t.clamp(Duration::from_millis(10), Duration::from_secs(1))
}

async fn read_some(p: &Pumps, s: &AsyncStream, side: Side, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // A peer that trickles bytes still misses its handshake deadline.
        p.check_alive()?;
        match s.try_read(buf) {
            Ok(n) => {
                p.count(side, n, true);
                return Ok(n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        if tokio::time::timeout(tick(p), s.readable()).await.is_err() {
            p.check_idle()?;
        }
    }
}

/// Bytes ready now, or within `wait`: `None` when there are none.
async fn recv_ready(
    p: &Pumps,
    s: &AsyncStream,
    side: Side,
    buf: &mut [u8],
    wait: Duration,
) -> io::Result<Option<usize>> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match s.try_read(buf) {
            Ok(n) => {
                p.count(side, n, true);
                return Ok(Some(n));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        if wait.is_zero() || tokio::time::timeout_at(deadline, s.readable()).await.is_err() {
            return Ok(None);
        }
    }
}

pub(super) async fn write_all(p: &Pumps, s: &AsyncStream, side: Side, data: &[u8]) -> io::Result<()> {
    let mut pos = 0;
    while pos < data.len() {
        match s.try_write(&data[pos..]) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(n) => {
                pos += n;
                p.count(side, n, false);
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        if tokio::time::timeout(tick(p), s.writable()).await.is_err() && p.stats.idle_for() >= p.idle {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "the receiver stopped reading"));
        }
    }
    Ok(())
}

pub(super) async fn read_full(p: &Pumps, s: &AsyncStream, side: Side, buf: &mut [u8]) -> Result<bool, GwError> {
    let mut got = 0;
    while got < buf.len() {
        let n = read_some(p, s, side, &mut buf[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(false);
            }
            return Err(GwError::Truncated("stream cut inside a frame".into()));
        }
        got += n;
    }
    Ok(true)
}

/// Wait until `s` is readable; the connection's idle timeout applies.
async fn wait_readable(p: &Pumps, s: &AsyncStream) -> io::Result<()> {
    loop {
        match tokio::time::timeout(tick(p), s.readable()).await {
            Ok(r) => return r,
            Err(_) => p.check_idle()?,
        }
    }
}

/// What `s` has for `buf` now: `None` when nothing is there yet.
fn try_read_now(p: &Pumps, s: &AsyncStream, side: Side, buf: &mut [u8]) -> io::Result<Option<usize>> {
    loop {
        match s.try_read(buf) {
            Ok(n) => {
                if n > 0 && n < buf.len() && n < SEAL_INITIAL {
                    // A short, small read (an interactive message) drained the socket: forget
                    // its readiness now (as tokio's own reads do), so the next read waits for
                    // the poller instead of costing a system call that would only say EAGAIN.
                    // A bulk flow keeps reading directly: more has usually arrived meanwhile.
                    let _ = s.try_io(tokio::io::Interest::READABLE, || {
                        Err::<(), _>(io::Error::from(io::ErrorKind::WouldBlock))
                    });
                }
                p.count(side, n, true);
                return Ok(Some(n));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Bulk frames carry at most this many bytes divided by the connections open (but at least
/// [`BUSY_FRAME_MIN`], and at most a block): up to 64 connections send whole 256 KiB blocks,
/// 200 send 80 KiB frames. Any `pt_len` up to the block size is valid (FORMAT.md section 12).
const FRAME_BUDGET: usize = 16 << 20;
const BUSY_FRAME_MIN: usize = 64 << 10;
/// The first read buffer of a sealing side: room for interactive writes; a read that fills it
/// grows it, up to the block size.
const SEAL_INITIAL: usize = 16 << 10;

fn grow(buf: &mut Vec<u8>, len: usize) {
    if buf.len() < len {
        buf.resize(len, 0);
    }
}

/// Plaintext from `src`, frames to `dst`, `FINAL` at end of input.
/// Reads take what is there now and go on while more is immediately available, up to a block;
/// a bulk flow also waits briefly for a full block ([`BULK_WAIT`]), an interactive one is
/// sealed at once. The frame is sealed in the worker's next batch ([`Batcher`]).
#[allow(clippy::too_many_arguments)] // the two sides and their roles
pub(super) async fn seal<K: Keyring>(
    p: &Pumps,
    gw: &Gateway<K>,
    b: &Batcher<K>,
    src: &AsyncStream,
    src_side: Side,
    mut dst: Dst<'_>,
    keys: &mut Option<K::Keys>,
    block_size: u32,
) -> Result<(), GwError> {
    let block = block_size as usize;
    let mut block_index = 0u64;
    let mut last_full = false;
    loop {
        // Many connections at once: smaller bulk frames, so the buffers of all of them (here
        // and at the peer, which holds a frame whole until it authenticates) stay bounded.
        let bs = (FRAME_BUDGET / gw.active.load(Ordering::Relaxed).max(1))
            .max(BUSY_FRAME_MIN)
            .min(block);
        let first = SEAL_INITIAL.min(bs);
        let want = if last_full { bs } else { first };
        // A buffer (and one of the worker's read permits) is taken only once there is
        // something to read, and given back as soon as the frame is sealed.
        let (mut filled, mut buf, permit) = loop {
            wait_readable(p, src).await?;
            let permit = b.reads.acquire().await.map_err(|_| aborted_error())?;
            let mut buf = b.take();
            // A pooled buffer may be longer (it held a frame): a frame's plaintext is at most
            // a block.
            buf.truncate(bs);
            grow(&mut buf, want);
            match try_read_now(p, src, src_side, &mut buf)? {
                Some(n) => break (n, buf, permit),
                None => b.give(buf),
            }
        };
        let mut eof = filled == 0;
        while !eof && filled < bs {
            if filled == buf.len() {
                // A read filled the small buffer: a bulk flow, whose frame may take a block.
                grow(&mut buf, bs);
            }
            let bulk = last_full || filled >= BULK_THRESHOLD.min(bs / 2);
            let wait = if bulk {
                p.flush_delay.max(BULK_WAIT)
            } else {
                p.flush_delay
            };
            match recv_ready(p, src, src_side, &mut buf[filled..], wait).await? {
                Some(0) => eof = true,
                Some(n) => filled += n,
                None => break,
            }
        }
        last_full = filled == bs;
        let flags = if eof { META_FLAG_FINAL } else { 0 };
        let job = FrameJob::Seal {
            keys: keys.take().ok_or_else(keys_lost)?,
            block_index,
            flags,
            pt: std::mem::take(&mut buf),
            pt_len: filled,
            frame: b.take(),
            result: None,
        };
        let FrameJob::Seal {
            keys: k,
            pt,
            frame: f,
            result,
            ..
        } = b.run(gw, job).await?
        else {
            unreachable!("a seal job comes back as one")
        };
        let keys = keys.insert(k);
        // The plaintext is in the frame now: its buffer and read permit go back.
        b.give(pt);
        drop(permit);
        result.unwrap_or_else(|| Err(GwError::Protocol("a frame was not sealed".into())))?;
        let f = match &mut dst {
            Dst::Socket(s, side) => write_all(p, s, *side, &f).await.map(|()| f)?,
            Dst::Sink(w) => w.frame(keys, f, filled as u32).await?,
        };
        b.give(f);
        p.stats.blocks.fetch_add(1, Ordering::Relaxed);
        block_index += 1;
        if eof {
            return Ok(());
        }
    }
}

/// Frames from `src`, each authenticated whole before its plaintext goes to `dst` (or the frame
/// itself to a sink's stream); stop after the `FINAL` frame. Each frame is opened in the
/// worker's next batch ([`Batcher`]).
#[allow(clippy::too_many_arguments)] // the two sides and their roles
pub(super) async fn open<K: Keyring>(
    p: &Pumps,
    gw: &Gateway<K>,
    b: &Batcher<K>,
    src: &AsyncStream,
    side: Side,
    mut dst: Dst<'_>,
    keys: &mut Option<K::Keys>,
    block_size: u32,
) -> Result<(), GwError> {
    let mut frames = FrameOpener::new(block_size);
    loop {
        if frames.wants_open() {
            let (buf, avail, mut pt) = frames.lend();
            if pt.capacity() == 0 {
                pt = b.take();
            }
            let job = FrameJob::Open {
                keys: keys.take().ok_or_else(keys_lost)?,
                buf,
                avail,
                pt,
                result: None,
            };
            let FrameJob::Open {
                keys: k,
                buf,
                pt,
                result,
                ..
            } = b.run(gw, job).await?
            else {
                unreachable!("an open job comes back as one")
            };
            *keys = Some(k);
            let r = result.unwrap_or_else(|| Err(GwError::Protocol("a frame was not opened".into())));
            frames.opened(buf, pt, r)?;
            continue;
        }
        if let Some(meta) = frames.ready(p) {
            match &mut dst {
                Dst::Socket(s, side) => write_all(p, s, *side, frames.plaintext()).await?,
                Dst::Sink(w) => {
                    let mut frame = b.take();
                    frame.clear();
                    frame.extend_from_slice(frames.meta_frame());
                    frame.extend_from_slice(frames.data_ct());
                    let keys = keys.as_mut().ok_or_else(keys_lost)?;
                    b.give(w.frame(keys, frame, meta.pt_len).await?);
                }
            }
            if meta.is_final() {
                return Ok(());
            }
            frames.consume();
            // Written: the plaintext buffer, and the read buffer when no byte of the next
            // frame is in it, go back to the worker's pool.
            let (buf, pt) = frames.give_back();
            b.give(buf);
            b.give(pt);
            continue;
        }
        let n = loop {
            if frames.wants_buf() {
                // No buffer is taken before there is something to read.
                wait_readable(p, src).await?;
                frames.set_buf(b.take());
            }
            if let Some(n) = try_read_now(p, src, side, frames.space()).map_err(cut)? {
                break n;
            }
            // Nothing to read now: a connection between frames keeps no buffer while it waits.
            let (buf, pt) = frames.give_back();
            b.give(buf);
            b.give(pt);
            wait_readable(p, src).await?;
        };
        frames.filled(n)?;
    }
}

/// Read and parse a stream header (bounded by `MAX_STREAM_HEADER_LEN`).
pub(super) async fn read_stream_header(
    p: &Pumps,
    s: &AsyncStream,
    side: Side,
    max_block_size: u32,
) -> Result<Header, GwError> {
    let mut buf = vec![0u8; HEADER_FIXED_LEN];
    if !read_full(p, s, side, &mut buf).await? {
        return Err(stream_header_missing());
    }
    buf.resize(declared_header_len(&buf)?, 0);
    if !read_full(p, s, side, &mut buf[HEADER_FIXED_LEN..]).await? {
        return Err(stream_header_cut());
    }
    parse_stream_header(&buf, max_block_size)
}
