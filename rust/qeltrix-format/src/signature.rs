//! Signature section (FORMAT.md section 15): who wrote a container.
//!
//! This module only encodes and parses; the hashes and the Ed25519 operations are done by the
//! crypto layer (`qeltrix_v6._crypto`), which hands it digests and signatures. A writer feeds
//! each frame's digest to a [`SignatureAccumulator`] as the frame is sealed (in any order:
//! pack workers finish out of order; a gateway sink feeds them one at a time in order), then
//! builds [`signed_message`] from hashes of the header, the digests and the footer, has it
//! signed, and encodes the section with [`SignatureAccumulator::finish`].
use crate::error::{corrupt, Result};
use crate::{FormatError, INDEX_ENTRY_LEN, INDEX_FOOTER_MIN_LEN, MAX_BLOCK_COUNT};

/// `"qeltrix-v6 signature" 0x00`: the first bytes of every `signed_message`.
pub const SIG_LABEL: [u8; 21] = *b"qeltrix-v6 signature\0";
/// Length of an Ed25519 public key (`signer_pub`).
pub const SIGNER_PUB_LEN: usize = 32;
/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
/// Length of one `frame_digest_i`.
pub const FRAME_DIGEST_LEN: usize = 32;
/// `signer_pub || signature`: the section without its frame digests.
pub const SIG_FIXED_LEN: usize = SIGNER_PUB_LEN + SIGNATURE_LEN;
/// Length of every `signed_message`.
pub const SIGNED_MESSAGE_LEN: usize = SIG_LABEL.len() + 32 + 8 + 32 + 32 + 8 + SIGNER_PUB_LEN;

/// One SHA-256 digest.
pub type Digest = [u8; 32];

/// `sig_len` for `block_count` blocks: `SIG_FIXED_LEN + 32 * block_count`.
pub fn sig_len(block_count: u64) -> Option<u64> {
    (FRAME_DIGEST_LEN as u64)
        .checked_mul(block_count)?
        .checked_add(SIG_FIXED_LEN as u64)
}

/// `sig_len` of a signed container whose trailer says `footer_len` (step 5 of section 8).
pub fn sig_len_for_footer(footer_len: u64) -> Option<u64> {
    let entries = footer_len.checked_sub(INDEX_FOOTER_MIN_LEN)?;
    if entries % INDEX_ENTRY_LEN as u64 != 0 {
        return None;
    }
    sig_len(entries / INDEX_ENTRY_LEN as u64)
}

/// The 165-byte message an Ed25519 signature covers, from the hashes the crypto layer computed:
/// `SHA256(header)`, `SHA256(frame_digest_0 || ...)`, `SHA256(footer)`.
pub fn signed_message(
    header_sha256: &Digest,
    block_count: u64,
    frame_digests_sha256: &Digest,
    footer_sha256: &Digest,
    footer_offset: u64,
    signer_pub: &[u8; SIGNER_PUB_LEN],
) -> [u8; SIGNED_MESSAGE_LEN] {
    let mut out = [0u8; SIGNED_MESSAGE_LEN];
    let mut at = 0;
    for part in [
        &SIG_LABEL[..],
        header_sha256,
        &block_count.to_le_bytes(),
        frame_digests_sha256,
        footer_sha256,
        &footer_offset.to_le_bytes(),
        signer_pub,
    ] {
        out[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    debug_assert_eq!(at, SIGNED_MESSAGE_LEN);
    out
}

/// A parsed `signature_section`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureSection {
    pub signer_pub: [u8; SIGNER_PUB_LEN],
    /// `frame_digest_0 || ... || frame_digest_(n-1)`, 32 bytes each, in logical order.
    pub frame_digests: Vec<u8>,
    pub signature: [u8; SIGNATURE_LEN],
}

impl SignatureSection {
    /// Parse a section of a container with `block_count` blocks. The caller read exactly
    /// `sig_len(block_count)` bytes, bounded by the file length (step 5).
    pub fn parse(b: &[u8], block_count: u64) -> Result<SignatureSection> {
        if sig_len(block_count) != Some(b.len() as u64) {
            return corrupt("signature section length does not match the index");
        }
        let n = b.len();
        Ok(SignatureSection {
            signer_pub: b[..SIGNER_PUB_LEN].try_into().expect("32 bytes"),
            frame_digests: b[SIGNER_PUB_LEN..n - SIGNATURE_LEN].to_vec(),
            signature: b[n - SIGNATURE_LEN..].try_into().expect("64 bytes"),
        })
    }

    /// Number of frame digests.
    pub fn block_count(&self) -> u64 {
        (self.frame_digests.len() / FRAME_DIGEST_LEN) as u64
    }

    /// `frame_digest_i`, if `i` is in range.
    pub fn frame_digest(&self, i: usize) -> Option<&[u8]> {
        let at = i.checked_mul(FRAME_DIGEST_LEN)?;
        self.frame_digests.get(at..at + FRAME_DIGEST_LEN)
    }

    /// Encode `signer_pub || frame digests || signature`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(SIG_FIXED_LEN + self.frame_digests.len());
        out.extend_from_slice(&self.signer_pub);
        out.extend_from_slice(&self.frame_digests);
        out.extend_from_slice(&self.signature);
        out
    }
}

