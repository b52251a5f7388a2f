//! Every Rust-to-Python touchpoint of the extension, in one place: the contract between the
//! two halves.
//!
//! Each touchpoint is a [`PyCall`] (a method, or `__call__` of a callable) or a [`PyAttr`] (an
//! attribute read) on one kind of duck-typed Python object, with its Python signature in its
//! doc comment, and one typed wrapper below. No other module of this crate names a Python
//! method or attribute: they call these wrappers. The argument count of a [`PyCall`] is part of
//! its type, so a wrapper passing another number of arguments does not compile.
//!
//! The Python side of the contract is `qeltrix_v6._contract`: a `typing.Protocol` per object
//! kind (mypy checks the real classes against them) and [`PYTHON_CALLS`], exported as
//! `_core.PYTHON_CALLS`, which `tests/test_contract.py` checks against those classes with
//! `inspect.signature`. The exception classes come from `qeltrix_v6.errors` ([`error_class`]).
//!
//! Byte buffers that Python writes into are passed as `memoryview`s of a [`PyBuf`] (see there).
use crate::io::PyBuf;
use pyo3::call::PyCallArgs;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyString, PyType};
use qeltrix_format::BlockMeta;

/// One Python method (or `__call__`) that Rust calls with `N` positional arguments.
pub struct PyCall<const N: usize> {
    /// The kind of object it is called on (a Protocol name in `qeltrix_v6._contract`).
    pub object: &'static str,
    /// The method name; `__call__` for a callable.
    pub name: &'static str,
}

impl<const N: usize> PyCall<N> {
    const fn entry(&self) -> (&'static str, &'static str, Option<usize>) {
        (self.object, self.name, Some(N))
    }
}

/// One Python attribute that Rust reads.
pub struct PyAttr {
    pub object: &'static str,
    pub name: &'static str,
}

impl PyAttr {
    const fn entry(&self) -> (&'static str, &'static str, Option<usize>) {
        (self.object, self.name, None)
    }
}

/// Implemented by the argument tuples of `N` elements, so a call's arity is checked at compile time.
pub trait Arity<const N: usize> {}
macro_rules! arity {
    ($n:literal; $($t:ident),*) => {
        impl<$($t),*> Arity<$n> for ($($t,)*) {}
    };
}
arity!(0;);
arity!(1; A);
arity!(2; A, B);
arity!(3; A, B, C);
arity!(4; A, B, C, D);
arity!(5; A, B, C, D, E);
arity!(8; A, B, C, D, E, F, G, H);

fn invoke<'py, const N: usize, A>(
    py: Python<'py>,
    obj: &Py<PyAny>,
    call: &PyCall<N>,
    args: A,
) -> PyResult<Bound<'py, PyAny>>
where
    A: PyCallArgs<'py> + Arity<N>,
{
    let obj = obj.bind(py);
    if call.name == "__call__" {
        obj.call1(args)
    } else {
        obj.call_method1(call.name, args)
    }
}

/// [`invoke`] on a bound object with the method name interned once per call site (see
/// [`call_on`]): the per-frame calls of the gateway make no string per call.
fn invoke_on<'py, const N: usize, A>(
    obj: &Bound<'py, PyAny>,
    call: &PyCall<N>,
    name: &Bound<'py, PyString>,
    args: A,
) -> PyResult<Bound<'py, PyAny>>
where
    A: PyCallArgs<'py> + Arity<N>,
{
    if call.name == "__call__" {
        obj.call1(args)
    } else {
        obj.call_method1(name, args)
    }
}

/// `call_on!(obj, CALL, args)`: [`invoke_on`] with `CALL.name` interned.
macro_rules! call_on {
    ($obj:expr, $call:expr, $args:expr) => {
        invoke_on($obj, &$call, pyo3::intern!($obj.py(), $call.name), $args)
    };
}

// --- `qeltrix_v6._crypto.ContainerKeys`: the per-container crypto (FORMAT.md sections 4-6) ---

