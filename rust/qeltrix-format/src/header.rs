//! Header and recipient stanzas (FORMAT.md section 3).
//!
//! The header is parsed from its exact bytes and keeps them (`encoded`), so the checksum and
//! the MAC that the crypto layer verifies cover exactly what was parsed.
use crate::error::{corrupt, limit, malformed, Result};
use crate::{
    read_u16, read_u32, CIPHER_AES_256_GCM, CIPHER_CHACHA20_POLY1305, CONTAINER_ID_LEN, FORMAT_VERSION, HEADER_ALIGN,
    HEADER_FLAG_PERMUTED, MAGIC, MAX_BLOCK_SIZE, MAX_HEADER_LEN, MAX_RECIPIENTS, MAX_STANZA_BODY_LEN, MIN_BLOCK_SIZE,
};

/// Bytes before the first stanza.
pub const HEADER_FIXED_LEN: usize = 44;
/// `header_sha256 || header_mac`, the last bytes of every header.
pub const HEADER_SEAL_LEN: usize = 64;

/// Stanza kind: a raw 32-byte key.
pub const KIND_KEY: u8 = 1;
/// Stanza kind: a passphrase through Argon2id.
pub const KIND_ARGON2ID: u8 = 2;
/// Stanza kind: a passphrase through PBKDF2-HMAC-SHA256.
pub const KIND_PBKDF2: u8 = 3;

/// Stanza kind: the MK sealed to an X25519 public key (ephemeral-static ECDH).
pub const KIND_X25519: u8 = 4;
/// Stanza kind: the MK encrypted with RSA-OAEP-SHA256 to an RSA public key.
pub const KIND_RSA_OAEP: u8 = 5;
/// Stanza kind: the MK wrapped by a KMS key (AWS KMS `Encrypt`).
pub const KIND_KMS: u8 = 6;
/// Stanza kind 16: a gateway stream keyed from its connection's session (FORMAT.md 12.1, 12.2;
/// empty body, no wrapped key).
pub const KIND_HANDSHAKE: u8 = 16;
/// The name of each assigned stanza kind, as the CLI and `inspect` print it.
pub const STANZA_NAMES: [(u8, &str); 7] = [
    (KIND_KEY, "key"),
    (KIND_ARGON2ID, "argon2id"),
    (KIND_PBKDF2, "pbkdf2"),
    (KIND_X25519, "x25519"),
    (KIND_RSA_OAEP, "rsa-oaep"),
    (KIND_KMS, "kms"),
    (KIND_HANDSHAKE, "handshake"),
];

/// Body of an `x25519` stanza: `eph_pub || recipient_pub || wrap_nonce || wrapped_mk`.
pub const X25519_BODY_LEN: usize = 32 + 32 + 12 + 48;
/// Largest DER SubjectPublicKeyInfo in an `rsa-oaep` stanza (an 8192-bit key needs 1,062).
pub const RSA_MAX_SPKI_LEN: usize = 1200;
/// RSA ciphertext bounds: 3072 to 8192-bit moduli.
pub const RSA_MIN_CT_LEN: usize = 384;
/// Largest RSA ciphertext (8192 bits).
pub const RSA_MAX_CT_LEN: usize = 1024;
/// Smallest RSA modulus accepted for a recipient (bits): the ciphertext is the modulus' size.
pub const RSA_MIN_BITS: usize = RSA_MIN_CT_LEN * 8;
/// Largest RSA modulus accepted for a recipient (bits).
pub const RSA_MAX_BITS: usize = RSA_MAX_CT_LEN * 8;
/// Largest key id in a `kms` stanza.
pub const KMS_MAX_KEY_ID_LEN: usize = 2048;
/// Largest ciphertext blob in a `kms` stanza.
pub const KMS_MAX_BLOB_LEN: usize = 2048;

/// Exact body lengths of the known stanza kinds.
pub const KEY_BODY_LEN: usize = 60;
/// Body of an `argon2id` stanza.
pub const ARGON2ID_BODY_LEN: usize = 88;
/// Body of a `pbkdf2` stanza.
pub const PBKDF2_BODY_LEN: usize = 80;

