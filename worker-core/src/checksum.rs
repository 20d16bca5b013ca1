//! The checksum of the control words in shared memory: a channel's request and answer lines
//! and the journal's entries.

/// A checksum of a record's words, so that a scribbled or torn record is told apart from a
/// real one. It protects the control words, not the payload, whose structure postcard
/// validates when decoding.
///
/// A sum of the words each multiplied by its own odd constant, then an xor-shift: a change to
/// any one word changes the sum (multiplying by an odd number is a bijection modulo 2^64) and
/// so the result. The multiplications are independent of one another, so both sides of a
/// call (the parent computes two per call, the worker two) pay a few cycles instead of the
/// chain of dependent multiplications of a word-by-word hash (figures in benches/README.md).
/// The journal's entries outlive the program:
/// changing this function changes the segment layout version (`shm::VERSION`). `const` so that
/// the checksums of fixed records are computed at compile time.
pub(crate) const fn checksum(words: &[u64]) -> u64 {
    const K: [u64; 8] = [
        0x9e37_79b9_7f4a_7c15,
        0xbf58_476d_1ce4_e5b9,
        0x94d0_49bb_1331_11eb,
        0xd6e8_feb8_6659_fd93,
        0xa076_1d64_78bd_642f,
        0xe703_7ed1_a0b4_28db,
        0x8ebc_6af0_9c88_c6e3,
        0x5899_65cc_7537_4cc3,
    ];
    assert!(words.len() <= K.len());
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < words.len() {
        h = h.wrapping_add(words[i].wrapping_mul(K[i]));
        i += 1;
    }
    h ^ (h >> 29)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changing_any_one_word_changes_the_checksum() {
        let words = [7u64, 0, u64::MAX, 1 << 63, 12_345, 3, 0xdead_beef, 42];
        let base = checksum(&words);
        for i in 0..words.len() {
            for delta in [1u64, 2, 1 << 32, 1 << 63, u64::MAX, 0x5555_5555_5555_5555] {
                let mut changed = words;
                changed[i] = changed[i].wrapping_add(delta);
                assert_ne!(checksum(&changed), base, "word {i}, delta {delta:#x}");
            }
        }
    }
}
