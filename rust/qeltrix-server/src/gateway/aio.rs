//! The data phase of router and decrypt connections on a few asynchronous workers.
//!
//! A connection's thread runs its session handshake and stream setup (short, bounded by the
//! handshake timeout), then hands both sockets and the stream keys to one of a few workers
//! (about one per core) and ends: the worker moves the frames of every connection handed to
//! it with non-blocking socket I/O, and seals and opens them itself, so it is also the crypto
//! worker. Threads no longer grow with open connections, only with handshakes in progress.
//!
//! Semantics are those of the threaded pumps (FORMAT.md section 12): frames are authenticated
//! whole before a byte is forwarded, a destination is half-closed only after `FINAL` (or the
//! sealing side's source half-closed), and any error resets both sockets.
use super::*;
use tokio::net::TcpStream as AsyncStream;

/// What a connection's thread hands over once its streams are set up.
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

/// The workers: one single-threaded runtime each, in a thread the keyring set up.
pub(super) struct Workers {
    handles: Vec<tokio::runtime::Handle>,
    next: AtomicUsize,
}

impl Workers {
    pub(super) fn start<K: Keyring>(gw: &Arc<Gateway<K>>, n: usize) -> io::Result<Workers> {
        let mut handles = Vec::new();
        for i in 0..n.max(1) {
            let (tx, rx) = std::sync::mpsc::channel();
            let gw = gw.clone();
            std::thread::Builder::new()
                .name(format!("qeltrix-gw-worker-{i}"))
                .spawn(move || {
                    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
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
                            loop {
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                if gw.stop.load(Ordering::SeqCst) && gw.active.load(Ordering::SeqCst) == 0 {
                                    break;
                                }
                            }
                        })
                    });
                })?;
            handles.push(
                rx.recv()
                    .map_err(|_| io::Error::other("a gateway worker did not start"))??,
            );
        }
        Ok(Workers {
            handles,
            next: AtomicUsize::new(0),
        })
    }

    /// Run the data phase of a connection on the next worker; `finish` it there.
    pub(super) fn spawn<K: Keyring>(
        &self,
        gw: Arc<Gateway<K>>,
        client: TcpStream,
        other: TcpStream,
        stats: Arc<ConnStats>,
        h: Handoff<K>,
    ) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        self.handles[i].spawn(async move {
            let r = run(&gw, client, other, &stats, h).await;
            gw.finish(&stats, r);
        });
    }
}

fn to_async(s: TcpStream) -> io::Result<AsyncStream> {
    s.set_nonblocking(true)?;
    AsyncStream::from_std(s)
}

/// Both sockets are closed when this returns: with a reset (RST) after an error.
async fn run<K: Keyring>(
    gw: &Gateway<K>,
    client: TcpStream,
    other: TcpStream,
    stats: &Arc<ConnStats>,
    h: Handoff<K>,
) -> Result<(), GwError> {
    let p = Pumps {
        idle: gw.config.idle_timeout,
        flush_delay: gw.config.flush_delay,
        stats: stats.clone(),
        gate: gw.gate.clone(),
    };
    let bs = gw.config.block_size;
    let max_bs = gw.config.max_peer_block_size;
    set_reset_on_close(&client);
    set_reset_on_close(&other);
    let (c, o) = (to_async(client)?, to_async(other)?);
    let r = match h {
        Handoff::Router {
            header,
            mut keys,
            reply_id,
            session,
        } => {
            let up = async {
                write_all(&p, &o, Side::Other, &header).await?;
                seal(&p, &c, Side::Client, &o, Side::Other, &mut keys, bs).await?;
                shutdown_write(&o);
                Ok::<(), GwError>(())
            };
            let down = async {
                let hdr = read_stream_header(&p, &o, Side::Other, max_bs).await?;
                if hdr.container_id != reply_id {
                    return Err(GwError::Auth("the reply stream is not bound to this connection".into()));
                }
                let mut keys = gw.keyring.accept_stream(session.as_ref(), &hdr)?;
                open(&p, &o, Side::Other, &c, Side::Client, &mut keys, hdr.block_size).await?;
                shutdown_write(&c);
                Ok(())
            };
            tokio::try_join!(up, down).map(|_| ())
        }
        Handoff::Decrypt {
            reply_header,
            mut reply_keys,
            mut in_keys,
            in_block_size,
        } => {
            let down = async {
                write_all(&p, &c, Side::Client, &reply_header).await?;
                seal(&p, &o, Side::Other, &c, Side::Client, &mut reply_keys, bs).await?;
                shutdown_write(&c);
                Ok::<(), GwError>(())
            };
            let up = async {
                open(&p, &c, Side::Client, &o, Side::Other, &mut in_keys, in_block_size).await?;
                shutdown_write(&o);
                Ok(())
            };
            tokio::try_join!(up, down).map(|_| ())
        }
    };
    if r.is_err() {
        p.stats.aborted.store(true, Ordering::SeqCst);
    } else {
        // A clean end closes normally (both sides were half-closed after FINAL).
        let _ = socket2::SockRef::from(&c).set_linger(None);
        let _ = socket2::SockRef::from(&o).set_linger(None);
    }
    r
}

