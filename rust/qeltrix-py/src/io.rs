//! Sources, sinks and GIL-free buffers for the pipelines.
//!
//! A source or sink is either a file descriptor (the fast path: Rust reads and writes it with
//! the GIL released) or a Python binary file object (`readinto` / `write` / `seek`, called
//! with the GIL held). Buffers are `bytearray`s (see [`PyBuf`]) that Python sees as memoryviews,
//! so the crypto layer can `encrypt_into` them.
use crate::calls;
use crate::error::Result;
use crate::store::{StoreObject, StoreUpload};
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyByteArray, PyBytes, PyInt, PyMemoryView, PySlice};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{BorrowedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

/// A `bytearray` owned by one pipeline stage, whose bytes Rust reads and writes without the GIL.
///
/// `buffer` is a buffer export of the bytearray (`PyObject_GetBuffer`) held for the PyBuf's
/// whole life: while an export exists CPython refuses to resize a bytearray (`BufferError`),
/// so its storage neither moves nor shrinks, whatever Python code does with it. Python only
/// ever receives memoryviews of it ([`PyBuf::view`]), during calls the owning thread makes.
/// The export and that memoryview both hold a reference to the bytearray.
pub struct PyBuf {
    buffer: PyBuffer<u8>,
    /// A memoryview of the whole bytearray, made once: every call gets this one instead of a
    /// new one (two fewer objects made and freed per crypto call; issue 12).
    whole: Py<PyAny>,
}

impl PyBuf {
    /// A zero-filled buffer of `cap` bytes.
    pub fn new(py: Python<'_>, cap: usize) -> PyResult<PyBuf> {
        let b = PyByteArray::new_with(py, cap, |_| Ok(()))?;
        let buffer = PyBuffer::<u8>::get(b.as_any())?;
        debug_assert!(!buffer.readonly() && buffer.is_c_contiguous() && buffer.len_bytes() == cap);
        let whole = PyMemoryView::from(b.as_any())?.into_any().unbind();
        Ok(PyBuf { buffer, whole })
    }

    /// A memoryview of the whole buffer, for passing to Python (the same one every time).
    pub fn view<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(self.whole.bind(py).clone())
    }

    /// The whole buffer.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `buffer` is a C-contiguous export of `len_bytes()` bytes, kept valid and
        // unmoved for as long as `self` holds it (an exported bytearray cannot be resized).
        // Python writes into it only through memoryviews passed to a call the owning thread
        // makes, never while this shared borrow (which needs that thread) is alive.
        unsafe { std::slice::from_raw_parts(self.buffer.buf_ptr().cast::<u8>(), self.buffer.len_bytes()) }
    }

    /// The whole buffer, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as for `as_slice`; the export is writable (a bytearray's), and `&mut self`
        // makes this the only Rust reference while no Python call runs on this buffer.
        unsafe { std::slice::from_raw_parts_mut(self.buffer.buf_ptr().cast::<u8>(), self.buffer.len_bytes()) }
    }
}

fn memview_slice<'py>(py: Python<'py>, buf: &PyBuf, start: usize, end: usize) -> PyResult<Bound<'py, PyAny>> {
    buf.view(py)?
        .get_item(PySlice::new(py, start as isize, end as isize, 1))
}

/// An `int` argument as a duplicated file descriptor; `None` for any other object (a file
/// object). `bool` and negative numbers are refused (`TypeError`, `ValueError`), and a
/// descriptor that is not open is `QeltrixIOError`.
fn fd_of(obj: &Bound<'_, PyAny>) -> PyResult<Option<File>> {
    if obj.is_instance_of::<PyBool>() {
        return Err(PyTypeError::new_err("a file descriptor must be an int, not a bool"));
    }
    if !obj.is_instance_of::<PyInt>() {
        return Ok(None);
    }
    let fd: i64 = obj
        .extract()
        .map_err(|_| PyValueError::new_err("file descriptor out of range"))?;
    let fd = RawFd::try_from(fd).ok().filter(|&fd| fd >= 0).ok_or_else(|| {
        PyValueError::new_err(format!("file descriptor {fd} is out of range (negative or too large)"))
    })?;
    // SAFETY: `fd` is non-negative (`borrow_raw` requires `fd != -1`); the caller passes a
    // descriptor it keeps open for the duration of the call, and we only borrow it to duplicate
    // it (a closed one fails with EBADF). The duplicate is ours to own and close.
    let owned = unsafe { BorrowedFd::borrow_raw(fd) }
        .try_clone_to_owned()
        .map_err(|e| crate::error::io_error(format!("file descriptor {fd}: {e}")))?;
    Ok(Some(File::from(owned)))
}

