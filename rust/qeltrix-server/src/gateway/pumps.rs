//! What every connection's pumps ([`super::aio`]) share: counting, the idle timeout and
//! handshake deadline, the frame receiver, stream header checks, and the reset that aborts a
//! connection (FORMAT.md section 12: a cut is never a clean end).
use super::*;

/// `SO_LINGER` with timeout 0: closing the socket sends a TCP RST.
pub(super) fn set_reset_on_close(s: &impl std::os::fd::AsFd) {
    let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
}

pub(super) fn aborted_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "the connection was aborted")
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    /// The accepted peer: its bytes count in the connection's stats.
    Client,
    Other,
}

#[derive(Clone)]
pub(super) struct Pumps {
    pub(super) idle: Duration,
    pub(super) flush_delay: Duration,
    pub(super) stats: Arc<ConnStats>,
}

impl Pumps {
    pub(super) fn count(&self, side: Side, n: usize, incoming: bool) {
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

    /// Fails once the connection was aborted or its peer missed the handshake deadline.
    pub(super) fn check_alive(&self) -> io::Result<()> {
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

    pub(super) fn check_idle(&self) -> io::Result<()> {
        self.check_alive()?;
        if self.stats.idle_for() >= self.idle {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "connection idle too long"));
        }
        Ok(())
    }
}

/// The receiving side of a stream's frames without its I/O: bytes read go into
/// [`Self::space`] ([`Self::filled`]); once enough of a frame is there it is lent out for its
/// crypto call ([`Self::wants_open`], [`Self::lend`], [`Self::opened`]). Reads go into one
/// buffer of a whole frame, so a frame that arrives whole (an interactive one, usually) is
/// opened with one crypto call ([`StreamKeys::open_frame`]).
pub(super) struct FrameOpener {
    buf: Vec<u8>,
    have: usize,
    pt: Vec<u8>,
    expect: u64,
    block_size: u32,
    /// The current frame's metadata once opened, and whether its data was opened with it.
    pending: Option<(BlockMeta, bool)>,
    /// [`Self::ready`] returned the current frame.
    delivered: bool,
}

/// The first buffer of a [`FrameOpener`]: room for interactive frames; bulk ones grow it.
const OPENER_INITIAL: usize = 16 << 10;

impl FrameOpener {
    pub(super) fn new(block_size: u32) -> FrameOpener {
        FrameOpener {
            buf: Vec::new(),
            have: 0,
            pt: Vec::new(),
            expect: 0,
            block_size,
            pending: None,
            delivered: false,
        }
    }

    /// Where the next bytes read go. The buffer grows as frames need it (a small one for
    /// interactive frames, up to a whole frame of the largest block for bulk ones), so a
    /// connection that only sends small frames never holds a block-sized buffer. It always
    /// offers at least [`OPENER_INITIAL`] bytes: a pooled buffer comes back with the length of
    /// its last use (a 1-byte plaintext, say), and a read window that short would take a
    /// frame in two system calls.
    pub(super) fn space(&mut self) -> &mut [u8] {
        let max = frame_len(self.block_size) as usize;
        let want = self.current_end().max(self.have + 1).min(max);
        if want > self.buf.len() || self.have == self.buf.len() || self.buf.len() < OPENER_INITIAL {
            // A small buffer, or exactly the frame being received (a bulk frame's size is
            // known from its metadata before its data is read).
            let grown = want.max(OPENER_INITIAL);
            self.buf.resize(grown, 0);
        }
        &mut self.buf[self.have..]
    }

    /// The buffers, to give back to a pool between frames: the plaintext one always (after
    /// [`Self::consume`]), the read one only while it holds no byte.
    pub(super) fn give_back(&mut self) -> (Vec<u8>, Vec<u8>) {
        let buf = if self.have == 0 {
            std::mem::take(&mut self.buf)
        } else {
            Vec::new()
        };
        (buf, std::mem::take(&mut self.pt))
    }

    /// A read buffer for [`Self::space`] when it holds none (from a pool).
    pub(super) fn wants_buf(&self) -> bool {
        self.buf.capacity() == 0
    }

    pub(super) fn set_buf(&mut self, buf: Vec<u8>) {
        debug_assert!(self.have == 0);
        self.buf = buf;
    }

    /// For an asynchronous opener: whether the next step is a crypto call
    /// ([`StreamKeys::open_frame`]) on the bytes held.
    pub(super) fn wants_open(&self) -> bool {
        match &self.pending {
            None => self.have >= META_FRAME_LEN,
            Some((m, opened)) => !opened && self.have >= self.end(m),
        }
    }

