//! One accepted connection as a task on an asynchronous worker ([`aio`]), from its session
//! handshake to its end: the handshake's fixed-length messages are read and written without
//! blocking, with the keyring's crypto steps between them ([`Keyring::session_step`]); a
//! decrypt gateway authenticates the first stream header before it contacts the target (a
//! replayed or reflected stream never reaches it), and connects with the connect timeout.
//! A sink's file or object writes run on the worker's small blocking pool ([`sink::store`]).
use super::aio::{self, read_full, read_stream_header, to_async, write_all, Batcher, Handoff};
use super::*;
use qeltrix_format::handshake::MAX_HS_MSG_LEN;
use tokio::net::TcpStream as AsyncStream;

/// A sink connection's stream, once set up.
pub(super) struct SinkStart<K: Keyring> {
    pub(super) session: Option<K::Session>,
    pub(super) header: Header,
    pub(super) keys: K::Keys,
    pub(super) block_size: u32,
}

/// Serve `client` (accepted, blocking) on this worker; `finish` it when it ends.
pub(super) async fn connection<K: Keyring>(
    gw: Arc<Gateway<K>>,
    b: &Batcher<K>,
    client: TcpStream,
    stats: Arc<ConnStats>,
) {
    // Errors abort: the sockets are reset when closed, unless the connection ends cleanly.
    set_reset_on_close(&client);
    let p = Pumps {
        idle: gw.config.idle_timeout,
        flush_delay: gw.config.flush_delay,
        stats: stats.clone(),
    };
    let c = match to_async(client) {
        Ok(c) => c,
        Err(e) => return gw.finish(&stats, Err(e.into())),
    };
    let mut other = None;
    let r = match serve(&gw, b, &p, &c, &mut other).await {
        Ok(()) => {
            // A clean end closes normally (each side was half-closed after its FINAL).
            for s in std::iter::once(&c).chain(other.as_ref()) {
                let _ = socket2::SockRef::from(s).set_linger(None);
            }
            Ok(())
        }
        Err(e) => {
            stats.aborted.store(true, Ordering::SeqCst);
            Err(e)
        }
    };
    // Free the slot before the peer sees the close, so a client that retries at once is not
    // refused.
    gw.finish(&stats, r);
    drop(c);
    drop(other);
}

/// Set up the connection's streams and run it.
async fn serve<K: Keyring>(
    gw: &Arc<Gateway<K>>,
    b: &Batcher<K>,
    p: &Pumps,
    c: &AsyncStream,
    other: &mut Option<AsyncStream>,
) -> Result<(), GwError> {
    c.set_nodelay(true)?;
    let config = &gw.config;
    if config.mode != Mode::Reflect && !(config.mode == Mode::Sink && config.sink_raw) {
        let ms = config.handshake_timeout.as_millis().min(u128::from(u64::MAX - 1)) as u64;
        p.stats.preauth_deadline_ms.store(ms, Ordering::Relaxed);
    }
    let bs = config.block_size;
    let max_bs = config.max_peer_block_size;
    match config.mode {
        Mode::Reflect => {
            // The one-socket seal pump: what the client sends comes back to it as a stream.
            let (header, keys) = gw.keyring.new_stream(None, None, bs)?;
            aio::send_stream(p, gw, b, (c, Side::Client), (c, Side::Client), &header, keys, bs).await
        }
        Mode::Router => {
            let o = &*other.insert(connect_target(gw).await?);
            set_reset_on_close(o);
            let session = handshake(gw, p, o, Side::Other, true).await?;
            // The peer is the gateway this one chose to connect to; its reply header is
            // bounded by MAX_STREAM_HEADER_LEN and the idle timeout from here.
            p.stats.authenticated();
            let (header, keys) = gw.keyring.new_stream(session.as_ref(), None, bs)?;
            let request_id = Header::parse(&header)
                .map_err(|e| GwError::Protocol(e.to_string()))?
                .container_id;
            let reply_id = gw.keyring.reply_id(&request_id)?;
            let h = Handoff::Router {
                header,
                keys,
                reply_id,
                session,
            };
            aio::run(p, gw, b, c, o, h).await
        }
        Mode::Decrypt => {
            let session = handshake(gw, p, c, Side::Client, false).await?;
            let h = read_stream_header(p, c, Side::Client, max_bs).await?;
            // Authenticated under this connection's fresh session before the target is
            // contacted: a replayed or reflected stream never reaches it.
            let in_keys = gw.keyring.accept_stream(session.as_ref(), &h)?;
            p.stats.authenticated();
            let reply_id = gw.keyring.reply_id(&h.container_id)?;
            let o = &*other.insert(connect_target(gw).await?);
            set_reset_on_close(o);
            let (reply_header, reply_keys) = gw.keyring.new_stream(session.as_ref(), Some(reply_id), bs)?;
            let h = Handoff::Decrypt {
                reply_header,
                reply_keys,
                in_keys,
                in_block_size: h.block_size,
            };
            aio::run(p, gw, b, c, o, h).await
        }
        Mode::Sink if config.sink_raw => {
            let (h, keys) = gw.keyring.new_stream(None, None, bs)?;
            let header = Header::parse(&h).map_err(|e| GwError::Protocol(e.to_string()))?;
            let start = SinkStart {
                session: None,
                header,
                keys,
                block_size: bs,
            };
            sink::store(gw, b, p, c, start).await
        }
        Mode::Sink => {
            let session = handshake(gw, p, c, Side::Client, false).await?;
            let header = read_stream_header(p, c, Side::Client, max_bs).await?;
            let keys = gw.keyring.accept_stream(session.as_ref(), &header)?;
            p.stats.authenticated();
            let start = SinkStart {
                session,
                block_size: header.block_size,
                header,
                keys,
            };
            sink::store(gw, b, p, c, start).await
        }
    }
}