/// `seal_stream_frame(block_index: int, meta_flags: int, inbuf: memoryview, pt_len: int, outbuf:
/// memoryview) -> None`: seal a whole frame (data, then its V6-C metadata) in one call.
pub const SEAL_STREAM_FRAME: PyCall<5> = PyCall {
    object: "ContainerKeys",
    name: "seal_stream_frame",
};
/// `open_meta(inbuf: memoryview) -> bytes`: the frame's decrypted `meta_pt`.
pub const OPEN_META: PyCall<1> = PyCall {
    object: "ContainerKeys",
    name: "open_meta",
};
/// `open_block(block_index: int, pt_len: int, meta_flags: int, cdk_salt: bytes, data_nonce: bytes,
/// pt_sha256: bytes, inbuf: memoryview, outbuf: memoryview) -> None`.
pub const OPEN_BLOCK: PyCall<8> = PyCall {
    object: "ContainerKeys",
    name: "open_block",
};
/// `seal_index(index_pt: bytes, footer_offset: int) -> bytes`: the footer.
pub const SEAL_INDEX: PyCall<2> = PyCall {
    object: "ContainerKeys",
    name: "seal_index",
};
/// `open_index(footer: bytes, footer_offset: int) -> bytes`: `index_pt`.
pub const OPEN_INDEX: PyCall<2> = PyCall {
    object: "ContainerKeys",
    name: "open_index",
};
/// `frame_digest(inbuf: memoryview) -> bytes`: `SHA256(meta_nonce || meta_ct)` of the frame at
/// the start of `inbuf` (its first `META_FRAME_LEN` bytes; FORMAT.md section 15).
pub const FRAME_DIGEST: PyCall<1> = PyCall {
    object: "ContainerKeys",
    name: "frame_digest",
};
/// `sha256(data: bytes) -> bytes` (header, footer and digest-list hashes of section 15).
pub const SHA256: PyCall<1> = PyCall {
    object: "ContainerKeys",
    name: "sha256",
};

// --- `qeltrix_v6._crypto.Ed25519Signer` (FORMAT.md section 15) ---

/// `sign(message: bytes) -> bytes`: the 64-byte Ed25519 signature.
pub const SIGN: PyCall<1> = PyCall {
    object: "Signer",
    name: "sign",
};
/// `public: bytes`: the 32-byte `signer_pub`.
pub const SIGNER_PUBLIC: PyAttr = PyAttr {
    object: "Signer",
    name: "public",
};

// --- a stream frame's `cryptography` objects, called by the gateway core (`_crypto.FrameCalls`) ---