    /// The buffers for that call, `(buf, avail, pt)`: given back with [`Self::opened`].
    pub(super) fn lend(&mut self) -> (Vec<u8>, usize, Vec<u8>) {
        (std::mem::take(&mut self.buf), self.have, std::mem::take(&mut self.pt))
    }

    /// The buffers lent by [`Self::lend`] come back with the call's result, which is checked
    /// (order, size) before the frame is released.
    pub(super) fn opened(
        &mut self,
        buf: Vec<u8>,
        pt: Vec<u8>,
        r: Result<(BlockMeta, bool), GwError>,
    ) -> Result<(), GwError> {
        self.buf = buf;
        self.pt = pt;
        let (meta, opened) = r?;
        if let Some((m, _)) = self.pending {
            // The data of a frame whose metadata was checked already.
            self.pending = Some((m, opened));
            return Ok(());
        }
        self.check(&meta)?;
        self.pending = Some((meta, opened));
        Ok(())
    }

    /// The current frame's metadata once it is whole and opened (once per frame; its parts
    /// are then readable until [`Self::consume`]).
    pub(super) fn ready(&mut self, p: &Pumps) -> Option<BlockMeta> {
        match self.pending {
            Some((m, true)) if self.have >= self.end(&m) && !self.delivered => {
                self.delivered = true;
                p.stats.blocks.fetch_add(1, Ordering::Relaxed);
                Some(m)
            }
            _ => None,
        }
    }

    fn check(&self, meta: &BlockMeta) -> Result<(), GwError> {
        let expect = self.expect;
        if meta.block_index != expect {
            return Err(GwError::Auth(format!(
                "frame {} arrived where frame {expect} was due",
                meta.block_index
            )));
        }
        if meta.pt_len > self.block_size || (meta.pt_len == 0 && !meta.is_final()) {
            return Err(GwError::Protocol(format!("frame {expect} has pt_len {}", meta.pt_len)));
        }
        Ok(())
    }

    /// `n` bytes were read into [`Self::space`]; 0 (the stream ended) is an error here, since a
    /// stream ends only after its `FINAL` frame.
    pub(super) fn filled(&mut self, n: usize) -> Result<(), GwError> {
        if n > 0 {
            self.have += n;
            return Ok(());
        }
        let expect = self.expect;
        Err(GwError::Truncated(if self.pending.is_some() {
            format!("the stream ended inside frame {expect}")
        } else if self.have == 0 {
            format!("the stream ended after {expect} frames without its FINAL frame")
        } else {
            "stream cut inside a frame".into()
        }))
    }

    fn end(&self, meta: &BlockMeta) -> usize {
        META_FRAME_LEN + meta.pt_len as usize + TAG_LEN
    }

    fn current_end(&self) -> usize {
        self.pending.as_ref().map_or(0, |(m, _)| self.end(m))
    }

    pub(super) fn meta_frame(&self) -> &[u8] {
        &self.buf[..META_FRAME_LEN]
    }

    pub(super) fn data_ct(&self) -> &[u8] {
        &self.buf[META_FRAME_LEN..self.current_end()]
    }

    pub(super) fn plaintext(&self) -> &[u8] {
        &self.pt
    }

    /// The frame [`Self::ready`] returned was delivered: on to the next.
    pub(super) fn consume(&mut self) {
        let end = self.current_end();
        self.buf.copy_within(end..self.have, 0);
        self.have -= end;
        self.expect += 1;
        self.pending = None;
        self.delivered = false;
    }
}

pub(super) fn cut(e: io::Error) -> GwError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        GwError::Truncated(e.to_string())
    } else {
        GwError::Io(e)
    }
}

pub(super) fn stream_header_missing() -> GwError {
    GwError::Truncated("the peer closed before sending a stream header".into())
}

pub(super) fn stream_header_cut() -> GwError {
    GwError::Truncated("the stream header is cut short".into())
}

/// The length a stream header's fixed part declares, refused before anything is allocated
/// when over `MAX_STREAM_HEADER_LEN` (the peer has not authenticated yet).
pub(super) fn declared_header_len(fixed: &[u8]) -> Result<usize, GwError> {
    let header_len = Header::peek_len(fixed).map_err(|e| GwError::Protocol(e.to_string()))?;
    if header_len > MAX_STREAM_HEADER_LEN {
        return Err(GwError::Protocol(format!(
            "the stream header declares {header_len} bytes; a stream header is at most {MAX_STREAM_HEADER_LEN}"
        )));
    }
    Ok(header_len as usize)
}

/// Parse a whole stream header and check what a stream's header must be.
pub(super) fn parse_stream_header(buf: &[u8], max_block_size: u32) -> Result<Header, GwError> {
    let header = Header::parse(buf).map_err(|e| GwError::Protocol(e.to_string()))?;
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
