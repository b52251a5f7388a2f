//! Structure-aware property tests for the parsers that read bytes an attacker controls.
//!
//! Random bytes almost never get past the magic, so "never panics" over random input tests
//! little. These generators start from VALID encodings (a header with real stanzas, a footer
//! index and trailer that tile a real frame region) and then change one field to a hostile
//! value: zero, one, the maximum, off by one, or random. Each parser must then either accept
//! (and what it accepts must be self-consistent and canonical) or refuse with an error, never
//! panic or allocate from an unchecked length.
use proptest::prelude::*;
use qeltrix_format::header::{KEY_BODY_LEN, KIND_KEY, KIND_X25519, X25519_BODY_LEN};
use qeltrix_format::{
    footer_len, frame_len, Header, Index, IndexEntry, Stanza, Trailer, HEADER_FIXED_LEN, HEADER_SEAL_LEN,
    INDEX_ENTRY_LEN, INDEX_FIXED_LEN, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE, TRAILER_LEN,
};

/// A value a hostile writer would try for a field of `bits` bits.
fn hostile(bits: u32) -> impl Strategy<Value = u64> {
    let max = if bits == 64 { u64::MAX } else { (1u64 << bits) - 1 };
    prop_oneof![
        Just(0u64),
        Just(1u64),
        Just(max),
        Just(max - 1),
        Just(max / 2 + 1),
        (0u64..=max),
        (0u64..4096),
    ]
}

fn stanza() -> impl Strategy<Value = Stanza> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), KEY_BODY_LEN).prop_map(|body| Stanza { kind: KIND_KEY, body }),
        proptest::collection::vec(any::<u8>(), X25519_BODY_LEN).prop_map(|body| Stanza {
            kind: KIND_X25519,
            body
        }),
        // Unknown kinds are kept and skipped by readers (FORMAT.md section 3.1).
        (7u8..=255, proptest::collection::vec(any::<u8>(), 0..300)).prop_map(|(kind, body)| Stanza { kind, body }),
    ]
}

#[derive(Debug, Clone)]
struct HeaderFields {
    flags: u16,
    cipher: u8,
    block_size: u32,
    perm_window: u32,
    id: [u8; 16],
    stanzas: Vec<Stanza>,
    min_len: u32,
}

fn header_fields() -> impl Strategy<Value = HeaderFields> {
    (
        any::<bool>(),
        any::<bool>(),
        prop_oneof![Just(1u8), Just(2u8)],
        MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE,
        1u32..1 << 20,
        any::<[u8; 16]>(),
        proptest::collection::vec(stanza(), 1..6),
        prop_oneof![Just(0u32), 0u32..20_000],
    )
        .prop_map(
            |(permuted, signed, cipher, block_size, window, id, stanzas, min_len)| HeaderFields {
                flags: u16::from(permuted) | (u16::from(signed) << 1),
                cipher,
                block_size,
                perm_window: if permuted { window } else { 0 },
                id,
                stanzas,
                min_len,
            },
        )
}

fn encode_header(f: &HeaderFields) -> Vec<u8> {
    let mut b = Header::encode_unsealed(
        f.flags,
        f.cipher,
        f.block_size,
        f.perm_window,
        f.id,
        &f.stanzas,
        f.min_len,
    )
    .expect("the generator only builds valid headers");
    // Parsing does not check the seal (the crypto layer does); any 64 bytes stand for it.
    b.extend_from_slice(&[0xA5; HEADER_SEAL_LEN]);
    b
}

/// Byte offsets of the fields of an encoded header, with their widths in bits: the fixed
/// fields, then each stanza's kind and body_len.
fn header_field_offsets(f: &HeaderFields) -> Vec<(usize, u32)> {
    let mut out = vec![
        (8, 16),
        (10, 32),
        (14, 16),
        (16, 8),
        (17, 8),
        (18, 32),
        (22, 32),
        (42, 16),
    ];
    let mut pos = HEADER_FIXED_LEN;
    for s in &f.stanzas {
        out.push((pos, 8));
        out.push((pos + 1, 16));
        pos += 3 + s.body.len();
    }
    out.push((pos, 8)); // first padding byte (or the seal, when there is no padding)
    out
}

