//! RFC 9110 section 14 byte ranges: parsing a `Range` header against a representation length,
//! and bounding what one request may cost.
//!
//! A header that is not syntactically a `bytes` range set is ignored (the full representation
//! is served with 200), as RFC 9110 14.2 requires; a valid set none of whose ranges overlaps
//! the representation is unsatisfiable (416).
//!
//! A valid multi-range set is then planned so that no request costs more than the whole
//! representation (RFC 9110 14.2 lets a server ignore a `Range` it deems abusive, 17.15 names
//! the attack):
//! - ranges that overlap or touch are coalesced into one part (RFC 9110 15.3.7.2 allows it
//!   "regardless of the order"); the parts keep the order in which their first range was
//!   requested, as 15.3.7.2 asks; a set that coalesces into one range is a plain 206;
//! - if the satisfiable ranges as requested add up to more bytes than the representation
//!   (`bytes=0-,0-,...`), or more than [`MAX_PARTS`] parts remain after coalescing, the header
//!   is ignored and the representation is served once with 200 (nginx and Go's net/http do
//!   the same for the first rule).
//!
//! So a 206 body is at most the representation plus [`MAX_PARTS`] multipart heads, and the
//! blocks it decrypts are those of the representation plus at most one shared block per part
//! boundary.

/// Most range-specs parsed from one header; beyond this the header is ignored (as nginx's
/// `max_ranges`), so parsing and planning one request stay small.
pub const MAX_RANGES: usize = 64;

/// Most parts of a multipart/byteranges response, after coalescing. A set of more, however
/// small, is served as the whole representation (200): many tiny ranges spread over many
/// blocks cost a block decryption each, so one request could cost many times its bytes.
pub const MAX_PARTS: usize = 16;

/// What a `Range` header asks for, resolved against the representation length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeRequest {
    /// Serve the whole representation (no header, or one to ignore).
    Full,
    /// Serve these inclusive `(first, last)` byte positions: at most [`MAX_PARTS`] of them,
    /// disjoint and not adjacent, in the order of their first range in the request.
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
        return RangeRequest::Unsatisfiable;
    }
    // Each range lies inside the representation, so only a set can add up to more than it.
    let requested = ranges.iter().fold(0u64, |sum, &(a, b)| sum.saturating_add(b - a + 1));
    if requested > len {
        return RangeRequest::Full;
    }
    let parts = coalesce(&ranges);
    if parts.len() > MAX_PARTS {
        return RangeRequest::Full;
    }
    RangeRequest::Partial(parts)
}

