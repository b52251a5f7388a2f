//! VFS index (FORMAT.md section 6) and the seek math over it.
//!
//! Blocks may have any length from 1 to `block_size`, so the plaintext offset of block `i`
//! is a prefix sum, computed once with checked arithmetic when the index is decoded; a seek
//! is then a binary search.
use crate::error::{corrupt, Result};
use crate::{frame_len, read_u32, read_u64, INDEX_FLAG_INCOMPLETE, MAX_BLOCK_COUNT, NONCE_LEN, TAG_LEN};
use std::ops::Range;

/// Length of one index entry: `frame_offset u64 || pt_len u32`.
pub const INDEX_ENTRY_LEN: usize = 12;
/// `block_count u64 || pt_total_len u64 || index_flags u32`.
pub const INDEX_FIXED_LEN: usize = 20;
/// Smallest footer: nonce, tag and the fixed index fields.
pub const INDEX_FOOTER_MIN_LEN: u64 = (NONCE_LEN + TAG_LEN + INDEX_FIXED_LEN) as u64;

/// One index entry, in logical order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub frame_offset: u64,
    pub pt_len: u32,
}

/// The decoded index with prefix sums for seeking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Index {
    pub entries: Vec<IndexEntry>,
    pub pt_total_len: u64,
    pub index_flags: u32,
    /// `pt_offsets[i]` is the plaintext offset of block `i`; one extra entry holds the total.
    pt_offsets: Vec<u64>,
}

/// Footer length for `block_count` entries.
pub fn footer_len(block_count: u64) -> u64 {
    INDEX_FOOTER_MIN_LEN + INDEX_ENTRY_LEN as u64 * block_count
}

impl Index {
    /// Build an index from entries in logical order.
    pub fn new(entries: Vec<IndexEntry>, index_flags: u32) -> Result<Index> {
        if entries.len() as u64 > MAX_BLOCK_COUNT {
            return corrupt("too many blocks");
        }
        let mut pt_offsets = Vec::with_capacity(entries.len() + 1);
        let mut total: u64 = 0;
        for e in &entries {
            pt_offsets.push(total);
            total = total
                .checked_add(u64::from(e.pt_len))
                .ok_or_else(|| crate::FormatError::Corrupt("plaintext length overflows".into()))?;
        }
        pt_offsets.push(total);
        Ok(Index {
            entries,
            pt_total_len: total,
            index_flags,
            pt_offsets,
        })
    }