/// Argon2id limits enforced before any KDF runs (FORMAT.md section 9).
pub const ARGON2ID_MAX_T_COST: u32 = 16;
/// Largest Argon2id memory cost, in KiB (1 GiB).
pub const ARGON2ID_MAX_M_COST_KIB: u32 = 1 << 20;
/// Largest Argon2id lane count.
pub const ARGON2ID_MAX_LANES: u32 = 16;
/// Largest Argon2id `t_cost * m_cost_kib` (2 GiB of memory passes, e.g. t = 2 at 1 GiB): with
/// one passphrase stanza per container this bounds the KDF work of any open (FORMAT.md 9).
pub const ARGON2ID_MAX_WORK_KIB: u64 = 2 << 20;
/// Passphrase stanzas (`argon2id` or `pbkdf2`) a container may hold: one KDF run per open.
pub const MAX_PASSPHRASE_STANZAS: usize = 1;
/// PBKDF2 iteration bounds.
pub const PBKDF2_MIN_ITERATIONS: u32 = 1_000;
/// Largest PBKDF2 iteration count.
pub const PBKDF2_MAX_ITERATIONS: u32 = 10_000_000;

/// One recipient stanza: the MK wrapped for one credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stanza {
    /// Stanza kind (`KIND_*`); unknown kinds are kept and skipped by readers.
    pub kind: u8,
    /// The body, exactly `body_len` bytes.
    pub body: Vec<u8>,
}

