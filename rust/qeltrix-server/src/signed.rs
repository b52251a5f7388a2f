//! Signed URLs: how the SeekServer decides that a request may be served when it carries no
//! bearer token. The scheme itself (what is MACed, how the query looks) is Python's
//! (`qeltrix_v6._signed_url`, README "Browsers and CDNs"); the server only asks the [`Opener`]
//! whether a URL's signature holds, and maps the answer to a status.
//!
//! With a token and a URL key either credential opens a resource; with only a URL key a
//! signature is required. A request with no credential gets 401 when a token is configured
//! (the client may retry with one), else 403; an expired or bad signature gets 403.
//!
//! [`Opener`]: crate::Opener
use crate::UrlSignature;
use hyper::StatusCode;

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
}
