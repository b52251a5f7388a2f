//! The SeekServer binding: `qeltrix-server`'s HTTP loop over `Reader`s that the Python layer
//! opens (it owns the credentials: `qeltrix_v6.server.SeekServer`).
use crate::calls::{self, is_error, ErrorClass};
use crate::error::io_error;
use crate::reader::Reader;
use bytes::Bytes;
use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;
use qeltrix_server::cors::Cors;
use qeltrix_server::http::{start, Config, ServerHandle, ThreadHooks};
use qeltrix_server::metrics::SeekStats;
use qeltrix_server::{Container, LogLevel, OpenError, Opener, ReadError, UrlSignature};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// An open container: a loaded `Reader` (frozen, so readable without the GIL).
struct PyContainer(Py<Reader>);

impl Container for PyContainer {
    fn pt_len(&self) -> u64 {
        self.0.get().pt_len().unwrap_or(0)
    }

    fn etag_id(&self) -> String {
        let id: String = self
            .0
            .get()
            .container_id_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        match self.0.get().window() {
            // A member of an archive: its own entity, distinct from its neighbours of equal size.
            Some((offset, size)) => format!("{id}-{offset:x}-{size:x}"),
            None => format!("{id}-{:x}", self.pt_len()),
        }
    }

    fn mtime(&self) -> Option<std::time::SystemTime> {
        self.0.get().source_mtime()
    }

    fn read(&self, pos: u64, len: u64, emit: &mut dyn FnMut(Bytes) -> bool) -> Result<(), ReadError> {
        self.0
            .get()
            .read_chunks(pos, len, emit)
            .map_err(|e| ReadError(e.to_string()))
    }
}

/// Opens containers through a Python callable `open(path: str) -> Reader`; logs through
/// `log(level: str, line: str)`; checks signed URLs through `verify_url(path: str, query: str)
/// -> "valid" | "expired" | "invalid"` (`qeltrix_v6._signed_url.check`, which does the MAC and
/// its constant-time comparison through `qeltrix_v6._crypto`).
struct PyOpener {
    open: Py<PyAny>,
    open_whole: Option<Py<PyAny>>,
    open_member: Option<Py<PyAny>>,
    log: Option<Py<PyAny>>,
    verify_url: Option<Py<PyAny>>,
}

impl PyOpener {
    /// Call an opener (`open` or `open_member`) and check the `Reader` it returns.
    fn open_with(&self, call: impl FnOnce(Python<'_>) -> PyResult<Py<PyAny>>) -> Result<Arc<PyContainer>, OpenError> {
        Python::attach(|py| {
            let classify = |e: PyErr| -> OpenError {
                let is = |c| is_error(py, &e, c);
                let msg = e.value(py).to_string();
                if is(ErrorClass::WrongKey) {
                    OpenError::WrongKey(msg)
                } else if e.is_instance_of::<pyo3::exceptions::PyFileNotFoundError>(py) {
                    OpenError::NotFound
                } else if is(ErrorClass::Io) || e.is_instance_of::<PyOSError>(py) {
                    OpenError::Io(msg)
                } else if is(ErrorClass::Base) {
                    OpenError::Damaged(msg)
                } else {
                    OpenError::Io(format!("{}: {msg}", e.get_type(py)))
                }
            };
            let reader = call(py).map_err(classify)?;
            let reader: Py<Reader> = reader
                .extract(py)
                .map_err(|e| OpenError::Io(format!("opener returned {e}")))?;
            // A reader without its index would be served as an empty file: refuse it.
            if let Err(e) = reader.get().pt_len() {
                return Err(OpenError::Io(format!(
                    "opener returned a reader that is not loaded: {e}"
                )));
            }
            Ok(Arc::new(PyContainer(reader)))
        })
    }
}

impl Opener for PyOpener {
    type C = PyContainer;

    fn open(&self, path: &Path) -> Result<Arc<PyContainer>, OpenError> {
        let path = path.to_string_lossy().into_owned();
        self.open_with(|py| calls::open_container(py, &self.open, path))
    }