impl Stanza {
    /// Check a known kind's body length and, for passphrase kinds, its KDF parameters.
    pub fn validate(&self) -> Result<()> {
        match self.kind {
            KIND_RSA_OAEP => return self.validate_rsa_oaep(),
            KIND_KMS => return self.validate_kms(),
            _ => {}
        }
        let expect = match self.kind {
            KIND_KEY => KEY_BODY_LEN,
            KIND_ARGON2ID => ARGON2ID_BODY_LEN,
            KIND_PBKDF2 => PBKDF2_BODY_LEN,
            KIND_X25519 => X25519_BODY_LEN,
            _ => return Ok(()),
        };
        if self.body.len() != expect {
            return malformed(format!(
                "recipient stanza of kind {} has body_len {} (expected {expect})",
                self.kind,
                self.body.len()
            ));
        }
        match self.kind {
            KIND_ARGON2ID => {
                let (t, m, lanes) = self.argon2id_params().expect("kind checked");
                if !(1..=ARGON2ID_MAX_T_COST).contains(&t) {
                    return limit(format!("argon2id t_cost {t} outside 1..={ARGON2ID_MAX_T_COST}"));
                }
                if !(1..=ARGON2ID_MAX_LANES).contains(&lanes) {
                    return limit(format!("argon2id lanes {lanes} outside 1..={ARGON2ID_MAX_LANES}"));
                }
                if m < 8 * lanes || m > ARGON2ID_MAX_M_COST_KIB {
                    return limit(format!(
                        "argon2id m_cost_kib {m} outside {}..={ARGON2ID_MAX_M_COST_KIB}",
                        8 * lanes
                    ));
                }
                if u64::from(t) * u64::from(m) > ARGON2ID_MAX_WORK_KIB {
                    return limit(format!(
                        "argon2id t_cost {t} x m_cost_kib {m} exceeds the work limit {ARGON2ID_MAX_WORK_KIB}"
                    ));
                }
            }
            KIND_PBKDF2 => {
                let it = self.pbkdf2_iterations().expect("kind checked");
                if !(PBKDF2_MIN_ITERATIONS..=PBKDF2_MAX_ITERATIONS).contains(&it) {
                    return limit(format!(
                        "pbkdf2 iterations {it} outside \
                         {PBKDF2_MIN_ITERATIONS}..={PBKDF2_MAX_ITERATIONS}"
                    ));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Whether this stanza wraps the MK under a passphrase (costs a KDF run to try).
    pub fn is_passphrase(&self) -> bool {
        matches!(self.kind, KIND_ARGON2ID | KIND_PBKDF2)
    }

    /// `spki_len u16 || spki || rsa_ct`: lengths consistent and within bounds.
    fn validate_rsa_oaep(&self) -> Result<()> {
        let b = &self.body;
        if b.len() < 2 {
            return malformed("rsa-oaep stanza body is too short");
        }
        let spki_len = read_u16(b, 0) as usize;
        if spki_len == 0 || spki_len > RSA_MAX_SPKI_LEN {
            return limit(format!(
                "rsa-oaep stanza spki_len {spki_len} outside 1..={RSA_MAX_SPKI_LEN}"
            ));
        }
        let ct_len = b.len().checked_sub(2 + spki_len);
        match ct_len {
            Some(n) if (RSA_MIN_CT_LEN..=RSA_MAX_CT_LEN).contains(&n) => Ok(()),
            _ => malformed(format!(
                "rsa-oaep stanza ciphertext length outside {RSA_MIN_CT_LEN}..={RSA_MAX_CT_LEN} bytes"
            )),
        }
    }

    /// `key_id_len u16 || key_id || blob_len u16 || blob`: lengths consistent and within bounds.
    fn validate_kms(&self) -> Result<()> {
        let b = &self.body;
        if b.len() < 4 {
            return malformed("kms stanza body is too short");
        }
        let id_len = read_u16(b, 0) as usize;
        if id_len == 0 || id_len > KMS_MAX_KEY_ID_LEN || 2 + id_len + 2 > b.len() {
            return malformed(format!("kms stanza key_id_len {id_len} is out of range"));
        }
        let blob_len = read_u16(b, 2 + id_len) as usize;
        if blob_len == 0 || blob_len > KMS_MAX_BLOB_LEN || 4 + id_len + blob_len != b.len() {
            return malformed(format!("kms stanza blob_len {blob_len} does not match its body"));
        }
        Ok(())
    }

    /// `(t_cost, m_cost_kib, lanes)` of an `argon2id` stanza.
    pub fn argon2id_params(&self) -> Option<(u32, u32, u32)> {
        (self.kind == KIND_ARGON2ID && self.body.len() == ARGON2ID_BODY_LEN).then(|| {
            (
                read_u32(&self.body, 16),
                read_u32(&self.body, 20),
                read_u32(&self.body, 24),
            )
        })
    }

    /// `iterations` of a `pbkdf2` stanza.
    pub fn pbkdf2_iterations(&self) -> Option<u32> {
        (self.kind == KIND_PBKDF2 && self.body.len() == PBKDF2_BODY_LEN).then(|| read_u32(&self.body, 16))
    }

    /// Name of the kind as FORMAT.md spells it.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            KIND_KEY => "key",
            KIND_ARGON2ID => "argon2id",
            KIND_PBKDF2 => "pbkdf2",
            KIND_X25519 => "x25519",
            KIND_RSA_OAEP => "rsa-oaep",
            KIND_KMS => "kms",
            _ => "unknown",
        }
    }
}

/// A parsed header (FORMAT.md section 3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub format_version: u16,
    pub header_len: u32,
    pub header_flags: u16,
    pub cipher_id: u8,
    pub block_size: u32,
    pub perm_window: u32,
    pub container_id: [u8; CONTAINER_ID_LEN],
    pub stanzas: Vec<Stanza>,
    /// The exact header bytes this value was parsed from (or encoded to, unsealed part
    /// followed by the seal when built by [`Header::encode_unsealed`] and sealed).
    pub encoded: Vec<u8>,
}

impl Header {
    /// Read `header_len` from the first bytes of a file, checking the magic, the version
    /// and the length bounds, so a caller knows how much to read before [`Header::parse`].
    pub fn peek_len(prefix: &[u8]) -> Result<u32> {
        if prefix.len() < HEADER_FIXED_LEN || prefix[..8] != MAGIC {
            return malformed("not a Qeltrix V6 container (bad magic)");
        }
        let version = read_u16(prefix, 8);
        if version != FORMAT_VERSION {
            return malformed(format!(
                "unsupported format_version {version} (this build reads {FORMAT_VERSION})"
            ));
        }
        let header_len = read_u32(prefix, 10);
        let min = (HEADER_FIXED_LEN + HEADER_SEAL_LEN) as u32;
        if header_len < min {
            return malformed(format!("header_len {header_len} is below {min}"));
        }
        if header_len > MAX_HEADER_LEN {
            return limit(format!("header_len {header_len} exceeds {MAX_HEADER_LEN}"));
        }
        Ok(header_len)
    }

