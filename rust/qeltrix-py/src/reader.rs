//! Random-access reader and the unpack pipeline (FORMAT.md section 8).
//!
//! `Reader` parses the header on construction; the Python layer unwraps the MK from a
//! stanza, verifies the header, and hands back a `ContainerKeys`; `load_index` then reads the
//! trailer and footer. Reads decrypt only the blocks they overlap and keep the most recent
//! decrypted blocks in a cache bounded by bytes (the reader's own, or a `BlockCache` shared by
//! every reader of a server), so a player's sequential small reads decrypt each block once.
use crate::calls;
use crate::error::{Error, Result};
use crate::io::{PyBuf, RandomSource, Sink};
use crate::pipeline::{with_thread_state, worker_count, Progress, Shared};
use bytes::Bytes;
use crossbeam_channel::{bounded, Receiver, Sender};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};
use qeltrix_format::header::HEADER_FIXED_LEN;
use qeltrix_format::signature::sig_len;
use qeltrix_format::{frame_len, BlockMeta, FormatError, Header, Index, SignatureSection, Trailer, TRAILER_LEN};
use qeltrix_server::blockcache::BlockCache as SharedCache;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

/// Decrypted blocks kept per reader unless the opener asks for more.
const DEFAULT_CACHE_BLOCKS: usize = 8;
/// Frames fetched ahead by one coalesced read from object storage.
const PREFETCH_BYTES: u64 = 8 << 20;
/// Frames closer than this on object storage are fetched in one GET, the gap included.
const COALESCE_GAP: u64 = 1 << 20;
/// ... and for sequential reads, whose skipped frames are about to be read anyway.
const SEQUENTIAL_GAP: u64 = 8 << 20;
/// A sequential read's fetches ahead grow from [`PREFETCH_BYTES`] by doubling up to this (fewer,
/// larger GETs; two such runs stay within an object's window cap).
const MAX_AHEAD_BYTES: u64 = 24 << 20;
/// Sequential reads (unpack) from object storage fetch this much at a time.
const UNPACK_READAHEAD: u64 = 8 << 20;

struct Loaded {
    keys: Py<PyAny>,
    index: Index,
    /// Largest `pt_len` in the index: buffers are sized by the data actually present, not by
    /// the header's `block_size`, so a tiny container declaring 64 MiB blocks costs little.
    max_pt_len: u32,
    footer: Vec<u8>,
    footer_offset: u64,
    /// The signature section of a signed container (FORMAT.md section 15), parsed, unverified.
    signature: Option<SignatureSection>,
}

/// A decrypted-block cache bounded by bytes, shareable between readers (a server gives all
/// its readers one). Each reader reads under its own key space, so a reader of a changed file
/// (a new `Reader`) never sees another reader's plaintext.
#[pyclass(frozen, name = "BlockCache", module = "qeltrix_v6._core")]
pub struct PyBlockCache(Arc<SharedCache>);

#[pymethods]
impl PyBlockCache {
    /// A cache holding at most `max_bytes` of verified plaintext (0: none).
    #[new]
    fn new(max_bytes: usize) -> PyBlockCache {
        PyBlockCache(Arc::new(SharedCache::new(max_bytes)))
    }

    /// `{"entries", "bytes", "max_bytes", "hits", "misses", "evictions"}`.
    fn stats(&self) -> std::collections::HashMap<&'static str, u64> {
        let s = self.0.stats();
        [
            ("entries", s.entries as u64),
            ("bytes", s.bytes as u64),
            ("max_bytes", s.max_bytes as u64),
            ("hits", s.hits),
            ("misses", s.misses),
            ("evictions", s.evictions),
        ]
        .into_iter()
        .collect()
    }

    #[getter]
    fn max_bytes(&self) -> usize {
        self.0.max_bytes()
    }
}

/// One decryption of a block that other threads may wait for.
#[derive(Default)]
struct Flight {
    /// `Some(Some(plaintext))` once done, `Some(None)` if it failed.
    done: Mutex<Option<Option<Bytes>>>,
    cv: Condvar,
}

impl Flight {
    fn wait(&self) -> Option<Bytes> {
        let mut g = self.done.lock().expect("flight lock");
        loop {
            if let Some(r) = &*g {
                return r.clone();
            }
            g = self.cv.wait(g).expect("flight lock");
        }
    }
}