/// Run the keyring's session handshake (FORMAT.md section 12.1), if it has one, on `s`.
async fn handshake<K: Keyring>(
    gw: &Gateway<K>,
    p: &Pumps,
    s: &AsyncStream,
    side: Side,
    initiator: bool,
) -> Result<Option<K::Session>, GwError> {
    let k = &gw.keyring;
    let Some(hs) = k.new_session()? else {
        return Ok(None);
    };
    let (len1, len2, len3) = k.session_msg_lens(&hs)?;
    if [len1, len2, len3].iter().any(|&n| n > MAX_HS_MSG_LEN) || len1 == 0 || len2 == 0 {
        return Err(GwError::Protocol(
            "the session asks for bad handshake message sizes".into(),
        ));
    }
    if initiator {
        let msg1 = k.session_step(&hs, SessionStep::Start)?;
        write_all(p, s, side, &msg1).await?;
        let msg2 = recv_message(p, s, side, len2).await?;
        let msg3 = k.session_step(&hs, SessionStep::Finish(&msg2))?;
        if len3 > 0 {
            write_all(p, s, side, &msg3).await?;
        }
    } else {
        let msg1 = recv_message(p, s, side, len1).await?;
        let msg2 = k.session_step(&hs, SessionStep::Respond(&msg1))?;
        write_all(p, s, side, &msg2).await?;
        if len3 > 0 {
            let msg3 = recv_message(p, s, side, len3).await?;
            k.session_step(&hs, SessionStep::Confirm(&msg3))?;
        }
    }
    Ok(Some(hs))
}

/// One handshake message of `len` bytes (at most `MAX_HS_MSG_LEN`); an end of input is an
/// I/O error.
async fn recv_message(p: &Pumps, s: &AsyncStream, side: Side, len: usize) -> Result<Vec<u8>, GwError> {
    let mut msg = vec![0u8; len];
    match read_full(p, s, side, &mut msg).await {
        Ok(true) => Ok(msg),
        Ok(false) => Err(GwError::Io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the peer closed during the handshake",
        ))),
        Err(GwError::Truncated(m)) => Err(GwError::Io(io::Error::new(io::ErrorKind::UnexpectedEof, m))),
        Err(e) => Err(e),
    }
}

/// Connect to the target: each address it resolves to in turn, each within the connect
/// timeout.
async fn connect_target<K: Keyring>(gw: &Gateway<K>) -> Result<AsyncStream, GwError> {
    let target = gw.config.target.as_deref().expect("checked at start");
    let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{target} did not resolve"));
    for addr in tokio::net::lookup_host(target).await? {
        match tokio::time::timeout(gw.config.connect_timeout, AsyncStream::connect(addr)).await {
            Ok(Ok(s)) => {
                s.set_nodelay(true)?;
                return Ok(s);
            }
            Ok(Err(e)) => last = e,
            Err(_) => last = io::Error::new(io::ErrorKind::TimedOut, "connection timed out"),
        }
    }
    Err(GwError::Io(io::Error::new(
        last.kind(),
        format!("connecting to {target}: {last}"),
    )))
}