    /// Parse a whole header (exactly `header_len` bytes). Checks structure and limits; the
    /// caller verifies `header_sha256` and `header_mac` over [`Header::checksummed`] and
    /// [`Header::maced`].
    pub fn parse(bytes: &[u8]) -> Result<Header> {
        let header_len = Self::peek_len(bytes)?;
        if bytes.len() != header_len as usize {
            return malformed(format!(
                "header is {} bytes but header_len says {header_len}",
                bytes.len()
            ));
        }
        let header_flags = read_u16(bytes, 14);
        if header_flags & !crate::HEADER_FLAGS_KNOWN != 0 {
            return malformed(format!("unknown header_flags bits {header_flags:#06x}"));
        }
        let cipher_id = bytes[16];
        if cipher_id != CIPHER_AES_256_GCM && cipher_id != CIPHER_CHACHA20_POLY1305 {
            return malformed(format!("unknown cipher_id {cipher_id}"));
        }
        if bytes[17] != 0 {
            return malformed("reserved header byte is not zero");
        }
        let block_size = read_u32(bytes, 18);
        if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) {
            return limit(format!(
                "block_size {block_size} outside {MIN_BLOCK_SIZE}..={MAX_BLOCK_SIZE}"
            ));
        }
        let perm_window = read_u32(bytes, 22);
        let permuted = header_flags & HEADER_FLAG_PERMUTED != 0;
        if permuted == (perm_window == 0) {
            return malformed("perm_window disagrees with the PERMUTED flag");
        }
        let container_id: [u8; CONTAINER_ID_LEN] = bytes[26..42].try_into().expect("16 bytes");
        let recipient_count = read_u16(bytes, 42);
        if recipient_count == 0 {
            return malformed("header has no recipients");
        }
        if recipient_count > MAX_RECIPIENTS {
            return limit(format!("recipient_count {recipient_count} exceeds {MAX_RECIPIENTS}"));
        }
        let end = header_len as usize - HEADER_SEAL_LEN;
        let mut pos = HEADER_FIXED_LEN;
        let mut stanzas = Vec::with_capacity(recipient_count as usize);
        for n in 0..recipient_count {
            if pos + 3 > end {
                return malformed(format!("recipient stanza {n} runs past the header"));
            }
            let kind = bytes[pos];
            if kind == 0 {
                return malformed(format!("recipient stanza {n} has the reserved kind 0"));
            }
            let body_len = read_u16(bytes, pos + 1);
            if body_len > MAX_STANZA_BODY_LEN {
                return limit(format!(
                    "recipient stanza {n} body_len {body_len} exceeds {MAX_STANZA_BODY_LEN}"
                ));
            }
            let body_end = pos + 3 + body_len as usize;
            if body_end > end {
                return malformed(format!("recipient stanza {n} runs past the header"));
            }
            let stanza = Stanza {
                kind,
                body: bytes[pos + 3..body_end].to_vec(),
            };
            stanza.validate()?;
            stanzas.push(stanza);
            pos = body_end;
        }
        let passphrase_stanzas = stanzas.iter().filter(|s| s.is_passphrase()).count();
        if passphrase_stanzas > MAX_PASSPHRASE_STANZAS {
            // Each would cost a KDF run: refuse before any runs (FORMAT.md section 8, step 2).
            return limit(format!(
                "header has {passphrase_stanzas} passphrase stanzas; at most {MAX_PASSPHRASE_STANZAS} is allowed"
            ));
        }
        if bytes[pos..end].iter().any(|&b| b != 0) {
            // Padding is covered by the checksum; non-zero padding is non-canonical.
            return corrupt("header padding is not zero");
        }
        Ok(Header {
            format_version: FORMAT_VERSION,
            header_len,
            header_flags,
            cipher_id,
            block_size,
            perm_window,
            container_id,
            stanzas,
            encoded: bytes.to_vec(),
        })
    }

    /// Whether frames are stored in permuted order.
    pub fn permuted(&self) -> bool {
        self.header_flags & HEADER_FLAG_PERMUTED != 0
    }

    /// Whether a signature section follows the footer (FORMAT.md section 15).
    pub fn signed(&self) -> bool {
        self.header_flags & crate::HEADER_FLAG_SIGNED != 0
    }

