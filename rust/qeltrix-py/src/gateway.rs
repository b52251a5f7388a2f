//! The GatewayServer binding: `qeltrix-server`'s TCP loops with stream keys from the Python
//! layer (`qeltrix_v6.gateway`), and `recover_stream` for stored streams without an index.
use crate::calls::{self, is_error, ErrorClass};
use crate::error::io_error;
use crate::framecrypto::FrameCrypto;
use crate::io::PyBuf;
use crate::pipeline::seconds;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};
use qeltrix_format::{BlockMeta, Header, META_FRAME_LEN};
use qeltrix_server::gateway::{
    recover_stream, start_gateway, FrameJob, GatewayConfig, GatewayHandle, GwError, Keyring, Mode, SessionStep,
    StreamKeys,
};
use qeltrix_server::LogLevel;
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::sync::Mutex;

pub(crate) fn gw_err(py: Python<'_>, e: PyErr) -> GwError {
    let is = |c| is_error(py, &e, c);
    let msg = e.value(py).to_string();
    if is(ErrorClass::Authentication) {
        GwError::Auth(msg)
    } else if is(ErrorClass::WrongKey) {
        GwError::WrongKey(msg)
    } else {
        GwError::Protocol(format!("{}: {msg}", e.get_type(py)))
    }
}

/// Keys of one stream: a `ContainerKeys`. Frames are sealed and opened by [`FrameCrypto`]
/// (its `cryptography` objects, called from here); the sink's other calls hand Python buffers
/// from a small shared pool ([`with_bufs`]): at most a few calls run at once (the gateway's
/// crypto gate), so a thousand connections do not each hold two buffers of a block.
pub struct PyStreamKeys {
    keys: Py<PyAny>,
    frames: Option<FrameCrypto>,
}

impl PyStreamKeys {
    pub(crate) fn new(keys: Py<PyAny>) -> PyStreamKeys {
        PyStreamKeys { keys, frames: None }
    }

    /// The stream's frame crypto, set up on its first frame.
    fn frames(&mut self, py: Python<'_>) -> Result<&FrameCrypto, GwError> {
        if self.frames.is_none() {
            self.frames = Some(FrameCrypto::new(py, &self.keys).map_err(|e| gw_err(py, e))?);
        }
        Ok(self.frames.as_ref().expect("set above"))
    }
}

/// Input and output buffers lent to one crypto call.
type BufPair = (Option<PyBuf>, Option<PyBuf>);
/// The pooled pairs and their bytes in all.
static BUF_POOL: Mutex<(Vec<BufPair>, usize)> = Mutex::new((Vec::new(), 0));
/// The pool keeps pairs up to this many bytes in all, and no buffer larger than
/// `POOL_MAX_BUF` (bigger ones, for blocks of several MiB, are freed after their call).
const POOL_BYTES: usize = 8 << 20;
const POOL_MAX_BUF: usize = 2 << 20;

fn pair_bytes(p: &BufPair) -> usize {
    let len = |b: &Option<PyBuf>| b.as_ref().map_or(0, |b| b.as_slice().len());
    len(&p.0) + len(&p.1)
}

/// One pair from the pool (an empty one when it runs out).
fn take_pair(pool: &mut (Vec<BufPair>, usize)) -> BufPair {
    let p = pool.0.pop().unwrap_or((None, None));
    pool.1 -= pair_bytes(&p);
    p
}

/// Give a pair back to the pool (the GIL is held: buffers are made and freed only under it).
fn give_pair(pool: &mut (Vec<BufPair>, usize), p: BufPair) {
    let big = |b: &Option<PyBuf>| b.as_ref().is_some_and(|b| b.as_slice().len() > POOL_MAX_BUF);
    let bytes = pair_bytes(&p);
    if !big(&p.0) && !big(&p.1) && pool.1 + bytes <= POOL_BYTES {
        pool.1 += bytes;
        pool.0.push(p);
    }
}

/// Run `f` with a pair of buffers from the pool.
fn with_bufs<T>(f: impl FnOnce(&mut Option<PyBuf>, &mut Option<PyBuf>) -> T) -> T {
    let (mut inbuf, mut outbuf) = take_pair(&mut BUF_POOL.lock().expect("pool lock"));
    let r = f(&mut inbuf, &mut outbuf);
    give_pair(&mut BUF_POOL.lock().expect("pool lock"), (inbuf, outbuf));
    r
}

