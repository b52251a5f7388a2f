//! V6-C block metadata (FORMAT.md section 5): the plaintext that `meta_ct` seals.
use crate::error::{corrupt, Result};
use crate::{read_u32, read_u64, NONCE_LEN, TAG_LEN};

/// Length of `meta_pt`.
pub const META_PT_LEN: usize = 76;
/// Bytes of a frame before `data_ct`: `meta_nonce || meta_ct`.
pub const META_FRAME_LEN: usize = NONCE_LEN + META_PT_LEN + TAG_LEN;

/// Decoded `meta_pt` of one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockMeta {
    pub block_index: u64,
    pub pt_len: u32,
    pub meta_flags: u8,
    pub cdk_salt: [u8; 16],
    pub data_nonce: [u8; 12],
    pub pt_sha256: [u8; 32],
}

impl BlockMeta {
    /// Encode `meta_pt`.
    pub fn encode(&self) -> [u8; META_PT_LEN] {
        let mut out = [0u8; META_PT_LEN];
        out[0..8].copy_from_slice(&self.block_index.to_le_bytes());
        out[8..12].copy_from_slice(&self.pt_len.to_le_bytes());
        out[12] = self.meta_flags;
        // out[13..16] reserved, zero.
        out[16..32].copy_from_slice(&self.cdk_salt);
        out[32..44].copy_from_slice(&self.data_nonce);
        out[44..76].copy_from_slice(&self.pt_sha256);
        out
    }

    /// Decode an authenticated `meta_pt`. The AEAD already vouched for these bytes, so a
    /// failure here means a writer bug or a forged key: report it as corruption.
    pub fn decode(b: &[u8]) -> Result<BlockMeta> {
        if b.len() != META_PT_LEN {
            return corrupt(format!("V6-C metadata is {} bytes, expected {META_PT_LEN}", b.len()));
        }
        if b[13..16] != [0, 0, 0] {
            return corrupt("V6-C metadata reserved bytes are not zero");
        }
        if b[12] & !crate::META_FLAG_FINAL != 0 {
            return corrupt("V6-C metadata has unknown flag bits");
        }
        Ok(BlockMeta {
            block_index: read_u64(b, 0),
            pt_len: read_u32(b, 8),
            meta_flags: b[12],
            cdk_salt: b[16..32].try_into().expect("16 bytes"),
            data_nonce: b[32..44].try_into().expect("12 bytes"),
            pt_sha256: b[44..76].try_into().expect("32 bytes"),
        })
    }

    /// Whether this is the FINAL block of a complete stream.
    pub fn is_final(&self) -> bool {
        self.meta_flags & crate::META_FLAG_FINAL != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(block_index: u64, pt_len: u32, fin: bool, salt: [u8; 16],
                      nonce: [u8; 12], sha: [u8; 32]) {
            let m = BlockMeta { block_index, pt_len, meta_flags: u8::from(fin), cdk_salt: salt,
                                data_nonce: nonce, pt_sha256: sha };
            prop_assert_eq!(BlockMeta::decode(&m.encode()).unwrap(), m);
        }
    }

    #[test]
    fn rejects_reserved_and_unknown_flags() {
        let m = BlockMeta {
            block_index: 1,
            pt_len: 2,
            meta_flags: 0,
            cdk_salt: [0; 16],
            data_nonce: [0; 12],
            pt_sha256: [0; 32],
        };
        let mut b = m.encode();
        b[14] = 1;
        assert!(BlockMeta::decode(&b).is_err());
        let mut b = m.encode();
        b[12] = 2;
        assert!(BlockMeta::decode(&b).is_err());
        assert!(BlockMeta::decode(&b[..10]).is_err());
    }
}
