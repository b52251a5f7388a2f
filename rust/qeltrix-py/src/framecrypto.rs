//! A gateway stream frame's crypto, driven from Rust (issue 12).
//!
//! Sealing and opening a frame makes the `cryptography` calls of FORMAT.md sections 4-5 (the
//! SHA-256 of the plaintext, the HKDF of `CDK_i`, an AEAD under it, the AEAD under `K_meta`),
//! the same calls on the same bytes as `ContainerKeys.seal_stream_frame` makes, but straight
//! from the gateway's worker: the objects come once per stream from
//! `ContainerKeys.frame_calls()` ([`FrameCrypto::new`]), and a frame costs those calls and no
//! Python frame of ours. Interactive traffic is a frame per message, so this per-frame work,
//! not the bytes, is what a gateway pair's round trip costs (FORMAT.md 12.3).
//!
//! The data is handed to `cryptography` as memoryviews of the Rust buffers themselves
//! ([`RawView`]), released before the buffers can move or be freed.
use crate::calls;
use pyo3::exceptions::PyBufferError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use qeltrix_format::{BlockMeta, MK_LEN, NONCE_LEN, SALT_LEN, TAG_LEN};
use qeltrix_format::{META_FRAME_LEN, META_PT_LEN};
use qeltrix_server::gateway::GwError;
use std::cell::RefCell;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};

/// A frame's random fields: `cdk_salt || data_nonce || meta_nonce`.
const FRAME_RANDOM_LEN: usize = SALT_LEN + 2 * NONCE_LEN;
/// Frames served by one draw from the CSPRNG ([`frame_random`]).
const FRAME_RANDOM_BATCH: usize = 64;

/// The `cryptography` objects of one stream (`_crypto.FrameCalls`).
pub struct FrameCrypto {
    mk: Py<PyAny>,
    cdk_info: Vec<u8>,
    container_id: Py<PyAny>,
    cid: Vec<u8>,
    aead: Py<PyAny>,
    meta_aead: Py<PyAny>,
    hkdf: Py<PyAny>,
    sha256: Py<PyAny>,
    hash: Py<PyAny>,
    urandom: Py<PyAny>,
    invalid_tag: Py<PyAny>,
}

impl FrameCrypto {
    /// The frame crypto of a `ContainerKeys`.
    pub fn new(py: Python<'_>, keys: &Py<PyAny>) -> PyResult<FrameCrypto> {
        let fc = calls::frame_calls(py, keys)?;
        let get = |a: &calls::PyAttr| calls::frame_calls_attr(&fc, a).map(Bound::unbind);
        let mk = get(&calls::FC_MK)?;
        if mk.bind(py).len()? != MK_LEN {
            return Err(pyo3::exceptions::PyValueError::new_err("a stream MK is 32 bytes"));
        }
        let container_id = get(&calls::FC_CONTAINER_ID)?;
        Ok(FrameCrypto {
            mk,
            cdk_info: calls::frame_calls_attr(&fc, &calls::FC_CDK_INFO)?.extract()?,
            cid: container_id.extract(py)?,
            container_id,
            aead: get(&calls::FC_AEAD)?,
            meta_aead: get(&calls::FC_META_AEAD)?,
            hkdf: get(&calls::FC_HKDF)?,
            sha256: get(&calls::FC_SHA256)?,
            hash: get(&calls::FC_HASH)?,
            urandom: get(&calls::FC_URANDOM)?,
            invalid_tag: get(&calls::FC_INVALID_TAG)?,
        })
    }