    fn open_whole(&self, path: &Path) -> Result<Arc<PyContainer>, OpenError> {
        let Some(open_whole) = &self.open_whole else {
            return self.open(path);
        };
        let path = path.to_string_lossy().into_owned();
        self.open_with(|py| calls::open_whole(py, open_whole, path))
    }

    fn open_member(&self, path: &Path, member: &str) -> Result<Arc<PyContainer>, OpenError> {
        let Some(open_member) = &self.open_member else {
            return Err(OpenError::NotFound);
        };
        let path = path.to_string_lossy().into_owned();
        self.open_with(|py| calls::open_member(py, open_member, path, member.to_owned()))
    }

    fn check_url_signature(&self, url_path: &str, query: &str) -> UrlSignature {
        let Some(verify) = &self.verify_url else {
            return UrlSignature::Invalid;
        };
        let outcome =
            Python::attach(|py| calls::verify_url(py, verify, url_path, query).map_err(|e| e.value(py).to_string()));
        match outcome.as_deref() {
            Ok("valid") => UrlSignature::Valid,
            Ok("expired") => UrlSignature::Expired,
            Ok(_) => UrlSignature::Invalid,
            Err(e) => {
                self.log(LogLevel::Error, &format!("checking a signed URL failed: {e}"));
                UrlSignature::Invalid
            }
        }
    }

    fn log(&self, level: LogLevel, line: &str) {
        let Some(log) = &self.log else {
            eprintln!("qeltrix serve: {line}");
            return;
        };
        let level = match level {
            LogLevel::Info => "info",
            LogLevel::Warning => "warning",
            LogLevel::Error => "error",
        };
        Python::attach(|py| {
            if let Err(e) = calls::server_log(py, log, level, line) {
                e.print(py);
            }
        });
    }

