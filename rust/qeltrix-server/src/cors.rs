//! CORS for the SeekServer (Fetch standard, "CORS protocol"): which other origins' pages may
//! read responses, and the answers to their preflight requests.
//!
//! Configured with a list of origins (`--cors-origin`), `*` meaning any. A preflight
//! (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) needs no credentials, as the
//! browser sends none: an allowed origin gets 204 with the methods and request headers a
//! range-reading client uses, any other gets 403 without CORS headers. Every other response
//! to an allowed origin (errors, 206, 304 and 416 included) names it in
//! `Access-Control-Allow-Origin` and exposes the range headers a script needs. No
//! `Access-Control-Allow-Credentials`: the server uses no cookies, and an `Authorization`
//! header a script sets itself is allowed by the preflight instead.
use hyper::header::{self, HeaderMap, HeaderValue};

/// Methods offered to other origins.
pub const ALLOW_METHODS: &str = "GET, HEAD";
/// Request headers a cross-origin script may send: ranges, the bearer token, validators.
pub const ALLOW_HEADERS: &str =
    "Range, Authorization, If-Range, If-None-Match, If-Modified-Since, If-Match, If-Unmodified-Since";
/// Response headers a cross-origin script may read besides the safelisted ones.
pub const EXPOSE_HEADERS: &str = "Content-Range, Accept-Ranges, Content-Length, ETag";
/// Seconds a browser may reuse a preflight answer (Chromium caps this at 7200).
pub const MAX_AGE: &str = "600";

/// The origins allowed to read responses; empty means CORS is off.
#[derive(Debug, Clone, Default)]
pub struct Cors {
    origins: Vec<String>,
    any: bool,
}

/// The answer to a preflight request.
#[derive(Debug, PartialEq, Eq)]
pub enum Preflight {
    /// 204 with these headers.
    Allowed(HeaderMap),
    /// The origin is not listed: 403 without CORS headers, so the browser fails the request.
    Refused,
}

impl Cors {
    /// Origins as `scheme://host[:port]` (compared case-insensitively), or `*` for any.
    pub fn new<I: IntoIterator<Item = String>>(origins: I) -> Cors {
        let mut cors = Cors::default();
        for o in origins {
            let o = o.trim().trim_end_matches('/').to_ascii_lowercase();
            if o == "*" {
                cors.any = true;
            } else if !o.is_empty() {
                cors.origins.push(o);
            }
        }
        cors
    }

    /// Whether any origin is configured.
    pub fn enabled(&self) -> bool {
        self.any || !self.origins.is_empty()
    }

    /// The `Access-Control-Allow-Origin` value for a request's `Origin`, if it is allowed.
    fn allow_origin(&self, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
        let origin = origin?;
        if self.any {
            return Some(HeaderValue::from_static("*"));
        }
        let text = origin.to_str().ok()?;
        self.origins
            .iter()
            .any(|o| o.eq_ignore_ascii_case(text))
            .then(|| origin.clone())
    }

    /// The answer to `OPTIONS` with these request headers, or `None` if it is not a CORS
    /// preflight (or CORS is off): then the server answers as without CORS (405).
    pub fn preflight(&self, request: &HeaderMap) -> Option<Preflight> {
        if !self.enabled() || !request.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD) {
            return None;
        }
        let origin = request.get(header::ORIGIN)?;
        let Some(allow) = self.allow_origin(Some(origin)) else {
            return Some(Preflight::Refused);
        };
        let mut h = HeaderMap::new();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(ALLOW_METHODS),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOW_HEADERS),
        );
        h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static(MAX_AGE));
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
        Some(Preflight::Allowed(h))
    }

    /// Add the CORS headers of an actual (non-preflight) response for a request whose
    /// `Origin` is `origin`. `Vary: Origin` goes on every response once CORS is on, so a
    /// cache in front does not hand one origin's answer (or a no-Origin answer) to another.
    pub fn decorate(&self, origin: Option<&HeaderValue>, response: &mut HeaderMap) {
        if !self.enabled() || response.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN) {
            return;
        }
        response.append(header::VARY, HeaderValue::from_static("Origin"));
        if let Some(allow) = self.allow_origin(origin) {
            response.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
            response.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(EXPOSE_HEADERS),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(lines: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for &(k, v) in lines {
            h.append(k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn preflights() {
        let cors = Cors::new(["https://A.example/".to_owned(), "http://b.example:8080".to_owned()]);
        let pre = |lines: &[(&'static str, &str)]| cors.preflight(&req(lines));
        let Some(Preflight::Allowed(h)) = pre(&[
            ("origin", "https://a.example"),
            ("access-control-request-method", "GET"),
        ]) else {
            panic!("allowed origin refused")
        };
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://a.example");
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_METHODS], ALLOW_METHODS);
        assert_eq!(h[header::VARY], "Origin");
        assert!(matches!(
            pre(&[
                ("origin", "http://b.example:8080"),
                ("access-control-request-method", "HEAD")
            ]),
            Some(Preflight::Allowed(_))
        ));
        for refused in ["http://a.example", "https://a.example.evil", "http://b.example", "null"] {
            assert_eq!(
                pre(&[("origin", refused), ("access-control-request-method", "GET")]),
                Some(Preflight::Refused),
                "{refused}"
            );
        }
        // Not a preflight: no Access-Control-Request-Method, or no Origin.
        assert_eq!(pre(&[("origin", "https://a.example")]), None);
        assert_eq!(pre(&[("access-control-request-method", "GET")]), None);
        // CORS off: never a preflight.
        assert_eq!(
            Cors::default().preflight(&req(&[("origin", "x"), ("access-control-request-method", "GET")])),
            None
        );
    }

    #[test]
    fn decorates_actual_responses() {
        let cors = Cors::new(["https://a.example".to_owned()]);
        let mut h = HeaderMap::new();
        cors.decorate(Some(&HeaderValue::from_static("https://a.example")), &mut h);
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://a.example");
        assert_eq!(h[header::ACCESS_CONTROL_EXPOSE_HEADERS], EXPOSE_HEADERS);
        let mut h = HeaderMap::new();
        cors.decorate(Some(&HeaderValue::from_static("https://other.example")), &mut h);
        assert!(!h.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
        assert_eq!(h[header::VARY], "Origin");
        let mut h = HeaderMap::new();
        Cors::new(["*".to_owned()]).decorate(Some(&HeaderValue::from_static("null")), &mut h);
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        let mut h = HeaderMap::new();
        Cors::default().decorate(Some(&HeaderValue::from_static("https://a.example")), &mut h);
        assert!(h.is_empty());
    }
}