/// The thread decrypting a block for others: publishes the outcome, even if it unwinds.
struct Lead<'a> {
    reader: &'a Reader,
    i: usize,
    result: Option<Bytes>,
}

impl Lead<'_> {
    fn finish(mut self, r: Result<Bytes>) -> Result<Bytes> {
        self.result = r.as_ref().ok().cloned();
        r
    }
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        let flight = self.reader.inflight.lock().expect("inflight lock").remove(&self.i);
        if let Some(f) = flight {
            *f.done.lock().expect("flight lock") = Some(self.result.take());
            f.cv.notify_all();
        }
    }
}

/// A verified plaintext buffer lent out as `Bytes`; back to its reader's pool when dropped.
struct PooledOut {
    buf: Option<PyBuf>,
    len: usize,
    pool: Arc<Mutex<Vec<PyBuf>>>,
}

impl AsRef<[u8]> for PooledOut {
    fn as_ref(&self) -> &[u8] {
        // The buffer is only read from now on: `Bytes` never writes, and it goes back to the
        // pool (where a decryption may write it again) only once every `Bytes` is gone.
        &self.buf.as_ref().expect("present until dropped").as_slice()[..self.len]
    }
}

impl Drop for PooledOut {
    fn drop(&mut self) {
        if let Some(b) = self.buf.take() {
            Reader::give_buf(&self.pool, b);
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        // A shared cache outlives its readers: free what only this one could read.
        self.cache.forget_owner(self.cache_owner);
    }
}

/// An open container: parsed header, then (after `load_index`) its index.
#[pyclass(frozen, module = "qeltrix_v6._core")]
pub struct Reader {
    source: RandomSource,
    file_len: u64,
    header: Header,
    loaded: OnceLock<Loaded>,
    cache: Arc<SharedCache>,
    /// This reader's key space in `cache`.
    cache_owner: u64,
    /// Blocks being decrypted now, so that concurrent readers of one block (600 clients
    /// starting the same video) wait for one decryption instead of each doing it.
    inflight: Mutex<HashMap<usize, Arc<Flight>>>,
    /// Spare frame and plaintext buffers, so steady-state reads allocate nothing. A plaintext
    /// buffer is handed out as the block's `Bytes` (no copy) and comes back here when the
    /// last reference to it (the cache's, a response's) is dropped.
    frames: Mutex<Vec<PyBuf>>,
    outs: Arc<Mutex<Vec<PyBuf>>>,
    /// Check S3 of FORMAT.md section 8: every frame read must match its signed digest. Set by
    /// the Python layer once it has verified the signature (S2).
    digests_required: AtomicBool,
    /// `(offset, size)`: the server sees only plaintext `[offset, offset + size)`, one member
    /// of an archive (FORMAT.md section 16). Set once, by `set_window`.
    window: OnceLock<(u64, u64)>,
    /// The block after the last read's (object storage: sequential reads are fetched ahead).
    next_block: std::sync::atomic::AtomicUsize,
    /// Bytes of frames the next fetch ahead asks for (grows while reads stay sequential).
    ahead_bytes: AtomicU64,
}

impl Reader {
    fn loaded(&self) -> Result<&Loaded> {
        self.loaded
            .get()
            .ok_or_else(|| FormatError::Malformed("index not loaded".into()).into())
    }

    /// Read and decrypt block `i` into `out[..pt_len]`, with every check of section 5.
    fn open_block(&self, loaded: &Loaded, i: usize, frame: &mut PyBuf, out: &PyBuf) -> Result<()> {
        let entry = loaded.index.entries[i];
        let n = frame_len(entry.pt_len) as usize;
        self.source
            .read_exact_at(entry.frame_offset, frame, n)
            .map_err(|e| match e {
                Error::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
                    Error::Format(FormatError::Truncated(format!("block {i} is cut short")))
                }
                e => e,
            })?;
        if self.digests_required.load(Ordering::Acquire) {
            let expected = loaded.signature.as_ref().and_then(|s| s.frame_digest(i));
            let digest = Python::attach(|py| calls::frame_digest(py, &loaded.keys, frame))?;
            if expected != Some(&digest[..]) {
                return Err(Error::Signature(format!(
                    "block {i} does not match the signed container (changed after signing)"
                )));
            }
        }
        let expect_final = i as u64 + 1 == loaded.index.block_count() && !loaded.index.incomplete();
        Python::attach(|py| -> Result<()> {
            let meta_pt = calls::open_meta(py, &loaded.keys, frame)?;
            let meta = BlockMeta::decode(&meta_pt)?;
            if meta.block_index != i as u64 || meta.pt_len != entry.pt_len {
                return Err(FormatError::Corrupt(format!("block {i} is not where the index says")).into());
            }
            if meta.is_final() != expect_final {
                return Err(FormatError::Corrupt(format!("block {i} has a wrong FINAL flag")).into());
            }
            calls::open_data(py, &loaded.keys, &meta, frame, out)?;
            Ok(())
        })
    }