fn shutdown_write(s: &AsyncStream) {
    let _ = socket2::SockRef::from(s).shutdown(Shutdown::Write);
}

/// How often a waiting read or write checks the connection's idle timeout.
fn tick(p: &Pumps) -> Duration {
    p.idle.clamp(Duration::from_millis(10), Duration::from_secs(1))
}

async fn read_some(p: &Pumps, s: &AsyncStream, side: Side, buf: &mut [u8]) -> io::Result<usize> {
    loop {
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

async fn write_all(p: &Pumps, s: &AsyncStream, side: Side, data: &[u8]) -> io::Result<()> {
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

async fn read_full(p: &Pumps, s: &AsyncStream, side: Side, buf: &mut [u8]) -> Result<bool, GwError> {
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

/// As [`pumps::Pumps::seal`]: plaintext from `src`, frames to `dst`, `FINAL` at end of input.
async fn seal<S: StreamKeys>(
    p: &Pumps,
    src: &AsyncStream,
    src_side: Side,
    dst: &AsyncStream,
    dst_side: Side,
    keys: &mut S,
    block_size: u32,
) -> Result<(), GwError> {
    let bs = block_size as usize;
    let mut buf = vec![0u8; bs];
    let mut frame = Vec::new();
    let mut block_index = 0u64;
    let mut last_full = false;
    loop {
        let mut filled = read_some(p, src, src_side, &mut buf).await?;
        let mut eof = filled == 0;
        while !eof && filled < bs {
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
        p.gate
            .run(|| keys.seal(block_index, flags, &buf[..filled], &mut frame))?;
        write_all(p, dst, dst_side, &frame).await?;
        p.stats.blocks.fetch_add(1, Ordering::Relaxed);
        block_index += 1;
        if eof {
            return Ok(());
        }
    }
}

/// As [`pumps::Pumps::open`]: frames from `src`, each authenticated whole, plaintext to `dst`.
#[allow(clippy::too_many_arguments)] // the two sides and their roles
async fn open<S: StreamKeys>(
    p: &Pumps,
    src: &AsyncStream,
    side: Side,
    dst: &AsyncStream,
    dst_side: Side,
    keys: &mut S,
    block_size: u32,
) -> Result<(), GwError> {
    let mut frames = FrameOpener::new(block_size);
    loop {
        match frames.advance(p, keys)? {
            None => {
                let n = read_some(p, src, side, frames.space()).await.map_err(cut)?;
                frames.filled(n)?;
            }
            Some(meta) => {
                write_all(p, dst, dst_side, frames.plaintext()).await?;
                if meta.is_final() {
                    return Ok(());
                }
                frames.consume();
            }
        }
    }
}

/// As [`pumps::read_stream_header`], without a thread.
async fn read_stream_header(p: &Pumps, s: &AsyncStream, side: Side, max_block_size: u32) -> Result<Header, GwError> {
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
