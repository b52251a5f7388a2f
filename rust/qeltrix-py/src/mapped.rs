//! A regular input file read through `mmap` (the pack pipeline), safe when the file shrinks.
//!
//! Reading a block with `read` copies it from the page cache into a buffer: about 0.2
//! CPU-seconds per GiB here, the largest cost of a pack besides SHA-256 and AES-GCM (issue 16).
//! Mapped, the crypto reads the page cache directly. The input is mapped about 512 KiB of whole
//! blocks at a time ([`MappedInput::next_chunk`]) and each piece is unmapped once its blocks
//! are sealed, so memory stays bounded. (Unpack still reads its frames: mapping and unmapping
//! each 256 KiB frame on its own, the unmaps' TLB shootdowns cost what the copy saved.)
//!
//! The danger of a mapping: if another process truncates the file, touching a page past the new
//! end raises `SIGBUS`, which kills the process. A `SIGBUS` handler (installed once) looks the
//! faulting address up in the registered mappings; for one of ours it maps a page of zeros over
//! the faulting page, marks that mapping as hit and returns, so the access completes (reading
//! zeros) and the pipeline reports "the input shrank" ([`Chunk::check`]) instead of dying. A
//! fault anywhere else gets the previous disposition back, and repeats into it.
use crate::error::{Error, Result};
use pyo3::prelude::*;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

/// Mappings registered at once (a pack has at most a few chunks alive; several packs may run).
const SLOTS: usize = 256;

struct Slot {
    start: AtomicUsize,
    end: AtomicUsize,
    hit: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)] // the initialiser of each slot, not shared state
const FREE_SLOT: Slot = Slot {
    start: AtomicUsize::new(0),
    end: AtomicUsize::new(0),
    hit: AtomicBool::new(false),
};
static SLOT_TABLE: [Slot; SLOTS] = [FREE_SLOT; SLOTS];
static PAGE: AtomicUsize = AtomicUsize::new(4096);

/// The `SIGBUS` disposition before ours.
struct Previous(libc::sigaction);
// SAFETY: a plain C struct, written once before it is shared and only read afterwards.
unsafe impl Sync for Previous {}
unsafe impl Send for Previous {}
static PREVIOUS: OnceLock<Option<Previous>> = OnceLock::new();

extern "C" fn on_sigbus(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for a SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as usize;
    let page = PAGE.load(Ordering::Relaxed);
    for slot in &SLOT_TABLE {
        let start = slot.start.load(Ordering::Acquire);
        if start != 0 && addr >= start && addr < slot.end.load(Ordering::Acquire) {
            // SAFETY: the page lies inside a live mapping this module made (registered in the
            // slot until just before it is unmapped); replacing it with an anonymous page of
            // zeros (MAP_FIXED) changes only that page. mmap is a plain system call.
            let r = unsafe {
                libc::mmap(
                    (addr & !(page - 1)) as *mut libc::c_void,
                    page,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    -1,
                    0,
                )
            };
            if r != libc::MAP_FAILED {
                slot.hit.store(true, Ordering::Release);
                return;
            }
        }
    }
    // Not one of ours: restore what was there before; the faulting access repeats into it.
    if let Some(Some(prev)) = PREVIOUS.get() {
        // SAFETY: restoring a disposition the kernel gave us.
        unsafe { libc::sigaction(libc::SIGBUS, &prev.0, std::ptr::null_mut()) };
    }
}

/// Install the handler once; false if it could not be (then nothing is mapped: read instead).
fn install() -> bool {
    PREVIOUS
        .get_or_init(|| {
            // SAFETY: sysconf and sigaction with valid arguments; the handler only touches the
            // static slot table, atomics and the mmap system call.
            unsafe {
                let page = libc::sysconf(libc::_SC_PAGESIZE);
                if page > 0 {
                    PAGE.store(page as usize, Ordering::Relaxed);
                }
                let mut act: libc::sigaction = std::mem::zeroed();
                act.sa_sigaction = on_sigbus as *const () as usize;
                act.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER;
                libc::sigemptyset(&mut act.sa_mask);
                let mut prev: libc::sigaction = std::mem::zeroed();
                (libc::sigaction(libc::SIGBUS, &act, &mut prev) == 0).then_some(Previous(prev))
            }
        })
        .is_some()
}

/// One mapped piece of the input, unmapped when the last block referring to it is done.
pub struct Chunk {
    base: *mut u8,
    map_len: usize,
    /// Offset of the first block in the mapping (the mapping starts on a page boundary).
    skew: usize,
    slot: usize,
}

// SAFETY: the mapping is read-only and lives until drop; any thread may read it.
unsafe impl Send for Chunk {}
unsafe impl Sync for Chunk {}

impl Chunk {
    /// Pointer to byte `off` of this chunk's blocks (`off` within what was mapped).
    pub fn ptr(&self, off: usize) -> *mut u8 {
        debug_assert!(self.skew + off <= self.map_len);
        // SAFETY: within the mapping (checked by the caller's block arithmetic).
        unsafe { self.base.add(self.skew + off) }
    }

    /// Whether a page of this chunk was past the end of the file when read (it shrank).
    fn hit(&self) -> bool {
        SLOT_TABLE[self.slot].hit.load(Ordering::Acquire)
    }