/// Collects one digest per frame while a writer seals frames, then encodes the section.
///
/// Memory is 32 bytes per block (plus one flag byte), beside the 12-byte index entry a writer
/// keeps anyway.
#[derive(Debug, Default, Clone)]
pub struct SignatureAccumulator {
    digests: Vec<u8>,
    present: Vec<bool>,
    missing: u64,
}

impl SignatureAccumulator {
    /// An empty accumulator.
    pub fn new() -> SignatureAccumulator {
        SignatureAccumulator::default()
    }

    /// Record `frame_digest` of block `block_index`, in any order; each block exactly once.
    pub fn set(&mut self, block_index: u64, digest: &Digest) -> Result<()> {
        if block_index >= MAX_BLOCK_COUNT {
            return Err(FormatError::Limit(format!(
                "block_index {block_index} over {MAX_BLOCK_COUNT}"
            )));
        }
        let i = block_index as usize;
        if i >= self.present.len() {
            self.missing += (i - self.present.len()) as u64;
            self.present.resize(i + 1, false);
            self.digests.resize((i + 1) * FRAME_DIGEST_LEN, 0);
        } else if self.present[i] {
            return Err(FormatError::Malformed(format!("frame {block_index} digested twice")));
        } else {
            self.missing -= 1;
        }
        self.present[i] = true;
        self.digests[i * FRAME_DIGEST_LEN..(i + 1) * FRAME_DIGEST_LEN].copy_from_slice(digest);
        Ok(())
    }

    /// Record the digest of the next frame in logical order (a stream writer).
    pub fn push(&mut self, digest: &Digest) -> Result<()> {
        self.set(self.present.len() as u64, digest)
    }

    /// Number of blocks seen so far (the highest index + 1).
    pub fn block_count(&self) -> u64 {
        self.present.len() as u64
    }

    /// `frame_digest_0 || ...`, for the caller to hash into `signed_message`; an error if a
    /// block below the highest one has no digest.
    pub fn frame_digests(&self) -> Result<&[u8]> {
        if self.missing != 0 {
            return Err(FormatError::Malformed(format!(
                "{} frames have no digest",
                self.missing
            )));
        }
        Ok(&self.digests)
    }