    fn access(&self, line: &str) {
        match &self.log {
            Some(log) => Python::attach(|py| {
                if let Err(e) = calls::server_log(py, log, "access", line) {
                    e.print(py);
                }
            }),
            None => eprintln!("{line}"),
        }
    }
}

/// The running HTTP server; `qeltrix_v6.SeekServer` wraps it.
#[pyclass(frozen, module = "qeltrix_v6._core")]
pub struct SeekServerCore {
    handle: Mutex<Option<ServerHandle>>,
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    /// Kept after `stop()` so the final counts stay readable.
    stats: Arc<SeekStats>,
}

fn resolve(host: &str, port: u16) -> PyResult<SocketAddr> {
    (host, port)
        .to_socket_addrs()
        .map_err(|e| io_error(format!("cannot resolve {host}: {e}")))?
        .next()
        .ok_or_else(|| io_error(format!("cannot resolve {host}")))
}

#[pymethods]
impl SeekServerCore {
    /// Bind `host:port` and serve containers under `root` on a background thread.
    #[new]
    #[pyo3(signature = (root, open, log=None, host="127.0.0.1", port=0, token=None, tls_cert=None, tls_key=None,
                        max_connections=1024, max_connections_per_client=64, header_timeout=10.0, idle_timeout=60.0, access_log=false, workers=2,
                        access_log_format="combined", metrics=None,
                        verify_url=None, cors_origins=None, cache_control=None, list_directories=false, open_member=None, remote_ttl=None, open_whole=None))]
    #[allow(clippy::too_many_arguments)] // a constructor's keyword arguments
    fn new(
        py: Python<'_>,
        root: PathBuf,
        open: Py<PyAny>,
        log: Option<Py<PyAny>>,
        host: &str,
        port: u16,
        token: Option<String>,
        tls_cert: Option<PathBuf>,
        tls_key: Option<PathBuf>,
        max_connections: usize,
        max_connections_per_client: usize,
        header_timeout: f64,
        idle_timeout: f64,
        access_log: bool,
        workers: usize,
        access_log_format: &str,
        metrics: Option<(String, u16)>,
        verify_url: Option<Py<PyAny>>,
        cors_origins: Option<Vec<String>>,
        cache_control: Option<String>,
        list_directories: bool,
        open_member: Option<Py<PyAny>>,
        remote_ttl: Option<f64>,
        open_whole: Option<Py<PyAny>>,
    ) -> PyResult<SeekServerCore> {
        let addr = resolve(host, port)?;
        let mut config = Config::new(addr, root);
        config.access_log_format = access_log_format
            .parse()
            .map_err(pyo3::exceptions::PyValueError::new_err)?;
        config.metrics_addr = match metrics {
            Some((h, p)) => Some(resolve(&h, p)?),
            None => None,
        };
        config.token = token;
        config.signed_urls = verify_url.is_some();
        config.cors = Cors::new(cors_origins.unwrap_or_default());
        if let Some(cc) = cache_control {
            config.cache_control = cc.parse().map_err(|_| {
                pyo3::exceptions::PyValueError::new_err(format!("not a valid Cache-Control value: {cc:?}"))
            })?;
        }
        config.list = list_directories;
        config.remote = match remote_ttl {
            Some(t) => Some(crate::pipeline::seconds("remote_ttl", t, 0.0)?),
            None => None,
        };
        config.tls = match (tls_cert, tls_key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                return Err(pyo3::exceptions::PyValueError::new_err(
                    "TLS needs both a certificate and a key",
                ))
            }
        };
        config.max_connections = max_connections.max(1);
        config.max_connections_per_client = max_connections_per_client.max(1);
        config.header_timeout = crate::pipeline::seconds("header_timeout", header_timeout, 0.001)?;
        config.idle_timeout = crate::pipeline::seconds("idle_timeout", idle_timeout, 0.001)?;
        config.access_log = access_log;
        config.worker_threads = workers.max(1);
        config.thread_hooks = Some(ThreadHooks {
            on_start: Arc::new(crate::pipeline::attach_thread),
            on_stop: Arc::new(crate::pipeline::detach_thread),
        });
        let opener = PyOpener {
            open,
            open_whole,
            open_member,
            log,
            verify_url,
        };
        let handle = py
            .detach(|| start(config, opener))
            .map_err(|e| io_error(e.to_string()))?;
        let addr = handle.local_addr();
        Ok(SeekServerCore {
            metrics_addr: handle.metrics_addr(),
            stats: handle.stats(),
            handle: Mutex::new(Some(handle)),
            addr,
        })
    }

    /// `(host, port)` actually bound.
    #[getter]
    fn address(&self) -> (String, u16) {
        (self.addr.ip().to_string(), self.addr.port())
    }

    /// Whether the server is still serving.
    #[getter]
    fn running(&self) -> bool {
        self.handle
            .lock()
            .expect("handle lock")
            .as_ref()
            .is_some_and(|h| h.is_running())
    }

    /// `(host, port)` of the metrics endpoint, or None.
    #[getter]
    fn metrics_address(&self) -> Option<(String, u16)> {
        self.metrics_addr.map(|a| (a.ip().to_string(), a.port()))
    }

    /// The counters as `{name: int}` (labelled ones as `name:label`).
    fn stats(&self) -> Vec<(String, u64)> {
        self.stats.snapshot()
    }

    /// Stop accepting; let responses in flight finish for up to `drain` seconds, then close
    /// every connection. Returns how many connections were cut at the end of the drain.
    #[pyo3(signature = (drain=0.0))]
    fn stop(&self, py: Python<'_>, drain: f64) -> u64 {
        let handle = self.handle.lock().expect("handle lock").take();
        match handle {
            Some(mut h) => {
                let drain = if drain.is_finite() && drain > 0.0 {
                    Duration::from_secs_f64(drain.min(86_400.0))
                } else {
                    Duration::ZERO
                };
                py.detach(move || h.stop_draining(drain))
            }
            None => 0,
        }
    }
}
