//! Hash ranges for anti-entropy: the keys two nodes both own, cut into [`BUCKETS`] fixed
//! buckets, each summed into one 64-bit hash, so that two replicas in sync find it out by
//! comparing [`BUCKETS`] numbers instead of listing every key.
//!
//! A key's bucket depends on the key only ([`bucket_of`]); the bucket's hash is the XOR of
//! [`item_hash`] over its keys, where an item is (key, version, tombstone or not). XOR makes the
//! hash a set function kept up to date in O(1) per write (take the old item out, put the new one
//! in) and independent of the order in which keys arrived. The value is not hashed: two
//! versions with the same stamp are the same write everywhere (the version is the
//! coordinator's hybrid-logical-clock stamp).
//!
//! Why 1024 buckets: a comparison message costs 8 bytes per bucket (8 KiB per co-owner per
//! round when idle), and the memory kept is 8 KiB per co-owner. When buckets differ, the
//! (key, version) digests exchanged cover every shared key of the differing buckets: with a
//! million shared keys, about 1,000 per bucket, so a handful of missed writes costs a few
//! thousand digest items, and a node that missed many (1% of a million) differs in nearly every
//! bucket and gets a full digest, as every round cost before. More buckets would cut the first
//! case further at the price of every idle round; fewer would make small repairs larger.
//!
//! Everything here is a pure function of bytes: nodes built from different binaries agree, so
//! the hashes are hand-written (FNV-1a and the SplitMix64 finaliser), not `std`'s hasher, whose
//! algorithm may change between Rust releases.

use crate::entry::Meta;

/// Buckets per co-owner (a power of two: the bucket is the top bits of the key's hash).
pub const BUCKETS: usize = 1024;
/// Version of the bucket scheme (key hash, item hash, bucket count). A comparison asked with
/// another scheme is answered "every bucket differs", so nodes of two versions still repair
/// each other (with full digests).
pub const SCHEME: u64 = 1;

const BUCKET_BITS: u32 = BUCKETS.trailing_zeros();

/// SplitMix64's finaliser: every input bit moves every output bit.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The 64-bit hash of a key (FNV-1a, mixed).
pub fn key_hash(key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

/// The bucket of a key, from its [`key_hash`].
pub fn bucket_of(key_hash: u64) -> usize {
    (key_hash >> (64 - BUCKET_BITS)) as usize
}

/// The hash of one item: a key (by its [`key_hash`]) at a version, tombstone or not.
pub fn item_hash(key_hash: u64, meta: Meta) -> u64 {
    let deleted = if meta.deleted {
        0x9E37_79B9_7F4A_7C15
    } else {
        0
    };
    mix(key_hash ^ mix(meta.index ^ deleted))
}

/// The bucket hashes of the keys shared with one co-owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketHashes(Box<[u64]>);

impl Default for BucketHashes {
    fn default() -> Self {
        BucketHashes(vec![0; BUCKETS].into_boxed_slice())
    }
}

impl BucketHashes {
    /// Take the item `old` out of the key's bucket and put `new` in (either may be absent).
    pub fn replace(&mut self, key_hash: u64, old: Option<Meta>, new: Option<Meta>) {
        let h =
            old.map_or(0, |m| item_hash(key_hash, m)) ^ new.map_or(0, |m| item_hash(key_hash, m));
        self.0[bucket_of(key_hash)] ^= h;
    }

    /// The hashes, bucket by bucket.
    pub fn as_slice(&self) -> &[u64] {
        &self.0
    }

    /// Whether no key is summed (or every key summed was taken out again).
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|h| *h == 0)
    }

    /// The buckets where `theirs` (another node's hashes of the same keys) differs. Hashes of
    /// another length are another scheme: every bucket of theirs differs.
    pub fn differing(&self, theirs: &[u64]) -> Vec<u32> {
        if theirs.len() != self.0.len() {
            return (0..theirs.len()).map(|b| b as u32).collect();
        }
        self.0
            .iter()
            .zip(theirs)
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(i, _)| i as u32)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(index: u64, deleted: bool) -> Meta {
        Meta {
            index,
            deleted,
            expires_ms: 0,
        }
    }

    #[test]
    fn bucket_hashes_are_a_set_function() {
        let mut a = BucketHashes::default();
        let mut b = BucketHashes::default();
        let keys: Vec<String> = (0..500).map(|i| format!("k/{i}")).collect();
        for k in &keys {
            a.replace(key_hash(k), None, Some(meta(1, false)));
        }
        for k in keys.iter().rev() {
            b.replace(key_hash(k), None, Some(meta(1, false)));
        }
        assert_eq!(a, b);
        assert!(a.differing(b.as_slice()).is_empty());
        // A new version, then a tombstone with the same stamp: each shows in one bucket.
        let h = key_hash("k/7");
        b.replace(h, Some(meta(1, false)), Some(meta(2, false)));
        assert_eq!(a.differing(b.as_slice()), vec![bucket_of(h) as u32]);
        let mut c = a.clone();
        c.replace(h, Some(meta(1, false)), Some(meta(1, true)));
        assert_eq!(a.differing(c.as_slice()), vec![bucket_of(h) as u32]);
        // Taking every key out leaves nothing.
        for k in &keys {
            a.replace(key_hash(k), Some(meta(1, false)), None);
        }
        assert!(a.is_empty());
        // Another scheme's hashes differ everywhere.
        assert_eq!(a.differing(&[0; 4]), vec![0, 1, 2, 3]);
    }

    #[test]
    fn keys_spread_over_the_buckets() {
        let mut counts = vec![0usize; BUCKETS];
        for i in 0..BUCKETS * 100 {
            counts[bucket_of(key_hash(&format!("services/web/{i}")))] += 1;
        }
        let (min, max) = (
            counts.iter().min().copied().unwrap_or(0),
            counts.iter().max().copied().unwrap_or(0),
        );
        assert!(min > 50 && max < 160, "{min}..{max}");
    }
}