fn ensure(py: Python<'_>, slot: &mut Option<PyBuf>, cap: usize) -> PyResult<()> {
    if slot.as_ref().is_none_or(|b| b.as_slice().len() < cap) {
        *slot = Some(PyBuf::new(py, cap.max(1))?);
    }
    Ok(())
}

impl StreamKeys for PyStreamKeys {
    fn seal(&mut self, block_index: u64, meta_flags: u8, pt: &[u8], frame: &mut Vec<u8>) -> Result<(), GwError> {
        Python::attach(|py| self.frames(py)?.seal(py, block_index, meta_flags, pt, frame))
    }

    fn open_meta(&mut self, meta_frame: &[u8]) -> Result<BlockMeta, GwError> {
        let meta_pt = Python::attach(|py| {
            with_bufs(|inb, _| -> PyResult<Vec<u8>> {
                ensure(py, inb, META_FRAME_LEN)?;
                let inbuf = inb.as_mut().expect("ensured");
                inbuf.as_mut_slice()[..META_FRAME_LEN].copy_from_slice(meta_frame);
                calls::open_meta(py, &self.keys, inbuf)
            })
        })
        .map_err(|e| Python::attach(|py| gw_err(py, e)))?;
        BlockMeta::decode(&meta_pt).map_err(|e| GwError::Auth(e.to_string()))
    }

    fn open_data(&mut self, meta: &BlockMeta, data_ct: &[u8], pt: &mut Vec<u8>) -> Result<(), GwError> {
        let pt_len = meta.pt_len as usize;
        Python::attach(|py| {
            with_bufs(|inb, outb| -> PyResult<()> {
                ensure(py, inb, META_FRAME_LEN + data_ct.len())?;
                ensure(py, outb, pt_len)?;
                let (inbuf, outbuf) = (inb.as_mut().expect("ensured"), outb.as_ref().expect("ensured"));
                inbuf.as_mut_slice()[META_FRAME_LEN..META_FRAME_LEN + data_ct.len()].copy_from_slice(data_ct);
                calls::open_data(py, &self.keys, meta, inbuf, outbuf)?;
                pt.clear();
                pt.extend_from_slice(&outbuf.as_slice()[..pt_len]);
                Ok(())
            })
        })
        .map_err(|e| Python::attach(|py| gw_err(py, e)))
    }

    fn open_frame(&mut self, buf: &[u8], pt: &mut Vec<u8>) -> Result<(BlockMeta, bool), GwError> {
        Python::attach(|py| self.frames(py)?.open(py, buf, pt))
    }

    fn seal_index(&mut self, index_pt: &[u8], footer_offset: u64) -> Result<Vec<u8>, GwError> {
        Python::attach(|py| calls::seal_index(py, &self.keys, index_pt, footer_offset))
            .map_err(|e| Python::attach(|py| gw_err(py, e)))
    }

    fn frame_digest(&mut self, meta_frame: &[u8]) -> Result<[u8; 32], GwError> {
        Python::attach(|py| {
            with_bufs(|inb, _| -> PyResult<[u8; 32]> {
                ensure(py, inb, META_FRAME_LEN)?;
                let inbuf = inb.as_mut().expect("ensured");
                inbuf.as_mut_slice()[..META_FRAME_LEN].copy_from_slice(&meta_frame[..META_FRAME_LEN]);
                calls::frame_digest(py, &self.keys, inbuf)
            })
        })
        .map_err(|e| Python::attach(|py| gw_err(py, e)))
    }

    fn sha256(&mut self, data: &[u8]) -> Result<[u8; 32], GwError> {
        Python::attach(|py| calls::sha256(py, &self.keys, data)).map_err(|e| Python::attach(|py| gw_err(py, e)))
    }
}

/// The gateway's key material, held by a Python object (`qeltrix_v6.gateway._Keyring`), and a
/// sink's signing key (a `qeltrix_v6._crypto.Ed25519Signer`, FORMAT.md section 15), if any.
struct PyKeyring(Py<PyAny>, Option<Py<PyAny>>);

impl Keyring for PyKeyring {
    type Keys = PyStreamKeys;
    /// A completed `qeltrix_v6._crypto.Handshake` or `SharedKeySession`.
    type Session = Py<PyAny>;

    // The gateway runs the handshake's I/O; each step takes the GIL for its crypto only.
    fn new_session(&self) -> Result<Option<Py<PyAny>>, GwError> {
        Python::attach(|py| calls::handshake_new(py, &self.0).map(Some).map_err(|e| gw_err(py, e)))
    }