    /// The bytes `header_sha256` covers.
    pub fn checksummed(&self) -> &[u8] {
        &self.encoded[..self.encoded.len() - HEADER_SEAL_LEN]
    }

    /// The bytes `header_mac` covers (everything but the MAC itself).
    pub fn maced(&self) -> &[u8] {
        &self.encoded[..self.encoded.len() - 32]
    }

    /// The stored `header_sha256`.
    pub fn header_sha256(&self) -> &[u8] {
        let n = self.encoded.len();
        &self.encoded[n - 64..n - 32]
    }

    /// The stored `header_mac`.
    pub fn header_mac(&self) -> &[u8] {
        let n = self.encoded.len();
        &self.encoded[n - 32..]
    }

    /// Length a header with these stanzas needs before padding and seal.
    pub fn needed_len(stanzas: &[Stanza]) -> usize {
        HEADER_FIXED_LEN + stanzas.iter().map(|s| 3 + s.body.len()).sum::<usize>()
    }

    /// Encode every header byte before `header_sha256` (fixed fields, stanzas, padding).
    /// `header_len` is `min_header_len` exactly when the header fits in it (so an in-place
    /// rewrite keeps any existing length, aligned or not), else the needed length rounded up
    /// to [`HEADER_ALIGN`].
    #[allow(clippy::too_many_arguments)] // one argument per header field
    pub fn encode_unsealed(
        header_flags: u16,
        cipher_id: u8,
        block_size: u32,
        perm_window: u32,
        container_id: [u8; CONTAINER_ID_LEN],
        stanzas: &[Stanza],
        min_header_len: u32,
    ) -> Result<Vec<u8>> {
        if stanzas.is_empty() || stanzas.len() > MAX_RECIPIENTS as usize {
            return limit(format!("a header holds 1..={MAX_RECIPIENTS} recipients"));
        }
        for s in stanzas {
            if s.body.len() > MAX_STANZA_BODY_LEN as usize {
                return limit("recipient stanza body too long");
            }
            s.validate()?;
        }
        let needed = Self::needed_len(stanzas) + HEADER_SEAL_LEN;
        let align = HEADER_ALIGN as usize;
        let header_len = if needed <= min_header_len as usize {
            min_header_len as usize
        } else {
            needed.div_ceil(align) * align
        };
        if header_len > MAX_HEADER_LEN as usize {
            return limit(format!("header would be {header_len} bytes, over {MAX_HEADER_LEN}"));
        }
        let mut out = Vec::with_capacity(header_len);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(header_len as u32).to_le_bytes());
        out.extend_from_slice(&header_flags.to_le_bytes());
        out.push(cipher_id);
        out.push(0);
        out.extend_from_slice(&block_size.to_le_bytes());
        out.extend_from_slice(&perm_window.to_le_bytes());
        out.extend_from_slice(&container_id);
        out.extend_from_slice(&(stanzas.len() as u16).to_le_bytes());
        for s in stanzas {
            out.push(s.kind);
            out.extend_from_slice(&(s.body.len() as u16).to_le_bytes());
            out.extend_from_slice(&s.body);
        }
        out.resize(header_len - HEADER_SEAL_LEN, 0);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FormatError;
    use proptest::prelude::*;

    fn key_stanza() -> Stanza {
        Stanza {
            kind: KIND_KEY,
            body: vec![7; KEY_BODY_LEN],
        }
    }

    fn sealed(unsealed: Vec<u8>) -> Vec<u8> {
        let mut v = unsealed;
        v.extend_from_slice(&[0xAA; 64]);
        v
    }

    fn sample() -> Vec<u8> {
        sealed(Header::encode_unsealed(1, 1, 1 << 18, 64, [9; 16], &[key_stanza()], 0).expect("encodes"))
    }

    fn argon2id(t: u32, m: u32, lanes: u32) -> Stanza {
        let mut body = vec![1u8; ARGON2ID_BODY_LEN];
        body[16..20].copy_from_slice(&t.to_le_bytes());
        body[20..24].copy_from_slice(&m.to_le_bytes());
        body[24..28].copy_from_slice(&lanes.to_le_bytes());
        Stanza {
            kind: KIND_ARGON2ID,
            body,
        }
    }

