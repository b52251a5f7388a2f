//! Trailer and index decoding (FORMAT.md sections 6, 6.1 and 8) from arbitrary bytes: the first
//! 24 bytes are a trailer, the next 16 the file and header lengths and the block size, the
//! rest an index.
#![no_main]
use libfuzzer_sys::fuzz_target;
use qeltrix_format::{frame_len, Index, Trailer, TRAILER_LEN};

fuzz_target!(|data: &[u8]| {
    if data.len() < TRAILER_LEN + 16 {
        return;
    }
    let (trailer, rest) = data.split_at(TRAILER_LEN);
    let file_len = u64::from_le_bytes(rest[..8].try_into().unwrap());
    let header_len = u32::from_le_bytes(rest[8..12].try_into().unwrap());
    let block_size = u32::from_le_bytes(rest[12..16].try_into().unwrap());
    let index = &rest[16..];
    for signed in [false, true] {
        if let Ok(t) = Trailer::parse_with(trailer, file_len, header_len, signed) {
            assert!(t.footer_offset >= u64::from(header_len));
            if let Ok(ix) = Index::decode(index, t.block_count(), block_size, header_len, t.footer_offset) {
                for e in &ix.entries {
                    assert!(e.frame_offset + frame_len(e.pt_len) <= t.footer_offset);
                }
            }
        }
    }
    let footer_offset = file_len;
    let count = (index.len().saturating_sub(20) / 12) as u64;
    if let Ok(ix) = Index::decode(index, count, block_size, header_len, footer_offset) {
        if ix.pt_total_len > 0 {
            let i = ix.locate(ix.pt_total_len - 1).expect("the last byte is in a block");
            let _ = ix.covering(ix.pt_offset(i), 1);
        }
    }
});
