//! Weighted rendezvous (HRW) score of a server for a slot, from a stable, documented hash.
//!
//! The exact input encoding (see `docs/routing.md`, "Hash input"):
//!
//! ```text
//! xxh3_64_with_seed( name as UTF-8 bytes ++ [0xFF] ++ slot as u16 little-endian , HRW_SEED )
//! ```
//!
//! `0xFF` never occurs in UTF-8, so the separator makes the encoding unambiguous. The slot is the
//! masked value (`< 16384`). Nothing here goes through std's `Hash` trait, whose byte feeding is
//! not a stable format.

use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::Slot;

/// The xxh3 seed of the ranking hash: the ASCII bytes of `"keyway"` followed by a format version
/// (`0x0001`). Changing it moves (almost) every key: never change it.
pub const HRW_SEED: u64 = 0x6B65_7977_6179_0001;

/// Separator between the name and the slot in the hash input. Never a byte of UTF-8 text.
const SEPARATOR: u8 = 0xFF;

/// Bytes after the name in the hash input: the separator and the slot.
const SUFFIX_LEN: usize = 3;

/// `2^-52`, the spacing of the values [`unit_interval`] produces.
const TWO_POW_MINUS_52: f64 = 1.0 / (1u64 << 52) as f64;

/// Maps a 64-bit hash into the open interval (0, 1): the top 52 bits, plus one half, times
/// `2^-52`. Every step is exact in `f64` (`2^52 - 0.5` still fits in 53 bits of mantissa), so the
/// result lies in `[2^-53, 1 - 2^-53]`: never 0 (whose logarithm is -inf) and never 1 (whose
/// logarithm is 0, a division by zero in [`score`]).
#[inline]
pub fn unit_interval(hash: u64) -> f64 {
    ((hash >> 12) as f64 + 0.5) * TWO_POW_MINUS_52
}

/// Weighted rendezvous score of server `name` with `weight` for `slot`: `-weight / ln(u)`, where
/// `u` = [`unit_interval`] of the stable hash of (name, slot). Higher is better.
///
/// For `u` uniform in (0,1) this is the "logarithmic method" of weighted HRW: a server's chance to
/// have the highest score is `weight / sum(weights)`, and the score of one server never depends on
/// the others (which is what makes movement minimal).
///
/// `weight` should be finite and `> 0` ([`super::SlotTable::build`] refuses other weights); for
/// other values the result is meaningless but this never panics.
pub fn score(name: &str, weight: f64, slot: Slot) -> f64 {
    let mut input = hash_input(name);
    score_with(&mut input, weight, slot)
}

/// The hash input of `name` with room for the slot: `name ++ [0xFF] ++ [0, 0]`. Built once per
/// server; [`score_with`] writes the slot into the last two bytes.
pub(crate) fn hash_input(name: &str) -> Vec<u8> {
    let mut input = Vec::with_capacity(name.len() + SUFFIX_LEN);
    input.extend_from_slice(name.as_bytes());
    input.extend_from_slice(&[SEPARATOR, 0, 0]);
    input
}

/// [`score`] over an input made by [`hash_input`] (which it updates in place, no allocation).
#[inline]
pub(crate) fn score_with(input: &mut [u8], weight: f64, slot: Slot) -> f64 {
    // The slot as masked little-endian u16 (`Slot::index` < 16384 always fits).
    let slot_bytes = (slot.index() as u16).to_le_bytes();
    if let Some(tail) = input.last_chunk_mut::<2>() {
        *tail = slot_bytes;
    }
    let u = unit_interval(xxh3_64_with_seed(input, HRW_SEED));
    -weight / u.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_interval_is_open() {
        assert_eq!(unit_interval(0), 0.5 / (1u64 << 52) as f64);
        assert!(unit_interval(0) > 0.0);
        assert!(unit_interval(u64::MAX) < 1.0);
        assert_eq!(unit_interval(u64::MAX), 1.0 - 0.5 / (1u64 << 52) as f64);
        assert!(unit_interval(u64::MAX).ln() < 0.0);
        assert!(unit_interval(1 << 63) > 0.49 && unit_interval(1 << 63) < 0.51);
    }

    #[test]
    fn encoding_is_documented_one() {
        // The hash input spelled out byte by byte: "ab", 0xFF, slot 0x0102 little-endian.
        let mut input = hash_input("ab");
        let s = score_with(&mut input, 1.0, Slot(0x0102));
        assert_eq!(input, [b'a', b'b', 0xFF, 0x02, 0x01]);
        let u = unit_interval(xxh3_64_with_seed(&[b'a', b'b', 0xFF, 0x02, 0x01], HRW_SEED));
        assert_eq!(s, -1.0 / u.ln());
        assert_eq!(score("ab", 1.0, Slot(0x0102)), s);
    }

    #[test]
    fn xxh3_is_the_reference_algorithm() {
        // XXH3_64bits("") from the xxHash reference implementation: the crate computes xxh3.
        assert_eq!(xxhash_rust::xxh3::xxh3_64(b""), 0x2D06_8005_38D3_94C2);
    }

    #[test]
    fn golden_hash_values() {
        // Pinned outputs of the ranking hash. If this fails, the hash (crate, seed or encoding)
        // changed and every deployment's keys would move: restore it, do not update the values.
        assert_eq!(xxh3_64_with_seed(&[b'a', 0xFF, 0, 0], HRW_SEED), GOLDEN_A0);
        assert_eq!(
            xxh3_64_with_seed(b"redis-0\xFF\xff\x3f", HRW_SEED),
            GOLDEN_R16383
        );
    }

    const GOLDEN_A0: u64 = 15_701_203_799_203_183_984;
    const GOLDEN_R16383: u64 = 10_424_553_581_375_650_363;

    #[test]
    fn weight_scales_score() {
        let s1 = score("a", 1.0, Slot(7));
        let s2 = score("a", 2.0, Slot(7));
        assert!(s1 > 0.0 && s1.is_finite());
        assert_eq!(s2, 2.0 * s1);
    }
}