    fn take_buf(pool: &Mutex<Vec<PyBuf>>, cap: usize) -> Result<PyBuf> {
        let spare = pool.lock().expect("pool lock").pop();
        match spare {
            Some(b) => Ok(b),
            None => Ok(Python::attach(|py| PyBuf::new(py, cap))?),
        }
    }

    fn give_buf(pool: &Mutex<Vec<PyBuf>>, buf: PyBuf) {
        let mut pool = pool.lock().expect("pool lock");
        if pool.len() < 8 {
            pool.push(buf);
        }
    }

    /// The plaintext of block `i`, from the cache, from a decryption of it under way on
    /// another thread, or decrypted and verified now.
    pub fn block(&self, i: usize) -> Result<Bytes> {
        if let Some(b) = self.cache.get(self.cache_owner, i as u64) {
            return Ok(b);
        }
        let joined = {
            let mut m = self.inflight.lock().expect("inflight lock");
            match m.get(&i) {
                Some(f) => Some(f.clone()),
                None => {
                    m.insert(i, Arc::new(Flight::default()));
                    None
                }
            }
        };
        if let Some(flight) = joined {
            if let Some(b) = flight.wait() {
                return Ok(b);
            }
            // The other decryption failed: find out why (and fail) here too.
            return self.decrypt_block(i);
        }
        let lead = Lead {
            reader: self,
            i,
            result: None,
        };
        lead.finish(self.decrypt_block(i))
    }

    /// Read, decrypt and verify block `i`; cache its plaintext.
    fn decrypt_block(&self, i: usize) -> Result<Bytes> {
        let loaded = self.loaded()?;
        let mut frame = Self::take_buf(&self.frames, frame_len(loaded.max_pt_len) as usize)?;
        let out = Self::take_buf(&self.outs, loaded.max_pt_len as usize)?;
        let pt_len = loaded.index.entries[i].pt_len as usize;
        let r = self.open_block(loaded, i, &mut frame, &out);
        Self::give_buf(&self.frames, frame);
        if let Err(e) = r {
            Self::give_buf(&self.outs, out);
            return Err(e);
        }
        let bytes = Bytes::from_owner(PooledOut {
            buf: Some(out),
            len: pt_len,
            pool: self.outs.clone(),
        });
        // Only plaintext that passed every check of open_block gets here.
        self.cache.insert(self.cache_owner, i as u64, bytes.clone());
        Ok(bytes)
    }

    /// On object storage, fetch the frames of the blocks from `first` that are not cached, in
    /// one ranged GET per run of nearby frames (a permutation window scatters logically
    /// adjacent frames a little), at most [`PREFETCH_BYTES`] of frames at a time (`budget` for
    /// a fetch ahead). Returns the block after the last one considered. A no-op on files. With
    /// `ahead`, the fetch runs in the background (the caller decrypts meanwhile) and the next
    /// fetch waits for it.
    fn prefetch_frames(&self, first: usize, end: usize, gap: u64, ahead: Option<u64>) -> Result<usize> {
        let Some(store) = self.source.store() else {
            return Ok(end);
        };
        let entries = &self.loaded()?.index.entries;
        let mut spans: Vec<(u64, u64)> = Vec::new();
        let mut total = 0u64;
        let mut i = first;
        let budget = ahead.unwrap_or(PREFETCH_BYTES);
        while i < end && total < budget {
            let e = entries[i];
            let n = frame_len(e.pt_len);
            let held = store.covered(e.frame_offset, e.frame_offset + n);
            if !held && self.cache.get(self.cache_owner, i as u64).is_none() {
                spans.push((e.frame_offset, e.frame_offset + n));
                total += n;
            }
            i += 1;
        }
        spans.sort_unstable();
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for (a, b) in spans {
            match runs.last_mut() {
                Some(last) if a <= last.1 + gap => last.1 = last.1.max(b),
                _ => runs.push((a, b)),
            }
        }
        if ahead.is_some() {
            store.prefetch_runs_ahead(&runs);
        } else {
            store.prefetch_runs(&runs)?;
        }
        Ok(i)
    }

