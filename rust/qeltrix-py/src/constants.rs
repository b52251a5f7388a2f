//! The format's constants, exported to Python as `_core.NAME`: each is defined once, in
//! `qeltrix-format`, and the Python layer reads it from here instead of restating it.
//! (`tests/reference_decoder.py` keeps its own copies on purpose; `tests/test_contract.py`
//! checks that they agree.)
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use qeltrix_format::{handshake as hs, header as h, signature as sig};

macro_rules! export {
    ($m:expr; $($name:ident = $value:expr),* $(,)?) => {
        $( $m.add(stringify!($name), $value)?; )*
    };
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    export!(m;
        FORMAT_VERSION = qeltrix_format::FORMAT_VERSION,
        TAG_LEN = qeltrix_format::TAG_LEN,
        NONCE_LEN = qeltrix_format::NONCE_LEN,
        MK_LEN = qeltrix_format::MK_LEN,
        SALT_LEN = qeltrix_format::SALT_LEN,
        CONTAINER_ID_LEN = qeltrix_format::CONTAINER_ID_LEN,
        META_PT_LEN = qeltrix_format::META_PT_LEN,
        META_FRAME_LEN = qeltrix_format::META_FRAME_LEN,
        TRAILER_LEN = qeltrix_format::TRAILER_LEN,
        INDEX_ENTRY_LEN = qeltrix_format::INDEX_ENTRY_LEN,
        INDEX_FOOTER_MIN_LEN = qeltrix_format::INDEX_FOOTER_MIN_LEN,
        HEADER_FIXED_LEN = qeltrix_format::HEADER_FIXED_LEN,
        MIN_BLOCK_SIZE = qeltrix_format::MIN_BLOCK_SIZE,
        MAX_BLOCK_SIZE = qeltrix_format::MAX_BLOCK_SIZE,
        DEFAULT_BLOCK_SIZE = qeltrix_format::DEFAULT_BLOCK_SIZE,
        MAX_STREAM_BLOCK_SIZE = qeltrix_format::MAX_STREAM_BLOCK_SIZE,
        MAX_HEADER_LEN = qeltrix_format::MAX_HEADER_LEN,
        MAX_STREAM_HEADER_LEN = qeltrix_format::MAX_STREAM_HEADER_LEN,
        MAX_RECIPIENTS = qeltrix_format::MAX_RECIPIENTS,
        MAX_STANZA_BODY_LEN = qeltrix_format::MAX_STANZA_BODY_LEN,
        MAX_BLOCK_COUNT = qeltrix_format::MAX_BLOCK_COUNT,
        HEADER_FLAG_PERMUTED = qeltrix_format::HEADER_FLAG_PERMUTED,
        HEADER_FLAG_SIGNED = qeltrix_format::HEADER_FLAG_SIGNED,
        HEADER_FLAG_ARCHIVE = qeltrix_format::HEADER_FLAG_ARCHIVE,
        META_FLAG_FINAL = qeltrix_format::META_FLAG_FINAL,
        INDEX_FLAG_INCOMPLETE = qeltrix_format::INDEX_FLAG_INCOMPLETE,
        CIPHER_AES_256_GCM = qeltrix_format::CIPHER_AES_256_GCM,
        CIPHER_CHACHA20_POLY1305 = qeltrix_format::CIPHER_CHACHA20_POLY1305,
        KIND_KEY = h::KIND_KEY,
        KIND_ARGON2ID = h::KIND_ARGON2ID,
        KIND_PBKDF2 = h::KIND_PBKDF2,
        KIND_X25519 = h::KIND_X25519,
        KIND_RSA_OAEP = h::KIND_RSA_OAEP,
        KIND_KMS = h::KIND_KMS,
        KIND_HANDSHAKE = h::KIND_HANDSHAKE,
        X25519_BODY_LEN = h::X25519_BODY_LEN,
        RSA_MIN_BITS = h::RSA_MIN_BITS,
        RSA_MAX_BITS = h::RSA_MAX_BITS,
        RSA_MAX_SPKI_LEN = h::RSA_MAX_SPKI_LEN,
        KMS_MAX_KEY_ID_LEN = h::KMS_MAX_KEY_ID_LEN,
        KMS_MAX_BLOB_LEN = h::KMS_MAX_BLOB_LEN,
        ARGON2ID_MAX_T_COST = h::ARGON2ID_MAX_T_COST,
        ARGON2ID_MAX_M_COST_KIB = h::ARGON2ID_MAX_M_COST_KIB,
        ARGON2ID_MAX_LANES = h::ARGON2ID_MAX_LANES,
        PBKDF2_MIN_ITERATIONS = h::PBKDF2_MIN_ITERATIONS,
        PBKDF2_MAX_ITERATIONS = h::PBKDF2_MAX_ITERATIONS,
        SIG_FIXED_LEN = sig::SIG_FIXED_LEN,
        SIGNER_PUB_LEN = sig::SIGNER_PUB_LEN,
        SIGNATURE_LEN = sig::SIGNATURE_LEN,
        FRAME_DIGEST_LEN = sig::FRAME_DIGEST_LEN,
        X25519_LEN = hs::X25519_LEN,
        HS_MSG1_LEN = hs::HS_MSG1_LEN,
        HS_MSG2_LEN = hs::HS_MSG2_LEN,
        HS_MSG3_LEN = hs::HS_MSG3_LEN,
        SK_NONCE_LEN = hs::SK_NONCE_LEN,
        SK_MSG1_LEN = hs::SK_MSG1_LEN,
        SK_MSG2_LEN = hs::SK_MSG2_LEN,
        MAX_HS_MSG_LEN = hs::MAX_HS_MSG_LEN,
        MAGIC = PyBytes::new(py, &qeltrix_format::MAGIC),
        TRAILER_MAGIC = PyBytes::new(py, &qeltrix_format::trailer::TRAILER_MAGIC),
        HS_MAGIC = PyBytes::new(py, &hs::HS_MAGIC),
        SK_MAGIC = PyBytes::new(py, &hs::SK_MAGIC),
    );
    let names = PyDict::new(py);
    for (kind, name) in h::STANZA_NAMES {
        names.set_item(kind, name)?;
    }
    m.add("STANZA_NAMES", names)?;
    Ok(())
}