    fn session_msg_lens(&self, session: &Py<PyAny>) -> Result<(usize, usize, usize), GwError> {
        Python::attach(|py| calls::session_msg_lens(py, session).map_err(|e| gw_err(py, e)))
    }

    fn session_step(&self, session: &Py<PyAny>, step: SessionStep<'_>) -> Result<Vec<u8>, GwError> {
        Python::attach(|py| {
            match step {
                SessionStep::Start => calls::session_step0(py, session, &calls::SESSION_START),
                SessionStep::Respond(m) => calls::session_step1(py, session, &calls::SESSION_RESPOND, m),
                SessionStep::Finish(m) => calls::session_step1(py, session, &calls::SESSION_FINISH, m),
                SessionStep::Confirm(m) => calls::session_step1(py, session, &calls::SESSION_CONFIRM, m),
            }
            .map_err(|e| gw_err(py, e))
        })
    }

    fn new_stream(
        &self,
        session: Option<&Py<PyAny>>,
        container_id: Option<[u8; 16]>,
        block_size: u32,
    ) -> Result<(Vec<u8>, PyStreamKeys), GwError> {
        Python::attach(|py| {
            let (header, keys) =
                calls::new_stream(py, &self.0, session, container_id, block_size).map_err(|e| gw_err(py, e))?;
            Ok((header, PyStreamKeys::new(keys)))
        })
    }

    fn accept_stream(&self, session: Option<&Py<PyAny>>, header: &Header) -> Result<PyStreamKeys, GwError> {
        Python::attach(|py| {
            let keys = calls::accept_stream(py, &self.0, session, &header.encoded).map_err(|e| gw_err(py, e))?;
            Ok(PyStreamKeys::new(keys))
        })
    }

    fn storage_header(
        &self,
        session: Option<&Py<PyAny>>,
        header: &Header,
        keys: &PyStreamKeys,
    ) -> Result<Vec<u8>, GwError> {
        Python::attach(|py| {
            calls::storage_header(py, &self.0, session, &header.encoded, &keys.keys).map_err(|e| gw_err(py, e))
        })
    }

    fn sink_signer(&self) -> Result<Option<[u8; 32]>, GwError> {
        let Some(signer) = &self.1 else { return Ok(None) };
        Python::attach(|py| calls::signer_public(py, signer).map(Some).map_err(|e| gw_err(py, e)))
    }

    fn sign(&self, message: &[u8]) -> Result<[u8; 64], GwError> {
        let Some(signer) = &self.1 else {
            return Err(GwError::Protocol("this gateway has no signing key".into()));
        };
        Python::attach(|py| calls::sign(py, signer, message).map_err(|e| gw_err(py, e)))
    }

    fn on_thread(&self, f: &mut (dyn FnMut() + Send)) {
        crate::pipeline::with_thread_state(f)
    }

    fn reply_id(&self, request: &[u8; 16]) -> Result<[u8; 16], GwError> {
        Python::attach(|py| calls::reply_id(py, &self.0, request).map_err(|e| gw_err(py, e)))
    }

    /// A batch of frames under one GIL acquisition, each sealed or opened by its stream's
    /// [`FrameCrypto`] (their own `Python::attach` then only counts a nesting level); each job
    /// gets its own result.
    fn run_frames(&self, jobs: &mut [FrameJob<PyStreamKeys>]) {
        Python::attach(|_| jobs.iter_mut().for_each(FrameJob::run));
    }

    fn log(&self, level: LogLevel, line: &str) {
        let level = match level {
            LogLevel::Info => "info",
            LogLevel::Warning => "warning",
            LogLevel::Error => "error",
        };
        Python::attach(|py| {
            if let Err(e) = calls::keyring_log(py, &self.0, level, line) {
                e.print(py);
            }
        });
    }
}

/// A gateway error as the Python exception a caller of the frame hooks below expects.
fn frame_error(e: GwError) -> PyErr {
    let class = match e {
        GwError::Auth(_) => ErrorClass::Authentication,
        GwError::WrongKey(_) => ErrorClass::WrongKey,
        GwError::Truncated(_) => ErrorClass::Truncated,
        _ => ErrorClass::Malformed,
    };
    Python::attach(|py| match calls::error_class(py, class) {
        Ok(cls) => PyErr::from_type(cls, e.to_string()),
        Err(err) => err,
    })
}

