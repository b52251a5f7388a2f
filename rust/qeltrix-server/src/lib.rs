//! Qeltrix V6 servers, generic over where plaintext comes from.
//!
//! The SeekServer (`http`) serves plaintext byte ranges of containers under a root directory
//! over HTTP/1.1 and HTTP/2 with RFC 9110 range semantics. It knows nothing about cryptography: it asks
//! an [`Opener`] for a [`Container`] and the container for plaintext chunks. The pyo3 glue
//! implements both over `qeltrix_v6._core.Reader`; the tests here use plaintext files.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod blockcache;
pub mod cors;
pub mod gateway;
pub mod http;
pub mod listing;
pub mod metrics;
pub mod mime;
pub mod path;
pub mod plan;
pub mod range;
pub mod signed;
pub mod steppool;

use bytes::Bytes;
use std::path::Path;
use std::sync::Arc;

/// Why a container could not be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenError {
    /// No such file.
    NotFound,
    /// The server's credential does not open it (answered 403).
    WrongKey(String),
    /// Not a container, corrupt, tampered or truncated (answered 500, logged).
    Damaged(String),
    /// Reading failed (answered 500, logged).
    Io(String),
}

/// A read failed part-way: the container is damaged or the disk failed. No byte of the
/// failing block has been handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadError(pub String);

/// An open container, as the server sees it: a plaintext of known length.
pub trait Container: Send + Sync + 'static {
    /// Plaintext length in bytes.
    fn pt_len(&self) -> u64;
    /// Opaque identity of this plaintext, used in the strong `ETag`.
    fn etag_id(&self) -> String;
    /// Blocking: hand plaintext `[pos, pos + len)` to `emit` in order, in chunks. Stops early
    /// when `emit` returns false (the client went away).
    fn read(&self, pos: u64, len: u64, emit: &mut dyn FnMut(Bytes) -> bool) -> Result<(), ReadError>;
    /// When the container's bytes last changed, if the container knows it better than its
    /// file does (an object's Last-Modified); used for remote roots.
    fn mtime(&self) -> Option<std::time::SystemTime> {
        None
    }
}

/// Opens containers and receives log lines.
pub trait Opener: Send + Sync + 'static {
    /// The container type.
    type C: Container;
    /// Blocking: open the container file at `path` (already resolved under the root).
    fn open(&self, path: &Path) -> Result<Arc<Self::C>, OpenError>;
    /// Blocking: open `path` for a request that reads the whole container in order (a GET
    /// without a range, or one from byte 0 to the end). An opener of object storage can start
    /// streaming the object at once; by default the same as [`Opener::open`].
    fn open_whole(&self, path: &Path) -> Result<Arc<Self::C>, OpenError> {
        self.open(path)
    }
    /// Blocking: open the member `member` of the archive file at `path` as a container of its
    /// own (docs/FORMAT.md section 16). By default there are no archives: not found.
    fn open_member(&self, path: &Path, member: &str) -> Result<Arc<Self::C>, OpenError> {
        let _ = (path, member);
        Err(OpenError::NotFound)
    }
    /// Blocking: check the signature a request's URL carries (`qx-expires`, `qx-sig`; the scheme
    /// is in README "Browsers and CDNs"). `url_path` is the raw path before `?`, `query` the raw query.
    /// Only called when the server was configured with signed URLs and the query names a
    /// `qx-sig`; the default (no signing key) finds none valid.
    fn check_url_signature(&self, url_path: &str, query: &str) -> UrlSignature {
        let _ = (url_path, query);
        UrlSignature::Invalid
    }
    /// One log line (errors, warnings, and access lines when enabled).
    fn log(&self, level: LogLevel, line: &str) {
        eprintln!("qeltrix-server {level:?}: {line}");
    }
    /// One access log line (`access_log.rs`), when the access log is on. A binding may route
    /// it apart from other info lines, so that it shows whenever it was asked for.
    fn access(&self, line: &str) {
        self.log(LogLevel::Info, line)
    }
}

/// The outcome of checking a signed URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlSignature {
    /// Signed for this path and not yet expired.
    Valid,
    /// Signed for this path, but its expiry time has passed (answered 403).
    Expired,
    /// Malformed, tampered with, signed with another key or for another path (answered 403).
    Invalid,
}

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Info,
    Warning,
    Error,
}
