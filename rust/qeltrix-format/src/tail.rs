//! The end of a container, as every writer lays it out: footer (the sealed index), the
//! signature section when the header says `SIGNED`, and the trailer (FORMAT.md sections 6,
//! 6.1 and 15.1). `pack`, a gateway sink and `recover` all finish a container through
//! [`container_tail`], so the three cannot drift apart.
//!
//! The cryptography (sealing the index, SHA-256, Ed25519) is the caller's, behind
//! [`TailCrypto`]; this module only orders the pieces and computes what is signed.
use crate::signature::{signed_message, Digest, SignatureAccumulator, SIGNATURE_LEN, SIGNER_PUB_LEN};
use crate::{FormatError, Index, Trailer};
use std::io::{self, Read};

/// What finishing a container needs from the crypto layer.
pub trait TailCrypto {
    /// The caller's error type; format errors convert into it.
    type Error: From<FormatError>;
    /// Seal `index_pt` as the footer that starts at `footer_offset`.
    fn seal_index(&mut self, index_pt: &[u8], footer_offset: u64) -> Result<Vec<u8>, Self::Error>;
    /// `SHA256(data)`.
    fn sha256(&mut self, data: &[u8]) -> Result<Digest, Self::Error>;
    /// The public key the container is signed with (only asked for signed containers).
    fn signer_public(&mut self) -> Result<[u8; SIGNER_PUB_LEN], Self::Error>;
    /// `Ed25519-Sign(signer_priv, message)` (only asked for signed containers).
    fn sign(&mut self, message: &[u8]) -> Result<[u8; SIGNATURE_LEN], Self::Error>;
}

/// The bytes that end a container whose `header` and frames (up to `footer_offset`) are
/// written: `footer || signature section || trailer`. `digests` holds every frame's digest
/// when the container is signed (`None` otherwise).
pub fn container_tail<C: TailCrypto>(
    crypto: &mut C,
    header: &[u8],
    index: &Index,
    footer_offset: u64,
    digests: Option<SignatureAccumulator>,
) -> Result<Vec<u8>, C::Error> {
    let footer = crypto.seal_index(&index.encode(), footer_offset)?;
    let mut tail = footer.clone();
    if let Some(digests) = digests {
        let block_count = index.block_count();
        let signer_pub = crypto.signer_public()?;
        let message = signed_message(
            &crypto.sha256(header)?,
            block_count,
            &crypto.sha256(digests.frame_digests()?)?,
            &crypto.sha256(&footer)?,
            footer_offset,
            &signer_pub,
        );
        let signature = crypto.sign(&message)?;
        tail.extend_from_slice(&digests.finish(block_count, signer_pub, signature)?);
    }
    let trailer = Trailer {
        footer_offset,
        footer_len: footer.len() as u64,
    };
    tail.extend_from_slice(&trailer.encode());
    Ok(tail)
}

/// Fill `buf` from `src`. `Ok(false)` when `src` was already at its end (no byte read), an
/// `UnexpectedEof` error when it ended part way; interrupted reads are retried.
pub fn read_full(src: &mut dyn Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match src.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::SIGNED_MESSAGE_LEN;
    use crate::{footer_len, IndexEntry, SignatureSection, TRAILER_LEN};

    /// A stand-in crypto layer: a "sealed" index is the plaintext with 28 marker bytes (a real
    /// footer is nonce || ciphertext || tag, 28 bytes longer), hashes are a counter.
    struct Fake {
        calls: Vec<String>,
    }

    impl TailCrypto for Fake {
        type Error = FormatError;
        fn seal_index(&mut self, index_pt: &[u8], footer_offset: u64) -> Result<Vec<u8>, FormatError> {
            self.calls.push(format!("seal@{footer_offset}"));
            Ok([&[0xEE; 12][..], index_pt, &[0xEE; 16][..]].concat())
        }
        fn sha256(&mut self, data: &[u8]) -> Result<Digest, FormatError> {
            self.calls.push(format!("sha256({})", data.len()));
            Ok([self.calls.len() as u8; 32])
        }
        fn signer_public(&mut self) -> Result<[u8; SIGNER_PUB_LEN], FormatError> {
            Ok([7; SIGNER_PUB_LEN])
        }
        fn sign(&mut self, message: &[u8]) -> Result<[u8; SIGNATURE_LEN], FormatError> {
            self.calls.push(format!("sign({})", message.len()));
            Ok([9; SIGNATURE_LEN])
        }
    }

    fn index(lens: &[u32]) -> Index {
        let mut off = 4096;
        let entries = lens
            .iter()
            .map(|&pt_len| {
                let e = IndexEntry {
                    frame_offset: off,
                    pt_len,
                };
                off += crate::frame_len(pt_len);
                e
            })
            .collect();
        Index::new(entries, 0).unwrap()
    }

    #[test]
    fn unsigned_tail_is_footer_then_trailer() {
        let ix = index(&[10, 20]);
        let mut fake = Fake { calls: vec![] };
        let tail = container_tail(&mut fake, b"header", &ix, 5000, None).unwrap();
        let footer = footer_len(2) as usize;
        assert_eq!(tail.len(), footer + TRAILER_LEN);
        let file_len = 5000 + tail.len() as u64;
        let t = Trailer::parse(&tail[footer..], file_len, 4096).unwrap();
        assert_eq!((t.footer_offset, t.footer_len), (5000, footer as u64));
        assert_eq!(fake.calls, ["seal@5000"]);
    }

    #[test]
    fn signed_tail_carries_the_section_between_footer_and_trailer() {
        let ix = index(&[10, 20, 30]);
        let mut digests = SignatureAccumulator::new();
        for i in 0..3u8 {
            digests.push(&[i; 32]).unwrap();
        }
        let mut fake = Fake { calls: vec![] };
        let tail = container_tail(&mut fake, b"header", &ix, 5000, Some(digests)).unwrap();
        let footer = footer_len(3) as usize;
        let file_len = 5000 + tail.len() as u64;
        let t = Trailer::parse_with(&tail[tail.len() - TRAILER_LEN..], file_len, 4096, true).unwrap();
        assert_eq!(t.footer_len, footer as u64);
        let section = SignatureSection::parse(&tail[footer..tail.len() - TRAILER_LEN], 3).unwrap();
        assert_eq!(section.frame_digest(2), Some(&[2u8; 32][..]));
        assert_eq!(section.signature, [9; SIGNATURE_LEN]);
        // Header, digest list and footer are hashed, then the message is signed.
        assert_eq!(
            fake.calls,
            [
                "seal@5000",
                "sha256(6)",
                "sha256(96)",
                &format!("sha256({footer})"),
                &format!("sign({SIGNED_MESSAGE_LEN})")
            ]
        );
    }

    #[test]
    fn signed_tail_refuses_missing_digests() {
        let ix = index(&[10, 20]);
        let mut digests = SignatureAccumulator::new();
        digests.push(&[1; 32]).unwrap();
        let r = container_tail(&mut Fake { calls: vec![] }, b"h", &ix, 5000, Some(digests));
        assert!(matches!(r, Err(FormatError::Malformed(_))));
    }

    #[test]
    fn read_full_distinguishes_end_from_cut() {
        let mut buf = [0u8; 4];
        let mut src: &[u8] = b"abcdefg";
        assert!(read_full(&mut src, &mut buf).unwrap());
        assert_eq!(&buf, b"abcd");
        assert_eq!(
            read_full(&mut src, &mut buf).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        let mut empty: &[u8] = b"";
        assert!(!read_full(&mut empty, &mut buf).unwrap());
    }
}
