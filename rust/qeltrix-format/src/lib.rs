//! Qeltrix V6 container codec: the pure-Rust half of `docs/FORMAT.md`.
//!
//! This crate parses and encodes every structure of the format (header and recipient
//! stanzas, V6-C metadata, VFS index, trailer), does the seek math over the index and
//! computes the keyed block permutation. It performs no cryptography beyond the
//! SipHash-2-4 PRF of the permutation: AEAD, HKDF and SHA-256 live in the Python layer
//! (`qeltrix_v6._crypto`), which hands this crate plaintext metadata to encode or decode.
#![forbid(unsafe_code)]

pub mod error;
pub mod handshake;
pub mod header;
pub mod index;
pub mod meta;
pub mod permute;
pub mod signature;
pub mod siphash;
pub mod tail;
pub mod trailer;

pub use error::{FormatError, Result};
pub use header::{Header, Stanza, HEADER_FIXED_LEN, HEADER_SEAL_LEN};
pub use index::{footer_len, Index, IndexEntry, INDEX_ENTRY_LEN, INDEX_FIXED_LEN, INDEX_FOOTER_MIN_LEN};
pub use meta::{BlockMeta, META_FRAME_LEN, META_PT_LEN};
pub use permute::Permutation;
pub use signature::{signed_message, SignatureAccumulator, SignatureSection, SIG_FIXED_LEN};
pub use tail::{container_tail, read_full, TailCrypto};
pub use trailer::{Trailer, TRAILER_LEN};

/// First bytes of every container: `"QLTXV6" 0x0D 0x0A`.
pub const MAGIC: [u8; 8] = *b"QLTXV6\r\n";
/// The only format version this crate reads and writes.
pub const FORMAT_VERSION: u16 = 1;
/// Length of the AEAD tag of every supported cipher.
pub const TAG_LEN: usize = 16;
/// Length of every AEAD nonce in the format.
pub const NONCE_LEN: usize = 12;
/// Length of `container_id`.
pub const CONTAINER_ID_LEN: usize = 16;
/// Smallest accepted `block_size`.
pub const MIN_BLOCK_SIZE: u32 = 16;
/// Largest accepted `block_size` (64 MiB): a reader allocates one block per worker.
pub const MAX_BLOCK_SIZE: u32 = 64 << 20;
/// Default `block_size` (256 KiB); see FORMAT.md section 13 for the measurement.
pub const DEFAULT_BLOCK_SIZE: u32 = 256 << 10;
/// Largest accepted `header_len`.
pub const MAX_HEADER_LEN: u32 = 1 << 20;
/// Largest stream header a gateway reads from a peer that has not authenticated yet
/// (FORMAT.md section 12).
pub const MAX_STREAM_HEADER_LEN: u32 = 4096;
/// Largest `block_size` of a gateway stream (sent, or accepted from a peer): a gateway holds
/// one block per direction of every connection.
pub const MAX_STREAM_BLOCK_SIZE: u32 = 16 << 20;
/// Length of a master key (MK), of every derived AEAD key and of a 32-byte `key`.
pub const MK_LEN: usize = 32;
/// Length of `cdk_salt` and of the passphrase KDF salts.
pub const SALT_LEN: usize = 16;
/// Largest accepted `recipient_count`.
pub const MAX_RECIPIENTS: u16 = 64;
/// Largest accepted stanza `body_len`.
pub const MAX_STANZA_BODY_LEN: u16 = 4096;
/// Largest number of blocks in one container (random 96-bit nonces stay collision-free).
pub const MAX_BLOCK_COUNT: u64 = 1 << 32;
/// `header_flags` bit: frames are stored in permuted order (section 7).
pub const HEADER_FLAG_PERMUTED: u16 = 1;
/// `header_flags` bit: a signature section follows the footer (section 15).
pub const HEADER_FLAG_SIGNED: u16 = 2;
/// `header_flags` bit 2: the container is an archive with a member table (FORMAT.md section 16).
pub const HEADER_FLAG_ARCHIVE: u16 = 4;
/// Every `header_flags` bit this version knows.
pub const HEADER_FLAGS_KNOWN: u16 = HEADER_FLAG_PERMUTED | HEADER_FLAG_SIGNED | HEADER_FLAG_ARCHIVE;
/// `meta_flags` bit: the last block of a complete stream.
pub const META_FLAG_FINAL: u8 = 1;
/// `index_flags` bit: a recovered stream that never saw its FINAL block.
pub const INDEX_FLAG_INCOMPLETE: u32 = 1;
/// Writers round `header_len` up to a multiple of this.
pub const HEADER_ALIGN: u32 = 4096;
/// Memory budget of one permutation window, used to pick the default `perm_window`.
pub const PERM_WINDOW_BUDGET: u64 = 64 << 20;
/// Upper bound of the default `perm_window`.
pub const MAX_DEFAULT_PERM_WINDOW: u32 = 64;

/// Cipher identifiers (`cipher_id`, FORMAT.md section 3.2).
pub const CIPHER_AES_256_GCM: u8 = 1;
/// ChaCha20-Poly1305.
pub const CIPHER_CHACHA20_POLY1305: u8 = 2;

/// Length of one frame holding `pt_len` plaintext bytes.
pub fn frame_len(pt_len: u32) -> u64 {
    META_FRAME_LEN as u64 + u64::from(pt_len) + TAG_LEN as u64
}

/// The writer's default `perm_window` for a block size (FORMAT.md section 7).
pub fn default_perm_window(block_size: u32) -> u32 {
    let by_budget = PERM_WINDOW_BUDGET / u64::from(block_size.max(1));
    by_budget.clamp(1, u64::from(MAX_DEFAULT_PERM_WINDOW)) as u32
}

pub(crate) fn read_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

pub(crate) fn read_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

pub(crate) fn read_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_len_adds_metadata_and_tag() {
        assert_eq!(frame_len(1), 104 + 1 + 16);
        assert_eq!(frame_len(u32::MAX), 104 + u64::from(u32::MAX) + 16);
    }

    #[test]
    fn default_window_is_bounded_by_memory() {
        assert_eq!(default_perm_window(256 << 10), 64);
        assert_eq!(default_perm_window(4 << 20), 16);
        assert_eq!(default_perm_window(64 << 20), 1);
        assert_eq!(default_perm_window(16), 64);
    }
}
