//! Storing streams as containers (sink mode) and rebuilding a stored stream whose writer
//! died (`qeltrix recover`), both finished by `qeltrix_format::container_tail`.
use super::*;

/// A signing sink's key, as a container tail needs it.
pub(super) trait TailSigner {
    fn public(&self) -> Result<[u8; SIGNER_PUB_LEN], GwError>;
    fn sign_message(&self, message: &[u8]) -> Result<[u8; SIGNATURE_LEN], GwError>;
}

impl<K: Keyring> TailSigner for K {
    fn public(&self) -> Result<[u8; SIGNER_PUB_LEN], GwError> {
        self.sink_signer()?
            .ok_or_else(|| GwError::Protocol("this sink has no signing key".into()))
    }
    fn sign_message(&self, message: &[u8]) -> Result<[u8; SIGNATURE_LEN], GwError> {
        Keyring::sign(self, message)
    }
}

/// The crypto a container tail needs ([`qeltrix_format::container_tail`]): a stream's keys
/// and, for a signing sink, the gateway's signing key.
pub(super) struct TailKeys<'a, S: StreamKeys> {
    pub(super) keys: &'a mut S,
    pub(super) signer: Option<&'a dyn TailSigner>,
}

impl<S: StreamKeys> TailCrypto for TailKeys<'_, S> {
    type Error = GwError;
    fn seal_index(&mut self, index_pt: &[u8], footer_offset: u64) -> Result<Vec<u8>, GwError> {
        self.keys.seal_index(index_pt, footer_offset)
    }
    fn sha256(&mut self, data: &[u8]) -> Result<Digest, GwError> {
        self.keys.sha256(data)
    }
    fn signer_public(&mut self) -> Result<[u8; SIGNER_PUB_LEN], GwError> {
        self.signer
            .ok_or_else(|| GwError::Protocol("this gateway has no signing key".into()))?
            .public()
    }
    fn sign(&mut self, message: &[u8]) -> Result<[u8; SIGNATURE_LEN], GwError> {
        self.signer
            .ok_or_else(|| GwError::Protocol("this gateway has no signing key".into()))?
            .sign_message(message)
    }
}

/// What a sink has recorded of the frames it stored: their index entries and, when it signs,
/// their `frame_digest`s (32 bytes per frame, the only memory that grows with the stream).
pub(super) struct Stored {
    pub(super) offset: u64,
    pub(super) entries: Vec<IndexEntry>,
    pub(super) digests: Option<SignatureAccumulator>,
}

impl Stored {
    /// Record the frame of `frame_len` bytes just written at `self.offset`; `meta_frame` is its
    /// start (at least its first `META_FRAME_LEN` bytes).
    pub(super) fn add<S: StreamKeys>(
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
            digests.push(&digest)?;
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

/// Where a sink stores its streams instead of a local directory (object storage: the pyo3
/// glue implements it over a multipart upload). Each stream is one object named as in a
/// directory (`stream-MS-ID.qltx`), invisible until [`SinkObject::commit`].
pub trait SinkStore: Send + Sync + fmt::Debug {
    /// Where streams go (`s3://bucket/prefix/`), for the log.
    fn describe(&self) -> String;
    /// Start storing the stream `name`.
    fn create(&self, name: &str) -> io::Result<Box<dyn SinkObject>>;
}

/// One stream being stored by a [`SinkStore`]: written in order, published whole by `commit`;
/// dropped without `commit`, it leaves nothing under its name.
pub trait SinkObject: Write + Send {
    /// The object's full name (`s3://bucket/prefix/stream-MS-ID.qltx`).
    fn name(&self) -> String;
    /// Drop every byte from `len` on (bytes already sent out cannot be dropped: an error).
    fn truncate(&mut self, len: u64) -> io::Result<()>;
    /// Publish the object under its name; returns that name, for the log.
    fn commit(self: Box<Self>) -> io::Result<String>;
}

/// Where a stored stream's bytes go.
pub(super) enum SinkOut {
    /// `.NAME.part` in the sink directory, renamed to `dest` when finished.
    File {
        file: File,
        tmp: PathBuf,
        dest: PathBuf,
    },
    Store(Box<dyn SinkObject>),
}

impl Write for SinkOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            SinkOut::File { file, .. } => file.write(buf),
            SinkOut::Store(o) => o.write(buf),
        }
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            SinkOut::File { file, .. } => file.write_all(buf),
            SinkOut::Store(o) => o.write_all(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            SinkOut::File { file, .. } => file.flush(),
            SinkOut::Store(o) => o.flush(),
        }
    }
}

/// A stream being stored: `.NAME.part` until it ends, then `NAME` with an index (and, for a
/// signing sink, a signature section: FORMAT.md section 15). In a [`SinkStore`], an object
/// `NAME` that appears only when finished.
pub(super) struct SinkFile {
    pub(super) file: SinkOut,
    pub(super) header: Vec<u8>,
    pub(super) stored: Stored,
}

/// The name of connection `id`'s stream.
fn stream_name(id: u64) -> String {
    let ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("stream-{ms}-{id}.qltx")
}