fn put(b: &mut [u8], at: usize, bits: u32, v: u64) {
    let n = (bits / 8) as usize;
    if at + n <= b.len() {
        b[at..at + n].copy_from_slice(&v.to_le_bytes()[..n]);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// A valid header parses to exactly the fields it was built from.
    #[test]
    fn header_round_trips(f in header_fields()) {
        let b = encode_header(&f);
        let h = Header::parse(&b).expect("valid header");
        prop_assert_eq!(h.header_len as usize, b.len());
        prop_assert_eq!(h.header_flags, f.flags);
        prop_assert_eq!(h.cipher_id, f.cipher);
        prop_assert_eq!(h.block_size, f.block_size);
        prop_assert_eq!(h.perm_window, f.perm_window);
        prop_assert_eq!(h.container_id, f.id);
        prop_assert_eq!(&h.stanzas, &f.stanzas);
    }

    /// One field of a valid header set to a hostile value: refused, or accepted only if the
    /// result re-encodes to the very same bytes (no two encodings of one header).
    #[test]
    fn header_with_a_hostile_field_is_refused_or_canonical(
        f in header_fields(),
        pick in any::<prop::sample::Index>(),
        value in hostile(32),
    ) {
        let mut b = encode_header(&f);
        let fields = header_field_offsets(&f);
        let (at, bits) = fields[pick.index(fields.len())];
        put(&mut b, at, bits, value & if bits == 32 { u64::from(u32::MAX) } else { (1 << bits) - 1 });
        if let Ok(h) = Header::parse(&b) {
            let again = Header::encode_unsealed(
                h.header_flags, h.cipher_id, h.block_size, h.perm_window, h.container_id, &h.stanzas, h.header_len,
            );
            let mut again = again.expect("an accepted header re-encodes");
            again.extend_from_slice(&b[b.len() - HEADER_SEAL_LEN..]);
            prop_assert_eq!(&again, &b);
        }
        // A hostile header_len either is refused by peek_len or names a length we can check.
        let _ = Header::peek_len(&b);
    }

    /// Cut anywhere: never accepted.
    #[test]
    fn cut_header_is_refused(f in header_fields(), cut in any::<prop::sample::Index>()) {
        let b = encode_header(&f);
        let n = cut.index(b.len());
        prop_assert!(Header::parse(&b[..n]).is_err());
    }
}

/// A container tail: frames from `header_len` on, then footer and trailer, as a writer lays
/// them out (FORMAT.md sections 5 and 6).
#[derive(Debug, Clone)]
struct Tail {
    header_len: u32,
    block_size: u32,
    index: Index,
    footer_offset: u64,
    file_len: u64,
}

fn tail() -> impl Strategy<Value = Tail> {
    (
        prop_oneof![Just(4096u32), Just(8192u32), 128u32..100_000],
        16u32..5000,
        proptest::collection::vec(any::<prop::sample::Index>(), 0..40),
        any::<bool>(),
    )
        .prop_map(|(header_len, block_size, picks, final_empty)| {
            let mut lens: Vec<u32> = picks.iter().map(|p| 1 + p.index(block_size as usize) as u32).collect();
            if final_empty {
                lens.push(0); // a stream's empty FINAL frame
            }
            let mut pos = u64::from(header_len);
            let entries: Vec<IndexEntry> = lens
                .iter()
                .map(|&pt_len| {
                    let e = IndexEntry {
                        frame_offset: pos,
                        pt_len,
                    };
                    pos += frame_len(pt_len);
                    e
                })
                .collect();
            let n = entries.len() as u64;
            Tail {
                header_len,
                block_size,
                index: Index::new(entries, 0).expect("valid"),
                footer_offset: pos,
                file_len: pos + footer_len(n) + TRAILER_LEN as u64,
            }
        })
}

fn trailer_of(t: &Tail) -> Trailer {
    Trailer {
        footer_offset: t.footer_offset,
        footer_len: footer_len(t.index.entries.len() as u64),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// A valid trailer and index parse back to what was written, and seek math agrees.
    #[test]
    fn tail_round_trips(t in tail()) {
        let tr = Trailer::parse(&trailer_of(&t).encode(), t.file_len, t.header_len).expect("valid trailer");
        prop_assert_eq!(tr.block_count(), t.index.entries.len() as u64);
        let ix = Index::decode(&t.index.encode(), tr.block_count(), t.block_size, t.header_len, tr.footer_offset)
            .expect("valid index");
        prop_assert_eq!(&ix, &t.index);
        for (i, _) in ix.entries.iter().enumerate().filter(|(_, e)| e.pt_len > 0) {
            prop_assert_eq!(ix.locate(ix.pt_offset(i)), Some(i));
        }
    }

    /// A hostile footer_offset or footer_len: refused, or consistent with the file length.
    #[test]
    fn hostile_trailer_is_refused_or_consistent(t in tail(), which in any::<bool>(), v in hostile(64)) {
        let mut tr = trailer_of(&t);
        if which { tr.footer_offset = v } else { tr.footer_len = v }
        if let Ok(p) = Trailer::parse(&tr.encode(), t.file_len, t.header_len) {
            prop_assert_eq!(p.footer_offset + p.footer_len + TRAILER_LEN as u64, t.file_len);
            prop_assert!(p.footer_offset >= u64::from(t.header_len));
        }
        let _ = Trailer::parse_with(&tr.encode(), t.file_len, t.header_len, true);
    }

    /// One field of a valid index (count, total, flags, or an entry's offset or length) set to
    /// a hostile value: refused, or every entry still lies in the frame region with a length
    /// the block size allows, and the prefix sums agree with the stored total.
    #[test]
    fn hostile_index_is_refused_or_in_bounds(
        t in tail(),
        pick in any::<prop::sample::Index>(),
        v in hostile(64),
    ) {
        let mut b = t.index.encode();
        let n = t.index.entries.len();
        let mut fields = vec![(0usize, 64u32), (8, 64), (16, 32)];
        for i in 0..n {
            let at = INDEX_FIXED_LEN + i * INDEX_ENTRY_LEN;
            fields.push((at, 64));
            fields.push((at + 8, 32));
        }
        let (at, bits) = fields[pick.index(fields.len())];
        put(&mut b, at, bits, if bits == 32 { v & u64::from(u32::MAX) } else { v });
        if let Ok(ix) = Index::decode(&b, n as u64, t.block_size, t.header_len, t.footer_offset) {
            let mut total = 0u64;
            for (i, e) in ix.entries.iter().enumerate() {
                prop_assert!(e.pt_len <= t.block_size && (e.pt_len > 0 || i + 1 == n));
                prop_assert!(e.frame_offset >= u64::from(t.header_len));
                prop_assert!(e.frame_offset + frame_len(e.pt_len) <= t.footer_offset);
                total += u64::from(e.pt_len);
            }
            prop_assert_eq!(total, ix.pt_total_len);
            let last = ix.pt_total_len.saturating_sub(1);
            if ix.pt_total_len > 0 {
                let i = ix.locate(last).expect("the last byte is in some block");
                prop_assert!(ix.pt_offset(i) <= last && last < ix.pt_offset(i) + u64::from(ix.entries[i].pt_len));
            }
        }
    }

    /// A block count that disagrees with the bytes is refused before anything is allocated.
    #[test]
    fn index_length_must_match_the_trailer(t in tail(), claimed in hostile(64)) {
        let b = t.index.encode();
        let n = t.index.entries.len() as u64;
        if claimed != n {
            prop_assert!(Index::decode(&b, claimed, t.block_size, t.header_len, t.footer_offset).is_err());
        }
    }
}