    /// `SHA256(data)`, from a copy of the unused context.
    fn sha256(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<[u8; 32]> {
        let h = calls::hash_copy(self.hash.bind(py))?;
        calls::hash_update(&h, data)?;
        calls::hash_finalize(&h)
    }

    /// The AEAD under `CDK_i` (FORMAT.md section 4).
    fn cdk_aead<'py>(
        &self,
        py: Python<'py>,
        salt: &[u8],
        block_index: u64,
        pt_sha256: &[u8; 32],
    ) -> PyResult<Bound<'py, PyAny>> {
        let mut info = Vec::with_capacity(self.cdk_info.len() + 8 + 32);
        info.extend_from_slice(&self.cdk_info);
        info.extend_from_slice(&block_index.to_le_bytes());
        info.extend_from_slice(pt_sha256);
        let cdk = calls::hkdf_derive(
            self.hkdf.bind(py),
            self.sha256.bind(py),
            MK_LEN,
            salt,
            &info,
            self.mk.bind(py),
        )?;
        calls::aead_new(self.aead.bind(py), &cdk)
    }

    /// `container_id || u64le(i) || u32le(pt_len) || u8(meta_flags)`: a frame's data AAD.
    fn data_aad<'py>(
        &self,
        py: Python<'py>,
        block_index: u64,
        pt_len: u32,
        meta_flags: u8,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let mut aad = Vec::with_capacity(self.cid.len() + 13);
        aad.extend_from_slice(&self.cid);
        aad.extend_from_slice(&block_index.to_le_bytes());
        aad.extend_from_slice(&pt_len.to_le_bytes());
        aad.push(meta_flags);
        Ok(PyBytes::new(py, &aad))
    }

    /// Seal `pt` as frame `block_index` into `frame` (resized to the frame's length): `data_ct`
    /// under `CDK_i`, then `meta_nonce || meta_ct` (FORMAT.md section 5).
    pub fn seal(
        &self,
        py: Python<'_>,
        block_index: u64,
        meta_flags: u8,
        pt: &[u8],
        frame: &mut Vec<u8>,
    ) -> Result<(), GwError> {
        let mut sealed = || -> PyResult<()> {
            let pt_len = u32::try_from(pt.len()).map_err(|_| PyBufferError::new_err("a frame holds at most 4 GiB"))?;
            let rnd = frame_random(self.urandom.bind(py))?;
            let (salt, rest) = rnd.split_at(SALT_LEN);
            let (data_nonce, meta_nonce) = rest.split_at(NONCE_LEN);
            // Every byte is written below: a pooled buffer is only cut or grown to the length.
            frame.resize(META_FRAME_LEN + pt.len() + TAG_LEN, 0);
            let (meta_part, data_part) = frame.split_at_mut(META_FRAME_LEN);
            let pt_view = RawView::read(py, pt)?;
            let pt_sha256 = self.sha256(py, pt_view.get())?;
            let aead = self.cdk_aead(py, salt, block_index, &pt_sha256)?;
            let aad = self.data_aad(py, block_index, pt_len, meta_flags)?;
            let out = RawView::write(py, data_part)?;
            calls::aead_encrypt_into(&aead, data_nonce, pt_view.get(), &aad, out.get())?;
            drop((out, pt_view));
            let meta_pt = BlockMeta {
                block_index,
                pt_len,
                meta_flags,
                cdk_salt: salt.try_into().expect("16 bytes"),
                data_nonce: data_nonce.try_into().expect("12 bytes"),
                pt_sha256,
            }
            .encode();
            let (nonce_part, meta_ct) = meta_part.split_at_mut(NONCE_LEN);
            nonce_part.copy_from_slice(meta_nonce);
            let meta_view = RawView::read(py, &meta_pt)?;
            let out = RawView::write(py, meta_ct)?;
            calls::aead_encrypt_into(
                self.meta_aead.bind(py),
                meta_nonce,
                meta_view.get(),
                self.container_id.bind(py),
                out.get(),
            )?;
            drop((out, meta_view));
            Ok(())
        };
        sealed().map_err(|e| crate::gateway::gw_err(py, e))
    }

    /// Open the metadata of the frame at the start of `buf` and, when the whole frame is in
    /// `buf`, its data into `pt` (resized to `pt_len`), its SHA-256 checked. Returns the
    /// metadata and whether the data was opened; the caller checks the metadata (index,
    /// length, flags) before it releases a byte of `pt`.
    pub fn open(&self, py: Python<'_>, buf: &[u8], pt: &mut Vec<u8>) -> Result<(BlockMeta, bool), GwError> {
        match self.open_py(py, buf, pt) {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(crate::gateway::gw_err(py, e)),
        }
    }

    fn open_py(&self, py: Python<'_>, buf: &[u8], pt: &mut Vec<u8>) -> PyResult<Result<(BlockMeta, bool), GwError>> {
        let Some(meta_frame) = buf.get(..META_FRAME_LEN) else {
            return Ok(Err(GwError::Truncated("a frame's metadata is cut".into())));
        };
        let (meta_nonce, meta_ct) = meta_frame.split_at(NONCE_LEN);
        let mut meta_pt = [0u8; META_PT_LEN];
        let ct_view = RawView::read(py, meta_ct)?;
        let out = RawView::write(py, &mut meta_pt)?;
        let r = calls::aead_decrypt_into(
            self.meta_aead.bind(py),
            meta_nonce,
            ct_view.get(),
            self.container_id.bind(py),
            out.get(),
        );
        drop((out, ct_view));
        if self.tag_failed(py, r)? {
            return Ok(Err(GwError::Auth(
                "block metadata failed authentication (corrupt or tampered)".into(),
            )));
        }
        let meta = match BlockMeta::decode(&meta_pt) {
            Ok(m) => m,
            Err(e) => return Ok(Err(GwError::Auth(e.to_string()))),
        };
        let pt_len = meta.pt_len as usize;
        let Some(data_ct) = buf
            .get(META_FRAME_LEN..)
            .and_then(|d| d.get(..pt_len.checked_add(TAG_LEN)?))
        else {
            return Ok(Ok((meta, false)));
        };
        // Overwritten whole by the decryption (and released only if it authenticates).
        pt.resize(pt_len, 0);
        let i = meta.block_index;
        let aead = self.cdk_aead(py, &meta.cdk_salt, i, &meta.pt_sha256)?;
        let aad = self.data_aad(py, i, meta.pt_len, meta.meta_flags)?;
        let ct_view = RawView::read(py, data_ct)?;
        let out = RawView::write(py, pt)?;
        let r = calls::aead_decrypt_into(&aead, &meta.data_nonce, ct_view.get(), &aad, out.get());
        drop(ct_view);
        if self.tag_failed(py, r)? {
            return Ok(Err(GwError::Auth(format!(
                "block {i} failed authentication (corrupt or tampered)"
            ))));
        }
        let digest = self.sha256(py, out.get())?;
        drop(out);
        // Compared without an early exit.
        if digest.iter().zip(&meta.pt_sha256).fold(0, |acc, (a, b)| acc | (a ^ b)) != 0 {
            return Ok(Err(GwError::Auth(format!("block {i} failed its integrity hash"))));
        }
        Ok(Ok((meta, true)))
    }

    /// Whether an AEAD call failed its tag (`InvalidTag`); any other error is returned.
    fn tag_failed(&self, py: Python<'_>, r: PyResult<()>) -> PyResult<bool> {
        match r {
            Ok(()) => Ok(false),
            Err(e) if e.get_type(py).is(self.invalid_tag.bind(py)) => Ok(true),
            Err(e) => Err(e),
        }
    }
}

