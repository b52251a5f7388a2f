//! Header and stanza parsing (FORMAT.md section 3) from arbitrary bytes. The magic and version
//! are forced so that the fuzzer spends its time past them (the corpus seeds are real headers).
#![no_main]
use libfuzzer_sys::fuzz_target;
use qeltrix_format::{Header, MAGIC};

fuzz_target!(|data: &[u8]| {
    let mut b = data.to_vec();
    if b.len() >= 10 {
        b[..8].copy_from_slice(&MAGIC);
        b[8..10].copy_from_slice(&1u16.to_le_bytes());
    }
    let _ = Header::peek_len(&b);
    if let Ok(h) = Header::parse(&b) {
        // What is accepted re-encodes to the same fields and stanzas (one encoding per
        // header); only header_len may differ, as writers SHOULD (not MUST) align it.
        let again = Header::encode_unsealed(
            h.header_flags,
            h.cipher_id,
            h.block_size,
            h.perm_window,
            h.container_id,
            &h.stanzas,
            h.header_len,
        )
        .expect("an accepted header re-encodes");
        let used = Header::needed_len(&h.stanzas);
        assert_eq!(&again[..10], &b[..10]);
        assert_eq!(&again[14..used], &b[14..used]);
        assert!(b[used..b.len() - 64].iter().all(|&x| x == 0));
    }
});