/// `frame_calls() -> FrameCalls`: what the gateway core calls to seal and open this stream's
/// frames itself (FORMAT.md sections 4-5; `crate::framecrypto`).
pub const FRAME_CALLS: PyCall<0> = PyCall {
    object: "ContainerKeys",
    name: "frame_calls",
};
/// `FrameCalls.mk: bytes`, the stream's MK (the IKM of every `CDK_i`).
pub const FC_MK: PyAttr = PyAttr {
    object: "FrameCalls",
    name: "mk",
};
/// `FrameCalls.cdk_info: bytes`: `"qeltrix-v6 cdk" || container_id`, the constant start of
/// every `CDK_i`'s HKDF info.
pub const FC_CDK_INFO: PyAttr = PyAttr {
    object: "FrameCalls",
    name: "cdk_info",
};
/// `FrameCalls.container_id: bytes`.
pub const FC_CONTAINER_ID: PyAttr = PyAttr {
    object: "FrameCalls",
    name: "container_id",
};
/// `FrameCalls.aead: AeadClass`: the stream cipher's AEAD class.
pub const FC_AEAD: PyAttr = PyAttr {
    object: "FrameCalls",
    name: "aead",
};
/// `FrameCalls.meta_aead: Aead`: the AEAD under `K_meta`.
pub const FC_META_AEAD: PyAttr = PyAttr {
    object: "FrameCalls",
    name: "meta_aead",
};
/// `FrameCalls.hkdf: HkdfClass`: HKDF-SHA256.
pub const FC_HKDF: PyAttr = PyAttr {
    object: "FrameCalls",
    name: "hkdf",
};
/// `FrameCalls.sha256: object`: the SHA-256 algorithm object the HKDF class takes.
pub const FC_SHA256: PyAttr = PyAttr {
    object: "FrameCalls",
    name: "sha256",
};
/// `FrameCalls.hash: Hash`: an unused SHA-256 context; every frame hash starts as a copy.
pub const FC_HASH: PyAttr = PyAttr {
    object: "FrameCalls",
    name: "hash",
};
/// `FrameCalls.urandom: Urandom`: the operating system's CSPRNG.
pub const FC_URANDOM: PyAttr = PyAttr {
    object: "FrameCalls",
    name: "urandom",
};
/// `FrameCalls.invalid_tag: type`: the exception an AEAD raises for a wrong tag.
pub const FC_INVALID_TAG: PyAttr = PyAttr {
    object: "FrameCalls",
    name: "invalid_tag",
};
/// `Hash.copy() -> Hash`.
pub const HASH_COPY: PyCall<0> = PyCall {
    object: "Hash",
    name: "copy",
};
/// `Hash.update(data: memoryview) -> None`.
pub const HASH_UPDATE: PyCall<1> = PyCall {
    object: "Hash",
    name: "update",
};
/// `Hash.finalize() -> bytes`.
pub const HASH_FINALIZE: PyCall<0> = PyCall {
    object: "Hash",
    name: "finalize",
};
/// `HkdfClass(algorithm, length: int, salt: bytes, info: bytes) -> Kdf`.
pub const HKDF_NEW: PyCall<4> = PyCall {
    object: "HkdfClass",
    name: "__call__",
};
/// `Kdf.derive(key_material: bytes) -> bytes`.
pub const KDF_DERIVE: PyCall<1> = PyCall {
    object: "Kdf",
    name: "derive",
};
/// `AeadClass(key: bytes) -> Aead`.
pub const AEAD_NEW: PyCall<1> = PyCall {
    object: "AeadClass",
    name: "__call__",
};
/// `Aead.encrypt_into(nonce: bytes, data: memoryview, associated_data: bytes, buf: memoryview)
/// -> int`.
pub const AEAD_ENCRYPT_INTO: PyCall<4> = PyCall {
    object: "Aead",
    name: "encrypt_into",
};
/// `Aead.decrypt_into(nonce: bytes, data: memoryview, associated_data: bytes, buf: memoryview)
/// -> int`.
pub const AEAD_DECRYPT_INTO: PyCall<4> = PyCall {
    object: "Aead",
    name: "decrypt_into",
};
/// `Urandom(n: int) -> bytes`.
pub const URANDOM: PyCall<1> = PyCall {
    object: "Urandom",
    name: "__call__",
};

// --- `qeltrix_v6.gateway._Keyring`: a gateway's key material (FORMAT.md section 12) ---

/// `handshake_new() -> Session`: a fresh session for one connection.
pub const HANDSHAKE_NEW: PyCall<0> = PyCall {
    object: "Keyring",
    name: "handshake_new",
};
/// `new_stream(session: Session | None, container_id: bytes | None, block_size: int)
/// -> tuple[bytes, ContainerKeys]`: the header and keys of a stream this gateway sends.
pub const NEW_STREAM: PyCall<3> = PyCall {
    object: "Keyring",
    name: "new_stream",
};
/// `accept_stream(session: Session | None, header: bytes) -> ContainerKeys`.
pub const ACCEPT_STREAM: PyCall<2> = PyCall {
    object: "Keyring",
    name: "accept_stream",
};
/// `storage_header(session: Session | None, header: bytes, keys: ContainerKeys) -> bytes`: the
/// header a sink stores.
pub const STORAGE_HEADER: PyCall<3> = PyCall {
    object: "Keyring",
    name: "storage_header",
};
/// `reply_id(container_id: bytes) -> bytes`: the 16-byte `container_id` of the reply stream.
pub const REPLY_ID: PyCall<1> = PyCall {
    object: "Keyring",
    name: "reply_id",
};
/// `log(level: str, line: str) -> None` (`level` is `info`, `warning` or `error`).
pub const KEYRING_LOG: PyCall<2> = PyCall {
    object: "Keyring",
    name: "log",
};
// --- `qeltrix_v6._crypto.Handshake` / `SharedKeySession` (FORMAT.md sections 12.1, 12.2) ---

