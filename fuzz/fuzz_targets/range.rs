//! `Range` header planning (RFC 9110 section 14) from arbitrary text and lengths.
#![no_main]
use libfuzzer_sys::fuzz_target;
use qeltrix_server::range::{parse_range, RangeRequest, MAX_PARTS};

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let len = u64::from_le_bytes(data[..8].try_into().unwrap()) >> (data[0] % 64);
    let Ok(text) = std::str::from_utf8(&data[8..]) else {
        return;
    };
    if let RangeRequest::Partial(parts) = parse_range(Some(text), len) {
        assert!(!parts.is_empty() && parts.len() <= MAX_PARTS);
        assert!(parts.iter().all(|&(a, b)| a <= b && b < len));
        assert!(parts.iter().map(|&(a, b)| b - a + 1).sum::<u64>() <= len);
    }
});
