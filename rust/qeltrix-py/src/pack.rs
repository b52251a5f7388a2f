//! The pack pipeline (FORMAT.md sections 5-7): worker threads take turns cutting the next
//! block off the input and seal it through the crypto layer, and the calling thread places
//! frames (permuted per window), writes them and finally writes the footer and trailer.
//!
//! Memory is bounded by the buffer pools: `2 * workers + 2` plaintext blocks and
//! `perm_window + 2 * workers + 2` frames, whatever the input size; a pool makes its buffers
//! on first need, so a small input makes only a few.
use crate::calls;
use crate::error::{Error, Result};
use crate::io::{PyBuf, Sink, Source};
use crate::pipeline::{with_thread_state, worker_count, BufPool, Progress, Shared};
use crossbeam_channel::{bounded, Receiver, Sender};
use pyo3::prelude::*;
use qeltrix_format::signature::{SIGNATURE_LEN, SIGNER_PUB_LEN};
use qeltrix_format::SignatureAccumulator;
use qeltrix_format::{container_tail, frame_len, FormatError, Header, Index, IndexEntry, Permutation, TailCrypto};
use qeltrix_format::{MAX_BLOCK_COUNT, MAX_BLOCK_SIZE, META_FLAG_FINAL, MIN_BLOCK_SIZE};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

struct Job {
    block_index: u64,
    buf: PyBuf,
    pt_len: usize,
    last: bool,
}

/// The input, cut into full blocks by whichever worker needs its next job (under a lock: the
/// reads stay sequential, so a file that grows while it is packed is packed with what was
/// appended, and a pipe is read as it comes). Workers reading for themselves instead of a
/// reader thread feeding them saves two thread hand-offs per block (issue 16).
///
/// The block that meets end of input is marked last: a full block is held back until the next
/// read says whether anything follows it.
struct Cutter<'a> {
    source: &'a mut Source,
    want: usize,
    block_index: u64,
    /// A full block whose successor is not read yet.
    pending: Option<Job>,
    /// Blocks ready to seal (at most two: the held block and the last one, at end of input).
    ready: VecDeque<Job>,
    /// End of input reached: no more reads.
    done: bool,
    /// A read failed: no more reads, and no end of input to report.
    failed: bool,
    /// The block count was handed to the writer.
    eof_sent: bool,
}

impl Cutter<'_> {
    /// The next block to seal, reading as needed; `None` once every block was handed out.
    fn next_job(&mut self, shared: &Shared, free_in: &BufPool) -> Result<Option<Job>> {
        loop {
            if let Some(job) = self.ready.pop_front() {
                return Ok(Some(job));
            }
            if self.done || self.failed {
                return Ok(None);
            }
            let Some(mut buf) = free_in.take(shared)? else {
                return Ok(None);
            };
            let n = self.source.fill(&mut buf, self.want)?;
            // `fill` only returns short at end of input, so a short block is the last one.
            let at_end = n < self.want;
            if let Some(mut job) = self.pending.take() {
                job.last = n == 0;
                self.ready.push_back(job);
            }
            if n > 0 {
                if self.block_index >= MAX_BLOCK_COUNT {
                    return Err(FormatError::Limit(format!("input needs more than {MAX_BLOCK_COUNT} blocks")).into());
                }
                let job = Job {
                    block_index: self.block_index,
                    buf,
                    pt_len: n,
                    last: at_end,
                };
                self.block_index += 1;
                if at_end {
                    self.ready.push_back(job);
                } else {
                    self.pending = Some(job);
                }
            } else {
                free_in.give(buf);
            }
            self.done = at_end;
        }
    }

    /// The block count, once, when end of input has been reached.
    fn take_eof(&mut self) -> Option<u64> {
        if !self.done || self.failed || self.eof_sent {
            return None;
        }
        self.eof_sent = true;
        Some(self.block_index)
    }
}

enum Msg {
    Frame {
        block_index: u64,
        buf: PyBuf,
        pt_len: u32,
        /// `frame_digest` when signing (FORMAT.md section 15), computed by the worker.
        digest: Option<[u8; 32]>,
    },
    Eof {
        block_count: u64,
    },
}

/// Summary of a finished pack.
struct Packed {
    pt_total_len: u64,
    block_count: u64,
    container_len: u64,
}