/// The gateway's own sealing of one stream frame (the code its workers run; for tests and
/// tools): frame `block_index` of `pt` under `keys` (a `ContainerKeys`).
#[pyfunction]
pub fn gateway_seal_frame(
    py: Python<'_>,
    keys: Py<PyAny>,
    block_index: u64,
    meta_flags: u8,
    pt: &[u8],
) -> PyResult<Py<PyBytes>> {
    let mut frame = Vec::new();
    PyStreamKeys::new(keys)
        .frames(py)
        .and_then(|f| f.seal(py, block_index, meta_flags, pt, &mut frame))
        .map_err(frame_error)?;
    Ok(PyBytes::new(py, &frame).unbind())
}

/// The gateway's own opening of the stream frame at the start of `buf` (for tests and tools):
/// its `meta_pt` and, when the whole frame is in `buf`, its plaintext (else `None`).
#[pyfunction]
pub fn gateway_open_frame(py: Python<'_>, keys: Py<PyAny>, buf: &[u8]) -> PyResult<(Py<PyBytes>, Option<Py<PyBytes>>)> {
    let mut pt = Vec::new();
    let (meta, opened) = PyStreamKeys::new(keys)
        .frames(py)
        .and_then(|f| f.open(py, buf, &mut pt))
        .map_err(frame_error)?;
    let meta_pt = PyBytes::new(py, &meta.encode()).unbind();
    Ok((meta_pt, opened.then(|| PyBytes::new(py, &pt).unbind())))
}

/// A running gateway; `qeltrix_v6.GatewayServer` wraps it.
#[pyclass(frozen, module = "qeltrix_v6._core")]
pub struct GatewayCore {
    handle: Mutex<Option<GatewayHandle>>,
    addr: std::net::SocketAddr,
    metrics_addr: Option<std::net::SocketAddr>,
}

#[pymethods]
impl GatewayCore {
    #[new]
    #[pyo3(signature = (mode, host, port, keyring, target=None, sink_dir=None, sink_raw=false, block_size=qeltrix_format::DEFAULT_BLOCK_SIZE,
                        flush_delay=0.0, max_connections=1024, idle_timeout=300.0, connect_timeout=10.0,
                        stats_interval=0.0, handshake_timeout=10.0, signer=None, metrics=None, sink_store=None))]
    #[allow(clippy::too_many_arguments)] // a constructor's keyword arguments
    fn new(
        py: Python<'_>,
        mode: &str,
        host: &str,
        port: u16,
        keyring: Py<PyAny>,
        target: Option<String>,
        sink_dir: Option<PathBuf>,
        sink_raw: bool,
        block_size: u32,
        flush_delay: f64,
        max_connections: usize,
        idle_timeout: f64,
        connect_timeout: f64,
        stats_interval: f64,
        handshake_timeout: f64,
        signer: Option<Py<PyAny>>,
        metrics: Option<(String, u16)>,
        sink_store: Option<PyRef<'_, crate::store::StoreSink>>,
    ) -> PyResult<GatewayCore> {
        if signer.is_some() && (mode != "sink") {
            return Err(PyValueError::new_err("only a sink signs what it stores"));
        }
        let mode = match mode {
            "reflect" => Mode::Reflect,
            "router" => Mode::Router,
            "decrypt" => Mode::Decrypt,
            "sink" => Mode::Sink,
            other => return Err(PyValueError::new_err(format!("unknown gateway mode {other:?}"))),
        };
        let listen = (host, port)
            .to_socket_addrs()
            .map_err(|e| io_error(format!("cannot resolve {host}: {e}")))?
            .next()
            .ok_or_else(|| io_error(format!("cannot resolve {host}")))?;
        let mut config = GatewayConfig::new(mode, listen);
        config.target = target;
        config.sink_dir = sink_dir;
        config.sink_store = sink_store.map(|s| s.target());
        config.sink_raw = sink_raw;
        config.block_size = block_size;
        config.flush_delay = seconds("flush_delay", flush_delay, 0.0)?;
        config.max_connections = max_connections.max(1);
        config.idle_timeout = seconds("idle_timeout", idle_timeout, 0.01)?;
        config.connect_timeout = seconds("connect_timeout", connect_timeout, 0.01)?;
        config.stats_interval = seconds("stats_interval", stats_interval, 0.0)?;
        config.handshake_timeout = seconds("handshake_timeout", handshake_timeout, 0.01)?;
        if let Some((mhost, mport)) = metrics {
            config.metrics_addr = Some(
                (mhost.as_str(), mport)
                    .to_socket_addrs()
                    .map_err(|e| io_error(format!("cannot resolve {mhost}: {e}")))?
                    .next()
                    .ok_or_else(|| io_error(format!("cannot resolve {mhost}")))?,
            );
        }
        let handle = py
            .detach(|| start_gateway(config, PyKeyring(keyring, signer)))
            .map_err(|e| io_error(e.to_string()))?;
        let addr = handle.local_addr();
        let metrics_addr = handle.metrics_addr();
        Ok(GatewayCore {
            handle: Mutex::new(Some(handle)),
            addr,
            metrics_addr,
        })
    }

    /// `(host, port)` actually bound.
    #[getter]
    fn address(&self) -> (String, u16) {
        (self.addr.ip().to_string(), self.addr.port())
    }

    /// `(host, port)` of the metrics endpoint, or `None`.
    #[getter]
    fn metrics_address(&self) -> Option<(String, u16)> {
        self.metrics_addr.map(|a| (a.ip().to_string(), a.port()))
    }

    /// Stop accepting connections (the start of a drain); open ones go on, and so do
    /// `/metrics` (with `/healthz` answering 503) and `stats()`.
    fn stop_accepting(&self, py: Python<'_>) {
        let mut guard = self.handle.lock().expect("handle lock");
        if let Some(h) = guard.as_mut() {
            py.detach(|| h.stop_accepting());
        }
    }

    /// Aggregate and per-connection counters.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let guard = self.handle.lock().expect("handle lock");
        let out = PyDict::new(py);
        let Some(h) = guard.as_ref() else { return Ok(out) };
        let a = h.aggregate();
        out.set_item("connections", a.connections)?;
        out.set_item("active", a.active)?;
        out.set_item("refused", a.refused)?;
        out.set_item("failed", a.failed)?;
        out.set_item("handshake_failures", a.handshake_failures)?;
        out.set_item("bytes_in", a.bytes_in)?;
        out.set_item("bytes_out", a.bytes_out)?;
        out.set_item("blocks", a.blocks)?;
        let conns = PyList::empty(py);
        for c in h.connections() {
            let d = PyDict::new(py);
            d.set_item("id", c.id)?;
            d.set_item("peer", c.peer.to_string())?;
            d.set_item("bytes_in", c.bytes_in)?;
            d.set_item("bytes_out", c.bytes_out)?;
            d.set_item("blocks", c.blocks)?;
            d.set_item("duration", c.duration.as_secs_f64())?;
            d.set_item("open", c.open)?;
            d.set_item("error", c.error)?;
            conns.append(d)?;
        }
        out.set_item("per_connection", conns)?;
        Ok(out)
    }

    /// Stop accepting connections.
    fn stop(&self, py: Python<'_>) {
        let handle = self.handle.lock().expect("handle lock").take();
        if let Some(mut h) = handle {
            py.detach(move || h.stop());
        }
    }
}

