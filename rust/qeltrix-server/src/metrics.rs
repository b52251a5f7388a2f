//! Counters of a server and their Prometheus text exposition (format 0.0.4).
//!
//! The writer is generic over a list of [`Metric`]s, so any server (the SeekServer here, the
//! gateway later) renders its counters the same way; [`serve`] answers `GET /metrics` and
//! `GET /healthz` on a separate listener inside the caller's tokio runtime. [`SeekStats`] holds
//! the SeekServer's counters as atomics: updating one costs a relaxed atomic add, and
//! `stats()` in Python and `/metrics` read the same numbers.
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Prometheus metric type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    /// Only goes up (its name ends in `_total`).
    Counter,
    /// Goes up and down.
    Gauge,
}

/// One sample: a family `name` (with its `help` and `kind`), optional labels, and a value.
/// Samples of one family must be adjacent in the list given to [`render`].
#[derive(Debug, Clone)]
pub struct Metric {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: MetricType,
    pub labels: Vec<(&'static str, String)>,
    pub value: u64,
}

impl Metric {
    /// An unlabelled sample.
    pub fn new(name: &'static str, help: &'static str, kind: MetricType, value: u64) -> Metric {
        Metric {
            name,
            help,
            kind,
            labels: Vec::new(),
            value,
        }
    }

    /// The same sample with one more label.
    pub fn label(mut self, name: &'static str, value: impl Into<String>) -> Metric {
        self.labels.push((name, value.into()));
        self
    }
}

/// The text exposition of `metrics`: `# HELP` and `# TYPE` once per family, then its samples.
pub fn render(metrics: &[Metric]) -> String {
    let mut out = String::new();
    let mut last: Option<&str> = None;
    for m in metrics {
        if last != Some(m.name) {
            let kind = match m.kind {
                MetricType::Counter => "counter",
                MetricType::Gauge => "gauge",
            };
            let _ = writeln!(out, "# HELP {} {}", m.name, escape(m.help, false));
            let _ = writeln!(out, "# TYPE {} {kind}", m.name);
            last = Some(m.name);
        }
        out.push_str(m.name);
        if !m.labels.is_empty() {
            out.push('{');
            for (i, (k, v)) in m.labels.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{k}=\"{}\"", escape(v, true));
            }
            out.push('}');
        }
        let _ = writeln!(out, " {}", m.value);
    }
    out
}

/// Escape `\` and newlines (and `"` in label values), as the text format requires.
fn escape(s: &str, quote: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out
}

/// What the metrics endpoint reports: the samples, and whether the server is healthy (serving,
/// not draining).
pub trait MetricsSource: Send + Sync + 'static {
    fn metrics(&self) -> Vec<Metric>;
    fn healthy(&self) -> bool;
}

/// Serve `GET /metrics` (text exposition) and `GET /healthz` (`200 ok` while healthy, `503
/// draining` otherwise) on `listener` until `stop` turns true. HTTP/1.1 only, small requests,
/// a short header timeout: it is an operator's port, not a public one.
pub async fn serve(listener: TcpListener, source: Arc<dyn MetricsSource>, mut stop: watch::Receiver<bool>) {
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let source = source.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let source = source.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&req, &*source)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .max_buf_size(16 * 1024)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(Duration::from_secs(60), conn).await;
        });
    }
}

fn answer(req: &Request<Incoming>, source: &dyn MetricsSource) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, ctype: &'static str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r
    };
    const TEXT: &str = "text/plain; charset=utf-8";
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "only GET\n".into());
    }
    match req.uri().path() {
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            render(&source.metrics()),
        ),
        "/healthz" if source.healthy() => reply(StatusCode::OK, TEXT, "ok\n".into()),
        "/healthz" => reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, "draining\n".into()),
        _ => reply(StatusCode::NOT_FOUND, TEXT, "try /metrics or /healthz\n".into()),
    }
}

/// Why a connection was refused at accept.
#[derive(Debug, Clone, Copy)]
pub enum Refusal {
    TotalLimit,
    PerClientLimit,
}

/// The SeekServer's counters (all relaxed atomics: each is exact, a snapshot of several is not
/// a single instant).
#[derive(Debug, Default)]
pub struct SeekStats {
    pub connections_active: AtomicU64,
    pub connections_total: AtomicU64,
    pub refused_total_limit: AtomicU64,
    pub refused_per_client_limit: AtomicU64,
    pub tls_handshake_failures: AtomicU64,
    pub http2_connections: AtomicU64,
    /// Requests answered, by status class 1xx..5xx.
    pub requests: [AtomicU64; 5],
    pub bytes_sent: AtomicU64,
    pub responses_in_flight: AtomicU64,
    /// Responses whose client went away before the body ended.
    pub client_aborts: AtomicU64,
    pub open_cache_hits: AtomicU64,
    pub open_cache_misses: AtomicU64,
    /// Containers the server's credential did not open, or that were damaged.
    pub unlock_failures: AtomicU64,
    /// Set when the server stops accepting: `/healthz` answers 503.
    pub draining: AtomicBool,
}

/// Status classes as labels, in the order of [`SeekStats::requests`].
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