/// A memoryview of Rust memory for the length of a call: made with
/// `PyMemoryView_FromMemory` (no copy) and freed or released when done. Releasing fails only while
/// something still holds a buffer export of it; then the memory could be read or written after
/// Rust reuses it, so the process stops instead (the `cryptography` calls it is passed to hold
/// their exports only for the call). A view is dropped before its memory is read or moved.
struct RawView<'a, 'py> {
    view: Bound<'py, PyAny>,
    _mem: PhantomData<&'a mut [u8]>,
}

impl<'a, 'py> RawView<'a, 'py> {
    fn read(py: Python<'py>, mem: &'a [u8]) -> PyResult<RawView<'a, 'py>> {
        // SAFETY: a read-only view of `mem`, which outlives it (the lifetime 'a) and is
        // released before 'a ends ([`RawView::release`] or the drop).
        unsafe { Self::make(py, mem.as_ptr().cast_mut(), mem.len(), pyo3::ffi::PyBUF_READ) }
    }

    fn write(py: Python<'py>, mem: &'a mut [u8]) -> PyResult<RawView<'a, 'py>> {
        // SAFETY: as `read`; `mem` is borrowed mutably for 'a, so nothing else touches it.
        unsafe { Self::make(py, mem.as_mut_ptr(), mem.len(), pyo3::ffi::PyBUF_WRITE) }
    }