    /// Whether block `i`'s frame is at hand: on a file, or already fetched from the object
    /// (the block cache is not asked: [`Self::prefetch_frames`] does, counting hits once).
    fn frame_held(&self, i: usize) -> Result<bool> {
        let Some(store) = self.source.store() else {
            return Ok(true);
        };
        let e = self.loaded()?.index.entries[i];
        let (a, b) = (e.frame_offset, e.frame_offset + frame_len(e.pt_len));
        Ok(store.covered(a, b) || store.streaming(a, b))
    }

    /// On object storage, stream the frames of blocks `[first, end)` in one GET when they
    /// span more than [`PREFETCH_BYTES`] (a download, an unpack): fewer, longer GETs than
    /// runs fetched ahead, with memory bounded by the stream's back-pressure. Returns whether
    /// a stream serves them.
    fn stream_frames(&self, first: usize, end: usize) -> Result<bool> {
        let Some(store) = self.source.store() else {
            return Ok(false);
        };
        let entries = &self.loaded()?.index.entries[first..end];
        let lo = entries.iter().map(|e| e.frame_offset).min();
        let hi = entries.iter().map(|e| e.frame_offset + frame_len(e.pt_len)).max();
        let (Some(lo), Some(hi)) = (lo, hi) else {
            return Ok(false);
        };
        if hi - lo <= PREFETCH_BYTES {
            return Ok(false);
        }
        store.stream(lo, hi, crate::objstream::behind(&self.header));
        Ok(store.streaming(lo, lo + 1))
    }

    /// Hand plaintext `[pos, pos + len)` (clipped at the end) to `emit` block by block;
    /// stop early when `emit` returns false.
    pub fn read_chunks(&self, pos: u64, len: u64, emit: &mut dyn FnMut(Bytes) -> bool) -> Result<()> {
        let (pos, len) = match self.window.get() {
            Some(&(offset, size)) => {
                let pos = pos.min(size);
                (offset + pos, len.min(size - pos))
            }
            None => (pos, len),
        };
        let index = &self.loaded()?.index;
        let end = pos.saturating_add(len).min(index.pt_total_len);
        let mut fetched_to = 0;
        let covering = index.covering(pos, len);
        // A read that starts where the last one stopped (a download, a player), or a large one
        // (a server asks for the rest of a response and stops after a step): on object
        // storage, fetch ahead in large runs instead of one GET per call.
        let large = (covering.len() as u64).saturating_mul(u64::from(self.header.block_size)) > PREFETCH_BYTES;
        let sequential = self.next_block.load(Ordering::Relaxed) == covering.start;
        if large {
            // A large read (a whole download) is known to need what follows: large GETs at once.
            self.ahead_bytes.store(MAX_AHEAD_BYTES, Ordering::Relaxed);
        } else if !sequential {
            self.ahead_bytes.store(PREFETCH_BYTES, Ordering::Relaxed);
        }
        let gap = if large || sequential {
            SEQUENTIAL_GAP
        } else {
            COALESCE_GAP
        };
        let ahead = if sequential { index.entries.len() } else { covering.end };
        let mut next = covering.start;
        for i in covering {
            if i >= fetched_to && !self.frame_held(i)? {
                if (large || sequential) && self.stream_frames(i, ahead)? {
                    // All of it arrives in one streamed GET while the blocks are decrypted.
                    fetched_to = ahead;
                } else {
                    fetched_to = self.prefetch_frames(i, ahead, gap, None)?;
                    if (large || sequential) && fetched_to < ahead {
                        // The next run is fetched while this one is decrypted, in ever larger GETs.
                        let budget = self.ahead_bytes.load(Ordering::Relaxed);
                        self.prefetch_frames(fetched_to, ahead, gap, Some(budget))?;
                        self.ahead_bytes
                            .store((budget * 2).min(MAX_AHEAD_BYTES), Ordering::Relaxed);
                    }
                }
            }
            let block = self.block(i)?;
            next = i + 1;
            let start = index.pt_offset(i);
            let a = (pos.max(start) - start) as usize;
            let b = (end.min(start + block.len() as u64) - start) as usize;
            if !emit(block.slice(a..b)) {
                break;
            }
        }
        self.next_block.store(next, Ordering::Relaxed);
        Ok(())
    }

