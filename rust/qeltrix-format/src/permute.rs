//! Keyed block permutation (FORMAT.md section 7): a 6-round Feistel network over the
//! smallest even-bit domain holding the window, with cycle-walking down to the window size.
//! Computed on the fly: no tables, O(1) memory per query.
use crate::siphash::siphash24;

const ROUNDS: u8 = 6;

/// The permutation `P(K_perm, w, k, .)` of one window of `k` blocks.
#[derive(Debug, Clone)]
pub struct Permutation {
    key: [u8; 16],
    window: u64,
    k: u64,
    half_bits: u32,
}

impl Permutation {
    /// The permutation of window `window`, which holds `k >= 1` blocks.
    pub fn new(key: [u8; 16], window: u64, k: u64) -> Permutation {
        assert!(k >= 1, "a window holds at least one block");
        let bits = 64 - (k - 1).leading_zeros();
        let half_bits = bits.div_ceil(2).max(1);
        Permutation {
            key,
            window,
            k,
            half_bits,
        }
    }

    fn round(&self, r: u8, x: u64) -> u64 {
        let mut msg = [0u8; 17];
        msg[0..8].copy_from_slice(&self.window.to_le_bytes());
        msg[8] = r;
        msg[9..17].copy_from_slice(&x.to_le_bytes());
        siphash24(&self.key, &msg) & self.mask()
    }

    fn mask(&self) -> u64 {
        (1u64 << self.half_bits) - 1
    }

    fn encrypt(&self, x: u64) -> u64 {
        let (mut l, mut r) = (x >> self.half_bits, x & self.mask());
        for i in 0..ROUNDS {
            (l, r) = (r, l ^ self.round(i, r));
        }
        (l << self.half_bits) | r
    }

    fn decrypt(&self, x: u64) -> u64 {
        let (mut l, mut r) = (x >> self.half_bits, x & self.mask());
        for i in (0..ROUNDS).rev() {
            (l, r) = (r ^ self.round(i, l), l);
        }
        (l << self.half_bits) | r
    }

    /// Physical slot (within the window) of logical block `j < k`.
    pub fn forward(&self, j: u64) -> u64 {
        assert!(j < self.k);
        let mut x = self.encrypt(j);
        while x >= self.k {
            x = self.encrypt(x);
        }
        x
    }

    /// Logical block stored at physical slot `s < k`.
    pub fn inverse(&self, s: u64) -> u64 {
        assert!(s < self.k);
        let mut x = self.decrypt(s);
        while x >= self.k {
            x = self.decrypt(x);
        }
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn small_windows_are_bijections() {
        for k in 1..=70u64 {
            let p = Permutation::new([3; 16], 5, k);
            let mut seen = vec![false; k as usize];
            for j in 0..k {
                let s = p.forward(j);
                assert!(!seen[s as usize]);
                seen[s as usize] = true;
                assert_eq!(p.inverse(s), j);
            }
        }
    }

    #[test]
    fn key_and_window_change_the_order() {
        let order = |key, w| {
            (0..64)
                .map(|j| Permutation::new(key, w, 64).forward(j))
                .collect::<Vec<_>>()
        };
        assert_ne!(order([1; 16], 0), order([2; 16], 0));
        assert_ne!(order([1; 16], 0), order([1; 16], 1));
        assert_ne!(order([1; 16], 0), (0..64).collect::<Vec<_>>());
    }

    #[test]
    fn matches_spec_vectors() {
        let text = include_str!("../../../tests/vectors/permutation.json");
        let cases: serde_json::Value = serde_json::from_str(text).expect("valid JSON");
        let cases = cases.as_array().expect("a list of cases");
        assert!(!cases.is_empty());
        for case in cases {
            let key_hex = case["k_perm_hex"].as_str().unwrap();
            let key: Vec<u8> = (0..16)
                .map(|i| u8::from_str_radix(&key_hex[2 * i..2 * i + 2], 16).unwrap())
                .collect();
            let (w, k) = (case["w"].as_u64().unwrap(), case["k"].as_u64().unwrap());
            let p = Permutation::new(key.try_into().unwrap(), w, k);
            let outputs: Vec<u64> = case["outputs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect();
            let ours: Vec<u64> = (0..k).map(|j| p.forward(j)).collect();
            assert_eq!(ours, outputs, "window {w} size {k}");
        }
    }

    proptest! {
        #[test]
        fn inverse_undoes_forward(key: [u8; 16], w: u64, k in 1u64..1_000_000, j: u64) {
            let p = Permutation::new(key, w, k);
            let j = j % k;
            let s = p.forward(j);
            prop_assert!(s < k);
            prop_assert_eq!(p.inverse(s), j);
        }
    }
}
