//! Stored entries and their versions.

/// How far ahead of this node's clock another node's stamp may be (clocks kept within this by
/// NTP): a stamp further ahead is refused, so no peer can pin a key with a version nobody can
/// ever write above.
pub const MAX_CLOCK_AHEAD_MS: u64 = 60_000;

/// Longest time to live of a key (a year).
pub const MAX_TTL_MS: u64 = 365 * 24 * 3600 * 1000;

/// What the store holds for a key: a value or a tombstone, versioned.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Entry {
    /// The value (empty for a tombstone).
    pub value: Vec<u8>,
    /// Version: a hybrid-logical-clock stamp given by the coordinator; the newest wins
    /// everywhere. Shown to users as `modify_index`.
    pub index: u64,
    /// Stamp of the write that created the key (kept across updates).
    pub create_index: u64,
    /// A delete, kept so that an old copy elsewhere cannot bring the key back.
    pub deleted: bool,
    /// Expiry (ms since the Unix epoch), 0 = never.
    pub expires_ms: u64,
}

/// What a key-only scan reads of an entry: its version, whether it is a tombstone and when it
/// expires — never its value (see [`Storage::scan_meta`](crate::storage::Storage::scan_meta)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Meta {
    /// [`Entry::index`].
    pub index: u64,
    /// [`Entry::deleted`].
    pub deleted: bool,
    /// [`Entry::expires_ms`].
    pub expires_ms: u64,
}

impl Entry {
    /// The entry's [`Meta`].
    pub fn meta(&self) -> Meta {
        Meta {
            index: self.index,
            deleted: self.deleted,
            expires_ms: self.expires_ms,
        }
    }

    /// Whether `self` replaces `other` (newer stamp; on a tie, which never happens between two
    /// coordinators' stamps, a delete wins, then the larger value, so every node agrees).
    pub fn is_newer_than(&self, other: &Entry) -> bool {
        (self.index, self.deleted, &self.value) > (other.index, other.deleted, &other.value)
    }

    /// A live value at `now_ms` (not deleted, not expired).
    pub fn is_live(&self, now_ms: u64) -> bool {
        !self.deleted && (self.expires_ms == 0 || self.expires_ms > now_ms)
    }

    /// Whether an entry from another node can be believed at `now_ms`: its stamp is not
    /// further ahead than [`MAX_CLOCK_AHEAD_MS`], it was created no later than it was
    /// modified, and it expires no later than the longest time to live from now.
    pub fn is_plausible(&self, now_ms: u64) -> bool {
        self.index <= Hlc::latest_acceptable(now_ms)
            && self.create_index <= self.index
            && self.expires_ms
                <= now_ms
                    .saturating_add(MAX_TTL_MS)
                    .saturating_add(MAX_CLOCK_AHEAD_MS)
    }
}

/// Hybrid logical clock: stamps are `wall_ms << 16 | counter`, strictly increasing on a node
/// and never behind a stamp it has seen, so a write made after another one (on any node)
/// carries a larger stamp as long as clocks are within the time between the two writes.
#[derive(Debug, Clone, Default)]
pub struct Hlc {
    last: u64,
}

impl Hlc {
    /// A new stamp at wall-clock `now_ms`.
    pub fn stamp(&mut self, now_ms: u64) -> u64 {
        let wall = now_ms.saturating_mul(1 << 16);
        self.last = wall.max(self.last.saturating_add(1));
        self.last
    }

    /// Remember a stamp seen from another node; a stamp further ahead of `now_ms` than
    /// [`MAX_CLOCK_AHEAD_MS`] is ignored (false), so the clock can never be pushed to its limit.
    pub fn observe(&mut self, stamp: u64, now_ms: u64) -> bool {
        if stamp > Self::latest_acceptable(now_ms) {
            return false;
        }
        self.last = self.last.max(stamp);
        true
    }

    /// The largest stamp believed at `now_ms`.
    pub fn latest_acceptable(now_ms: u64) -> u64 {
        now_ms
            .saturating_add(MAX_CLOCK_AHEAD_MS)
            .saturating_add(1)
            .saturating_mul(1 << 16)
    }

    /// The wall-clock ms of a stamp.
    pub fn millis(stamp: u64) -> u64 {
        stamp >> 16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_increase_and_follow_what_was_seen() {
        let mut h = Hlc::default();
        let a = h.stamp(1000);
        let b = h.stamp(1000);
        assert!(b > a);
        assert!(h.observe(5000 << 16, 1000));
        let c = h.stamp(1001);
        assert!(c > 5000 << 16);
        assert_eq!(Hlc::millis(h.stamp(6000)), 6000);
    }

    #[test]
    fn a_stamp_far_ahead_cannot_pin_the_clock() {
        // Regression (audit): `Replicate{key, index 2^64-1}` pinned the key and made the next
        // stamp wrap.
        let mut h = Hlc::default();
        let now = 1_700_000_000_000;
        assert!(!h.observe(u64::MAX, now));
        assert!(!h.observe((now + MAX_CLOCK_AHEAD_MS + 1000) << 16, now));
        assert!(h.observe((now + 1000) << 16, now));
        let s = h.stamp(now);
        assert!(s > (now + 1000) << 16);
        let pinned = Entry {
            value: vec![],
            index: u64::MAX,
            create_index: 0,
            deleted: false,
            expires_ms: 0,
        };
        assert!(!pinned.is_plausible(now));
        let fine = Entry {
            index: s,
            create_index: s,
            ..pinned.clone()
        };
        assert!(fine.is_plausible(now));
        let forever = Entry {
            expires_ms: u64::MAX,
            ..fine
        };
        assert!(!forever.is_plausible(now));
        // Saturating all the way: a stamp at the limit never wraps.
        let mut top = Hlc { last: u64::MAX };
        assert_eq!(top.stamp(now), u64::MAX);
    }

    #[test]
    fn newest_wins_and_entries_round_trip() {
        let old = Entry {
            value: b"a".to_vec(),
            index: 10,
            create_index: 10,
            deleted: false,
            expires_ms: 0,
        };
        let new = Entry {
            value: vec![],
            index: 11,
            deleted: true,
            ..old.clone()
        };
        assert!(new.is_newer_than(&old));
        assert!(!old.is_newer_than(&new));
        assert!(!old.is_newer_than(&old));
        assert_eq!(Entry::from_bytes(&new.to_bytes()), Ok(new.clone()));
        assert!(!new.is_live(0));
        let ttl = Entry {
            expires_ms: 100,
            ..old
        };
        assert!(ttl.is_live(99) && !ttl.is_live(100));
    }
}
