//! Trailer (FORMAT.md section 6.1): the fixed 24 bytes that locate the footer.
use crate::error::{corrupt, Result};
use crate::{read_u64, FormatError, INDEX_ENTRY_LEN, INDEX_FOOTER_MIN_LEN};

/// Length of the trailer.
pub const TRAILER_LEN: usize = 24;
/// `"QLTXEND" 0x0A`.
pub const TRAILER_MAGIC: [u8; 8] = *b"QLTXEND\n";

/// The decoded trailer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    pub footer_offset: u64,
    pub footer_len: u64,
}

impl Trailer {
    /// Encode the trailer.
    pub fn encode(&self) -> [u8; TRAILER_LEN] {
        let mut out = [0u8; TRAILER_LEN];
        out[0..8].copy_from_slice(&self.footer_offset.to_le_bytes());
        out[8..16].copy_from_slice(&self.footer_len.to_le_bytes());
        out[16..24].copy_from_slice(&TRAILER_MAGIC);
        out
    }

    /// Parse the last [`TRAILER_LEN`] bytes of a file of `file_len` bytes whose header is
    /// `header_len` bytes, with the checks of FORMAT.md section 8 step 5.
    pub fn parse(b: &[u8], file_len: u64, header_len: u32) -> Result<Trailer> {
        Self::parse_with(b, file_len, header_len, false)
    }

    /// [`Trailer::parse`] for a container whose header says `signed`: a signature section of
    /// `sig_len` bytes (FORMAT.md section 15) then lies between the footer and the trailer.
    pub fn parse_with(b: &[u8], file_len: u64, header_len: u32, signed: bool) -> Result<Trailer> {
        if b.len() != TRAILER_LEN || b[16..24] != TRAILER_MAGIC {
            return Err(FormatError::Truncated(
                "no trailer at the end of the file (cut short, or a stream that never \
                 finished)"
                    .into(),
            ));
        }
        let t = Trailer {
            footer_offset: read_u64(b, 0),
            footer_len: read_u64(b, 8),
        };
        if t.footer_len < INDEX_FOOTER_MIN_LEN
            || !(t.footer_len - INDEX_FOOTER_MIN_LEN).is_multiple_of(INDEX_ENTRY_LEN as u64)
        {
            return corrupt(format!("footer_len {} is not a valid index size", t.footer_len));
        }
        let sig_len = if signed {
            crate::signature::sig_len_for_footer(t.footer_len)
        } else {
            Some(0)
        };
        let end = t
            .footer_offset
            .checked_add(t.footer_len)
            .and_then(|e| e.checked_add(sig_len?))
            .and_then(|e| e.checked_add(TRAILER_LEN as u64));
        if end != Some(file_len) {
            return corrupt("trailer does not match the file length");
        }
        if t.footer_offset < u64::from(header_len) {
            return corrupt("footer overlaps the header");
        }
        Ok(t)
    }

    /// Offset of the signature section of a signed container (right after the footer).
    pub fn sig_offset(&self) -> u64 {
        self.footer_offset + self.footer_len
    }

    /// Number of index entries the footer holds.
    pub fn block_count(&self) -> u64 {
        (self.footer_len - INDEX_FOOTER_MIN_LEN) / INDEX_ENTRY_LEN as u64
    }

    /// Associated data of the footer AEAD, without `container_id`.
    pub fn aad_suffix(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out.copy_from_slice(&self.encode()[..16]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_checks() {
        let t = Trailer {
            footer_offset: 4096,
            footer_len: 48 + 24,
        };
        let b = t.encode();
        assert_eq!(Trailer::parse(&b, 4096 + 72 + 24, 4096), Ok(t));
        assert_eq!(t.block_count(), 2);
        assert!(matches!(
            Trailer::parse(&b, 4096 + 72 + 25, 4096),
            Err(FormatError::Corrupt(_))
        ));
        assert!(matches!(
            Trailer::parse(&b, 4096 + 72 + 24, 8192),
            Err(FormatError::Corrupt(_))
        ));
        let mut bad = b;
        bad[23] ^= 1;
        assert!(matches!(
            Trailer::parse(&bad, 4192, 4096),
            Err(FormatError::Truncated(_))
        ));
        let odd = Trailer {
            footer_offset: 4096,
            footer_len: 50,
        };
        assert!(matches!(
            Trailer::parse(&odd.encode(), 4096 + 50 + 24, 4096),
            Err(FormatError::Corrupt(_))
        ));
        // Signed: the section (96 + 32 * 2 bytes) sits between footer and trailer.
        assert!(matches!(
            Trailer::parse_with(&b, 4096 + 72 + 24, 4096, true),
            Err(FormatError::Corrupt(_))
        ));
        assert_eq!(Trailer::parse_with(&b, 4096 + 72 + 160 + 24, 4096, true), Ok(t));
        assert_eq!(t.sig_offset(), 4096 + 72);
        let huge = Trailer {
            footer_offset: u64::MAX,
            footer_len: u64::MAX,
        };
        assert!(Trailer::parse(&huge.encode(), 100, 64).is_err());
    }
}