    /// The section for a writer whose index has `block_count` blocks (a check that every frame
    /// was fed), with its signer's public key and the signature over [`signed_message`].
    pub fn finish(
        self,
        block_count: u64,
        signer_pub: [u8; SIGNER_PUB_LEN],
        signature: [u8; SIGNATURE_LEN],
    ) -> Result<Vec<u8>> {
        self.frame_digests()?;
        if self.block_count() != block_count {
            return Err(FormatError::Malformed(format!(
                "{} frame digests for {block_count} blocks",
                self.block_count()
            )));
        }
        Ok(SignatureSection {
            signer_pub,
            frame_digests: self.digests,
            signature,
        }
        .encode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn lengths() {
        assert_eq!(sig_len(0), Some(96));
        assert_eq!(sig_len(3), Some(96 + 96));
        assert_eq!(sig_len(u64::MAX), None);
        assert_eq!(sig_len_for_footer(48), Some(96));
        assert_eq!(sig_len_for_footer(60), Some(128));
        assert_eq!(sig_len_for_footer(50), None);
        assert_eq!(sig_len_for_footer(47), None);
        assert_eq!(SIGNED_MESSAGE_LEN, 165);
    }

    #[test]
    fn message_layout() {
        let m = signed_message(&[1; 32], 7, &[2; 32], &[3; 32], 4096, &[4; 32]);
        assert_eq!(&m[..21], b"qeltrix-v6 signature\0");
        assert_eq!(&m[21..53], &[1; 32]);
        assert_eq!(&m[53..61], &7u64.to_le_bytes());
        assert_eq!(&m[61..93], &[2; 32]);
        assert_eq!(&m[93..125], &[3; 32]);
        assert_eq!(&m[125..133], &4096u64.to_le_bytes());
        assert_eq!(&m[133..], &[4; 32]);
    }

    #[test]
    fn accumulator_out_of_order_and_checks() {
        let mut acc = SignatureAccumulator::new();
        acc.set(2, &[2; 32]).unwrap();
        assert!(acc.frame_digests().is_err());
        acc.set(0, &[0; 32]).unwrap();
        assert!(acc.set(0, &[9; 32]).is_err());
        acc.push(&[3; 32]).unwrap();
        acc.set(1, &[1; 32]).unwrap();
        assert_eq!(acc.block_count(), 4);
        assert!(acc.clone().finish(5, [7; 32], [8; 64]).is_err());
        let sec = acc.finish(4, [7; 32], [8; 64]).unwrap();
        assert_eq!(sec.len() as u64, sig_len(4).unwrap());
        let p = SignatureSection::parse(&sec, 4).unwrap();
        assert_eq!(p.signer_pub, [7; 32]);
        assert_eq!(p.signature, [8; 64]);
        assert_eq!(p.frame_digest(3), Some(&[3u8; 32][..]));
        assert_eq!(p.frame_digest(4), None);
        assert_eq!(p.encode(), sec);
        assert!(SignatureSection::parse(&sec, 3).is_err());
        assert!(SignatureSection::parse(&sec[1..], 4).is_err());
    }

    #[test]
    fn empty_container_section() {
        let sec = SignatureAccumulator::new().finish(0, [1; 32], [2; 64]).unwrap();
        assert_eq!(sec.len(), SIG_FIXED_LEN);
        assert_eq!(SignatureSection::parse(&sec, 0).unwrap().block_count(), 0);
    }

    proptest! {
        #[test]
        fn parse_never_panics(b in proptest::collection::vec(any::<u8>(), 0..400), n in 0u64..12) {
            let _ = SignatureSection::parse(&b, n);
        }

        #[test]
        fn accumulator_any_order(order in Just((0u64..20).collect::<Vec<_>>()).prop_shuffle()) {
            let mut acc = SignatureAccumulator::new();
            for &i in &order {
                acc.set(i, &[i as u8; 32]).unwrap();
            }
            let sec = SignatureSection::parse(&acc.finish(20, [0; 32], [0; 64]).unwrap(), 20).unwrap();
            for i in 0..20usize {
                prop_assert_eq!(sec.frame_digest(i), Some(&[i as u8; 32][..]));
            }
        }
    }
}