/// A byte count a Python file object returned, refused when it claims more than it was given
/// (slicing past the buffer would otherwise panic).
fn checked_count(n: usize, asked: usize, method: &str) -> Result<usize> {
    if n > asked {
        return Err(std::io::Error::other(format!(
            "{method} returned {n}, more than the {asked} bytes it was given"
        ))
        .into());
    }
    Ok(n)
}

/// Where plaintext (pack) or a container (unpack) is read from, sequentially.
pub enum Source {
    Fd(File),
    Py(Py<PyAny>),
}

impl Source {
    /// An `int` is a file descriptor; anything else is a binary file object.
    pub fn from_py(obj: &Bound<'_, PyAny>) -> PyResult<Source> {
        Ok(match fd_of(obj)? {
            Some(f) => Source::Fd(f),
            None => Source::Py(obj.clone().unbind()),
        })
    }

    /// Read until `buf[..want]` is full or the source ends; returns the bytes read. A short
    /// count therefore always means end of input.
    pub fn fill(&mut self, buf: &mut PyBuf, want: usize) -> Result<usize> {
        let mut got = 0;
        while got < want {
            let n = match self {
                Source::Fd(f) => match f.read(&mut buf.as_mut_slice()[got..want]) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e.into()),
                },
                Source::Py(obj) => Python::attach(|py| -> PyResult<usize> {
                    let view = memview_slice(py, buf, got, want)?;
                    // None means "no data yet" on a non-blocking stream: treat as a retry.
                    Ok(calls::readinto(py, obj, view, false)?.unwrap_or(usize::MAX))
                })?,
            };
            if n == usize::MAX {
                std::thread::yield_now();
                continue;
            }
            if n == 0 {
                break;
            }
            got += checked_count(n, want - got, "readinto")?;
        }
        Ok(got)
    }
}

/// A random-access container source shared by reader threads.
pub enum RandomSource {
    Fd(File),
    /// Python file objects are not thread-safe for seek+read pairs: one at a time. The lock
    /// is always taken before attaching to Python, never while attached.
    Py(Mutex<Py<PyAny>>),
    /// An object in object storage (`s3://`), read with ranged GETs without the GIL.
    Store(Py<StoreObject>),
}

impl RandomSource {
    /// An `int` is a file descriptor; anything else is a seekable binary file object.
    pub fn from_py(obj: &Bound<'_, PyAny>) -> PyResult<RandomSource> {
        if let Ok(s) = obj.cast::<StoreObject>() {
            return Ok(RandomSource::Store(s.clone().unbind()));
        }
        Ok(match fd_of(obj)? {
            Some(f) => RandomSource::Fd(f),
            None => RandomSource::Py(Mutex::new(obj.clone().unbind())),
        })
    }

    /// Total length in bytes.
    pub fn len(&self) -> Result<u64> {
        match self {
            RandomSource::Fd(f) => Ok(f.metadata()?.len()),
            RandomSource::Store(s) => Ok(s.get().size()),
            RandomSource::Py(m) => {
                let obj = m.lock().expect("source lock");
                Ok(Python::attach(|py| calls::seek(py, &obj, 0, 2))?)
            }
        }
    }

