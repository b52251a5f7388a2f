//! `qeltrix_v6._core`: the Rust half of Qeltrix V6 as a Python extension module.
//!
//! Framing, the index, seek math, the permutation and the threaded pipelines live here and in
//! `qeltrix-format`; every AEAD, HKDF and SHA-256 call goes back to `qeltrix_v6._crypto`
//! (`calls.rs` lists every touchpoint: the Rust/Python contract). The GIL is released around all I/O and waits.
mod calls;
mod codec;
mod constants;
mod error;
mod framecrypto;
mod gateway;
mod header;
mod io;
mod objstream;
mod pack;
mod pipeline;
mod reader;
mod server;
mod store;

use pyo3::prelude::*;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(pack::pack_stream, m)?)?;
    m.add_class::<reader::Reader>()?;
    m.add_class::<reader::PyBlockCache>()?;
    m.add_class::<store::StoreObject>()?;
    m.add_class::<store::StoreUpload>()?;
    m.add_class::<store::StoreSink>()?;
    m.add_function(wrap_pyfunction!(store::recover_stream_store, m)?)?;
    m.add_function(wrap_pyfunction!(store::store_list, m)?)?;
    m.add_class::<server::SeekServerCore>()?;
    m.add_class::<gateway::GatewayCore>()?;
    m.add_function(wrap_pyfunction!(gateway::recover_stream_file, m)?)?;
    m.add_function(wrap_pyfunction!(gateway::gateway_seal_frame, m)?)?;
    m.add_function(wrap_pyfunction!(gateway::gateway_open_frame, m)?)?;
    m.add_function(wrap_pyfunction!(header::parse_header, m)?)?;
    m.add_class::<header::PyHeader>()?;
    codec::register(m)?;
    calls::register(m)?;
    constants::register(m)?;
    Ok(())
}