impl SinkFile {
    pub(super) fn create(dir: &Path, id: u64, header: &[u8], signed: bool) -> io::Result<SinkFile> {
        let name = stream_name(id);
        let tmp = dir.join(format!(".{name}.part"));
        let file = File::options().write(true).create_new(true).open(&tmp)?;
        Self::start(
            SinkOut::File {
                file,
                tmp,
                dest: dir.join(name),
            },
            header,
            signed,
        )
    }

    /// Start storing connection `id`'s stream in `store`.
    pub(super) fn create_in(store: &dyn SinkStore, id: u64, header: &[u8], signed: bool) -> io::Result<SinkFile> {
        Self::start(SinkOut::Store(store.create(&stream_name(id))?), header, signed)
    }

    fn start(mut file: SinkOut, header: &[u8], signed: bool) -> io::Result<SinkFile> {
        file.write_all(header)?;
        Ok(SinkFile {
            file,
            header: header.to_vec(),
            stored: Stored {
                offset: header.len() as u64,
                entries: Vec::new(),
                digests: signed.then(SignatureAccumulator::new),
            },
        })
    }

    /// Where the stream goes (an object's URL), for the log.
    pub(super) fn name(&self) -> String {
        match &self.file {
            SinkOut::File { dest, .. } => dest.display().to_string(),
            SinkOut::Store(o) => o.name(),
        }
    }

    /// Write a frame and record it (`stored.add`), in one call (tests).
    #[cfg(test)]
    pub(super) fn frame<S: StreamKeys>(
        &mut self,
        keys: &mut S,
        meta_frame: &[u8],
        ct: &[u8],
        pt_len: u32,
    ) -> Result<(), GwError> {
        self.file.write_all(meta_frame)?;
        self.file.write_all(ct)?;
        self.stored
            .add(keys, meta_frame, (meta_frame.len() + ct.len()) as u64, pt_len)
    }

    /// Append the index (flagged `INCOMPLETE` when the stream was cut), the signature section
    /// when the sink signs (a cut stream's too: it vouches for what was received), and the
    /// trailer; sync, and move the file to its final name (or publish the object). Returns
    /// the name stored under.
    pub(super) fn finish<K: Keyring>(
        mut self,
        keyring: &K,
        keys: &mut K::Keys,
        incomplete: bool,
    ) -> Result<String, GwError> {
        let footer_offset = self.stored.offset;
        // Bytes written after the last recorded frame (a write or digest that failed half way)
        // are dropped, so that the footer starts where the index says.
        match &mut self.file {
            SinkOut::File { file, .. } => {
                file.set_len(footer_offset)?;
                file.seek(SeekFrom::Start(footer_offset))?;
            }
            SinkOut::Store(o) => o.truncate(footer_offset)?,
        }
        let flags = if incomplete { INDEX_FLAG_INCOMPLETE } else { 0 };
        let index = Index::new(std::mem::take(&mut self.stored.entries), flags)?;
        let mut crypto = TailKeys {
            keys,
            signer: Some(keyring),
        };
        let tail = container_tail(
            &mut crypto,
            &self.header,
            &index,
            footer_offset,
            self.stored.digests.take(),
        )?;
        self.file.write_all(&tail)?;
        match self.file {
            SinkOut::File { file, tmp, dest } => {
                file.sync_all()?;
                std::fs::rename(&tmp, &dest)?;
                Ok(dest.display().to_string())
            }
            SinkOut::Store(o) => Ok(o.commit()?),
        }
    }
}

/// Run `f` (file or object storage I/O, which blocks) on the worker's bounded blocking pool,
/// so the worker's other connections go on meanwhile.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, GwError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| GwError::Io(io::Error::other(format!("a sink write did not run: {e}"))))
}

/// What a write on the blocking pool gives back: the stream, the frame's buffer, the result.
type Written = (SinkFile, Vec<u8>, io::Result<()>);

/// A stream being stored by a connection on an asynchronous worker: its writes run on the
/// worker's blocking pool ([`blocking`]), in order, one at a time, each while the next frame
/// is read and opened; a frame is recorded (its index entry, and its `frame_digest` on the
/// worker) once its write has completed.
pub(super) struct SinkWriter {
    /// Away while a write runs; `None` after a write that did not come back.
    file: Option<SinkFile>,
    /// The write in flight, and its frame's `pt_len`.
    pending: Option<(tokio::task::JoinHandle<Written>, u32)>,
}

impl SinkWriter {
    fn new(file: SinkFile) -> SinkWriter {
        SinkWriter {
            file: Some(file),
            pending: None,
        }
    }

    /// Store `frame` (a whole frame of `pt_len` plaintext bytes) after the ones before it: the
    /// previous frame's write is waited for and recorded, this one's starts. Returns a buffer
    /// done with (the previous frame's).
    pub(super) async fn frame<S: StreamKeys>(
        &mut self,
        keys: &mut S,
        frame: Vec<u8>,
        pt_len: u32,
    ) -> Result<Vec<u8>, GwError> {
        let done = self.settle(keys).await?;
        let mut file = self.file.take().ok_or_else(writer_lost)?;
        let task = tokio::task::spawn_blocking(move || {
            let r = file.file.write_all(&frame);
            (file, frame, r)
        });
        self.pending = Some((task, pt_len));
        Ok(done)
    }