    /// Encode `index_pt`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(INDEX_FIXED_LEN + INDEX_ENTRY_LEN * self.entries.len());
        out.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.pt_total_len.to_le_bytes());
        out.extend_from_slice(&self.index_flags.to_le_bytes());
        for e in &self.entries {
            out.extend_from_slice(&e.frame_offset.to_le_bytes());
            out.extend_from_slice(&e.pt_len.to_le_bytes());
        }
        out
    }

    /// Decode an authenticated `index_pt` with the checks of FORMAT.md section 8 step 6.
    /// `block_count` comes from the trailer (`footer_len`), so the allocation below is
    /// bounded by bytes that were really read.
    pub fn decode(b: &[u8], block_count: u64, block_size: u32, header_len: u32, footer_offset: u64) -> Result<Index> {
        let expect = block_count
            .checked_mul(INDEX_ENTRY_LEN as u64)
            .and_then(|n| n.checked_add(INDEX_FIXED_LEN as u64));
        if Some(b.len() as u64) != expect {
            return corrupt("index length does not match the trailer");
        }
        if read_u64(b, 0) != block_count {
            return corrupt("index block_count does not match the trailer");
        }
        let index_flags = read_u32(b, 16);
        if index_flags & !INDEX_FLAG_INCOMPLETE != 0 {
            return corrupt("index has unknown flag bits");
        }
        let mut entries = Vec::with_capacity(block_count as usize);
        for (i, chunk) in b[INDEX_FIXED_LEN..].chunks_exact(INDEX_ENTRY_LEN).enumerate() {
            let e = IndexEntry {
                frame_offset: read_u64(chunk, 0),
                pt_len: read_u32(chunk, 8),
            };
            // Only a stream's empty FINAL frame, always the last, may hold no plaintext.
            let empty_ok = i as u64 + 1 == block_count;
            if (e.pt_len == 0 && !empty_ok) || e.pt_len > block_size {
                return corrupt(format!("index entry has pt_len {}", e.pt_len));
            }
            let end = e.frame_offset.checked_add(frame_len(e.pt_len));
            if e.frame_offset < u64::from(header_len) || end.is_none_or(|end| end > footer_offset) {
                return corrupt("index entry points outside the frame region");
            }
            entries.push(e);
        }
        let index = Index::new(entries, index_flags)?;
        if index.pt_total_len != read_u64(b, 8) {
            return corrupt("index pt_total_len does not match its entries");
        }
        Ok(index)
    }

    /// Number of blocks.
    pub fn block_count(&self) -> u64 {
        self.entries.len() as u64
    }

    /// Whether the index marks a recovered stream that never saw its FINAL block.
    pub fn incomplete(&self) -> bool {
        self.index_flags & INDEX_FLAG_INCOMPLETE != 0
    }

    /// Plaintext offset of block `i`.
    pub fn pt_offset(&self, i: usize) -> u64 {
        self.pt_offsets[i]
    }

    /// The block holding plaintext byte `pt_pos`, if `pt_pos < pt_total_len`.
    pub fn locate(&self, pt_pos: u64) -> Option<usize> {
        if pt_pos >= self.pt_total_len {
            return None;
        }
        // First offset strictly greater than pt_pos, minus one.
        Some(self.pt_offsets.partition_point(|&o| o <= pt_pos) - 1)
    }

    /// Blocks overlapping plaintext `[pt_pos, pt_pos + len)`, clipped to the plaintext
    /// (reads past the end return what exists, like a file).
    pub fn covering(&self, pt_pos: u64, len: u64) -> Range<usize> {
        let end = pt_pos.saturating_add(len).min(self.pt_total_len);
        match self.locate(pt_pos) {
            Some(first) if end > pt_pos => first..self.locate(end - 1).expect("end in range") + 1,
            _ => 0..0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn index_of(lens: &[u32]) -> Index {
        let mut off = 4096u64;
        let entries = lens
            .iter()
            .map(|&l| {
                let e = IndexEntry {
                    frame_offset: off,
                    pt_len: l,
                };
                off += frame_len(l);
                e
            })
            .collect();
        Index::new(entries, 0).unwrap()
    }

    #[test]
    fn empty_index() {
        let ix = index_of(&[]);
        assert_eq!(ix.locate(0), None);
        assert_eq!(ix.covering(0, 10), 0..0);
        let b = ix.encode();
        assert_eq!(b.len(), INDEX_FIXED_LEN);
        assert_eq!(Index::decode(&b, 0, 64, 4096, 4096).unwrap(), ix);
    }

    #[test]
    fn decode_rejects_inconsistencies() {
        let ix = index_of(&[10, 20]);
        let fo = 4096 + frame_len(10) + frame_len(20);
        let b = ix.encode();
        assert!(Index::decode(&b, 2, 64, 4096, fo).is_ok());
        assert!(Index::decode(&b, 1, 64, 4096, fo).is_err());
        assert!(Index::decode(&b, 2, 15, 4096, fo).is_err());
        assert!(Index::decode(&b, 2, 64, 4096, fo - 1).is_err());
        assert!(Index::decode(&b, 2, 64, 8192, fo).is_err());
        let mut bad = b.clone();
        bad[8] ^= 1;
        assert!(Index::decode(&bad, 2, 64, 4096, fo).is_err());
        let mut bad = b;
        bad[INDEX_FIXED_LEN + 8..INDEX_FIXED_LEN + 12].copy_from_slice(&0u32.to_le_bytes());
        assert!(Index::decode(&bad, 2, 64, 4096, fo).is_err());
    }

    proptest! {
        #[test]
        fn locate_matches_linear_scan(lens in proptest::collection::vec(1u32..50, 0..40),
                                      pos in 0u64..2100) {
            let ix = index_of(&lens);
            let mut acc = 0u64;
            let mut expect = None;
            for (i, &l) in lens.iter().enumerate() {
                if pos >= acc && pos < acc + u64::from(l) { expect = Some(i); }
                acc += u64::from(l);
            }
            prop_assert_eq!(ix.locate(pos), expect);
        }

        #[test]
        fn covering_is_exact(lens in proptest::collection::vec(1u32..50, 0..40),
                             pos in 0u64..2100, len in 0u64..300) {
            let ix = index_of(&lens);
            let r = ix.covering(pos, len);
            let end = (pos + len).min(ix.pt_total_len);
            for (i, &l) in lens.iter().enumerate() {
                let (a, b) = (ix.pt_offset(i), ix.pt_offset(i) + u64::from(l));
                // An empty range (len 0, or past the end) overlaps nothing.
                let overlaps = pos < end && a < end && pos < b;
                prop_assert_eq!(r.contains(&i), overlaps);
            }
        }

        #[test]
        fn encode_decode_round_trip(lens in proptest::collection::vec(1u32..64, 0..40)) {
            let ix = index_of(&lens);
            let fo = ix.entries.last().map_or(4096, |e| e.frame_offset + frame_len(e.pt_len));
            let d = Index::decode(&ix.encode(), lens.len() as u64, 64, 4096, fo).unwrap();
            prop_assert_eq!(d, ix);
        }

        #[test]
        fn decode_never_panics(b in proptest::collection::vec(any::<u8>(), 0..200), n in 0u64..20) {
            let _ = Index::decode(&b, n, 64, 0, u64::MAX);
        }
    }
}