/// Pack `src` into `dst` as a V6 container whose sealed header is `header`.
///
/// `src` and `dst` are file descriptors (`int`) or binary file objects. `keys` is a
/// `qeltrix_v6._crypto.ContainerKeys`. `perm_window == 0` stores frames in logical order.
/// `signer` (a `qeltrix_v6._crypto.Ed25519Signer`) signs the container (section 15); the
/// header's `SIGNED` flag must say so.
/// Returns `(pt_total_len, block_count, container_len)`.
#[pyfunction]
#[pyo3(signature = (src, dst, keys, header, block_size, perm_window, k_perm, workers=None, progress=None, total_hint=None, signer=None))]
#[allow(clippy::too_many_arguments)] // a pyfunction's keyword arguments
pub fn pack_stream(
    py: Python<'_>,
    src: &Bound<'_, PyAny>,
    dst: &Bound<'_, PyAny>,
    keys: Py<PyAny>,
    header: Vec<u8>,
    block_size: u32,
    perm_window: u32,
    k_perm: [u8; 16],
    workers: Option<usize>,
    progress: Option<Py<PyAny>>,
    total_hint: Option<u64>,
    signer: Option<Py<PyAny>>,
) -> PyResult<(u64, u64, u64)> {
    if Header::parse(&header).map_err(Error::from)?.signed() != signer.is_some() {
        return Err(Error::Format(FormatError::Malformed(
            "the header's SIGNED flag disagrees with the signer given".into(),
        ))
        .into());
    }
    if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) {
        return Err(Error::Format(FormatError::Limit(format!(
            "block_size {block_size} outside {MIN_BLOCK_SIZE}..={MAX_BLOCK_SIZE}"
        )))
        .into());
    }
    let mut source = Source::from_py(src)?;
    let mut sink = Sink::from_py(dst)?;
    let workers = worker_count(workers);
    let window = u64::from(perm_window.max(1));
    let frame_cap = frame_len(block_size) as usize;
    let in_bufs = BufPool::new(2 * workers + 2, block_size as usize);
    let out_bufs = BufPool::new(window as usize + 2 * workers + 2, frame_cap);
    let plan = Plan {
        keys,
        block_size,
        window,
        permuted: perm_window > 0,
        k_perm,
        workers,
        signer,
    };
    let mut progress = Progress::new(progress, total_hint);
    let packed = py.detach(|| plan.run(&mut source, &mut sink, &header, in_bufs, out_bufs, &mut progress))?;
    Ok((packed.pt_total_len, packed.block_count, packed.container_len))
}

struct Plan {
    keys: Py<PyAny>,
    block_size: u32,
    window: u64,
    permuted: bool,
    k_perm: [u8; 16],
    workers: usize,
    signer: Option<Py<PyAny>>,
}

impl Plan {
    fn run(
        &self,
        source: &mut Source,
        sink: &mut Sink,
        header: &[u8],
        in_bufs: BufPool,
        out_bufs: BufPool,
        progress: &mut Progress,
    ) -> Result<Packed> {
        sink.write_bytes(header)?;
        let shared = Shared::default();
        let (in_bufs, out_bufs) = (&in_bufs, &out_bufs);
        let (msg_tx, msg_rx) = bounded::<Msg>(out_bufs.cap() + 1);
        let cutter = Mutex::new(Cutter {
            source,
            want: self.block_size as usize,
            block_index: 0,
            pending: None,
            ready: VecDeque::new(),
            done: false,
            failed: false,
            eof_sent: false,
        });

        let result = std::thread::scope(|scope| {
            for _ in 0..self.workers {
                let (shared, cutter, msg_tx) = (&shared, &cutter, msg_tx.clone());
                scope.spawn(move || {
                    with_thread_state(|| shared.run(|| self.seal_blocks(shared, cutter, in_bufs, out_bufs, &msg_tx)))
                });
            }
            drop(msg_tx);
            let r = self.write_frames(sink, header.len() as u64, &shared, &msg_rx, out_bufs, progress);
            if let Err(e) = r {
                shared.fail(e);
                return None;
            }
            r.ok()
        });
        if let Some(e) = shared.take_error() {
            return Err(e);
        }
        let (entries, footer_offset, digests) = result.expect("no error means the writer finished");
        let index = Index::new(entries, 0)?;
        // Footer, signature section (when signing) and trailer: qeltrix_format::container_tail,
        // shared with the gateway sink and recover.
        let tail = Python::attach(|py| {
            let mut crypto = PyTail {
                py,
                keys: &self.keys,
                signer: self.signer.as_ref(),
            };
            container_tail(
                &mut crypto,
                header,
                &index,
                footer_offset,
                self.signer.is_some().then_some(digests),
            )
        })?;
        sink.write_bytes(&tail)?;
        sink.flush()?;
        progress.update(index.pt_total_len, true)?;
        Ok(Packed {
            pt_total_len: index.pt_total_len,
            block_count: index.block_count(),
            container_len: footer_offset + tail.len() as u64,
        })
    }

