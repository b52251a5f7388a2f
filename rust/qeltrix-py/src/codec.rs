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

/// `signed_message` of FORMAT.md section 15 from the hashes the crypto layer computed.
#[pyfunction]
fn signed_message<'py>(
    py: Python<'py>,
    header_sha256: [u8; 32],
    block_count: u64,
    frame_digests_sha256: [u8; 32],
    footer_sha256: [u8; 32],
    footer_offset: u64,
    signer_pub: [u8; 32],
) -> Bound<'py, PyBytes> {
    let m = qeltrix_format::signed_message(
        &header_sha256,
        block_count,
        &frame_digests_sha256,
        &footer_sha256,
        footer_offset,
        &signer_pub,
    );
    PyBytes::new(py, &m)
}

/// `signature_section = signer_pub || frame_digests || signature` (FORMAT.md section 15).
#[pyfunction]
fn encode_signature_section<'py>(
    py: Python<'py>,
    signer_pub: [u8; 32],
    frame_digests: Vec<u8>,
    signature: [u8; 64],
) -> PyResult<Bound<'py, PyBytes>> {
    let n = (frame_digests.len() / qeltrix_format::signature::FRAME_DIGEST_LEN) as u64;
    let s = qeltrix_format::SignatureSection {
        signer_pub,
        frame_digests,
        signature,
    }
    .encode();
    qeltrix_format::SignatureSection::parse(&s, n).map_err(Error::from)?;
    Ok(PyBytes::new(py, &s))
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
    m.add_function(wrap_pyfunction!(signed_message, m)?)?;
    m.add_function(wrap_pyfunction!(encode_signature_section, m)?)?;
    Ok(())
}