    /// Read exactly `n` bytes at `pos` into `buf[..n]`; a short file is `UnexpectedEof`.
    pub fn read_exact_at(&self, pos: u64, buf: &mut PyBuf, n: usize) -> Result<()> {
        match self {
            RandomSource::Fd(f) => Ok(f.read_exact_at(&mut buf.as_mut_slice()[..n], pos)?),
            RandomSource::Store(s) => s.get().read_exact_at(pos, &mut buf.as_mut_slice()[..n]),
            RandomSource::Py(m) => {
                let obj = m.lock().expect("source lock");
                Python::attach(|py| -> Result<()> {
                    calls::seek(py, &obj, pos, 0)?;
                    let mut got = 0;
                    while got < n {
                        let view = memview_slice(py, buf, got, n)?;
                        let r = calls::readinto(py, &obj, view, true)?;
                        match r {
                            Some(0) => return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into()),
                            Some(k) => got += checked_count(k, n - got, "readinto")?,
                            None => std::thread::yield_now(),
                        }
                    }
                    Ok(())
                })
            }
        }
    }

    /// The object-storage source, when this is one (for coalesced prefetches).
    pub fn store(&self) -> Option<&StoreObject> {
        match self {
            RandomSource::Store(s) => Some(s.get()),
            _ => None,
        }
    }

    /// Read `n` bytes at `pos` into a new vector (small structures: header, trailer, footer).
    pub fn read_vec_at(&self, pos: u64, n: usize) -> Result<Vec<u8>> {
        let mut buf = Python::attach(|py| PyBuf::new(py, n))?;
        self.read_exact_at(pos, &mut buf, n)?;
        Ok(buf.as_slice().to_vec())
    }
}

/// Where a container (pack) or plaintext (unpack) is written, sequentially.
pub enum Sink {
    Fd(File),
    Py(Py<PyAny>),
    /// A multipart upload to object storage; completed or aborted by the Python layer.
    Store(Py<StoreUpload>),
}

impl Sink {
    /// An `int` is a file descriptor; anything else is a binary file object.
    pub fn from_py(obj: &Bound<'_, PyAny>) -> PyResult<Sink> {
        if let Ok(s) = obj.cast::<StoreUpload>() {
            return Ok(Sink::Store(s.clone().unbind()));
        }
        Ok(match fd_of(obj)? {
            Some(f) => Sink::Fd(f),
            None => Sink::Py(obj.clone().unbind()),
        })
    }

    /// Write `buf[start..end]`.
    pub fn write_buf(&mut self, buf: &PyBuf, start: usize, end: usize) -> Result<()> {
        match self {
            Sink::Fd(f) => Ok(f.write_all(&buf.as_slice()[start..end])?),
            Sink::Store(s) => s.get().write(&buf.as_slice()[start..end]),
            Sink::Py(obj) => Python::attach(|py| -> Result<()> {
                let mut pos = start;
                while pos < end {
                    let view = memview_slice(py, buf, pos, end)?;
                    let r = calls::write(py, obj, view)?;
                    match r {
                        Some(0) => return Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into()),
                        Some(k) => pos += checked_count(k, end - pos, "write")?,
                        None => std::thread::yield_now(),
                    }
                }
                Ok(())
            }),
        }
    }

    /// Write a small byte string (header, footer, trailer).
    pub fn write_bytes(&mut self, data: &[u8]) -> Result<()> {
        match self {
            Sink::Fd(f) => Ok(f.write_all(data)?),
            Sink::Store(s) => s.get().write(data),
            Sink::Py(obj) => Python::attach(|py| -> Result<()> {
                let mut pos = 0;
                while pos < data.len() {
                    let r = calls::write(py, obj, PyBytes::new(py, &data[pos..]).into_any())?;
                    match r {
                        Some(0) => return Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into()),
                        Some(k) => pos += checked_count(k, data.len() - pos, "write")?,
                        None => std::thread::yield_now(),
                    }
                }
                Ok(())
            }),
        }
    }

    /// Flush Rust-side buffering (there is none for descriptors; Python objects flush on close).
    pub fn flush(&mut self) -> Result<()> {
        if let Sink::Fd(f) = self {
            f.flush()?;
        }
        Ok(())
    }
}