impl SeekStats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn refused(&self, why: Refusal) {
        Self::add(
            match why {
                Refusal::TotalLimit => &self.refused_total_limit,
                Refusal::PerClientLimit => &self.refused_per_client_limit,
            },
            1,
        );
    }

    /// Count a response by its status.
    pub fn request(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        Self::add(&self.requests[class], 1);
    }

    /// `(name, value)` of every counter, for Python's `stats()`; labelled families are
    /// flattened as `name:label`.
    pub fn snapshot(&self) -> Vec<(String, u64)> {
        self.metrics()
            .into_iter()
            .map(|m| {
                // A counter's `_total` suffix is Prometheus convention, not part of the name,
                // except for the total of connections.
                let short = m.name.trim_start_matches("qeltrix_seek_");
                let short = match short {
                    "connections_total" => short,
                    _ => short.trim_end_matches("_total"),
                };
                match m.labels.first() {
                    Some((_, v)) => (format!("{short}:{v}"), m.value),
                    None => (short.to_owned(), m.value),
                }
            })
            .collect()
    }
}

impl MetricsSource for SeekStats {
    fn metrics(&self) -> Vec<Metric> {
        use MetricType::{Counter, Gauge};
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = vec![
            Metric::new(
                "qeltrix_seek_connections_active",
                "Connections open now.",
                Gauge,
                get(&self.connections_active),
            ),
            Metric::new(
                "qeltrix_seek_connections_total",
                "Connections accepted and served (refused ones not included).",
                Counter,
                get(&self.connections_total),
            ),
            Metric::new(
                "qeltrix_seek_connections_refused_total",
                "Connections closed at accept, by the limit that refused them.",
                Counter,
                get(&self.refused_total_limit),
            )
            .label("reason", "total_limit"),
            Metric::new(
                "qeltrix_seek_connections_refused_total",
                "",
                Counter,
                get(&self.refused_per_client_limit),
            )
            .label("reason", "per_client_limit"),
            Metric::new(
                "qeltrix_seek_http2_connections_total",
                "Connections that spoke HTTP/2 (over TLS with ALPN h2, or h2c).",
                Counter,
                get(&self.http2_connections),
            ),
            Metric::new(
                "qeltrix_seek_tls_handshake_failures_total",
                "TLS handshakes that failed or timed out.",
                Counter,
                get(&self.tls_handshake_failures),
            ),
        ];
        for (class, counter) in STATUS_CLASSES.iter().zip(&self.requests) {
            out.push(
                Metric::new(
                    "qeltrix_seek_requests_total",
                    "Responses started, by status class.",
                    Counter,
                    get(counter),
                )
                .label("code", *class),
            );
        }
        out.extend([
            Metric::new(
                "qeltrix_seek_responses_in_flight",
                "Responses whose body is still being sent.",
                Gauge,
                get(&self.responses_in_flight),
            ),
            Metric::new(
                "qeltrix_seek_sent_bytes_total",
                "Response body bytes handed to the connection.",
                Counter,
                get(&self.bytes_sent),
            ),
            Metric::new(
                "qeltrix_seek_client_aborts_total",
                "Responses whose client went away before the body ended.",
                Counter,
                get(&self.client_aborts),
            ),
            Metric::new(
                "qeltrix_seek_open_cache_hits_total",
                "Requests served from an already open container.",
                Counter,
                get(&self.open_cache_hits),
            ),
            Metric::new(
                "qeltrix_seek_open_cache_misses_total",
                "Requests that had to open (unlock) a container.",
                Counter,
                get(&self.open_cache_misses),
            ),
            Metric::new(
                "qeltrix_seek_unlock_failures_total",
                "Opens that failed: wrong key, damaged or unreadable container.",
                Counter,
                get(&self.unlock_failures),
            ),
        ]);
        // A family's HELP is taken from its first sample; later ones may leave it empty.
        let mut help = "";
        let mut name = "";
        for m in &mut out {
            if m.name != name {
                (name, help) = (m.name, m.help);
            } else {
                m.help = help;
            }
        }
        out
    }

    fn healthy(&self) -> bool {
        !self.draining.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_families_once_with_escaped_labels() {
        let text = render(&[
            Metric::new("a_total", "A thing.\nSecond line", MetricType::Counter, 3).label("k", "x\"y\\z"),
            Metric::new("a_total", "A thing.\nSecond line", MetricType::Counter, 4).label("k", "w"),
            Metric::new("b", "B.", MetricType::Gauge, 0),
        ]);
        assert_eq!(
            text,
            "# HELP a_total A thing.\\nSecond line\n# TYPE a_total counter\n\
             a_total{k=\"x\\\"y\\\\z\"} 3\na_total{k=\"w\"} 4\n\
             # HELP b B.\n# TYPE b gauge\nb 0\n"
        );
    }

    #[test]
    fn seek_stats_snapshot_names() {
        let s = SeekStats::default();
        s.request(206);
        s.request(404);
        s.refused(Refusal::PerClientLimit);
        let snap: std::collections::HashMap<_, _> = s.snapshot().into_iter().collect();
        assert_eq!(snap["requests:2xx"], 1);
        assert_eq!(snap["requests:4xx"], 1);
        assert_eq!(snap["connections_refused:per_client_limit"], 1);
        assert_eq!(snap["connections_active"], 0);
    }
}