/// `msg_lens: tuple[int, int, int]`: the three message lengths (0 for the third: none).
pub const SESSION_MSG_LENS: PyAttr = PyAttr {
    object: "Session",
    name: "msg_lens",
};
/// `start() -> bytes`: the initiator's `msg1`.
pub const SESSION_START: PyCall<0> = PyCall {
    object: "Session",
    name: "start",
};
/// `respond(msg1: bytes) -> bytes`: the responder's `msg2`.
pub const SESSION_RESPOND: PyCall<1> = PyCall {
    object: "Session",
    name: "respond",
};
/// `finish(msg2: bytes) -> bytes`: the initiator's `msg3` (empty when there is none).
pub const SESSION_FINISH: PyCall<1> = PyCall {
    object: "Session",
    name: "finish",
};
/// `confirm(msg3: bytes) -> None`: the responder checks `msg3`.
pub const SESSION_CONFIRM: PyCall<1> = PyCall {
    object: "Session",
    name: "confirm",
};

// --- binary file objects given instead of a file descriptor ---

/// `readinto(b: memoryview) -> int | None` (`None`: no data yet on a non-blocking stream).
pub const READINTO: PyCall<1> = PyCall {
    object: "Source",
    name: "readinto",
};
/// `seek(offset: int, whence: int) -> int` on a random-access container source.
pub const SEEK: PyCall<2> = PyCall {
    object: "RandomSource",
    name: "seek",
};
/// `readinto(b: memoryview) -> int | None` on a random-access container source.
pub const RANDOM_READINTO: PyCall<1> = PyCall {
    object: "RandomSource",
    name: "readinto",
};
/// `write(b: memoryview | bytes) -> int | None`.
pub const WRITE: PyCall<1> = PyCall {
    object: "Sink",
    name: "write",
};

// --- callables ---

/// `progress(done: int, total: int | None) -> object`.
pub const PROGRESS: PyCall<2> = PyCall {
    object: "Progress",
    name: "__call__",
};
/// SeekServer's `open(path: str) -> _core.Reader` (loaded).
pub const OPEN_CONTAINER: PyCall<1> = PyCall {
    object: "Opener",
    name: "__call__",
};
/// SeekServer's `open_whole(path: str) -> _core.Reader` (loaded): `open` for a request that
/// reads the whole container in order.
pub const OPEN_WHOLE: PyCall<1> = PyCall {
    object: "WholeOpener",
    name: "__call__",
};
/// SeekServer's `open_member(path: str, member: str) -> _core.Reader` (loaded, its window set
/// to the member of the archive at `path`; FORMAT.md section 16).
pub const OPEN_MEMBER: PyCall<2> = PyCall {
    object: "MemberOpener",
    name: "__call__",
};
/// SeekServer's `log(level: str, line: str) -> None`; `level` is `info`, `warning`, `error` or
/// `access` (one access-log line).
pub const SERVER_LOG: PyCall<2> = PyCall {
    object: "ServerLog",
    name: "__call__",
};
/// SeekServer's `verify_url(url_path: str, query: str) -> str`: `valid`, `expired` or
/// `invalid` for a signed URL (the HMAC is Python's).
pub const VERIFY_URL: PyCall<2> = PyCall {
    object: "UrlVerifier",
    name: "__call__",
};

