//! Key -> slot: `CRC16-XMODEM(key or its hash tag) mod 16384`, Redis Cluster's function.

use super::RoutingError;

/// Number of slots. A power of two, so `mod SLOTS` is a mask.
pub const SLOTS: usize = 16384;

/// `SLOTS - 1` as a mask over a `u16`.
const SLOT_MASK: u16 = (SLOTS - 1) as u16;

/// One of the [`SLOTS`] slots a key hashes to.
///
/// The field is public for pattern matching and literals in tests; values built through
/// [`Slot::new`] or [`key_slot`] are always `< SLOTS`. Consumers that index by a slot
/// ([`Slot::index`]) mask it, so even a hand-built `Slot(60000)` cannot index out of bounds: it
/// names slot `60000 & 16383`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slot(pub u16);

impl Slot {
    /// The slot `n mod 16384`.
    #[inline]
    pub const fn new(n: u16) -> Slot {
        Slot(n & SLOT_MASK)
    }

    /// The slot as an array index, always `< SLOTS` (masked, so this holds for any `Slot`).
    #[inline]
    pub const fn index(self) -> usize {
        (self.0 & SLOT_MASK) as usize
    }

    /// Every slot, in order.
    pub fn all() -> impl Iterator<Item = Slot> {
        (0..SLOTS as u16).map(Slot)
    }
}

/// Hash tag delimiters, from config `hash_tag = "{}"` (two characters); `""` disables tags.
///
/// When a key holds a tag (`open`, then later a `close`, with at least one byte between), only the
/// bytes between them are hashed, so `{user1000}.following` and `{user1000}.followers` share a
/// slot. The rules are Redis Cluster's (see [`key_slot`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct HashTag {
    open: u8,
    close: u8,
}

impl HashTag {
    /// Redis Cluster's tag: `{...}`.
    pub const REDIS: HashTag = HashTag {
        open: b'{',
        close: b'}',
    };

    /// Parses the `hash_tag` setting: `""` gives `None` (tags disabled, the whole key is always
    /// hashed); two ASCII characters give the opening and the closing delimiter (they may be
    /// equal, like `"::"`).
    ///
    /// # Errors
    ///
    /// [`RoutingError::InvalidHashTag`] for anything else (one character, three, non-ASCII).
    pub fn parse(s: &str) -> Result<Option<HashTag>, RoutingError> {
        match s.as_bytes() {
            [] => Ok(None),
            &[open, close] if open.is_ascii() && close.is_ascii() => {
                Ok(Some(HashTag { open, close }))
            }
            _ => Err(RoutingError::InvalidHashTag(s.to_owned())),
        }
    }

    /// The opening delimiter byte.
    pub const fn open(self) -> u8 {
        self.open
    }

    /// The closing delimiter byte.
    pub const fn close(self) -> u8 {
        self.close
    }

    /// The bytes of `key` that are hashed: the tag's content if `key` holds a non-empty tag,
    /// otherwise the whole key. Redis Cluster's `keyHashSlot` rules: the first `open`; then the
    /// first `close` after it; if there is none, or nothing between them, the whole key.
    #[inline]
    pub fn hashed_part(self, key: &[u8]) -> &[u8] {
        let Some(start) = find_byte(key, self.open) else {
            return key;
        };
        let rest = key.get(start + 1..).unwrap_or_default();
        match find_byte(rest, self.close) {
            Some(len) if len > 0 => rest.get(..len).unwrap_or(key),
            _ => key,
        }
    }
}

