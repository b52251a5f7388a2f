//! What to send for a GET or HEAD of one container, decided from the request headers and the
//! representation alone: no I/O, no decryption, so every case is a row of a table test.
//!
//! Preconditions first (RFC 9110 13.2.2: 412, 304), then `If-Range` (14.2: a validator that
//! no longer matches turns the request into a full one) and `Range` (`range.rs`: 206 with one
//! part or a `multipart/byteranges` body, 416, or the whole representation).
use crate::http::{evaluate_preconditions, Precondition};
use crate::range::{parse_range, RangeRequest};
use bytes::Bytes;
use hyper::header::{self, HeaderMap};
use hyper::StatusCode;
use std::time::SystemTime;

/// The representation a request is about.
#[derive(Debug, Clone)]
pub struct Representation<'a> {
    /// Plaintext length.
    pub len: u64,
    /// Strong entity tag, quoted.
    pub etag: &'a str,
    /// The file's modification time, if known, and as the `Last-Modified` text the response
    /// carries (formatted once by the caller).
    pub mtime: Option<SystemTime>,
    pub last_modified: Option<&'a str>,
    /// Media type of the plaintext.
    pub content_type: &'a str,
}

/// A part of the response body: plaintext `[first, last]`, after its multipart head (a part
/// with `first > last` carries only its head: the closing delimiter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub head: Option<Bytes>,
    pub first: u64,
    pub last: u64,
}

/// What to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// 304: the client's copy is current.
    NotModified,
    /// 412: a precondition failed.
    PreconditionFailed,
    /// 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
    /// 200 or 206 with this body.
    Send {
        status: StatusCode,
        content_type: String,
        /// `Content-Range` of a single-part 206.
        content_range: Option<String>,
        /// Exact body length (`Content-Length`).
        content_len: u64,
        parts: Vec<Part>,
    },
}