/// Every touchpoint as `(object kind, name, positional argument count or None for an attribute)`;
/// `_core.PYTHON_CALLS`.
pub const PYTHON_CALLS: &[(&str, &str, Option<usize>)] = &[
    SEAL_STREAM_FRAME.entry(),
    OPEN_META.entry(),
    OPEN_BLOCK.entry(),
    SEAL_INDEX.entry(),
    OPEN_INDEX.entry(),
    FRAME_DIGEST.entry(),
    SHA256.entry(),
    FRAME_CALLS.entry(),
    FC_MK.entry(),
    FC_CDK_INFO.entry(),
    FC_CONTAINER_ID.entry(),
    FC_AEAD.entry(),
    FC_META_AEAD.entry(),
    FC_HKDF.entry(),
    FC_SHA256.entry(),
    FC_HASH.entry(),
    FC_URANDOM.entry(),
    FC_INVALID_TAG.entry(),
    HASH_COPY.entry(),
    HASH_UPDATE.entry(),
    HASH_FINALIZE.entry(),
    HKDF_NEW.entry(),
    KDF_DERIVE.entry(),
    AEAD_NEW.entry(),
    AEAD_ENCRYPT_INTO.entry(),
    AEAD_DECRYPT_INTO.entry(),
    URANDOM.entry(),
    SIGN.entry(),
    SIGNER_PUBLIC.entry(),
    HANDSHAKE_NEW.entry(),
    NEW_STREAM.entry(),
    ACCEPT_STREAM.entry(),
    STORAGE_HEADER.entry(),
    REPLY_ID.entry(),
    KEYRING_LOG.entry(),
    SESSION_MSG_LENS.entry(),
    SESSION_START.entry(),
    SESSION_RESPOND.entry(),
    SESSION_FINISH.entry(),
    SESSION_CONFIRM.entry(),
    READINTO.entry(),
    SEEK.entry(),
    RANDOM_READINTO.entry(),
    WRITE.entry(),
    PROGRESS.entry(),
    OPEN_CONTAINER.entry(),
    OPEN_WHOLE.entry(),
    OPEN_MEMBER.entry(),
    SERVER_LOG.entry(),
    VERIFY_URL.entry(),
];

// --- ContainerKeys wrappers ---

/// Seal `inbuf[..pt_len]` as frame `block_index` into `outbuf[..frame_len(pt_len)]` in one
/// Python call (FORMAT.md section 5): the pack pipeline's and the gateway's per-frame path.
pub fn seal_stream_frame(
    py: Python<'_>,
    keys: &Py<PyAny>,
    block_index: u64,
    meta_flags: u8,
    inbuf: &PyBuf,
    pt_len: usize,
    outbuf: &PyBuf,
) -> PyResult<()> {
    let args = (block_index, meta_flags, inbuf.view(py)?, pt_len, outbuf.view(py)?);
    invoke(py, keys, &SEAL_STREAM_FRAME, args)?;
    Ok(())
}

/// Decrypt the V6-C metadata at the start of the frame in `inbuf`; returns `meta_pt`.
pub fn open_meta(py: Python<'_>, keys: &Py<PyAny>, inbuf: &PyBuf) -> PyResult<Vec<u8>> {
    invoke(py, keys, &OPEN_META, (inbuf.view(py)?,))?.extract()
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
        inbuf.view(py)?,
        outbuf.view(py)?,
    );
    invoke(py, keys, &OPEN_BLOCK, args)?;
    Ok(())
}

/// `frame_digest` of the frame at the start of `inbuf` (FORMAT.md section 15).
pub fn frame_digest(py: Python<'_>, keys: &Py<PyAny>, inbuf: &PyBuf) -> PyResult<[u8; 32]> {
    invoke(py, keys, &FRAME_DIGEST, (inbuf.view(py)?,))?.extract()
}

/// `SHA256(data)` through the crypto layer.
pub fn sha256(py: Python<'_>, keys: &Py<PyAny>, data: &[u8]) -> PyResult<[u8; 32]> {
    invoke(py, keys, &SHA256, (PyBytes::new(py, data),))?.extract()
}

