//! The per-block calls into `qeltrix_v6._crypto.ContainerKeys`, shared by the pack, read and
//! gateway paths (FORMAT.md section 5): Rust encodes and decodes the V6-C metadata, Python
//! does the cryptography, buffers are `bytearray`s both sides write into.
use crate::io::PyBuf;
use crate::types::{FRAME_DIGEST, OPEN_BLOCK, OPEN_META, SEAL_BLOCK, SEAL_META, SHA256, SIGN, SIGNER_PUBLIC};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use qeltrix_format::BlockMeta;

/// Seal `inbuf[..pt_len]` as frame `block_index` into `outbuf[..frame_len(pt_len)]`.
pub fn seal_frame(
    py: Python<'_>,
    keys: &Py<PyAny>,
    block_index: u64,
    meta_flags: u8,
    inbuf: &PyBuf,
    pt_len: usize,
    outbuf: &PyBuf,
) -> PyResult<()> {
    let args = (block_index, meta_flags, inbuf.obj(py), pt_len, outbuf.obj(py));
    let (cdk_salt, data_nonce, pt_sha256): ([u8; 16], [u8; 12], [u8; 32]) =
        keys.call_method1(py, SEAL_BLOCK, args)?.extract(py)?;
    let meta = BlockMeta {
        block_index,
        pt_len: pt_len as u32,
        meta_flags,
        cdk_salt,
        data_nonce,
        pt_sha256,
    };
    keys.call_method1(py, SEAL_META, (PyBytes::new(py, &meta.encode()), outbuf.obj(py)))?;
    Ok(())
}

/// Decrypt the V6-C metadata at the start of the frame in `inbuf`; returns `meta_pt`.
pub fn open_meta(py: Python<'_>, keys: &Py<PyAny>, inbuf: &PyBuf) -> PyResult<Vec<u8>> {
    keys.call_method1(py, OPEN_META, (inbuf.obj(py),))?.extract(py)
}

/// Decrypt the frame's `data_ct` in `inbuf` into `outbuf[..meta.pt_len]`, checking its SHA-256.
pub fn open_data(py: Python<'_>, keys: &Py<PyAny>, meta: &BlockMeta, inbuf: &PyBuf, outbuf: &PyBuf) -> PyResult<()> {
    let args = (
        meta.block_index,
        meta.pt_len,
        meta.meta_flags,
        PyBytes::new(py, &meta.cdk_salt),
        PyBytes::new(py, &meta.data_nonce),
        PyBytes::new(py, &meta.pt_sha256),
        inbuf.obj(py),
        outbuf.obj(py),
    );
    keys.call_method1(py, OPEN_BLOCK, args)?;
    Ok(())
}

/// `frame_digest` of the frame at the start of `inbuf` (FORMAT.md section 15).
pub fn frame_digest(py: Python<'_>, keys: &Py<PyAny>, inbuf: &PyBuf) -> PyResult<[u8; 32]> {
    keys.call_method1(py, FRAME_DIGEST, (inbuf.obj(py),))?.extract(py)
}

/// `SHA256(data)` through the crypto layer.
pub fn sha256(py: Python<'_>, keys: &Py<PyAny>, data: &[u8]) -> PyResult<[u8; 32]> {
    keys.call_method1(py, SHA256, (PyBytes::new(py, data),))?.extract(py)
}

/// The signer's 32-byte public key.
pub fn signer_public(py: Python<'_>, signer: &Py<PyAny>) -> PyResult<[u8; 32]> {
    signer.getattr(py, SIGNER_PUBLIC)?.extract(py)
}

/// `Ed25519-Sign(signer_priv, message)`.
pub fn sign(py: Python<'_>, signer: &Py<PyAny>, message: &[u8]) -> PyResult<[u8; 64]> {
    signer.call_method1(py, SIGN, (PyBytes::new(py, message),))?.extract(py)
}
