//! Errors of the codec (FORMAT.md section 8 names the classes: malformed, corrupt,
//! truncated; limits are malformed input that would cost too much to accept).
use std::fmt;

/// What went wrong while parsing untrusted bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormatError {
    /// The bytes are not a V6 container, or a field is out of its domain.
    Malformed(String),
    /// A field exceeds a limit of FORMAT.md section 9.
    Limit(String),
    /// The container was valid once but its bytes no longer agree with each other.
    Corrupt(String),
    /// The container ends early: its trailer is missing.
    Truncated(String),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, FormatError>;

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FormatError::Malformed(m) => write!(f, "malformed container: {m}"),
            FormatError::Limit(m) => write!(f, "limit exceeded: {m}"),
            FormatError::Corrupt(m) => write!(f, "container is corrupt or was tampered with: {m}"),
            FormatError::Truncated(m) => write!(f, "container is truncated: {m}"),
        }
    }
}

impl std::error::Error for FormatError {}

pub(crate) fn malformed<T>(msg: impl Into<String>) -> Result<T> {
    Err(FormatError::Malformed(msg.into()))
}

pub(crate) fn limit<T>(msg: impl Into<String>) -> Result<T> {
    Err(FormatError::Limit(msg.into()))
}

pub(crate) fn corrupt<T>(msg: impl Into<String>) -> Result<T> {
    Err(FormatError::Corrupt(msg.into()))
}