/// The footer sealing `index_pt` (FORMAT.md section 6).
pub fn seal_index(py: Python<'_>, keys: &Py<PyAny>, index_pt: &[u8], footer_offset: u64) -> PyResult<Vec<u8>> {
    invoke(py, keys, &SEAL_INDEX, (PyBytes::new(py, index_pt), footer_offset))?.extract()
}

/// `index_pt` from the footer.
pub fn open_index(py: Python<'_>, keys: &Py<PyAny>, footer: &[u8], footer_offset: u64) -> PyResult<Vec<u8>> {
    invoke(py, keys, &OPEN_INDEX, (PyBytes::new(py, footer), footer_offset))?.extract()
}

// --- frame-crypto wrappers (`crate::framecrypto`): bound objects, interned names ---

/// `keys.frame_calls()`.
pub fn frame_calls<'py>(py: Python<'py>, keys: &Py<PyAny>) -> PyResult<Bound<'py, PyAny>> {
    call_on!(keys.bind(py), FRAME_CALLS, ())
}

/// One attribute of a `FrameCalls`.
pub fn frame_calls_attr<'py>(fc: &Bound<'py, PyAny>, attr: &PyAttr) -> PyResult<Bound<'py, PyAny>> {
    fc.getattr(attr.name)
}

/// `hash.copy()`.
pub fn hash_copy<'py>(hash: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    call_on!(hash, HASH_COPY, ())
}

/// `hash.update(data)`.
pub fn hash_update(hash: &Bound<'_, PyAny>, data: &Bound<'_, PyAny>) -> PyResult<()> {
    call_on!(hash, HASH_UPDATE, (data,)).map(drop)
}

/// `hash.finalize()`: a SHA-256 digest.
pub fn hash_finalize(hash: &Bound<'_, PyAny>) -> PyResult<[u8; 32]> {
    call_on!(hash, HASH_FINALIZE, ())?.extract()
}

/// `hkdf(algorithm, length, salt, info).derive(ikm)`: the derived key, kept as Python bytes
/// (the next call takes it as they are).
pub fn hkdf_derive<'py>(
    hkdf: &Bound<'py, PyAny>,
    algorithm: &Bound<'py, PyAny>,
    length: usize,
    salt: &[u8],
    info: &[u8],
    ikm: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = hkdf.py();
    let kdf = call_on!(
        hkdf,
        HKDF_NEW,
        (algorithm, length, PyBytes::new(py, salt), PyBytes::new(py, info))
    )?;
    call_on!(&kdf, KDF_DERIVE, (ikm,))
}

/// `aead_class(key)`.
pub fn aead_new<'py>(aead_class: &Bound<'py, PyAny>, key: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    call_on!(aead_class, AEAD_NEW, (key,))
}

/// `aead.encrypt_into(nonce, data, aad, buf)`.
pub fn aead_encrypt_into(
    aead: &Bound<'_, PyAny>,
    nonce: &[u8],
    data: &Bound<'_, PyAny>,
    aad: &Bound<'_, PyAny>,
    buf: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let name = pyo3::intern!(aead.py(), AEAD_ENCRYPT_INTO.name);
    aead_into(aead, &AEAD_ENCRYPT_INTO, name, nonce, [data, aad, buf])
}

/// `aead.decrypt_into(nonce, data, aad, buf)`.
pub fn aead_decrypt_into(
    aead: &Bound<'_, PyAny>,
    nonce: &[u8],
    data: &Bound<'_, PyAny>,
    aad: &Bound<'_, PyAny>,
    buf: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let name = pyo3::intern!(aead.py(), AEAD_DECRYPT_INTO.name);
    aead_into(aead, &AEAD_DECRYPT_INTO, name, nonce, [data, aad, buf])
}

fn aead_into<'py>(
    aead: &Bound<'py, PyAny>,
    call: &PyCall<4>,
    name: &Bound<'py, PyString>,
    nonce: &[u8],
    [data, aad, buf]: [&Bound<'py, PyAny>; 3],
) -> PyResult<()> {
    invoke_on(aead, call, name, (PyBytes::new(aead.py(), nonce), data, aad, buf)).map(drop)
}