/// Merge inclusive ranges that overlap or touch (RFC 9110 15.3.7.2). Each merged part takes
/// the place of its earliest-requested range; parts that merge with nothing keep their order.
pub fn coalesce(ranges: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut by_start: Vec<usize> = (0..ranges.len()).collect();
    by_start.sort_by_key(|&i| ranges[i]);
    // (first, last, index of the earliest range merged into it)
    let mut parts: Vec<(u64, u64, usize)> = Vec::with_capacity(ranges.len());
    for i in by_start {
        let (a, b) = ranges[i];
        match parts.last_mut() {
            Some(p) if a <= p.1.saturating_add(1) => {
                p.1 = p.1.max(b);
                p.2 = p.2.min(i);
            }
            _ => parts.push((a, b, i)),
        }
    }
    parts.sort_by_key(|p| p.2);
    parts.into_iter().map(|(a, b, _)| (a, b)).collect()
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
            // Overlapping or touching ranges are coalesced; a set that becomes one range is one.
            (Some("bytes=0-50, 40-60"), 100, Partial(vec![(0, 60)])),
            (Some("bytes=0-9,10-19"), 100, Partial(vec![(0, 19)])),
            (Some("bytes=0-9,11-19"), 100, Partial(vec![(0, 9), (11, 19)])),
            (Some("bytes=0-9,20-29,5-25"), 100, Partial(vec![(0, 29)])),
            // Parts keep the order of their first range (RFC 9110 15.3.7.2).
            (Some("bytes=50-59,0-9"), 100, Partial(vec![(50, 59), (0, 9)])),
            (
                Some("bytes=50-59,0-9,5-12,55-60"),
                100,
                Partial(vec![(50, 60), (0, 12)]),
            ),
            (Some("bytes=-5,0-0"), 100, Partial(vec![(95, 99), (0, 0)])),
            // Ranges adding up to more than the representation: the whole of it, once.
            (Some("bytes=0-,0-"), 100, Full),
            (Some("bytes=0-60,40-99"), 100, Full),
            (Some("bytes=0-49,50-99"), 100, Partial(vec![(0, 99)])),
            (Some("bytes=-1000,0-0"), 100, Full),
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

    #[test]
    fn many_bytes_0_is_the_representation_once() {
        let header = format!("bytes={}", vec!["0-"; MAX_RANGES].join(","));
        assert_eq!(parse_range(Some(&header), 1 << 30), Full);
    }

    #[test]
    fn parts_beyond_the_bound_are_the_representation_once() {
        let spread = |n: usize| {
            let specs: Vec<String> = (0..n).map(|i| format!("{0}-{0}", i * 4096)).collect();
            parse_range(Some(&format!("bytes={}", specs.join(","))), 1 << 20)
        };
        assert!(matches!(spread(MAX_PARTS), Partial(p) if p.len() == MAX_PARTS));
        assert_eq!(spread(MAX_PARTS + 1), Full);
        // Many ranges that coalesce into few parts are fine.
        let touching: Vec<String> = (0..MAX_RANGES).map(|i| format!("{i}-{i}")).collect();
        let header = format!("bytes={}", touching.join(","));
        assert_eq!(
            parse_range(Some(&header), 1000),
            Partial(vec![(0, MAX_RANGES as u64 - 1)])
        );
    }

    proptest! {
        /// Whatever the header, a 206 never carries more than the representation, in at most
        /// MAX_PARTS disjoint, non-adjacent parts that cover exactly the requested bytes.
        #[test]
        fn plan_is_bounded_and_covers_the_request(
            specs in proptest::collection::vec((0u64..300, 0u64..300), 1..20),
            len in 1u64..250,
        ) {
            let header = format!(
                "bytes={}",
                specs.iter().map(|&(a, b)| format!("{}-{}", a.min(b), a.max(b))).collect::<Vec<_>>().join(",")
            );
            if let Partial(parts) = parse_range(Some(&header), len) {
                prop_assert!(parts.len() <= MAX_PARTS);
                prop_assert!(parts.iter().map(|&(a, b)| b - a + 1).sum::<u64>() <= len);
                let mut sorted = parts.clone();
                sorted.sort();
                for w in sorted.windows(2) {
                    prop_assert!(w[0].1 + 1 < w[1].0);
                }
                let covered = |x: u64| parts.iter().any(|&(a, b)| a <= x && x <= b);
                for x in 0..len {
                    let asked = specs.iter().any(|&(a, b)| a.min(b) <= x && x <= a.max(b));
                    prop_assert_eq!(covered(x), asked);
                }
            }
        }

        /// Structured headers in every form a client may send (`a-b`, `a-`, `-n`, hostile
        /// numbers, spaces, empty elements, case): the plan is always bounded and inside.
        #[test]
        fn structured_headers_plan_inside_the_representation(
            specs in proptest::collection::vec(
                (0u8..4, prop_oneof![0u64..600, Just(u64::MAX), Just(u64::MAX - 1)], 0u64..600),
                0..80,
            ),
            spaces in any::<bool>(),
            unit in prop_oneof![Just("bytes"), Just("BYTES"), Just("Bytes"), Just("items")],
            len in 0u64..500,
        ) {
            let sep = if spaces { " , " } else { "," };
            let text: Vec<String> = specs
                .iter()
                .map(|&(form, a, b)| match form {
                    0 => format!("{}-{}", a.min(b), a.max(b)),
                    1 => format!("{a}-"),
                    2 => format!("-{b}"),
                    _ => String::new(),
                })
                .collect();
            let header = format!("{unit}={}", text.join(sep));
            match parse_range(Some(&header), len) {
                Partial(parts) => {
                    prop_assert!(unit.eq_ignore_ascii_case("bytes"));
                    prop_assert!(!parts.is_empty() && parts.len() <= MAX_PARTS);
                    prop_assert!(parts.iter().all(|&(a, b)| a <= b && b < len));
                    prop_assert!(parts.iter().map(|&(a, b)| b - a + 1).sum::<u64>() <= len);
                }
                Unsatisfiable => prop_assert!(unit.eq_ignore_ascii_case("bytes")),
                Full => {}
            }
        }

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