    unsafe fn make(
        py: Python<'py>,
        ptr: *mut u8,
        len: usize,
        flags: std::os::raw::c_int,
    ) -> PyResult<RawView<'a, 'py>> {
        let len = pyo3::ffi::Py_ssize_t::try_from(len).map_err(|_| PyBufferError::new_err("buffer too large"))?;
        let view = pyo3::ffi::PyMemoryView_FromMemory(ptr.cast(), len, flags);
        Ok(RawView {
            view: Bound::from_owned_ptr_or_err(py, view)?,
            _mem: PhantomData,
        })
    }

    fn get(&self) -> &Bound<'py, PyAny> {
        &self.view
    }
}

impl Drop for RawView<'_, '_> {
    fn drop(&mut self) {
        // A buffer export holds a reference to the view, so a view only Rust refers to has
        // none, and dropping it frees it: the common case, without a `release()` call.
        // SAFETY: reads the reference count of a live object (the GIL is held: 'py).
        if unsafe { pyo3::ffi::Py_REFCNT(self.view.as_ptr()) } == 1 {
            return;
        }
        if let Err(e) = self.view.call_method0(pyo3::intern!(self.view.py(), "release")) {
            eprintln!("qeltrix: a memoryview of a frame buffer is still exported ({e}); stopping");
            std::process::abort();
        }
    }
}

/// Forks seen by this process (a forked child must not hand out its parent's random bytes).
static FORKS: AtomicU64 = AtomicU64::new(0);

extern "C" fn after_fork_in_child() {
    FORKS.fetch_add(1, Ordering::SeqCst);
}

thread_local! {
    /// This thread's CSPRNG output not yet handed out, its position, and the fork count when drawn.
    static RANDOM: RefCell<(Vec<u8>, usize, u64)> = const { RefCell::new((Vec::new(), 0, u64::MAX)) };
}

/// A frame's random fields, from a per-thread buffer of the OS CSPRNG's output (`os.urandom`)
/// refilled every [`FRAME_RANDOM_BATCH`] frames: each byte is handed out once, and a forked
/// child starts over with its own draw.
fn frame_random(urandom: &Bound<'_, PyAny>) -> PyResult<[u8; FRAME_RANDOM_LEN]> {
    static AT_FORK: std::sync::Once = std::sync::Once::new();
    AT_FORK.call_once(|| {
        // SAFETY: registers a handler that only increments an atomic.
        unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
    });
    RANDOM.with(|r| {
        let mut r = r.borrow_mut();
        let forks = FORKS.load(Ordering::SeqCst);
        if r.2 != forks || r.1 + FRAME_RANDOM_LEN > r.0.len() {
            r.0 = calls::urandom(urandom, FRAME_RANDOM_LEN * FRAME_RANDOM_BATCH)?;
            if r.0.len() != FRAME_RANDOM_LEN * FRAME_RANDOM_BATCH {
                return Err(PyBufferError::new_err("os.urandom returned another length"));
            }
            (r.1, r.2) = (0, forks);
        }
        let at = r.1;
        let mut out = [0u8; FRAME_RANDOM_LEN];
        out.copy_from_slice(&r.0[at..at + FRAME_RANDOM_LEN]);
        r.0[at..at + FRAME_RANDOM_LEN].fill(0);
        r.1 = at + FRAME_RANDOM_LEN;
        Ok(out)
    })
}