/// Rebuild the index of a stored stream (`src`, a path) into `dst` (a path), with `keys`
/// for its header. Returns `(blocks, pt_len, complete, why_stopped)`.
#[pyfunction]
pub fn recover_stream_file(
    py: Python<'_>,
    src: PathBuf,
    dst: PathBuf,
    keys: Py<PyAny>,
) -> PyResult<(u64, u64, bool, Option<String>)> {
    let r = py.detach(|| -> Result<_, String> {
        let mut input = File::open(&src).map_err(|e| format!("{}: {e}", src.display()))?;
        let mut prefix = vec![0u8; qeltrix_format::header::HEADER_FIXED_LEN];
        std::io::Read::read_exact(&mut input, &mut prefix).map_err(|e| format!("reading the header: {e}"))?;
        let header_len = Header::peek_len(&prefix).map_err(|e| e.to_string())?;
        let mut bytes = vec![0u8; header_len as usize];
        input.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
        std::io::Read::read_exact(&mut input, &mut bytes).map_err(|e| format!("reading the header: {e}"))?;
        let header = Header::parse(&bytes).map_err(|e| e.to_string())?;
        let mut out = std::io::BufWriter::new(
            File::options()
                .write(true)
                .truncate(true)
                .open(&dst)
                .map_err(|e| e.to_string())?,
        );
        let mut reader = std::io::BufReader::with_capacity(1 << 20, input);
        let mut keys = PyStreamKeys::new(keys);
        let rec = recover_stream(&mut reader, &header, &mut keys, &mut out).map_err(|e| e.to_string())?;
        let file = out.into_inner().map_err(|e| e.to_string())?;
        file.sync_all().map_err(|e| e.to_string())?;
        Ok(rec)
    });
    let rec = r.map_err(io_error)?;
    Ok((rec.blocks, rec.pt_len, rec.complete, rec.stopped))
}