    fn pbkdf2() -> Stanza {
        let mut body = vec![1u8; PBKDF2_BODY_LEN];
        body[16..20].copy_from_slice(&PBKDF2_MIN_ITERATIONS.to_le_bytes());
        Stanza {
            kind: KIND_PBKDF2,
            body,
        }
    }

    /// Encode without the writer's checks, as an attacker would.
    fn raw_header(stanzas: &[Stanza]) -> Vec<u8> {
        let mut v = Header::encode_unsealed(1, 1, 1 << 18, 64, [9; 16], &[key_stanza()], 0).expect("encodes");
        let count = 1 + stanzas.len() as u16;
        v[42..44].copy_from_slice(&count.to_le_bytes());
        let mut pos = HEADER_FIXED_LEN + 3 + KEY_BODY_LEN;
        for s in stanzas {
            v[pos] = s.kind;
            v[pos + 1..pos + 3].copy_from_slice(&(s.body.len() as u16).to_le_bytes());
            v[pos + 3..pos + 3 + s.body.len()].copy_from_slice(&s.body);
            pos += 3 + s.body.len();
        }
        sealed(v)
    }

    #[test]
    fn a_header_that_fits_keeps_its_length_even_unaligned() {
        // Another writer may pick any header_len; an in-place rewrite must keep it exactly.
        let enc = |min| Header::encode_unsealed(0, 1, 16, 0, [0; 16], &[key_stanza()], min).unwrap();
        assert_eq!(enc(0).len() + HEADER_SEAL_LEN, HEADER_ALIGN as usize);
        assert_eq!(enc(4137).len() + HEADER_SEAL_LEN, 4137);
        let needed = Header::needed_len(&[key_stanza()]) + HEADER_SEAL_LEN;
        assert_eq!(enc(needed as u32).len() + HEADER_SEAL_LEN, needed);
        // Too small a minimum: rounded up as a fresh header would be.
        assert_eq!(enc(needed as u32 - 1).len() + HEADER_SEAL_LEN, HEADER_ALIGN as usize);
        let h = Header::parse(&sealed(enc(4137))).unwrap();
        assert_eq!(h.header_len, 4137);
    }

    #[test]
    fn one_passphrase_stanza_at_most() {
        assert!(Header::parse(&raw_header(&[argon2id(3, 65536, 4)])).is_ok());
        for pair in [
            vec![argon2id(1, 64, 1), argon2id(1, 64, 1)],
            vec![argon2id(1, 64, 1), pbkdf2()],
            vec![pbkdf2(), pbkdf2()],
        ] {
            assert!(matches!(
                Header::parse(&raw_header(&pair)),
                Err(FormatError::Limit(m)) if m.contains("passphrase stanzas")
            ));
        }
    }

    #[test]
    fn argon2id_work_is_bounded() {
        assert!(argon2id(2, 1 << 20, 4).validate().is_ok());
        assert!(argon2id(16, 1 << 17, 4).validate().is_ok());
        assert!(matches!(argon2id(3, 1 << 20, 4).validate(), Err(FormatError::Limit(_))));
        assert!(matches!(
            argon2id(16, (1 << 17) + 8, 4).validate(),
            Err(FormatError::Limit(_))
        ));
    }

    #[test]
    fn round_trip() {
        let bytes = sample();
        assert_eq!(bytes.len(), 4096);
        let h = Header::parse(&bytes).expect("parses");
        assert_eq!(h.header_len, 4096);
        assert_eq!(h.block_size, 1 << 18);
        assert_eq!(h.perm_window, 64);
        assert!(h.permuted());
        assert_eq!(h.container_id, [9; 16]);
        assert_eq!(h.stanzas, vec![key_stanza()]);
        assert_eq!(h.header_mac(), &[0xAA; 32]);
        assert_eq!(h.checksummed().len(), 4096 - 64);
    }

    #[test]
    fn rejects_bad_magic_and_version() {
        let mut b = sample();
        b[0] ^= 1;
        assert!(matches!(Header::parse(&b), Err(FormatError::Malformed(_))));
        let mut b = sample();
        b[8] = 2;
        assert!(matches!(Header::parse(&b), Err(FormatError::Malformed(_))));
    }