    fn seal_blocks(
        &self,
        shared: &Shared,
        cutter: &Mutex<Cutter<'_>>,
        free_in: &BufPool,
        free_out: &BufPool,
        msgs: &Sender<Msg>,
    ) -> Result<()> {
        // A worker takes its frame buffer *before* its job. The writer holds frames until their
        // window is complete; if a worker could hold a job while waiting for a buffer, workers
        // running ahead could fill the pool with later frames while the writer waits for that
        // job's frame: a deadlock. Buffer first, every taken job has a buffer to finish into
        // (the pool holds a window plus one buffer per worker and some slack).
        loop {
            let Some(out) = free_out.take(shared)? else {
                return Ok(());
            };
            let (job, eof) = {
                let mut cutter = cutter.lock().expect("cutter lock");
                if shared.cancelled() {
                    return Ok(());
                }
                let job = cutter.next_job(shared, free_in).inspect_err(|_| cutter.failed = true)?;
                (job, cutter.take_eof())
            };
            if let Some(block_count) = eof {
                if !shared.send(msgs, Msg::Eof { block_count }) {
                    return Ok(());
                }
            }
            let Some(job) = job else {
                free_out.give(out);
                return Ok(());
            };
            let meta_flags = if job.last { META_FLAG_FINAL } else { 0 };
            let pt_len = job.pt_len as u32;
            let digest = Python::attach(|py| -> PyResult<Option<[u8; 32]>> {
                calls::seal_stream_frame(py, &self.keys, job.block_index, meta_flags, &job.buf, job.pt_len, &out)?;
                match self.signer {
                    Some(_) => Ok(Some(calls::frame_digest(py, &self.keys, &out)?)),
                    None => Ok(None),
                }
            })?;
            free_in.give(job.buf);
            if !shared.send(
                msgs,
                Msg::Frame {
                    block_index: job.block_index,
                    buf: out,
                    pt_len,
                    digest,
                },
            ) {
                return Ok(());
            }
        }
    }

    /// Place frames: gather one window, then write it in permuted order.
    fn write_frames(
        &self,
        sink: &mut Sink,
        mut offset: u64,
        shared: &Shared,
        msgs: &Receiver<Msg>,
        free_out: &BufPool,
        progress: &mut Progress,
    ) -> Result<(Vec<IndexEntry>, u64, SignatureAccumulator)> {
        let mut digests = SignatureAccumulator::new();
        let mut pending: BTreeMap<u64, (PyBuf, u32)> = BTreeMap::new();
        let mut entries: Vec<IndexEntry> = Vec::new();
        let mut block_count: Option<u64> = None;
        let mut window_no = 0u64;
        let mut pt_done = 0u64;
        loop {
            let window_start = window_no * self.window;
            if let Some(n) = block_count {
                if window_start >= n {
                    return Ok((entries, offset, digests));
                }
            }
            let k = block_count.map_or(self.window, |n| self.window.min(n - window_start));
            if pending.range(window_start..window_start + k).count() as u64 == k {
                let perm = self.permuted.then(|| Permutation::new(self.k_perm, window_no, k));
                entries.resize(
                    (window_start + k) as usize,
                    IndexEntry {
                        frame_offset: 0,
                        pt_len: 0,
                    },
                );
                for slot in 0..k {
                    let j = perm.as_ref().map_or(slot, |p| p.inverse(slot));
                    let (buf, pt_len) = pending.remove(&(window_start + j)).expect("window complete");
                    let len = frame_len(pt_len);
                    sink.write_buf(&buf, 0, len as usize)?;
                    entries[(window_start + j) as usize] = IndexEntry {
                        frame_offset: offset,
                        pt_len,
                    };
                    offset = offset.checked_add(len).expect("offsets fit in u64");
                    pt_done += u64::from(pt_len);
                    free_out.give(buf);
                }
                window_no += 1;
                progress.update(pt_done, false)?;
                continue;
            }
            match shared.recv_or_fail(msgs, "pack")? {
                Some(Msg::Frame {
                    block_index,
                    buf,
                    pt_len,
                    digest,
                }) => {
                    if let Some(d) = digest {
                        digests.set(block_index, &d)?;
                    }
                    pending.insert(block_index, (buf, pt_len));
                }
                Some(Msg::Eof { block_count: n }) => block_count = Some(n),
                None => {}
            }
        }
    }
}

/// The crypto of a container tail, through the Python layer (`calls.rs`).
struct PyTail<'a, 'py> {
    py: Python<'py>,
    keys: &'a Py<PyAny>,
    signer: Option<&'a Py<PyAny>>,
}

impl PyTail<'_, '_> {
    fn signer(&self) -> Result<&Py<PyAny>> {
        self.signer
            .ok_or_else(|| Error::Format(FormatError::Malformed("no signing key".into())))
    }
}

impl TailCrypto for PyTail<'_, '_> {
    type Error = Error;
    fn seal_index(&mut self, index_pt: &[u8], footer_offset: u64) -> Result<Vec<u8>> {
        Ok(calls::seal_index(self.py, self.keys, index_pt, footer_offset)?)
    }
    fn sha256(&mut self, data: &[u8]) -> Result<[u8; 32]> {
        Ok(calls::sha256(self.py, self.keys, data)?)
    }
    fn signer_public(&mut self) -> Result<[u8; SIGNER_PUB_LEN]> {
        Ok(calls::signer_public(self.py, self.signer()?)?)
    }
    fn sign(&mut self, message: &[u8]) -> Result<[u8; SIGNATURE_LEN]> {
        Ok(calls::sign(self.py, self.signer()?, message)?)
    }
}
