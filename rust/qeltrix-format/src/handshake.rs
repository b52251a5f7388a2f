//! Message sizes of the gateway session handshakes (FORMAT.md sections 12.1 and 12.2).
//!
//! The cryptography runs in Python (`qeltrix_v6._crypto.Handshake`, `SharedKeySession`); these
//! sizes are what the wire carries, shared by both halves through `_core`.

/// First bytes of a pinned-key `msg1`: `"QLTXHS1" 0x0A`.
pub const HS_MAGIC: [u8; 8] = *b"QLTXHS1\n";
/// X25519 public key length.
pub const X25519_LEN: usize = 32;
/// Pinned-key `msg1 = magic || e_I.pub || s_I.pub`.
pub const HS_MSG1_LEN: usize = HS_MAGIC.len() + 2 * X25519_LEN;
/// Pinned-key `msg2 = e_R.pub || s_R.pub || tag_R`.
pub const HS_MSG2_LEN: usize = 2 * X25519_LEN + 32;
/// Pinned-key `msg3 = tag_I`.
pub const HS_MSG3_LEN: usize = 32;
/// First bytes of a shared-key `msg1`: `"QLTXSK1" 0x0A`.
pub const SK_MAGIC: [u8; 8] = *b"QLTXSK1\n";
/// Length of each side's shared-key nonce.
pub const SK_NONCE_LEN: usize = 32;
/// Shared-key `msg1 = magic || nonce_I || key_check`.
pub const SK_MSG1_LEN: usize = SK_MAGIC.len() + 2 * SK_NONCE_LEN;
/// Shared-key `msg2 = nonce_R`.
pub const SK_MSG2_LEN: usize = SK_NONCE_LEN;
/// Largest handshake message a session may ask for: bounds pre-authentication memory.
pub const MAX_HS_MSG_LEN: usize = 256;

const _: () = assert!(HS_MSG1_LEN <= MAX_HS_MSG_LEN && HS_MSG2_LEN <= MAX_HS_MSG_LEN && SK_MSG1_LEN <= MAX_HS_MSG_LEN);
