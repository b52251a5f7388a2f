//! Every Rust-to-Python touchpoint of the extension, in one place.
//!
//! The exception classes come from `qeltrix_v6.errors`; the crypto callbacks are methods of
//! `qeltrix_v6._crypto.ContainerKeys` (their Python signatures are documented there).
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

/// Module holding the exception hierarchy.
pub const ERRORS_MODULE: &str = "qeltrix_v6.errors";

/// `ContainerKeys.seal_block(block_index, meta_flags, inbuf, pt_len, outbuf) -> (salt, nonce, sha)`.
pub const SEAL_BLOCK: &str = "seal_block";
/// `ContainerKeys.seal_meta(meta_pt, outbuf) -> None`.
pub const SEAL_META: &str = "seal_meta";
/// `ContainerKeys.open_meta(inbuf) -> meta_pt`.
pub const OPEN_META: &str = "open_meta";
/// `ContainerKeys.open_block(block_index, pt_len, meta_flags, cdk_salt, data_nonce, pt_sha256, inbuf, outbuf)`.
pub const OPEN_BLOCK: &str = "open_block";
/// `ContainerKeys.seal_index(index_pt, footer_offset) -> footer`.
pub const SEAL_INDEX: &str = "seal_index";
/// `ContainerKeys.open_index(footer, footer_offset) -> index_pt`.
pub const OPEN_INDEX: &str = "open_index";
/// `ContainerKeys.frame_digest(inbuf) -> digest`: `SHA256(meta_nonce || meta_ct)` of the frame at
/// the start of `inbuf` (its first `META_FRAME_LEN` bytes; FORMAT.md section 15).
pub const FRAME_DIGEST: &str = "frame_digest";
/// `ContainerKeys.sha256(data) -> digest` (header, footer and digest-list hashes of section 15).
pub const SHA256: &str = "sha256";
/// `Ed25519Signer.sign(signed_message) -> signature` (`qeltrix_v6._crypto.Ed25519Signer`).
pub const SIGN: &str = "sign";
/// `Ed25519Signer.public`: the 32-byte `signer_pub` (an attribute).
pub const SIGNER_PUBLIC: &str = "public";
/// File-like methods used on Python sources and sinks.
pub const READINTO: &str = "readinto";
pub const WRITE: &str = "write";
pub const SEEK: &str = "seek";

static ERROR_CLASSES: PyOnceLock<Vec<Py<PyType>>> = PyOnceLock::new();

/// The exception classes, in the order of [`ErrorClass`].
#[derive(Clone, Copy)]
pub enum ErrorClass {
    Malformed = 0,
    Limit = 1,
    Authentication = 2,
    Truncated = 3,
    Io = 4,
    WrongKey = 5,
    Base = 6,
    Signature = 7,
}

const ERROR_NAMES: [&str; 8] = [
    "MalformedError",
    "LimitExceededError",
    "AuthenticationError",
    "TruncatedError",
    "QeltrixIOError",
    "WrongKeyError",
    "QeltrixError",
    "SignatureError",
];

/// The Python class for an error kind.
pub fn error_class(py: Python<'_>, class: ErrorClass) -> PyResult<Bound<'_, PyType>> {
    let classes = ERROR_CLASSES.get_or_try_init(py, || -> PyResult<Vec<Py<PyType>>> {
        let module = py.import(ERRORS_MODULE)?;
        ERROR_NAMES
            .iter()
            .map(|name| Ok(module.getattr(*name)?.cast_into::<PyType>()?.unbind()))
            .collect()
    })?;
    Ok(classes[class as usize].bind(py).clone())
}
