//! Signed URLs: how the SeekServer decides that a request may be served when it carries no
//! bearer token. The scheme itself (what is MACed, how the query looks) is Python's
//! (`qeltrix_v6._signed_url`, README "Browsers and CDNs"); the server only asks the [`Opener`]
//! whether a URL's signature holds, and maps the answer to a status.
//!
//! With a token and a URL key either credential opens a resource; with only a URL key a
//! signature is required. A request with no credential gets 401 when a token is configured
//! (the client may retry with one), else 403; an expired or bad signature gets 403. A URL
//! found valid is remembered until it expires ([`ValidCache`]), so the many range requests
//! of one `<video>` cost one check.
//!
//! [`Opener`]: crate::Opener
use crate::UrlSignature;
use hyper::StatusCode;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Query parameter names of the scheme.
pub const EXPIRES_PARAM: &str = "qx-expires";
pub const SIG_PARAM: &str = "qx-sig";

/// Whether a raw query names the signature parameter (only then is the opener asked, so an
/// unsigned request costs no call into Python).
pub fn carries_signature(query: Option<&str>) -> bool {
    query.is_some_and(|q| q.split('&').any(|pair| pair.split('=').next() == Some(SIG_PARAM)))
}

/// Status and body of the refusal for a signature that does not hold.
pub fn refusal(outcome: UrlSignature) -> Option<(StatusCode, &'static str)> {
    match outcome {
        UrlSignature::Valid => None,
        UrlSignature::Expired => Some((StatusCode::FORBIDDEN, "this signed URL has expired")),
        UrlSignature::Invalid => Some((
            StatusCode::FORBIDDEN,
            "this URL's signature is not valid for this path (or was made with another key)",
        )),
    }
}

/// Signed URLs recently found valid, so that the range requests a `<video>` makes with one
/// URL cost one check into Python, not one each: exact `(path, query)` strings, each kept
/// until its `qx-expires` second passes. Bounded in entries and in the length of what is
/// kept; when full it starts afresh.
#[derive(Debug, Default)]
pub struct ValidCache {
    entries: Mutex<HashMap<(String, String), u64>>,
}

/// Entries kept at most.
const CACHE_ENTRIES: usize = 1024;
/// Longest `path` + `query` kept (longer URLs are checked every time).
const CACHE_KEY_LEN: usize = 1024;

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The `qx-expires` value of a query, if there is exactly one in canonical decimal.
fn expires(query: &str) -> Option<u64> {
    let mut found = query
        .split('&')
        .filter_map(|p| p.strip_prefix(EXPIRES_PARAM)?.strip_prefix('='));
    let value = found.next()?;
    if found.next().is_some() || value.is_empty() || value.len() > 13 || value.starts_with('0') && value != "0" {
        return None;
    }
    value.parse().ok()
}

impl ValidCache {
    /// Whether this exact URL was found valid and has not expired since.
    pub fn holds(&self, path: &str, query: &str) -> bool {
        let map = self.entries.lock().expect("signed-URL cache lock");
        map.get(&(path.to_owned(), query.to_owned()))
            .is_some_and(|&until| now_secs() <= until)
    }

    /// Remember a URL the opener found valid.
    pub fn insert(&self, path: &str, query: &str) {
        let Some(until) = expires(query) else { return };
        if path.len() + query.len() > CACHE_KEY_LEN {
            return;
        }
        let mut map = self.entries.lock().expect("signed-URL cache lock");
        if map.len() >= CACHE_ENTRIES {
            map.clear();
        }
        map.insert((path.to_owned(), query.to_owned()), until);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_signature_parameter() {
        for (q, want) in [
            (None, false),
            (Some(""), false),
            (Some("qx-sig=abc"), true),
            (Some("a=1&qx-expires=5&qx-sig=abc"), true),
            (Some("qx-sig"), true),
            (Some("xqx-sig=a"), false),
            (Some("a=qx-sig"), false),
        ] {
            assert_eq!(carries_signature(q), want, "{q:?}");
        }
    }

    #[test]
    fn caches_valid_urls_until_they_expire() {
        assert_eq!(expires("qx-expires=17&qx-sig=a"), Some(17));
        for q in [
            "qx-sig=a",
            "qx-expires=017",
            "qx-expires=",
            "qx-expires=1&qx-expires=1",
            "qx-expires=x",
        ] {
            assert_eq!(expires(q), None, "{q}");
        }
        let cache = ValidCache::default();
        let later = format!("qx-expires={}&qx-sig=a", now_secs() + 3600);
        cache.insert("/a", &later);
        assert!(cache.holds("/a", &later));
        assert!(!cache.holds("/b", &later));
        cache.insert("/a", "qx-expires=5&qx-sig=a");
        assert!(!cache.holds("/a", "qx-expires=5&qx-sig=a"), "expired");
        cache.insert("/x", "qx-sig=a");
        assert!(!cache.holds("/x", "qx-sig=a"), "no expiry: not kept");
        for n in 0..CACHE_ENTRIES + 1 {
            cache.insert(&format!("/{n}"), &later);
        }
        assert!(cache.entries.lock().unwrap().len() <= CACHE_ENTRIES);
    }
}
