//! `_core.Header`: the one parsed-header type every parse path returns (`parse_header`,
//! `Reader.header`), instead of a dict on one path and getters on the other.
use crate::error::Error;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};
use qeltrix_format::Header;

/// A parsed header (FORMAT.md section 3): structure and limits checked, checksum and MAC not.
#[pyclass(frozen, name = "Header", module = "qeltrix_v6._core")]
pub struct PyHeader(pub Header);

#[pymethods]
impl PyHeader {
    #[getter]
    fn format_version(&self) -> u16 {
        self.0.format_version
    }
    #[getter]
    fn header_len(&self) -> u32 {
        self.0.header_len
    }
    #[getter]
    fn header_flags(&self) -> u16 {
        self.0.header_flags
    }
    /// Whether the `SIGNED` flag is set (FORMAT.md section 15).
    #[getter]
    fn signed(&self) -> bool {
        self.0.signed()
    }
    #[getter]
    fn cipher_id(&self) -> u8 {
        self.0.cipher_id
    }
    #[getter]
    fn block_size(&self) -> u32 {
        self.0.block_size
    }
    #[getter]
    fn perm_window(&self) -> u32 {
        self.0.perm_window
    }
    #[getter]
    fn container_id<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.0.container_id)
    }
    /// `[(kind, body), ...]` in header order.
    #[getter]
    fn stanzas<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        PyList::new(py, self.0.stanzas.iter().map(|s| (s.kind, PyBytes::new(py, &s.body))))
    }
    /// Every header byte (`header_len` bytes), as parsed.
    #[getter]
    fn header_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.0.encoded)
    }
    /// Header bytes covered by `header_sha256`.
    #[getter]
    fn header_checksummed<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.0.checksummed())
    }
    #[getter]
    fn header_sha256<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.0.header_sha256())
    }
    /// Header bytes covered by `header_mac`.
    #[getter]
    fn header_maced<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.0.maced())
    }
    #[getter]
    fn header_mac<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.0.header_mac())
    }
}

/// Parse a header's bytes (structure and limits only; the caller verifies checksum and MAC).
#[pyfunction]
pub fn parse_header(data: &[u8]) -> PyResult<PyHeader> {
    Ok(PyHeader(Header::parse(data).map_err(Error::from)?))
}
