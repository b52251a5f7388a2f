//! RFC 9110 section 14 byte ranges: parsing a `Range` header against a representation length.
//!
//! A header that is not syntactically a `bytes` range set is ignored (the full representation
//! is served with 200), as RFC 9110 14.2 requires; a valid set none of whose ranges overlaps
//! the representation is unsatisfiable (416).

/// Most ranges honoured in one request; beyond this the header is ignored (as nginx's
/// `max_ranges`), so a client cannot make one request cost thousands of multipart parts.
pub const MAX_RANGES: usize = 64;

/// What a `Range` header asks for, resolved against the representation length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeRequest {
    /// Serve the whole representation (no header, or one to ignore).
    Full,
    /// Serve these inclusive `(first, last)` byte positions, in request order.
    Partial(Vec<(u64, u64)>),
    /// 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spec {
    FromTo(u64, Option<u64>),
    Suffix(u64),
}

fn is_ows(c: char) -> bool {
    c == ' ' || c == '\t'
}

fn parse_pos(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_specs(header: &str) -> Option<Vec<Spec>> {
    let (unit, set) = header.split_once('=')?;
    if !unit.eq_ignore_ascii_case("bytes") {
        return None;
    }
    let mut specs = Vec::new();
    // A range set is a comma-separated list; empty elements are allowed (RFC 9110 5.6.1).
    for part in set.split(',') {
        let part = part.trim_matches(is_ows);
        if part.is_empty() {
            continue;
        }
        let (first, last) = part.split_once('-')?;
        let spec = if first.is_empty() {
            Spec::Suffix(parse_pos(last)?)
        } else {
            let first = parse_pos(first)?;
            let last = if last.is_empty() { None } else { Some(parse_pos(last)?) };
            if last.is_some_and(|l| l < first) {
                return None;
            }
            Spec::FromTo(first, last)
        };
        specs.push(spec);
        if specs.len() > MAX_RANGES {
            return None;
        }
    }
    (!specs.is_empty()).then_some(specs)
}

/// Resolve an optional `Range` header value against a representation of `len` bytes.
pub fn parse_range(header: Option<&str>, len: u64) -> RangeRequest {
    let Some(specs) = header.and_then(parse_specs) else {
        return RangeRequest::Full;
    };
    let ranges: Vec<(u64, u64)> = specs
        .into_iter()
        .filter_map(|spec| match spec {
            Spec::FromTo(first, _) if first >= len => None,
            Spec::FromTo(first, last) => Some((first, last.map_or(len - 1, |l| l.min(len - 1)))),
            Spec::Suffix(0) => None,
            Spec::Suffix(_) if len == 0 => None,
            Spec::Suffix(n) => Some((len - n.min(len), len - 1)),
        })
        .collect();
    if ranges.is_empty() {
        RangeRequest::Unsatisfiable
    } else {
        RangeRequest::Partial(ranges)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use RangeRequest::*;

    #[test]
    fn table() {
        let cases: &[(Option<&str>, u64, RangeRequest)] = &[
            (None, 100, Full),
            (Some("bytes=0-9"), 100, Partial(vec![(0, 9)])),
            (Some("bytes=90-"), 100, Partial(vec![(90, 99)])),
            (Some("bytes=-10"), 100, Partial(vec![(90, 99)])),
            (Some("bytes=-1000"), 100, Partial(vec![(0, 99)])),
            (Some("bytes=95-1000"), 100, Partial(vec![(95, 99)])),
            (Some("bytes=0-0,-1"), 100, Partial(vec![(0, 0), (99, 99)])),
            (Some("bytes=0-50, 40-60"), 100, Partial(vec![(0, 50), (40, 60)])),
            (Some("BYTES=1-2"), 100, Partial(vec![(1, 2)])),
            (Some("bytes= 1-2 ,, 5-6"), 100, Partial(vec![(1, 2), (5, 6)])),
            (Some("bytes=100-"), 100, Unsatisfiable),
            (Some("bytes=100-200"), 100, Unsatisfiable),
            (Some("bytes=-0"), 100, Unsatisfiable),
            (Some("bytes=0-"), 0, Unsatisfiable),
            (Some("bytes=-5"), 0, Unsatisfiable),
            (Some("bytes=200-300,0-1"), 100, Partial(vec![(0, 1)])),
            // Invalid syntax: ignored, full response.
            (Some("bytes=5-4"), 100, Full),
            (Some("bytes="), 100, Full),
            (Some("bytes=a-b"), 100, Full),
            (Some("bytes=1-2-3"), 100, Full),
            (Some("bytes=+1-2"), 100, Full),
            (Some("items=0-1"), 100, Full),
            (Some("bytes 0-1"), 100, Full),
            (Some("bytes=--1"), 100, Full),
            (Some("bytes=99999999999999999999999-"), 100, Full),
        ];
        for (h, len, want) in cases {
            assert_eq!(&parse_range(*h, *len), want, "{h:?} len {len}");
        }
    }

    #[test]
    fn too_many_ranges_are_ignored() {
        let many = (0..=MAX_RANGES)
            .map(|i| format!("{i}-{i}"))
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(parse_range(Some(&format!("bytes={many}")), 1000), Full);
    }

    proptest! {
        #[test]
        fn satisfiable_ranges_lie_inside(h in "[ -~]{0,40}", len in 0u64..10_000) {
            if let Partial(rs) = parse_range(Some(&h), len) {
                for (a, b) in rs {
                    prop_assert!(a <= b && b < len);
                }
            }
        }

        #[test]
        fn single_range_is_exact(a in 0u64..2000, b in 0u64..2000, len in 1u64..1000) {
            let (a, b) = (a.min(b), a.max(b));
            let got = parse_range(Some(&format!("bytes={a}-{b}")), len);
            if a >= len {
                prop_assert_eq!(got, Unsatisfiable);
            } else {
                prop_assert_eq!(got, Partial(vec![(a, b.min(len - 1))]));
            }
        }
    }
}