    /// Plaintext `[pos, pos + len)` (clipped) as a new `bytes`, decrypted straight into it
    /// with the GIL released: no intermediate buffer of the read's size.
    fn read_bytes<'py>(&self, py: Python<'py>, pos: u64, len: u64) -> PyResult<Bound<'py, PyBytes>> {
        // Clipped at the end of what this reader shows: the plaintext, or its window.
        let total = self.pt_len()?;
        let n = pos.saturating_add(len).min(total).saturating_sub(pos);
        let n = usize::try_from(n).map_err(|_| Error::Format(FormatError::Limit(format!("a read of {n} bytes"))))?;
        PyBytes::new_with(py, n, |buf| {
            // The new bytes object is not reachable by any other code until this returns.
            py.detach(|| {
                let mut at = 0;
                self.read_chunks(pos, len, &mut |chunk| {
                    buf[at..at + chunk.len()].copy_from_slice(&chunk);
                    at += chunk.len();
                    true
                })
            })
            .map_err(PyErr::from)
        })
    }

    /// An object's Last-Modified as seen at open (`None` for files: the server stats them).
    pub fn source_mtime(&self) -> Option<std::time::SystemTime> {
        let secs = self.source.store()?.last_modified_secs();
        Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(secs).ok()?))
    }

    /// Plaintext length (after `load_index`).
    pub fn pt_len(&self) -> Result<u64> {
        let total = self.loaded()?.index.pt_total_len;
        Ok(self.window.get().map_or(total, |&(_, size)| size))
    }

    /// The window set by `set_window`, if any.
    pub fn window(&self) -> Option<(u64, u64)> {
        self.window.get().copied()
    }

    /// The header's `container_id`.
    pub fn container_id_bytes(&self) -> [u8; 16] {
        self.header.container_id
    }

    /// Decrypt every block in order into `sink` on `workers` threads.
    fn unpack_into(&self, sink: &mut Sink, workers: usize, progress: &mut Progress) -> Result<u64> {
        let loaded = self.loaded()?;
        let block_count = loaded.index.block_count();
        if let Some(store) = self.source.store() {
            store.set_readahead(UNPACK_READAHEAD);
        }
        self.stream_frames(0, block_count as usize)?;
        let shared = Shared::default();
        let next = AtomicU64::new(0);
        let pool = (2 * workers + 2).min(block_count as usize + 1);
        let (free_tx, free_rx) = bounded::<PyBuf>(pool);
        let cap = loaded.max_pt_len as usize;
        Python::attach(|py| -> PyResult<()> {
            for _ in 0..pool {
                free_tx.send(PyBuf::new(py, cap)?).expect("pool has room");
            }
            Ok(())
        })?;
        let (done_tx, done_rx) = bounded::<(u64, PyBuf)>(pool);
        std::thread::scope(|scope| {
            for _ in 0..workers {
                let (shared, next, free_rx, done_tx) = (&shared, &next, free_rx.clone(), done_tx.clone());
                let give_back = free_tx.clone();
                scope.spawn(move || {
                    with_thread_state(|| {
                        shared.run(|| self.open_blocks(loaded, shared, next, &free_rx, &give_back, &done_tx))
                    });
                });
            }
            drop(done_tx);
            if let Err(e) = write_in_order(sink, loaded, block_count, &shared, &done_rx, &free_tx, progress) {
                shared.fail(e);
            }
        });
        match shared.take_error() {
            Some(e) => Err(e),
            None => Ok(loaded.index.pt_total_len),
        }
    }

    fn open_blocks(
        &self,
        loaded: &Loaded,
        shared: &Shared,
        next: &AtomicU64,
        free: &Receiver<PyBuf>,
        give_back: &Sender<PyBuf>,
        done: &Sender<(u64, PyBuf)>,
    ) -> Result<()> {
        let mut frame = Python::attach(|py| PyBuf::new(py, frame_len(loaded.max_pt_len) as usize))?;
        // A buffer is taken before an index, so the worker holding the next index to write
        // always has one; a worker that finds no index left gives its buffer back, or a worker
        // still waiting for a buffer would wait forever.
        loop {
            if next.load(Ordering::SeqCst) >= loaded.index.block_count() {
                return Ok(());
            }
            let Some(out) = shared.recv(free) else { return Ok(()) };
            let i = next.fetch_add(1, Ordering::SeqCst);
            if i >= loaded.index.block_count() {
                let _ = give_back.send(out);
                return Ok(());
            }
            self.open_block(loaded, i as usize, &mut frame, &out)?;
            if !shared.send(done, (i, out)) {
                return Ok(());
            }
        }
    }
}

