//! The SeekServer's access log and per-response counters.
//!
//! Every response body is wrapped in a [`Tracked`] body that counts the bytes handed to the
//! connection and, when hyper drops it (the body ended, the client went away, or the
//! connection was closed), updates [`SeekStats`] and writes one access line. So an aborted
//! download logs the bytes really sent (handed to hyper, which writes them to the socket
//! before it asks for more: the count can exceed what the client read by the socket and
//! hyper buffers), not the `Content-Length` it announced.
//!
//! Two line formats:
//! - `combined`: the Apache/nginx combined log format, then the `Range` header and the
//!   duration in seconds (as nginx's `$request_time`):
//!   `127.0.0.1 - - [30/Nov/2026:19:30:41 +0000] "GET /v.mp4 HTTP/2.0" 206 1024 "-" "curl/8.5.0" "bytes=0-1023" 0.004`
//! - `json`: one object per line with `time`, `client`, `method`, `path`, `protocol`,
//!   `status`, `bytes`, `complete`, `referer`, `user_agent`, `range`, `duration_ms`.
//!
//! Only the path is logged, never the query string (it may carry a URL signature).
use crate::metrics::SeekStats;
use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use hyper::header::{self, HeaderMap};
use hyper::{Method, Version};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Access log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Combined,
    Json,
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Format, String> {
        match s {
            "combined" => Ok(Format::Combined),
            "json" => Ok(Format::Json),
            other => Err(format!("unknown access log format {other:?} (combined or json)")),
        }
    }
}

/// Where access lines go.
pub type Sink = Arc<dyn Fn(&str) + Send + Sync>;

/// What the access line says about a request, taken before it is answered.
#[derive(Debug, Clone)]
pub struct Entry {
    pub peer: SocketAddr,
    pub time: SystemTime,
    pub started: Instant,
    pub method: Method,
    pub path: String,
    pub version: Version,
    pub referer: Option<Vec<u8>>,
    pub user_agent: Option<Vec<u8>>,
    pub range: Option<Vec<u8>>,
}

impl Entry {
    /// The entry of a request from `peer`; `path` excludes the query string.
    pub fn new(peer: SocketAddr, method: &Method, path: &str, version: Version, headers: &HeaderMap) -> Entry {
        let get = |h: &header::HeaderName| headers.get(h).map(|v| v.as_bytes().to_vec());
        Entry {
            peer,
            time: SystemTime::now(),
            started: Instant::now(),
            method: method.clone(),
            path: path.to_owned(),
            version,
            referer: get(&header::REFERER),
            user_agent: get(&header::USER_AGENT),
            range: get(&header::RANGE),
        }
    }

    /// The access line for this request, answered with `status` after `sent` body bytes.
    pub fn line(&self, format: Format, status: u16, sent: u64, complete: bool) -> String {
        let secs = self.started.elapsed().as_secs_f64();
        let protocol = protocol(self.version);
        match format {
            Format::Combined => {
                let q = |v: &Option<Vec<u8>>| v.as_deref().map_or_else(|| "-".to_owned(), quoted_clf);
                format!(
                    "{} - - [{}] \"{} {} {protocol}\" {status} {sent} \"{}\" \"{}\" \"{}\" {secs:.3}",
                    self.peer.ip(),
                    clf_time(self.time),
                    self.method,
                    quoted_clf(self.path.as_bytes()),
                    q(&self.referer),
                    q(&self.user_agent),
                    q(&self.range),
                )
            }
            Format::Json => {
                let j = |v: &Option<Vec<u8>>| v.as_deref().map_or_else(|| "null".to_owned(), json_string);
                format!(
                    "{{\"time\":\"{}\",\"client\":\"{}\",\"method\":{},\"path\":{},\"protocol\":\"{protocol}\",\
                     \"status\":{status},\"bytes\":{sent},\"complete\":{complete},\"referer\":{},\
                     \"user_agent\":{},\"range\":{},\"duration_ms\":{:.3}}}",
                    iso_time(self.time),
                    self.peer.ip(),
                    json_string(self.method.as_str().as_bytes()),
                    json_string(self.path.as_bytes()),
                    j(&self.referer),
                    j(&self.user_agent),
                    j(&self.range),
                    secs * 1e3,
                )
            }
        }
    }
}

fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// A field inside double quotes of a combined line: printable ASCII as is, `"` and `\`
/// escaped, anything else as `\xHH` (what nginx does), so a line is always one line.
fn quoted_clf(v: &[u8]) -> String {
    let mut out = String::with_capacity(v.len());
    for &b in v {
        match b {
            b'"' | b'\\' => {
                out.push('\\');
                out.push(b as char);
            }
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\x{b:02X}");
            }
        }
    }
    out
}

/// A JSON string of header bytes (bytes above 0x7f are taken as Latin-1, as RFC 9110 5.5's
/// obs-text allows).
fn json_string(v: &[u8]) -> String {
    let mut out = String::with_capacity(v.len() + 2);
    out.push('"');
    for &b in v {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\u{b:04x}");
            }
        }
    }
    out.push('"');
    out
}

/// UTC civil time of `t`: (year, month, day, hour, minute, second, millisecond).
fn civil(t: SystemTime) -> (i64, u32, u32, u64, u64, u64, u32) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        month,
        day,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis(),
    )
}

/// `30/Nov/2026:19:30:41 +0000`
fn clf_time(t: SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (y, mo, d, h, mi, s, _) = civil(t);
    format!("{d:02}/{}/{y}:{h:02}:{mi:02}:{s:02} +0000", MONTHS[(mo - 1) as usize])
}

/// `2026-11-30T19:30:41.123Z`
fn iso_time(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s, ms) = civil(t);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
}

/// A response body that counts what it hands out and reports when it is dropped.
pub struct Tracked<B: HttpBody> {
    inner: B,
    stats: Arc<SeekStats>,
    status: u16,
    sent: u64,
    failed: bool,
    log: Option<(Entry, Format, Sink)>,
}

impl<B: HttpBody> Tracked<B> {
    /// Wrap a response body; counts it as in flight until dropped.
    pub fn new(inner: B, stats: Arc<SeekStats>, status: u16, log: Option<(Entry, Format, Sink)>) -> Tracked<B> {
        SeekStats::add(&stats.responses_in_flight, 1);
        stats.request(status);
        Tracked {
            inner,
            stats,
            status,
            sent: 0,
            failed: false,
            log,
        }
    }
}

impl<B: HttpBody> Drop for Tracked<B> {
    fn drop(&mut self) {
        self.stats.responses_in_flight.fetch_sub(1, Ordering::Relaxed);
        let complete = !self.failed && self.inner.is_end_stream();
        if !complete && !self.failed {
            SeekStats::add(&self.stats.client_aborts, 1);
        }
        if let Some((entry, format, sink)) = &self.log {
            sink(&entry.line(*format, self.status, self.sent, complete));
        }
    }
}

impl<B> HttpBody for Tracked<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    this.sent += n;
                    SeekStats::add(&this.stats.bytes_sent, n);
                }
            }
            Poll::Ready(Some(Err(_))) => this.failed = true,
            Poll::Ready(None) | Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn times() {
        let t = UNIX_EPOCH + Duration::from_millis(1_796_067_041_123);
        assert_eq!(clf_time(t), "30/Nov/2026:19:30:41 +0000");
        assert_eq!(iso_time(t), "2026-11-30T19:30:41.123Z");
        assert_eq!(clf_time(UNIX_EPOCH), "01/Jan/1970:00:00:00 +0000");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(iso_time(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn escaping() {
        assert_eq!(quoted_clf(b"a \"b\" \\ \n\xff"), "a \\\"b\\\" \\\\ \\x0A\\xFF");
        assert_eq!(json_string(b"a\"\\\n\xe9"), "\"a\\\"\\\\\\u000a\\u00e9\"");
    }
}