/// The first `needle` in `hay`, eight bytes per step (the zero-byte test of a word XORed with the
/// needle in every byte). Keys are mostly a few dozen bytes: at that length the `memchr` crate's
/// dispatch to its vector code costs more than the search (51 against about 20 instructions
/// for a 16-byte key, `scripts/bench/callgrind.sh mset 1 20000`).
#[inline]
fn find_byte(hay: &[u8], needle: u8) -> Option<usize> {
    const LOW: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let pattern = LOW * u64::from(needle);
    let mut words = hay.chunks_exact(8);
    let mut at = 0;
    for word in &mut words {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        let x = u64::from_le_bytes(bytes) ^ pattern;
        // The lowest flagged byte is the first zero byte of x (higher flags may be borrows).
        let zero = x.wrapping_sub(LOW) & !x & HIGH;
        if zero != 0 {
            return Some(at + (zero.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    words
        .remainder()
        .iter()
        .position(|&b| b == needle)
        .map(|i| at + i)
}

/// CRC16-XMODEM with 16 lookup tables (8 KiB), which takes 16 bytes per step instead of one: a
/// slot costs about half the instructions of a byte-at-a-time table for the usual 10 to 40 byte
/// keys (see docs/routing.md).
static CRC16: crc::Crc<u16, crc::Table<16>> =
    crc::Crc::<u16, crc::Table<16>>::new(&crc::CRC_16_XMODEM);

/// The slot of `key`: `CRC16-XMODEM(k) mod 16384`, where `k` is the tag content when `tag` is
/// set and `key` holds a non-empty tag, else the whole key ([`HashTag::hashed_part`]). With
/// [`HashTag::REDIS`] this equals `CLUSTER KEYSLOT` of Redis Cluster for every key.
#[inline]
pub fn key_slot(key: &[u8], tag: Option<HashTag>) -> Slot {
    let hashed = match tag {
        Some(tag) => tag.hashed_part(key),
        None => key,
    };
    Slot::new(CRC16.checksum(hashed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_xmodem_check_value() {
        // The CRC catalogue's check value for CRC-16/XMODEM, also in Redis's crc16.c.
        assert_eq!(CRC16.checksum(b"123456789"), 0x31C3);
    }

    #[test]
    fn crc16_agrees_with_a_byte_at_a_time_implementation() {
        // Every length from 0 to 100 (each remainder of the 16-byte steps), varied bytes.
        let mut key = Vec::new();
        for len in 0..=100u32 {
            key.clear();
            key.extend((0..len).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
            assert_eq!(
                CRC16.checksum(&key),
                crc16::State::<crc16::XMODEM>::calculate(&key),
                "length {len}"
            );
        }
    }

    #[test]
    fn find_byte_finds_the_first_occurrence() {
        // Every position in keys of 0 to 40 bytes, with bytes that stress the zero-byte test
        // (the needle's neighbours, 0x00, 0x80, 0xff) everywhere else.
        let fill = [b'{' - 1, b'{' + 1, 0x00, 0x80, 0xff, 0x01];
        for len in 0..40usize {
            let base: Vec<u8> = (0..len).map(|i| fill[i % fill.len()]).collect();
            assert_eq!(find_byte(&base, b'{'), None, "{base:?}");
            for first in 0..len {
                let mut key = base.clone();
                key[first] = b'{';
                if first + 3 < len {
                    key[first + 3] = b'{';
                }
                assert_eq!(find_byte(&key, b'{'), Some(first), "{key:?}");
            }
        }
        assert_eq!(find_byte(&[0x80; 9], 0x80), Some(0));
        assert_eq!(find_byte(&[0; 17], 0), Some(0));
    }

    #[test]
    fn slot_new_masks() {
        assert_eq!(Slot::new(16384), Slot(0));
        assert_eq!(Slot::new(u16::MAX), Slot(16383));
        assert_eq!(Slot(60000).index(), 60000 & 16383);
    }

    #[test]
    fn hashed_part_follows_redis_rules() {
        let t = HashTag::REDIS;
        assert_eq!(t.hashed_part(b"{user1000}.following"), b"user1000");
        assert_eq!(t.hashed_part(b"foo{}{bar}"), b"foo{}{bar}");
        assert_eq!(t.hashed_part(b"foo{{bar}}zap"), b"{bar");
        assert_eq!(t.hashed_part(b"foo{bar}{zap}"), b"bar");
        assert_eq!(t.hashed_part(b"foo{bar"), b"foo{bar");
        assert_eq!(t.hashed_part(b"foo}bar{"), b"foo}bar{");
        assert_eq!(t.hashed_part(b"}{x}"), b"x");
        assert_eq!(t.hashed_part(b""), b"");
        assert_eq!(t.hashed_part(b"{"), b"{");
    }

    #[test]
    fn equal_delimiters() {
        let t = HashTag::parse("::").unwrap().unwrap();
        assert_eq!(t.hashed_part(b"a:b:c"), b"b");
        assert_eq!(t.hashed_part(b"a::c"), b"a::c");
    }

    #[test]
    fn parse_hash_tag() {
        assert_eq!(HashTag::parse("{}"), Ok(Some(HashTag::REDIS)));
        assert_eq!(HashTag::parse(""), Ok(None));
        let angle = HashTag::parse("<>").unwrap().unwrap();
        assert_eq!((angle.open(), angle.close()), (b'<', b'>'));
        for bad in ["{", "{}}", "«»", "é}", "é"] {
            assert_eq!(
                HashTag::parse(bad),
                Err(RoutingError::InvalidHashTag(bad.to_owned())),
                "{bad:?}"
            );
        }
    }
}
