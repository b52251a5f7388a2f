//! The extension's error type and its one conversion to a Python exception.
use crate::calls::{error_class, ErrorClass};
use pyo3::prelude::*;
use qeltrix_format::FormatError;
use std::fmt;

/// Everything that can go wrong inside the Rust pipelines.
#[derive(Debug)]
pub enum Error {
    /// The container's bytes failed a structural check.
    Format(FormatError),
    /// Reading or writing failed.
    Io(std::io::Error),
    /// A Python callback (crypto or file object) raised; re-raised unchanged.
    Py(PyErr),
    /// A frame or section does not match the container's signature (FORMAT.md section 15).
    Signature(String),
    /// A pipeline stage panicked or stopped without saying why: a bug, reported as
    /// `QeltrixError` instead of a hang or a `PanicException`.
    Internal(String),
}

/// Result alias of the extension.
pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Format(e) => e.fmt(f),
            Error::Io(e) => write!(f, "I/O error: {e}"),
            Error::Py(e) => e.fmt(f),
            Error::Signature(m) => write!(f, "signature check failed: {m}"),
            Error::Internal(m) => write!(f, "internal error: {m}"),
        }
    }
}

impl From<FormatError> for Error {
    fn from(e: FormatError) -> Self {
        Error::Format(e)
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e)
    }
}

impl From<PyErr> for Error {
    fn from(e: PyErr) -> Self {
        Error::Py(e)
    }
}

/// `QeltrixIOError(msg)`: an operating-system failure outside a pipeline (binding a socket,
/// resolving a host, a recovery's files).
pub fn io_error(msg: impl Into<String>) -> PyErr {
    raise(ErrorClass::Io, msg.into())
}

fn raise(class: ErrorClass, msg: String) -> PyErr {
    Python::attach(|py| match error_class(py, class) {
        Ok(cls) => PyErr::from_type(cls, msg),
        Err(e) => e,
    })
}

impl From<Error> for PyErr {
    fn from(e: Error) -> PyErr {
        match e {
            Error::Py(e) => e,
            Error::Signature(_) => raise(ErrorClass::Signature, e.to_string()),
            Error::Internal(_) => raise(ErrorClass::Base, e.to_string()),
            Error::Io(ref io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
                raise(ErrorClass::Truncated, format!("container is truncated: {io}"))
            }
            Error::Io(io) => raise(ErrorClass::Io, format!("I/O error: {io}")),
            Error::Format(ref f) => {
                let class = match f {
                    FormatError::Malformed(_) => ErrorClass::Malformed,
                    FormatError::Limit(_) => ErrorClass::Limit,
                    FormatError::Corrupt(_) => ErrorClass::Authentication,
                    FormatError::Truncated(_) => ErrorClass::Truncated,
                };
                raise(class, e.to_string())
            }
        }
    }
}
