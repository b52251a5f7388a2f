//! Codec entry points for the Python layer: header encoding and the permutation.
use crate::error::Error;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use qeltrix_format::{Header, Permutation, Stanza};

/// Encode every header byte before `header_sha256` (FORMAT.md section 3).
#[pyfunction]
#[pyo3(signature = (header_flags, cipher_id, block_size, perm_window, container_id, stanzas, min_header_len=0))]
#[allow(clippy::too_many_arguments)] // mirrors the header's fields one to one
fn encode_header_unsealed<'py>(
    py: Python<'py>,
    header_flags: u16,
    cipher_id: u8,
    block_size: u32,
    perm_window: u32,
    container_id: [u8; 16],
    stanzas: Vec<(u8, Vec<u8>)>,
    min_header_len: u32,
) -> PyResult<Bound<'py, PyBytes>> {
    let stanzas: Vec<Stanza> = stanzas.into_iter().map(|(kind, body)| Stanza { kind, body }).collect();
    let bytes = Header::encode_unsealed(
        header_flags,
        cipher_id,
        block_size,
        perm_window,
        container_id,
        &stanzas,
        min_header_len,
    )
    .map_err(Error::from)?;
    Ok(PyBytes::new(py, &bytes))
}

/// Physical slot of logical block `j` in window `window` of `k` blocks (FORMAT.md section 7).
#[pyfunction]
fn perm_forward(k_perm: [u8; 16], window: u64, k: u64, j: u64) -> PyResult<u64> {
    if k == 0 || j >= k {
        return Err(pyo3::exceptions::PyValueError::new_err("need 0 <= j < k"));
    }
    Ok(Permutation::new(k_perm, window, k).forward(j))
}

/// The writer's default `perm_window` for `block_size`.
#[pyfunction]
fn default_perm_window(block_size: u32) -> u32 {
    qeltrix_format::default_perm_window(block_size)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(encode_header_unsealed, m)?)?;
    m.add_function(wrap_pyfunction!(perm_forward, m)?)?;
    m.add_function(wrap_pyfunction!(default_perm_window, m)?)?;
    m.add("DEFAULT_BLOCK_SIZE", qeltrix_format::DEFAULT_BLOCK_SIZE)?;
    m.add("MIN_BLOCK_SIZE", qeltrix_format::MIN_BLOCK_SIZE)?;
    m.add("MAX_STREAM_HEADER_LEN", qeltrix_format::MAX_STREAM_HEADER_LEN)?;
    m.add("MAX_BLOCK_SIZE", qeltrix_format::MAX_BLOCK_SIZE)?;
    m.add(
        "ARGON2ID_MAX_M_COST_KIB",
        qeltrix_format::header::ARGON2ID_MAX_M_COST_KIB,
    )?;
    Ok(())
}