    #[test]
    fn rejects_hostile_lengths() {
        let mut b = sample();
        b[10..14].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(Header::peek_len(&b), Err(FormatError::Limit(_))));
        let mut b = sample();
        b[42..44].copy_from_slice(&1000u16.to_le_bytes());
        assert!(matches!(Header::parse(&b), Err(FormatError::Limit(_))));
        let mut b = sample();
        b[45..47].copy_from_slice(&4000u16.to_le_bytes());
        assert!(matches!(Header::parse(&b), Err(FormatError::Malformed(_))));
        let mut b = sample();
        b[18..22].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(Header::parse(&b), Err(FormatError::Limit(_))));
    }

    #[test]
    fn rejects_hostile_kdf_params() {
        let mut body = vec![0u8; ARGON2ID_BODY_LEN];
        body[16..20].copy_from_slice(&3u32.to_le_bytes());
        body[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        body[24..28].copy_from_slice(&4u32.to_le_bytes());
        let s = Stanza {
            kind: KIND_ARGON2ID,
            body,
        };
        assert!(matches!(s.validate(), Err(FormatError::Limit(_))));
        let mut body = vec![0u8; PBKDF2_BODY_LEN];
        body[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        let s = Stanza {
            kind: KIND_PBKDF2,
            body,
        };
        assert!(matches!(s.validate(), Err(FormatError::Limit(_))));
    }

    #[test]
    fn unknown_stanza_kinds_are_kept() {
        let s = Stanza {
            kind: 200,
            body: vec![1, 2, 3],
        };
        let b = sealed(Header::encode_unsealed(0, 2, 64, 0, [0; 16], &[s.clone(), key_stanza()], 0).expect("encodes"));
        let h = Header::parse(&b).expect("parses");
        assert_eq!(h.stanzas[0], s);
        assert!(!h.permuted());
    }

    #[test]
    fn public_key_stanzas_are_bounded() {
        let ok = Stanza {
            kind: KIND_X25519,
            body: vec![1; X25519_BODY_LEN],
        };
        assert!(ok.validate().is_ok());
        let bad = Stanza {
            kind: KIND_X25519,
            body: vec![1; X25519_BODY_LEN + 1],
        };
        assert!(matches!(bad.validate(), Err(FormatError::Malformed(_))));
        let mut body = vec![0u8; 2 + 422 + 384];
        body[0..2].copy_from_slice(&422u16.to_le_bytes());
        let rsa = Stanza {
            kind: KIND_RSA_OAEP,
            body,
        };
        assert!(rsa.validate().is_ok());
        let mut body = vec![0u8; 2 + 422 + 100];
        body[0..2].copy_from_slice(&422u16.to_le_bytes());
        let short = Stanza {
            kind: KIND_RSA_OAEP,
            body,
        };
        assert!(matches!(short.validate(), Err(FormatError::Malformed(_))));
        let mut body = vec![0u8; 4000];
        body[0..2].copy_from_slice(&3000u16.to_le_bytes());
        let huge = Stanza {
            kind: KIND_RSA_OAEP,
            body,
        };
        assert!(matches!(huge.validate(), Err(FormatError::Limit(_))));
        let mut body = vec![b'k'; 2 + 5 + 2 + 10];
        body[0..2].copy_from_slice(&5u16.to_le_bytes());
        body[7..9].copy_from_slice(&10u16.to_le_bytes());
        let kms = Stanza { kind: KIND_KMS, body };
        assert!(kms.validate().is_ok());
        let mut body = vec![b'k'; 2 + 5 + 2 + 10];
        body[0..2].copy_from_slice(&5u16.to_le_bytes());
        body[7..9].copy_from_slice(&11u16.to_le_bytes());
        let kms = Stanza { kind: KIND_KMS, body };
        assert!(matches!(kms.validate(), Err(FormatError::Malformed(_))));
    }

    #[test]
    fn nonzero_padding_is_corrupt() {
        let mut b = sample();
        b[4000] = 1;
        assert!(matches!(Header::parse(&b), Err(FormatError::Corrupt(_))));
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Header::parse(&bytes);
            let _ = Header::peek_len(&bytes);
        }

        #[test]
        fn mutated_header_never_panics(pos in 0usize..4096, val in any::<u8>()) {
            let mut b = sample();
            b[pos] = val;
            let _ = Header::parse(&b);
        }
    }
}