fn write_in_order(
    sink: &mut Sink,
    loaded: &Loaded,
    block_count: u64,
    shared: &Shared,
    done: &Receiver<(u64, PyBuf)>,
    free: &Sender<PyBuf>,
    progress: &mut Progress,
) -> Result<()> {
    let mut pending: BTreeMap<u64, PyBuf> = BTreeMap::new();
    let mut next = 0u64;
    let mut pt_done = 0u64;
    while next < block_count {
        if let Some(buf) = pending.remove(&next) {
            let pt_len = loaded.index.entries[next as usize].pt_len;
            sink.write_buf(&buf, 0, pt_len as usize)?;
            pt_done += u64::from(pt_len);
            let _ = free.send(buf);
            next += 1;
            progress.update(pt_done, false)?;
            continue;
        }
        if let Some((i, buf)) = shared.recv_or_fail(done, "unpack")? {
            pending.insert(i, buf);
        }
    }
    sink.flush()?;
    progress.update(pt_done, true)?;
    Ok(())
}

#[pymethods]
impl Reader {
    /// Open `src` (a file descriptor or a seekable binary file object) and parse its header.
    /// Decrypted blocks go to `block_cache` when given, else to a cache of this reader's own
    /// holding `cache_blocks` blocks of the header's block size.
    #[new]
    #[pyo3(signature = (src, cache_blocks=DEFAULT_CACHE_BLOCKS, block_cache=None))]
    fn new(
        py: Python<'_>,
        src: &Bound<'_, PyAny>,
        cache_blocks: usize,
        block_cache: Option<PyRef<'_, PyBlockCache>>,
    ) -> PyResult<Reader> {
        let source = RandomSource::from_py(src)?;
        let (file_len, header) = py.detach(|| -> Result<(u64, Header)> {
            let file_len = source.len()?;
            if file_len < HEADER_FIXED_LEN as u64 {
                let what = if file_len == 0 {
                    "the file is empty"
                } else {
                    "the file is too short"
                };
                return Err(FormatError::Malformed(format!("not a Qeltrix V6 container: {what}")).into());
            }
            let prefix = source.read_vec_at(0, HEADER_FIXED_LEN)?;
            let header_len = Header::peek_len(&prefix)?;
            if u64::from(header_len) > file_len {
                return Err(FormatError::Truncated(format!(
                    "the header needs {header_len} bytes but the file has {file_len}"
                ))
                .into());
            }
            let bytes = source.read_vec_at(0, header_len as usize)?;
            Ok((file_len, Header::parse(&bytes)?))
        })?;
        let cache = match block_cache {
            Some(shared) => shared.0.clone(),
            None => Arc::new(SharedCache::new(
                cache_blocks.min(4096).saturating_mul(header.block_size as usize),
            )),
        };
        let cache_owner = cache.new_owner();
        Ok(Reader {
            source,
            file_len,
            header,
            loaded: OnceLock::new(),
            cache,
            cache_owner,
            inflight: Mutex::new(HashMap::new()),
            frames: Mutex::new(Vec::new()),
            outs: Arc::new(Mutex::new(Vec::new())),
            digests_required: AtomicBool::new(false),
            window: OnceLock::new(),
            next_block: std::sync::atomic::AtomicUsize::new(usize::MAX),
            ahead_bytes: AtomicU64::new(PREFETCH_BYTES),
        })
    }