/// `urandom(n)`.
pub fn urandom(f: &Bound<'_, PyAny>, n: usize) -> PyResult<Vec<u8>> {
    call_on!(f, URANDOM, (n,))?.extract()
}

// --- Signer wrappers ---

/// The signer's 32-byte public key.
pub fn signer_public(py: Python<'_>, signer: &Py<PyAny>) -> PyResult<[u8; 32]> {
    signer.getattr(py, SIGNER_PUBLIC.name)?.extract(py)
}

/// `Ed25519-Sign(signer_priv, message)`.
pub fn sign(py: Python<'_>, signer: &Py<PyAny>, message: &[u8]) -> PyResult<[u8; 64]> {
    invoke(py, signer, &SIGN, (PyBytes::new(py, message),))?.extract()
}

// --- Keyring and Session wrappers ---

/// A new session object for one connection.
pub fn handshake_new(py: Python<'_>, keyring: &Py<PyAny>) -> PyResult<Py<PyAny>> {
    Ok(invoke(py, keyring, &HANDSHAKE_NEW, ())?.unbind())
}

/// `(header, keys)` of a stream this gateway sends.
pub fn new_stream(
    py: Python<'_>,
    keyring: &Py<PyAny>,
    session: Option<&Py<PyAny>>,
    container_id: Option<[u8; 16]>,
    block_size: u32,
) -> PyResult<(Vec<u8>, Py<PyAny>)> {
    let cid = container_id.map(|c| PyBytes::new(py, &c));
    invoke(py, keyring, &NEW_STREAM, (session, cid, block_size))?.extract()
}

/// The keys of a stream this gateway receives, from its header.
pub fn accept_stream(
    py: Python<'_>,
    keyring: &Py<PyAny>,
    session: Option<&Py<PyAny>>,
    header: &[u8],
) -> PyResult<Py<PyAny>> {
    Ok(invoke(py, keyring, &ACCEPT_STREAM, (session, PyBytes::new(py, header)))?.unbind())
}

/// The header a sink stores for a stream.
pub fn storage_header(
    py: Python<'_>,
    keyring: &Py<PyAny>,
    session: Option<&Py<PyAny>>,
    header: &[u8],
    keys: &Py<PyAny>,
) -> PyResult<Vec<u8>> {
    invoke(py, keyring, &STORAGE_HEADER, (session, PyBytes::new(py, header), keys))?.extract()
}

/// The `container_id` of the reply to stream `request`.
pub fn reply_id(py: Python<'_>, keyring: &Py<PyAny>, request: &[u8; 16]) -> PyResult<[u8; 16]> {
    invoke(py, keyring, &REPLY_ID, (PyBytes::new(py, request),))?.extract()
}

/// Log a line through the keyring.
pub fn keyring_log(py: Python<'_>, keyring: &Py<PyAny>, level: &str, line: &str) -> PyResult<()> {
    invoke(py, keyring, &KEYRING_LOG, (level, line)).map(drop)
}

/// The session's three message lengths.
pub fn session_msg_lens(py: Python<'_>, session: &Py<PyAny>) -> PyResult<(usize, usize, usize)> {
    session.getattr(py, SESSION_MSG_LENS.name)?.extract(py)
}

/// One step of a session without an incoming message (`start`); `None` becomes empty bytes.
pub fn session_step0(py: Python<'_>, session: &Py<PyAny>, call: &PyCall<0>) -> PyResult<Vec<u8>> {
    let r = invoke(py, session, call, ())?;
    if r.is_none() {
        return Ok(Vec::new());
    }
    r.extract()
}

/// One step of a session with an incoming message (`respond`, `finish`, `confirm`); `None`
/// becomes empty bytes.
pub fn session_step1(py: Python<'_>, session: &Py<PyAny>, call: &PyCall<1>, msg: &[u8]) -> PyResult<Vec<u8>> {
    let r = invoke(py, session, call, (PyBytes::new(py, msg),))?;
    if r.is_none() {
        return Ok(Vec::new());
    }
    r.extract()
}