    /// `what_happened` as an I/O error if a page was past the end of the file when read.
    pub fn check(&self, what_happened: &str) -> Result<()> {
        if self.hit() {
            return Err(Error::Io(std::io::Error::other(format!(
                "{what_happened} (truncated by another process?)"
            ))));
        }
        Ok(())
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        let slot = &SLOT_TABLE[self.slot];
        slot.start.store(0, Ordering::Release);
        // SAFETY: unmapping exactly the mapping made in `map_range`; no block refers to it any
        // more (the last Arc is being dropped).
        unsafe { libc::munmap(self.base.cast(), self.map_len) };
        slot.hit.store(false, Ordering::Release);
        slot.end.store(0, Ordering::Release); // free for the next mapping
    }
}

/// The whole blocks of a regular file from its current offset, handed out chunk by chunk.
pub struct MappedInput {
    fd: libc::c_int,
    /// File offset of the next block.
    pos: u64,
    /// Where the whole blocks end (the rest, and anything appended meanwhile, is read).
    end: u64,
    chunk_len: u64,
    /// The first chunk, mapped by `new` to find out whether this file maps at all.
    first: Option<(Arc<Chunk>, usize)>,
}

impl MappedInput {
    /// Map `file` from its offset when it is a regular file holding at least one whole block
    /// of `block_size`; `None` to read it instead: not such a file, or one whose file system
    /// refuses mappings (some FUSE file systems: `ENODEV`). `file` must outlive the result.
    pub fn new(file: &mut File, block_size: u32) -> Option<MappedInput> {
        use std::io::Seek;
        let meta = file.metadata().ok()?;
        if !meta.is_file() {
            return None;
        }
        let pos = file.stream_position().ok()?;
        let blocks = meta.len().saturating_sub(pos) / u64::from(block_size);
        if blocks == 0 || !install() {
            return None;
        }
        // About 512 KiB per chunk (whole blocks): few mappings, little of the file mapped at once
        // (mapped pages count in the process's resident set).
        let per_chunk = ((512u64 << 10) / u64::from(block_size)).max(1);
        let mut input = MappedInput {
            fd: file.as_raw_fd(),
            pos,
            end: pos + blocks * u64::from(block_size),
            chunk_len: per_chunk * u64::from(block_size),
            first: None,
        };
        input.first = Some(input.map_next().ok()?);
        Some(input)
    }

    /// Where the mapped blocks end: the caller reads on from here (it seeks the file there).
    pub fn end(&self) -> u64 {
        self.end
    }

    /// The next chunk and its length in bytes (whole blocks); `None` once all are handed out.
    pub fn next_chunk(&mut self) -> Result<Option<(Arc<Chunk>, usize)>> {
        if let Some(first) = self.first.take() {
            return Ok(Some(first));
        }
        if self.pos >= self.end {
            return Ok(None);
        }
        self.map_next().map(Some)
    }

    fn map_next(&mut self) -> Result<(Arc<Chunk>, usize)> {
        let len = (self.end - self.pos).min(self.chunk_len) as usize;
        let chunk = map_range(self.fd, self.pos, len)?;
        self.pos += len as u64;
        Ok((Arc::new(chunk), len))
    }
}

/// Map `len` bytes of the open file `fd` at `offset` (read-only, populated). [`install`] must
/// have succeeded. A range past the end of the file maps, and reads as zeros with
/// [`Chunk::hit`] set.
fn map_range(fd: libc::c_int, offset: u64, len: usize) -> Result<Chunk> {
    let page = PAGE.load(Ordering::Relaxed) as u64;
    let map_off = offset & !(page - 1);
    let skew = (offset - map_off) as usize;
    let map_len = skew + len;
    let slot = (0..SLOTS)
        .find(|&i| {
            SLOT_TABLE[i].end.load(Ordering::Acquire) == 0
                && SLOT_TABLE[i]
                    .end
                    .compare_exchange(0, usize::MAX, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
        })
        .ok_or_else(|| Error::Io(std::io::Error::other("too many mapped files at once")))?;
    // SAFETY: a fresh read-only private mapping of the caller's open file; MAP_POPULATE fills
    // its page tables at once (fewer faults than touching 4 KiB at a time).
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            map_len,
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_POPULATE,
            fd,
            map_off as libc::off_t,
        )
    };
    if base == libc::MAP_FAILED {
        let e = std::io::Error::last_os_error();
        SLOT_TABLE[slot].end.store(0, Ordering::Release);
        return Err(Error::Io(e));
    }
    let s = &SLOT_TABLE[slot];
    s.hit.store(false, Ordering::Release);
    s.end.store(base as usize + map_len, Ordering::Release);
    s.start.store(base as usize, Ordering::Release);
    Ok(Chunk {
        base: base.cast(),
        map_len,
        skew,
        slot,
    })
}

/// A read-only memoryview of `len` bytes at `off` in `chunk`, for the length of one call into
/// the crypto layer (which keeps no reference to its arguments: `calls.rs`). The caller keeps
/// the chunk alive until that call has returned.
pub fn view<'py>(py: Python<'py>, chunk: &Chunk, off: usize, len: usize) -> PyResult<Bound<'py, PyAny>> {
    assert!(chunk.skew + off + len <= chunk.map_len, "view outside its mapping");
    // SAFETY: `off..off + len` lies inside the chunk's read-only mapping (checked above), alive
    // for the call.
    unsafe {
        let view = pyo3::ffi::PyMemoryView_FromMemory(
            chunk.ptr(off).cast(),
            len as pyo3::ffi::Py_ssize_t,
            pyo3::ffi::PyBUF_READ,
        );
        Bound::from_owned_ptr_or_err(py, view)
    }
}