    /// Read the trailer and decrypt the footer with `keys` (a `ContainerKeys`).
    fn load_index(&self, py: Python<'_>, keys: Py<PyAny>) -> PyResult<()> {
        let signed = self.header.signed();
        let (trailer, footer, section) = py.detach(|| -> Result<(Trailer, Vec<u8>, Option<Vec<u8>>)> {
            if self.file_len < u64::from(self.header.header_len) + TRAILER_LEN as u64 {
                return Err(FormatError::Truncated("the file ends right after its header".into()).into());
            }
            if let Some(store) = self.source.store() {
                // Trailer, footer (12 bytes an entry) and signature section (a digest a frame)
                // in one suffix GET, sized from the header's block size.
                let blocks = self.file_len / frame_len(self.header.block_size.max(1)) + 1;
                store.prefetch_suffix(TRAILER_LEN as u64 + (64 << 10) + 48 * blocks)?;
            }
            let tb = self
                .source
                .read_vec_at(self.file_len - TRAILER_LEN as u64, TRAILER_LEN)?;
            let trailer = Trailer::parse_with(&tb, self.file_len, self.header.header_len, signed)?;
            // footer_len (and sig_len) <= file_len was checked by Trailer::parse_with: the
            // allocations are bounded by the file.
            let footer = self
                .source
                .read_vec_at(trailer.footer_offset, trailer.footer_len as usize)?;
            let section = match signed {
                true => {
                    let n = sig_len(trailer.block_count()).expect("checked by parse_with") as usize;
                    Some(self.source.read_vec_at(trailer.sig_offset(), n)?)
                }
                false => None,
            };
            Ok((trailer, footer, section))
        })?;
        let index_pt = calls::open_index(py, &keys, &footer, trailer.footer_offset)?;
        let index = Index::decode(
            &index_pt,
            trailer.block_count(),
            self.header.block_size,
            self.header.header_len,
            trailer.footer_offset,
        )
        .map_err(Error::from)?;
        let max_pt_len = index.entries.iter().map(|e| e.pt_len).max().unwrap_or(0);
        let signature = section
            .map(|b| SignatureSection::parse(&b, trailer.block_count()))
            .transpose()
            .map_err(Error::from)?;
        let _ = self.loaded.set(Loaded {
            keys,
            index,
            max_pt_len,
            footer,
            footer_offset: trailer.footer_offset,
            signature,
        });
        Ok(())
    }

    /// `(signer_pub, frame_digests, signature)` of a signed container (after `load_index`),
    /// as stored and not yet verified; `None` when the container is not signed.
    #[allow(clippy::type_complexity)] // three byte strings
    fn signature_parts<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<Option<(Bound<'py, PyBytes>, Bound<'py, PyBytes>, Bound<'py, PyBytes>)>> {
        Ok(self.loaded()?.signature.as_ref().map(|s| {
            (
                PyBytes::new(py, &s.signer_pub),
                PyBytes::new(py, &s.frame_digests),
                PyBytes::new(py, &s.signature),
            )
        }))
    }