/// Decide the answer. `boundary` makes the delimiter of a multipart body (the caller makes it
/// unique, RFC 2046 5.1.1); it is called only for a multipart answer.
pub fn plan(headers: &HeaderMap, rep: &Representation<'_>, boundary: impl FnOnce() -> String) -> Plan {
    match evaluate_preconditions(headers, rep.etag, rep.mtime) {
        Precondition::Proceed => {}
        Precondition::NotModified => return Plan::NotModified,
        Precondition::Failed => return Plan::PreconditionFailed,
    }
    let hdr = |h: &header::HeaderName| headers.get(h).and_then(|v| v.to_str().ok());
    // If-Range: honour Range only if the validator still matches (strong comparison).
    let range_allowed = match hdr(&header::IF_RANGE) {
        None => true,
        Some(v) if v.starts_with('"') => v == rep.etag,
        Some(v) if v.starts_with("W/") => false,
        Some(v) => rep.last_modified == Some(v),
    };
    let (len, ctype) = (rep.len, rep.content_type);
    let range = if range_allowed {
        parse_range(hdr(&header::RANGE), len)
    } else {
        RangeRequest::Full
    };
    match range {
        RangeRequest::Unsatisfiable => Plan::Unsatisfiable,
        RangeRequest::Full => Plan::Send {
            status: StatusCode::OK,
            content_type: ctype.to_owned(),
            content_range: None,
            content_len: len,
            parts: (len > 0)
                .then(|| Part {
                    head: None,
                    first: 0,
                    last: len - 1,
                })
                .into_iter()
                .collect(),
        },
        RangeRequest::Partial(ranges) if ranges.len() == 1 => {
            let (a, b) = ranges[0];
            Plan::Send {
                status: StatusCode::PARTIAL_CONTENT,
                content_type: ctype.to_owned(),
                content_range: Some(format!("bytes {a}-{b}/{len}")),
                content_len: b - a + 1,
                parts: vec![Part {
                    head: None,
                    first: a,
                    last: b,
                }],
            }
        }
        RangeRequest::Partial(ranges) => {
            let boundary = boundary();
            let mut total = 0u64;
            let mut parts: Vec<Part> = ranges
                .iter()
                .enumerate()
                .map(|(n, &(a, b))| {
                    let lead = if n == 0 { "" } else { "\r\n" };
                    let head = format!(
                        "{lead}--{boundary}\r\nContent-Type: {ctype}\r\nContent-Range: bytes {a}-{b}/{len}\r\n\r\n"
                    );
                    total += head.len() as u64 + (b - a + 1);
                    Part {
                        head: Some(Bytes::from(head)),
                        first: a,
                        last: b,
                    }
                })
                .collect();
            let tail = Bytes::from(format!("\r\n--{boundary}--\r\n"));
            total += tail.len() as u64;
            parts.push(Part {
                head: Some(tail),
                first: 1,
                last: 0,
            });
            Plan::Send {
                status: StatusCode::PARTIAL_CONTENT,
                content_type: format!("multipart/byteranges; boundary={boundary}"),
                content_range: None,
                content_len: total,
                parts,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;
    use std::time::{Duration, UNIX_EPOCH};

    const ETAG: &str = "\"v1\"";

    const LAST_MODIFIED: &str = "Tue, 14 Nov 2023 22:13:20 GMT";

    fn rep(len: u64) -> Representation<'static> {
        Representation {
            len,
            etag: ETAG,
            mtime: Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            last_modified: Some(LAST_MODIFIED),
            content_type: "video/mp4",
        }
    }

    fn plan_for(headers: &[(&'static str, &str)], len: u64) -> Plan {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        plan(&h, &rep(len), || "B".to_owned())
    }

    /// (status, content-range, content-length, plaintext ranges) of a `Send`.
    fn sent(p: &Plan) -> (u16, Option<&str>, u64, Vec<(u64, u64)>) {
        match p {
            Plan::Send {
                status,
                content_range,
                content_len,
                parts,
                ..
            } => (
                status.as_u16(),
                content_range.as_deref(),
                *content_len,
                parts
                    .iter()
                    .filter(|p| p.first <= p.last)
                    .map(|p| (p.first, p.last))
                    .collect(),
            ),
            other => panic!("not a Send: {other:?}"),
        }
    }

    #[test]
    fn table() {
        let lm = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        assert_eq!(lm, LAST_MODIFIED);
        let earlier = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(1_600_000_000));
        // Whole representation.
        assert_eq!(sent(&plan_for(&[], 100)), (200, None, 100, vec![(0, 99)]));
        assert_eq!(sent(&plan_for(&[], 0)), (200, None, 0, vec![]));
        // One range.
        assert_eq!(
            sent(&plan_for(&[("range", "bytes=10-19")], 100)),
            (206, Some("bytes 10-19/100"), 10, vec![(10, 19)])
        );
        assert_eq!(
            sent(&plan_for(&[("range", "bytes=-5")], 100)),
            (206, Some("bytes 95-99/100"), 5, vec![(95, 99)])
        );
        // Unsatisfiable, and ignored syntax.
        assert_eq!(plan_for(&[("range", "bytes=100-")], 100), Plan::Unsatisfiable);
        assert_eq!(sent(&plan_for(&[("range", "bytes=9-5")], 100)).0, 200);
        // If-Range: a matching validator keeps the range, any other turns it into a 200.
        let ranged = |if_range: &str| sent(&plan_for(&[("range", "bytes=0-0"), ("if-range", if_range)], 100)).0;
        assert_eq!(ranged(ETAG), 206);
        assert_eq!(ranged("\"v0\""), 200);
        assert_eq!(ranged("W/\"v1\""), 200);
        assert_eq!(ranged(&lm), 206);
        assert_eq!(ranged(&earlier), 200);
        // Preconditions come first, in RFC 9110 13.2.2 order.
        assert_eq!(plan_for(&[("if-none-match", ETAG)], 100), Plan::NotModified);
        assert_eq!(plan_for(&[("if-modified-since", &lm)], 100), Plan::NotModified);
        assert_eq!(
            plan_for(&[("if-match", "\"v0\""), ("range", "bytes=0-0")], 100),
            Plan::PreconditionFailed
        );
        assert_eq!(
            plan_for(&[("if-unmodified-since", &earlier)], 100),
            Plan::PreconditionFailed
        );
        assert_eq!(
            plan_for(&[("if-match", ETAG), ("if-none-match", ETAG)], 100),
            Plan::NotModified
        );
    }

    #[test]
    fn multipart_length_is_exactly_the_body() {
        let p = plan_for(&[("range", "bytes=0-9,50-59")], 100);
        let Plan::Send {
            status,
            content_type,
            content_len,
            parts,
            ..
        } = &p
        else {
            panic!("{p:?}")
        };
        assert_eq!(
            (status.as_u16(), content_type.as_str()),
            (206, "multipart/byteranges; boundary=B")
        );
        let mut body = Vec::new();
        for part in parts {
            body.extend_from_slice(part.head.as_deref().unwrap_or_default());
            if part.first <= part.last {
                body.resize(body.len() + (part.last - part.first + 1) as usize, b'x');
            }
        }
        assert_eq!(body.len() as u64, *content_len);
        let text = String::from_utf8(body).unwrap();
        assert!(text.starts_with("--B\r\nContent-Type: video/mp4\r\nContent-Range: bytes 0-9/100\r\n\r\n"));
        assert!(text.contains("\r\n--B\r\nContent-Type: video/mp4\r\nContent-Range: bytes 50-59/100\r\n\r\n"));
        assert!(text.ends_with("\r\n--B--\r\n"));
    }
}
