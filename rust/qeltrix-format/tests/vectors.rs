//! The shared test vectors (`tests/vectors/*.json`, FORMAT.md section 14), checked without
//! decryption: every structural field the JSON records must parse to the recorded value, and
//! the frames the index would point at must tile the region between header and footer.
use qeltrix_format::{frame_len, FormatError, Header, SignatureSection, Trailer, TRAILER_LEN};
use serde_json::Value;
use std::path::PathBuf;

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors")
}

fn load() -> Vec<(String, Value, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(vectors_dir()).expect("tests/vectors exists") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_none_or(|e| e != "json") || path.file_name().is_some_and(|n| n == "permutation.json") {
            continue;
        }
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("readable")).expect("JSON");
        let bytes = std::fs::read(vectors_dir().join(v["container"].as_str().expect("container name"))).expect("qltx");
        out.push((path.file_stem().unwrap().to_string_lossy().into_owned(), v, bytes));
    }
    assert!(out.len() >= 10, "expected the vector set, found {}", out.len());
    out
}

#[test]
fn ok_vectors_parse_to_their_recorded_fields() {
    for (name, v, bytes) in load().into_iter().filter(|(_, v, _)| v["expect"] == "ok") {
        let header_len = Header::peek_len(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        let h = Header::parse(&bytes[..header_len as usize]).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(u64::from(h.header_len), v["header_len"].as_u64().unwrap(), "{name}");
        assert_eq!(
            u64::from(h.format_version),
            v["format_version"].as_u64().unwrap(),
            "{name}"
        );
        assert_eq!(u64::from(h.cipher_id), v["cipher_id"].as_u64().unwrap(), "{name}");
        assert_eq!(u64::from(h.block_size), v["block_size"].as_u64().unwrap(), "{name}");
        assert_eq!(u64::from(h.perm_window), v["perm_window"].as_u64().unwrap(), "{name}");
        assert_eq!(u64::from(h.header_flags), v["header_flags"].as_u64().unwrap(), "{name}");
        assert_eq!(h.stanzas.len() as u64, v["recipient_count"].as_u64().unwrap(), "{name}");
        let cid: String = h.container_id.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(cid, v["container_id_hex"].as_str().unwrap(), "{name}");

        let file_len = bytes.len() as u64;
        let t = Trailer::parse_with(&bytes[bytes.len() - TRAILER_LEN..], file_len, h.header_len, h.signed())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        if h.signed() {
            // FORMAT.md section 15: the section sits between footer and trailer.
            let sig_len = v["sig_len"].as_u64().unwrap();
            let start = t.sig_offset() as usize;
            let sec = SignatureSection::parse(&bytes[start..start + sig_len as usize], t.block_count())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let signer: String = sec.signer_pub.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(signer, v["signer_pub_hex"].as_str().unwrap(), "{name}");
            for (i, d) in v["frame_digest_hex"].as_array().unwrap().iter().enumerate() {
                let got: String = sec
                    .frame_digest(i)
                    .unwrap()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                assert_eq!(got, d.as_str().unwrap(), "{name}: digest {i}");
            }
            assert!(Trailer::parse(&bytes[bytes.len() - TRAILER_LEN..], file_len, h.header_len).is_err());
        }
        assert_eq!(t.footer_offset, v["footer_offset"].as_u64().unwrap(), "{name}");
        assert_eq!(t.footer_len, v["footer_len"].as_u64().unwrap(), "{name}");
        assert_eq!(t.block_count(), v["block_count"].as_u64().unwrap(), "{name}");

        // Frames, sorted by offset, must exactly tile [header_len, footer_offset).
        let offsets: Vec<u64> = v["frame_offsets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        let lens: Vec<u32> = v["pt_lens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let mut frames: Vec<(u64, u64)> = offsets.iter().zip(&lens).map(|(&o, &l)| (o, frame_len(l))).collect();
        frames.sort();
        let mut pos = u64::from(h.header_len);
        for (o, l) in frames {
            assert_eq!(o, pos, "{name}: frames are contiguous");
            pos += l;
        }
        assert_eq!(pos, t.footer_offset, "{name}: footer follows the last frame");
    }
}

#[test]
fn negative_vectors_fail_structurally_where_they_should() {
    for (name, v, bytes) in load() {
        // The other negative vectors need keys (checksum, MAC, AEAD): the Python tests check them.
        if v["expect"] == "truncated" {
            let h = Header::parse(&bytes[..Header::peek_len(&bytes).unwrap() as usize]).unwrap();
            let r = Trailer::parse(&bytes[bytes.len() - TRAILER_LEN..], bytes.len() as u64, h.header_len);
            assert!(matches!(r, Err(FormatError::Truncated(_))), "{name}: {r:?}");
        }
    }
}