    /// `(footer, footer_offset)` exactly as stored (after `load_index`).
    fn footer<'py>(&self, py: Python<'py>) -> PyResult<(Bound<'py, PyBytes>, u64)> {
        let l = self.loaded()?;
        Ok((PyBytes::new(py, &l.footer), l.footer_offset))
    }

    /// Restrict what the SeekServer serves from this (loaded) reader to plaintext
    /// `[offset, offset + size)`: one member of an archive. Once only; other methods are
    /// unaffected.
    fn set_window(&self, offset: u64, size: u64) -> PyResult<()> {
        let total = self.loaded()?.index.pt_total_len;
        if offset.checked_add(size).is_none_or(|end| end > total) {
            return Err(Error::Format(FormatError::Malformed("window outside the plaintext".into())).into());
        }
        self.window
            .set((offset, size))
            .map_err(|_| Error::Format(FormatError::Malformed("the window is already set".into())).into())
    }

    /// From now on, check every frame read against its signed digest before opening it
    /// (check S3 of FORMAT.md section 8). Call after verifying the signature.
    fn require_frame_digests(&self) -> PyResult<()> {
        if self.loaded()?.signature.is_none() {
            return Err(Error::Signature("the container is not signed".into()).into());
        }
        self.digests_required.store(true, Ordering::Release);
        self.cache.forget_owner(self.cache_owner);
        Ok(())
    }

    /// Whether frames are checked against their signed digests.
    #[getter]
    fn frame_digests_required(&self) -> bool {
        self.digests_required.load(Ordering::Acquire)
    }

    /// The parsed header (the same type `parse_header` returns).
    #[getter]
    fn header(&self) -> crate::header::PyHeader {
        crate::header::PyHeader(self.header.clone())
    }

    /// Every header byte (`header_len` bytes), as stored.
    #[getter]
    fn header_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.header.encoded)
    }

    /// Plaintext bytes `[pos, pos + n)`, clipped at the end like a file read.
    fn read_at<'py>(&self, py: Python<'py>, pos: u64, n: u64) -> PyResult<Bound<'py, PyBytes>> {
        self.read_bytes(py, pos, n)
    }

    /// A hint that plaintext `[pos, pos + n)` (clipped) is about to be read in order (`cat`
    /// to the end): on object storage, its frames are streamed in one GET from the first read
    /// on, instead of fetched in runs. A no-op on files and for short ranges.
    fn read_ahead(&self, py: Python<'_>, pos: u64, n: u64) -> PyResult<()> {
        let (pos, n) = match self.window.get() {
            Some(&(offset, size)) => {
                let pos = pos.min(size);
                (offset + pos, n.min(size - pos))
            }
            None => (pos, n),
        };
        let covering = self.loaded()?.index.covering(pos, n);
        if self.source.store().is_some() && !covering.is_empty() {
            py.detach(|| self.stream_frames(covering.start, covering.end))?;
            self.next_block.store(covering.start, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Decrypt everything into `dst` (a file descriptor or binary file object).
    #[pyo3(signature = (dst, workers=None, progress=None))]
    fn unpack_to(
        &self,
        py: Python<'_>,
        dst: &Bound<'_, PyAny>,
        workers: Option<usize>,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<u64> {
        let mut sink = Sink::from_py(dst)?;
        let total = self.loaded().map(|l| l.index.pt_total_len).ok();
        let mut progress = Progress::new(progress, total);
        let workers = worker_count(workers);
        Ok(py.detach(|| self.unpack_into(&mut sink, workers, &mut progress))?)
    }

    /// Decrypt block `i` and return its plaintext (used by `verify`).
    fn read_block<'py>(&self, py: Python<'py>, i: usize) -> PyResult<Bound<'py, PyBytes>> {
        let loaded = self.loaded()?;
        if i >= loaded.index.entries.len() {
            return Err(pyo3::exceptions::PyIndexError::new_err("block index out of range"));
        }
        let start = loaded.index.pt_offset(i);
        let len = u64::from(loaded.index.entries[i].pt_len);
        self.read_bytes(py, start, len)
    }

    #[getter]
    fn file_len(&self) -> u64 {
        self.file_len
    }
    #[getter]
    fn format_version(&self) -> u16 {
        self.header.format_version
    }
    #[getter]
    fn header_len(&self) -> u32 {
        self.header.header_len
    }
    #[getter]
    fn header_flags(&self) -> u16 {
        self.header.header_flags
    }
    #[getter]
    fn cipher_id(&self) -> u8 {
        self.header.cipher_id
    }
    #[getter]
    fn block_size(&self) -> u32 {
        self.header.block_size
    }
    #[getter]
    fn perm_window(&self) -> u32 {
        self.header.perm_window
    }
    #[getter]
    fn container_id<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.header.container_id)
    }
    /// `[(kind, body), ...]` in header order.
    #[getter]
    fn stanzas<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        PyList::new(
            py,
            self.header.stanzas.iter().map(|s| (s.kind, PyBytes::new(py, &s.body))),
        )
    }
    /// Header bytes covered by `header_sha256`.
    #[getter]
    fn header_checksummed<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.header.checksummed())
    }
    #[getter]
    fn header_sha256<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.header.header_sha256())
    }
    /// Header bytes covered by `header_mac`.
    #[getter]
    fn header_maced<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.header.maced())
    }
    #[getter]
    fn header_mac<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.header.header_mac())
    }
    #[getter]
    fn pt_total_len(&self) -> PyResult<u64> {
        Ok(self.loaded()?.index.pt_total_len)
    }
    #[getter]
    fn block_count(&self) -> PyResult<u64> {
        Ok(self.loaded()?.index.block_count())
    }
    #[getter]
    fn incomplete(&self) -> PyResult<bool> {
        Ok(self.loaded()?.index.incomplete())
    }
    /// `(pt_offset, pt_len, frame_offset)` of block `i`.
    fn block_info(&self, i: usize) -> PyResult<(u64, u32, u64)> {
        let ix = &self.loaded()?.index;
        let e = ix
            .entries
            .get(i)
            .ok_or_else(|| pyo3::exceptions::PyIndexError::new_err("block index out of range"))?;
        Ok((ix.pt_offset(i), e.pt_len, e.frame_offset))
    }
}