// --- file objects ---

/// `src.readinto(view)`: bytes read, `None` for "no data yet".
pub fn readinto(py: Python<'_>, src: &Py<PyAny>, view: Bound<'_, PyAny>, random: bool) -> PyResult<Option<usize>> {
    let call = if random { &RANDOM_READINTO } else { &READINTO };
    count(invoke(py, src, call, (view,))?, call.name)
}

/// A file method's return value as a byte count: a non-negative int or `None`, else `TypeError`.
fn count(r: Bound<'_, PyAny>, method: &str) -> PyResult<Option<usize>> {
    r.extract()
        .map_err(|_| PyTypeError::new_err(format!("{method}() must return a non-negative int or None, not {r}")))
}

/// `src.seek(offset, whence)`: the new position.
pub fn seek(py: Python<'_>, src: &Py<PyAny>, offset: u64, whence: u8) -> PyResult<u64> {
    invoke(py, src, &SEEK, (offset, whence))?.extract()
}

/// `dst.write(data)`: bytes written, `None` for "would block".
pub fn write(py: Python<'_>, dst: &Py<PyAny>, data: Bound<'_, PyAny>) -> PyResult<Option<usize>> {
    count(invoke(py, dst, &WRITE, (data,))?, WRITE.name)
}

// --- callables ---

/// `progress(done, total)`.
pub fn progress(py: Python<'_>, callback: &Py<PyAny>, done: u64, total: Option<u64>) -> PyResult<()> {
    invoke(py, callback, &PROGRESS, (done, total)).map(drop)
}

/// The SeekServer's `open(path)`.
pub fn open_container(py: Python<'_>, open: &Py<PyAny>, path: String) -> PyResult<Py<PyAny>> {
    Ok(invoke(py, open, &OPEN_CONTAINER, (path,))?.unbind())
}

/// The SeekServer's `open_whole(path)`.
pub fn open_whole(py: Python<'_>, open: &Py<PyAny>, path: String) -> PyResult<Py<PyAny>> {
    Ok(invoke(py, open, &OPEN_WHOLE, (path,))?.unbind())
}

/// The SeekServer's `open_member(path, member)`.
pub fn open_member(py: Python<'_>, open: &Py<PyAny>, path: String, member: String) -> PyResult<Py<PyAny>> {
    Ok(invoke(py, open, &OPEN_MEMBER, (path, member))?.unbind())
}

/// The SeekServer's `log(level, line)`.
pub fn server_log(py: Python<'_>, log: &Py<PyAny>, level: &str, line: &str) -> PyResult<()> {
    invoke(py, log, &SERVER_LOG, (level, line)).map(drop)
}

/// What the SeekServer's URL verifier says of a signed URL (`valid`, `expired`, `invalid`).
pub fn verify_url(py: Python<'_>, verify: &Py<PyAny>, url_path: &str, query: &str) -> PyResult<String> {
    invoke(py, verify, &VERIFY_URL, (url_path, query))?.extract()
}

// --- the exception hierarchy ---

/// Module holding the exception hierarchy.
pub const ERRORS_MODULE: &str = "qeltrix_v6.errors";

static ERROR_CLASSES: PyOnceLock<Vec<Py<PyType>>> = PyOnceLock::new();

/// The exception classes, in the order of [`ERROR_NAMES`].
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

/// Class names in `qeltrix_v6.errors`, indexed by [`ErrorClass`]; `_core.ERROR_CLASSES`.
pub const ERROR_NAMES: [&str; 8] = [
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

/// Whether `e` is an instance of the error kind `class`.
pub fn is_error(py: Python<'_>, e: &PyErr, class: ErrorClass) -> bool {
    error_class(py, class).is_ok_and(|cls| e.is_instance(py, &cls))
}

/// Register `PYTHON_CALLS` and `ERROR_CLASSES` on the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("PYTHON_CALLS", PYTHON_CALLS.to_vec())?;
    m.add("ERROR_CLASSES", ERROR_NAMES.to_vec())?;
    Ok(())
}