    /// Wait for the write in flight, if any, and record its frame once written whole (`finish`
    /// drops whatever follows the last record). Returns its buffer.
    async fn settle<S: StreamKeys>(&mut self, keys: &mut S) -> Result<Vec<u8>, GwError> {
        let Some((task, pt_len)) = self.pending.take() else {
            return Ok(Vec::new());
        };
        let (file, frame, r) = task
            .await
            .map_err(|e| GwError::Io(io::Error::other(format!("a sink write did not run: {e}"))))?;
        let file = self.file.insert(file);
        r?;
        file.stored.add(keys, &frame, frame.len() as u64, pt_len)?;
        Ok(frame)
    }
}

fn writer_lost() -> GwError {
    GwError::Io(io::Error::other("a sink write did not come back"))
}

/// A sink connection's data phase on its worker: store the stream set up in `start` (what
/// the client sends, opened and authenticated frame by frame; or, for a raw sink, sealed
/// here), finished with its index even when cut (`INCOMPLETE`); a clean end is acknowledged
/// with an empty reply stream.
pub(super) async fn store<K: Keyring>(
    gw: &Arc<Gateway<K>>,
    b: &aio::Batcher<K>,
    p: &Pumps,
    client: &tokio::net::TcpStream,
    start: conn::SinkStart<K>,
) -> Result<(), GwError> {
    let bs = gw.config.block_size;
    let conn::SinkStart {
        session,
        header,
        keys,
        block_size,
    } = start;
    let session = session.as_ref();
    let header_bytes = gw.keyring.storage_header(session, &header, &keys)?;
    let signs = gw.keyring.sink_signer()?.is_some();
    let stored_header = Header::parse(&header_bytes).map_err(|e| GwError::Protocol(e.to_string()))?;
    if stored_header.signed() != signs || stored_header.container_id != header.container_id {
        return Err(GwError::Protocol(
            "the header to store disagrees with the stream (container_id) or with the sink's signing key (SIGNED)"
                .into(),
        ));
    }
    let (g, id) = (gw.clone(), p.stats.id);
    let file = blocking(move || match &g.config.sink_store {
        Some(store) => SinkFile::create_in(store.as_ref(), id, &header_bytes, signs),
        None => {
            let dir = g.config.sink_dir.as_deref().expect("checked at start");
            SinkFile::create(dir, id, &header_bytes, signs)
        }
    })
    .await??;
    if gw.config.sink_store.is_some() {
        gw.keyring
            .log(LogLevel::Info, &format!("connection {id}: storing {}", file.name()));
    }
    let mut w = SinkWriter::new(file);
    let mut keys = Some(keys);
    let r = if gw.config.sink_raw {
        aio::seal(p, gw, b, client, Side::Client, aio::Dst::Sink(&mut w), &mut keys, bs).await
    } else {
        aio::open(
            p,
            gw,
            b,
            client,
            Side::Client,
            aio::Dst::Sink(&mut w),
            &mut keys,
            block_size,
        )
        .await
    };
    let mut keys = keys.ok_or_else(aio::keys_lost)?;
    // The last write completes (and its frame, authenticated, is kept) even after an error.
    let settled = w.settle(&mut keys).await;
    let r = r.and(settled.map(drop));
    let file = w.file.ok_or_else(writer_lost)?;
    let (g, incomplete) = (gw.clone(), r.is_err());
    let path = blocking(move || file.finish(&g.keyring, &mut keys, incomplete)).await??;
    let state = if r.is_ok() {
        "complete"
    } else {
        "INCOMPLETE (cut before its FINAL frame)"
    };
    gw.keyring
        .log(LogLevel::Info, &format!("connection {id}: stored {path} ({state})"));
    if r.is_ok() && !gw.config.sink_raw {
        // Acknowledge durable storage with an empty reply stream bound to the request, so a
        // router in front of the sink ends cleanly and its client sees a half-close.
        let reply_id = gw.keyring.reply_id(&header.container_id)?;
        let (reply, mut reply_keys) = gw.keyring.new_stream(session, Some(reply_id), bs)?;
        let mut frame = Vec::new();
        reply_keys.seal(0, META_FLAG_FINAL, &[], &mut frame)?;
        aio::write_all(p, client, Side::Client, &reply).await?;
        aio::write_all(p, client, Side::Client, &frame).await?;
        aio::shutdown_write(client);
    }
    r
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
    /// Bytes of the stored stream kept: its header and the frames that authenticated.
    pub kept_len: u64,
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
        match read_full(src, &mut meta_frame) {
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
        if !matches!(read_full(src, &mut ct), Ok(true)) {
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
    let index = Index::new(entries, flags)?;
    let mut crypto = TailKeys { keys, signer: None };
    dst.write_all(&container_tail(&mut crypto, &header.encoded, &index, offset, None)?)?;
    Ok(Recovered {
        blocks,
        pt_len,
        complete,
        stopped: if complete { None } else { stopped },
        kept_len: offset,
    })
}
