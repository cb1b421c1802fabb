//! Security of cluster traffic (gossip datagrams and cluster TCP frames).
//!
//! With a keyring, every packet is sealed with AES-256-GCM (ring): `[MAGIC][key id: 4][nonce: 12]
//! [ciphertext + tag: 16]`, a fresh random nonce per packet and the header bound as associated
//! data. The key id (first 4 bytes of SHA-256 of the key) lets receivers pick the right key while
//! a new key is rolled out: `install` a key everywhere, `use` it as primary, then `remove` the old
//! one. Without a keyring packets travel in plaintext, and encrypted ones are refused (a keyed
//! cluster and an open one never mix). Every refusal has its own [`OpenError`] so the driver can
//! count it; nothing refused is ever handed to the protocol.
//!
//! **Replay.** The sealed plaintext starts with the sender's wall-clock time (ms). A receiver
//! refuses a packet sent more than [`REPLAY_WINDOW_MS`] ago or ahead of its own clock, and
//! remembers the nonce of every packet it accepted within that window ([`ReplayGuard`]), so a
//! captured packet replayed later — a KV write that would undo a newer one, a keyring change —
//! is refused and counted. The memory of nonces is bounded: past [`REPLAY_MAX_NONCES`] the
//! oldest are forgotten and packets sent before them are refused as stale. Cluster hosts'
//! clocks must agree within the window (NTP).

#![forbid(unsafe_code)]

use std::path::Path;

use base64::Engine as _;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

/// First byte of a sealed packet (0xE1 was the envelope without a timestamp). Plaintext gossip
/// starts with its wire version, never this.
pub const MAGIC: u8 = 0xE2;
/// How old (or how far ahead of our clock) a sealed packet may be.
pub const REPLAY_WINDOW_MS: u64 = 60_000;
/// Most nonces remembered at once (about 13 MB at worst); under a heavier load the window
/// shrinks rather than the memory growing.
pub const REPLAY_MAX_NONCES: usize = 262_144;
const TIME_LEN: usize = 8;
/// When the nonce memory is nearly full, packets stamped more than this far ahead of our clock
/// are refused (they would stay remembered the longest).
const AHEAD_UNDER_PRESSURE_MS: u64 = 1000;
/// Length of a key id.
pub const KEY_ID_LEN: usize = 4;
const HEADER_LEN: usize = 1 + KEY_ID_LEN;
/// Bytes a seal adds to a packet.
pub const OVERHEAD: usize = HEADER_LEN + NONCE_LEN + TIME_LEN + 16;

/// Why a packet was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// A plaintext packet reached an agent that has a key.
    #[error("plaintext packet refused: this cluster is encrypted")]
    Plaintext,
    /// An encrypted packet reached an agent without a key.
    #[error("encrypted packet refused: this agent has no encryption key")]
    NoKey,
    /// Sealed with a key this agent does not have.
    #[error("packet sealed with an unknown key")]
    UnknownKey,
    /// Authentication failed: tampered, truncated or forged.
    #[error("packet failed authentication (tampered or wrong key)")]
    Tampered,
    /// An authentic packet seen before: a replay.
    #[error("packet refused: a replay of a packet already received")]
    Replayed,
    /// An authentic packet sent too long ago, or stamped ahead of our clock (clocks apart).
    #[error("packet refused: sent outside the replay window (are the hosts' clocks in sync?)")]
    Stale,
}

/// Hashes a nonce with a random per-process key (multiply-xorshift): cheaper than SipHash on
/// this path, and a key holder who chooses its nonces still cannot aim them at one bucket.
#[derive(Debug, Clone, Copy)]
pub struct NonceHashKey(u64, u64);

impl Default for NonceHashKey {
    fn default() -> Self {
        let mut bytes = [0u8; 16];
        if system_random().fill(&mut bytes).is_err() {
            panic!("the OS random number generator failed");
        }
        let (a, b) = bytes.split_at(8);
        let word = |s: &[u8]| {
            let mut w = [0u8; 8];
            w.copy_from_slice(s);
            u64::from_le_bytes(w)
        };
        NonceHashKey(word(a), word(b) | 1)
    }
}

impl std::hash::BuildHasher for NonceHashKey {
    type Hasher = NonceHasher;

    fn build_hasher(&self) -> NonceHasher {
        NonceHasher {
            state: self.0,
            mul: self.1,
        }
    }
}

/// See [`NonceHashKey`].
#[derive(Debug, Clone, Copy)]
pub struct NonceHasher {
    state: u64,
    mul: u64,
}

impl std::hash::Hasher for NonceHasher {
    fn finish(&self) -> u64 {
        let x = self.state.wrapping_mul(self.mul);
        x ^ (x >> 29)
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.state = (self.state ^ u64::from_le_bytes(word))
                .wrapping_mul(self.mul)
                .rotate_left(31);
        }
    }
}

/// Remembers the nonces of accepted packets for the replay window (see the crate docs).
#[derive(Debug, Default)]
pub struct ReplayGuard {
    seen: std::collections::HashSet<[u8; NONCE_LEN], NonceHashKey>,
    /// (sent_ms, nonce), the earliest sent first: the memory is kept by send time, so a full
    /// guard forgets the oldest packets (and only packets sent before them become stale), and
    /// a peer whose clock runs ahead cannot push the others' packets out.
    order: std::collections::BinaryHeap<std::cmp::Reverse<(u64, [u8; NONCE_LEN])>>,
    /// Packets sent at or before this time are refused: their nonces may have been forgotten.
    floor_ms: u64,
    /// Replays refused.
    pub replayed: u64,
    /// Packets refused as too old or ahead of our clock.
    pub stale: u64,
}

impl ReplayGuard {
    /// Accept a packet sent at `sent_ms` with `nonce`, at `now_ms`, once.
    pub fn check(
        &mut self,
        now_ms: u64,
        sent_ms: u64,
        nonce: [u8; NONCE_LEN],
    ) -> Result<(), OpenError> {
        // Forget what is out of the window anyway.
        while let Some(std::cmp::Reverse((sent, n))) = self.order.peek().copied() {
            if sent.saturating_add(REPLAY_WINDOW_MS) >= now_ms {
                break;
            }
            self.order.pop();
            self.seen.remove(&n);
        }
        if sent_ms.saturating_add(REPLAY_WINDOW_MS) < now_ms
            || sent_ms > now_ms.saturating_add(REPLAY_WINDOW_MS)
            || sent_ms <= self.floor_ms
        {
            self.stale += 1;
            return Err(OpenError::Stale);
        }
        // A packet stamped ahead of our clock must be remembered for longer; when the memory is
        // nearly full, in-sync peers come first (a peer with a fast clock is counted as stale
        // rather than crowding everyone else out).
        if sent_ms > now_ms.saturating_add(AHEAD_UNDER_PRESSURE_MS)
            && self.order.len() >= REPLAY_MAX_NONCES / 10 * 9
        {
            self.stale += 1;
            return Err(OpenError::Stale);
        }
        if !self.seen.insert(nonce) {
            self.replayed += 1;
            return Err(OpenError::Replayed);
        }
        self.order.push(std::cmp::Reverse((sent_ms, nonce)));
        while self.order.len() > REPLAY_MAX_NONCES {
            if let Some(std::cmp::Reverse((sent, n))) = self.order.pop() {
                self.seen.remove(&n);
                self.floor_ms = self.floor_ms.max(sent);
            }
        }
        Ok(())
    }

    /// Nonces remembered now.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether no nonce is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// Why a keyring operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    /// A key is not base64 of 32 bytes.
    #[error("invalid key: {0}")]
    BadKey(String),
    /// The key to use/remove is not installed.
    #[error("key {0} is not installed (see `opsbro gossip keyring list`)")]
    NotInstalled(String),
    /// Removing the primary key is refused.
    #[error("key {0} is the primary key: `use` another key before removing it")]
    Primary(String),
    /// Reading or writing the keyring file failed.
    #[error("keyring file {path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What failed.
        message: String,
    },
}

/// One AES-256 key.
#[derive(Clone)]
pub struct Key {
    id: [u8; KEY_ID_LEN],
    raw: [u8; 32],
    aead: std::sync::Arc<LessSafeKey>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({})", self.id_hex())
    }
}

impl Key {
    /// A key from its 32 bytes.
    pub fn new(raw: [u8; 32]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, &raw);
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest.as_ref()[..KEY_ID_LEN]);
        let unbound = UnboundKey::new(&AES_256_GCM, &raw).unwrap_or_else(|_| {
            // 32 bytes is always a valid AES-256 key length.
            unreachable!("AES-256 key of 32 bytes")
        });
        Self {
            id,
            raw,
            aead: std::sync::Arc::new(LessSafeKey::new(unbound)),
        }
    }

    /// A key from base64 text (as printed by `opsbro agent keygen`).
    pub fn from_base64(text: &str) -> Result<Self, KeyringError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| KeyringError::BadKey("not valid base64".into()))?;
        let raw: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            KeyringError::BadKey(format!("{} bytes, expected 32", b.len()))
        })?;
        Ok(Self::new(raw))
    }

    /// The 32 key bytes (to hand a key over an encrypted channel).
    pub fn raw(&self) -> [u8; 32] {
        self.raw
    }

    /// The key as base64.
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.raw)
    }

    /// A new random key (the OS random source).
    pub fn generate() -> Result<Self, KeyringError> {
        let mut raw = [0u8; 32];
        system_random()
            .fill(&mut raw)
            .map_err(|_| KeyringError::File {
                path: "the OS random source".into(),
                message: "it failed".into(),
            })?;
        Ok(Self::new(raw))
    }

    /// Short public identifier (hex of the key id), safe to print.
    pub fn id_hex(&self) -> String {
        self.id.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// The keys of an agent: the cluster keys (the primary seals, all of them open) and the keys
/// of zones (one per zone: a node holds its own zone's and its sub-zones'). A packet for a
/// zone is sealed with that zone's key when the node has it, else with the node's own zone's
/// key, else with the primary cluster key; any held key opens. Clones share one
/// [`ReplayGuard`].
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    keys: Vec<Key>,
    primary: usize,
    replay: std::sync::Arc<std::sync::Mutex<ReplayGuard>>,
    /// Zone keys, by zone name: the one that seals.
    zones: std::collections::BTreeMap<String, Key>,
    /// More keys of a zone that open but do not seal (a rotation in progress).
    zones_installed: std::collections::BTreeMap<String, Vec<Key>>,
    /// The zone this node is in (its key, when held, seals what has no other zone).
    own_zone: Option<String>,
}

/// On-disk shape of a keyring file.
#[derive(serde::Serialize, serde::Deserialize)]
struct KeyringFile {
    primary: String,
    keys: Vec<String>,
}

impl Keyring {
    /// A keyring with one (primary) key.
    pub fn with_key(key: Key) -> Self {
        Self {
            keys: vec![key],
            primary: 0,
            replay: Default::default(),
            zones: Default::default(),
            zones_installed: Default::default(),
            own_zone: None,
        }
    }

    /// Hold `key` for `zone` as the one that seals (the zone's previous sealing key goes; keys
    /// installed for a rotation stay).
    pub fn set_zone_key(&mut self, zone: &str, key: Key) {
        if let Some(list) = self.zones_installed.get_mut(zone) {
            list.retain(|k| k.id != key.id);
        }
        self.zones.insert(zone.to_owned(), key);
    }

    /// Rotation, step 1: `key` opens packets of `zone` from now on, without sealing (when the
    /// zone has no key yet, it seals too).
    pub fn install_zone_key(&mut self, zone: &str, key: Key) {
        if !self.zones.contains_key(zone) {
            self.zones.insert(zone.to_owned(), key);
            return;
        }
        if self.zones.get(zone).is_some_and(|k| k.id == key.id) {
            return;
        }
        let list = self.zones_installed.entry(zone.to_owned()).or_default();
        if !list.iter().any(|k| k.id == key.id) {
            list.push(key);
        }
    }

    /// Rotation, step 2: an installed key of `zone` seals from now on; the one it replaces
    /// stays installed (it still opens) until removed.
    pub fn use_zone_key(&mut self, zone: &str, key: &Key) -> Result<(), KeyringError> {
        if self.zones.get(zone).is_some_and(|k| k.id == key.id) {
            return Ok(());
        }
        let list = self
            .zones_installed
            .get_mut(zone)
            .ok_or_else(|| KeyringError::NotInstalled(key.id_hex()))?;
        let pos = list
            .iter()
            .position(|k| k.id == key.id)
            .ok_or_else(|| KeyringError::NotInstalled(key.id_hex()))?;
        let new = list.remove(pos);
        if let Some(old) = self.zones.insert(zone.to_owned(), new) {
            list.push(old);
        }
        Ok(())
    }

    /// Rotation, step 3: forget an installed key of `zone` (not the one that seals).
    pub fn remove_zone_key(&mut self, zone: &str, key: &Key) -> Result<(), KeyringError> {
        if self.zones.get(zone).is_some_and(|k| k.id == key.id) {
            return Err(KeyringError::Primary(key.id_hex()));
        }
        let list = self
            .zones_installed
            .get_mut(zone)
            .ok_or_else(|| KeyringError::NotInstalled(key.id_hex()))?;
        let before = list.len();
        list.retain(|k| k.id != key.id);
        if list.len() == before {
            return Err(KeyringError::NotInstalled(key.id_hex()));
        }
        Ok(())
    }

    /// Every key held for `zone`, the sealing one first.
    pub fn zone_keys(&self, zone: &str) -> Vec<&Key> {
        self.zones
            .get(zone)
            .into_iter()
            .chain(self.zones_installed.get(zone).into_iter().flatten())
            .collect()
    }

    /// The key held for `zone`.
    pub fn zone_key(&self, zone: &str) -> Option<&Key> {
        self.zones.get(zone)
    }

    /// The zones whose key this node holds.
    pub fn zones_with_keys(&self) -> Vec<String> {
        self.zones.keys().cloned().collect()
    }

    /// Tell the keyring which zone this node is in.
    pub fn set_own_zone(&mut self, zone: &str) {
        self.own_zone = Some(zone.to_owned());
    }

    /// The key that seals traffic of this node's own zone.
    fn own_key(&self) -> Option<&Key> {
        self.own_zone
            .as_deref()
            .and_then(|z| self.zones.get(z))
            .or_else(|| self.primary())
    }

    /// Replays and stale packets refused so far, and nonces remembered now.
    pub fn replay_stats(&self) -> (u64, u64, usize) {
        let g = self
            .replay
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (g.replayed, g.stale, g.len())
    }

    /// Whether this node's traffic is encrypted (a cluster key, or its own zone's key):
    /// then unsealed packets are refused.
    pub fn is_enabled(&self) -> bool {
        self.own_key().is_some()
    }

    /// The keys, primary first.
    pub fn keys(&self) -> Vec<&Key> {
        let mut v: Vec<&Key> = Vec::with_capacity(self.keys.len());
        if let Some(p) = self.keys.get(self.primary) {
            v.push(p);
        }
        v.extend(
            self.keys
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != self.primary)
                .map(|(_, k)| k),
        );
        v
    }

    /// The primary key.
    pub fn primary(&self) -> Option<&Key> {
        self.keys.get(self.primary)
    }

    /// Add a key (it opens packets at once; it seals once `use`d). Installing twice is a no-op.
    pub fn install(&mut self, key: Key) {
        if !self.keys.iter().any(|k| k.id == key.id) {
            self.keys.push(key);
        }
    }

    /// Make an installed key the primary.
    pub fn use_key(&mut self, key: &Key) -> Result<(), KeyringError> {
        let pos = self
            .keys
            .iter()
            .position(|k| k.id == key.id)
            .ok_or_else(|| KeyringError::NotInstalled(key.id_hex()))?;
        self.primary = pos;
        Ok(())
    }

    /// Remove a key that is not the primary.
    pub fn remove(&mut self, key: &Key) -> Result<(), KeyringError> {
        let pos = self
            .keys
            .iter()
            .position(|k| k.id == key.id)
            .ok_or_else(|| KeyringError::NotInstalled(key.id_hex()))?;
        if pos == self.primary {
            return Err(KeyringError::Primary(key.id_hex()));
        }
        self.keys.remove(pos);
        if self.primary > pos {
            self.primary -= 1;
        }
        Ok(())
    }

    /// Seal `plaintext` for this node's own zone (its zone key, else the primary cluster key),
    /// stamped with `now_ms` (the sender's wall clock); without keys the bytes go as they are.
    pub fn seal(&self, rng: &dyn SecureRandom, plaintext: &[u8], now_ms: u64) -> Vec<u8> {
        Self::seal_with(self.own_key(), rng, plaintext, now_ms)
    }

    /// Seal `plaintext` for a node of `zone`: that zone's key when held, else as [`Self::seal`].
    pub fn seal_for(
        &self,
        zone: &str,
        rng: &dyn SecureRandom,
        plaintext: &[u8],
        now_ms: u64,
    ) -> Vec<u8> {
        let key = self.zones.get(zone).or_else(|| self.own_key());
        Self::seal_with(key, rng, plaintext, now_ms)
    }

    fn seal_with(
        key: Option<&Key>,
        rng: &dyn SecureRandom,
        plaintext: &[u8],
        now_ms: u64,
    ) -> Vec<u8> {
        let Some(key) = key else {
            return plaintext.to_vec();
        };
        let mut nonce = [0u8; NONCE_LEN];
        if rng.fill(&mut nonce).is_err() {
            // The OS random source failing is not survivable for a crypto protocol.
            panic!("the OS random number generator failed");
        }
        let mut out = Vec::with_capacity(plaintext.len() + OVERHEAD);
        out.push(MAGIC);
        out.extend_from_slice(&key.id);
        out.extend_from_slice(&nonce);
        let mut body = Vec::with_capacity(TIME_LEN + plaintext.len() + 16);
        body.extend_from_slice(&now_ms.to_be_bytes());
        body.extend_from_slice(plaintext);
        let aad = [MAGIC, key.id[0], key.id[1], key.id[2], key.id[3]];
        if key
            .aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut body,
            )
            .is_err()
        {
            unreachable!("AES-GCM sealing of an in-memory buffer cannot fail");
        }
        out.extend_from_slice(&body);
        out
    }

    /// Open a packet at `now_ms`: check it against the keyring and the replay window, and
    /// return the plaintext.
    pub fn open(&self, packet: &[u8], now_ms: u64) -> Result<Vec<u8>, OpenError> {
        let sealed = packet.first() == Some(&MAGIC);
        if !sealed {
            return if self.is_enabled() {
                Err(OpenError::Plaintext)
            } else {
                Ok(packet.to_vec())
            };
        }
        if self.keys.is_empty() && self.zones.is_empty() {
            return Err(OpenError::NoKey);
        }
        if packet.len() < OVERHEAD {
            return Err(OpenError::Tampered);
        }
        let id = &packet[1..HEADER_LEN];
        let key = self
            .keys
            .iter()
            .chain(self.zones.values())
            .chain(self.zones_installed.values().flatten())
            .find(|k| k.id == id)
            .ok_or(OpenError::UnknownKey)?;
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&packet[HEADER_LEN..HEADER_LEN + NONCE_LEN]);
        let aad = [MAGIC, id[0], id[1], id[2], id[3]];
        let mut body = packet[HEADER_LEN + NONCE_LEN..].to_vec();
        let plain = key
            .aead
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut body,
            )
            .map_err(|_| OpenError::Tampered)?;
        // Authentic: now make sure it is fresh and new (only authentic packets reach the
        // guard, so forged ones cannot fill it).
        if plain.len() < TIME_LEN {
            return Err(OpenError::Tampered);
        }
        let (time, plain) = plain.split_at(TIME_LEN);
        let mut sent = [0u8; TIME_LEN];
        sent.copy_from_slice(time);
        self.replay
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .check(now_ms, u64::from_be_bytes(sent), nonce)?;
        Ok(plain.to_vec())
    }

    /// Load a keyring file (JSON: `{"primary": b64, "keys": [b64, ...]}`).
    pub fn load(path: &Path) -> Result<Self, KeyringError> {
        let err = |message: String| KeyringError::File {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let file: KeyringFile = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
        let mut ring = Keyring::default();
        for k in &file.keys {
            ring.install(Key::from_base64(k)?);
        }
        let primary = Key::from_base64(&file.primary)?;
        ring.install(primary.clone());
        ring.use_key(&primary)?;
        Ok(ring)
    }

    /// Save atomically with mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), KeyringError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let err = |message: String| KeyringError::File {
            path: path.display().to_string(),
            message,
        };
        let Some(primary) = self.primary() else {
            return Err(err("refusing to save an empty keyring".into()));
        };
        let file = KeyringFile {
            primary: primary.to_base64(),
            keys: self.keys.iter().map(Key::to_base64).collect(),
        };
        let text = serde_json::to_string_pretty(&file).map_err(|e| err(e.to_string()))?;
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| err(e.to_string()))?;
        f.write_all(text.as_bytes())
            .map_err(|e| err(e.to_string()))?;
        f.sync_all().map_err(|e| err(e.to_string()))?;
        std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))
    }
}

/// The OS random source used for nonces.
pub fn system_random() -> SystemRandom {
    SystemRandom::new()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T: u64 = 1_700_000_000_000;

    fn key(b: u8) -> Key {
        Key::new([b; 32])
    }

    #[test]
    fn seal_then_open_round_trips_with_fresh_nonces() {
        let rng = system_random();
        let ring = Keyring::with_key(key(1));
        let a = ring.seal(&rng, b"hello", T);
        let b = ring.seal(&rng, b"hello", T);
        assert_ne!(a, b, "nonces must differ");
        assert_eq!(a.len(), 5 + OVERHEAD);
        assert_eq!(ring.open(&a, T).expect("open"), b"hello");
    }

    #[test]
    fn refusals_are_told_apart() {
        let rng = system_random();
        let ring = Keyring::with_key(key(1));
        let other = Keyring::with_key(key(2));
        let open = Keyring::default();
        assert_eq!(ring.open(&[1, 0], T), Err(OpenError::Plaintext));
        let sealed = other.seal(&rng, b"x", T);
        assert_eq!(ring.open(&sealed, T), Err(OpenError::UnknownKey));
        assert_eq!(open.open(&sealed, T), Err(OpenError::NoKey));
        let mut tampered = ring.seal(&rng, b"secret", T);
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(ring.open(&tampered, T), Err(OpenError::Tampered));
        let mut header = ring.seal(&rng, b"secret", T);
        header[HEADER_LEN] ^= 1; // the nonce
        assert_eq!(ring.open(&header, T), Err(OpenError::Tampered));
        assert_eq!(ring.open(&[MAGIC, 1, 2], T), Err(OpenError::Tampered));
        assert_eq!(
            open.open(&[1, 2, 3], T)
                .expect("plaintext passes without keys"),
            vec![1, 2, 3]
        );
    }

    #[test]
    fn zone_keys_seal_per_destination_and_a_node_without_the_key_cannot_open() {
        let rng = system_random();
        // internet ⊃ {dc1, dc2}: an internet proxy holds all three keys; a dc1 node holds dc1's.
        let mut proxy = Keyring::default();
        proxy.set_own_zone("internet");
        for (z, b) in [("internet", 1), ("dc1", 2), ("dc2", 3)] {
            proxy.set_zone_key(z, key(b));
        }
        let mut dc1 = Keyring::default();
        dc1.set_own_zone("dc1");
        dc1.set_zone_key("dc1", key(2));
        let mut dc2 = Keyring::default();
        dc2.set_own_zone("dc2");
        dc2.set_zone_key("dc2", key(3));
        assert!(dc1.is_enabled());
        assert_eq!(proxy.zones_with_keys(), ["dc1", "dc2", "internet"]);
        // The proxy talks to dc1 with dc1's key: dc1 opens it, dc2 cannot.
        let to_dc1 = proxy.seal_for("dc1", &rng, b"news", T);
        assert_eq!(dc1.open(&to_dc1, T).expect("dc1 opens"), b"news");
        assert_eq!(dc2.open(&to_dc1, T), Err(OpenError::UnknownKey));
        // dc1 does not hold internet's key: it seals with its own, which the proxy holds.
        let up = dc1.seal_for("internet", &rng, b"up", T);
        assert_eq!(proxy.open(&up, T).expect("proxy opens"), b"up");
        assert_eq!(dc2.open(&up, T), Err(OpenError::UnknownKey));
        // Own-zone traffic (KV, exec) uses the own zone's key; plaintext is refused.
        let own = dc1.seal(&rng, b"kv", T);
        assert_eq!(proxy.open(&own, T).expect("opens"), b"kv");
        assert_eq!(dc1.open(b"plain", T), Err(OpenError::Plaintext));
        // A zone without a key falls back to the cluster key.
        let mut flat = Keyring::with_key(key(9));
        flat.set_own_zone("office");
        let sealed = flat.seal_for("dc1", &rng, b"x", T);
        assert_eq!(
            Keyring::with_key(key(9))
                .open(&sealed, T)
                .expect("cluster key"),
            b"x"
        );
    }

    #[test]
    fn a_zone_key_rotates_without_a_gap() {
        let rng = system_random();
        let (old, new) = (key(4), key(5));
        let mut a = Keyring::default();
        a.set_own_zone("dc1");
        a.set_zone_key("dc1", old.clone());
        let mut b = a.clone();
        // Installed on a only: a still seals with the old key, b reads it.
        a.install_zone_key("dc1", new.clone());
        assert_eq!(a.zone_keys("dc1").len(), 2);
        assert_eq!(b.open(&a.seal(&rng, b"1", T), T).expect("old seals"), b"1");
        // Installed on b, used on a: b opens what a seals with the new key.
        b.install_zone_key("dc1", new.clone());
        a.use_zone_key("dc1", &new).expect("use");
        assert_eq!(b.open(&a.seal(&rng, b"2", T), T).expect("new opens"), b"2");
        // a still opens what b seals with the old key.
        assert_eq!(a.open(&b.seal(&rng, b"3", T), T).expect("old opens"), b"3");
        // Used on b, the old one removed everywhere.
        b.use_zone_key("dc1", &new).expect("use");
        assert!(matches!(
            a.remove_zone_key("dc1", &new),
            Err(KeyringError::Primary(_))
        ));
        a.remove_zone_key("dc1", &old).expect("remove");
        b.remove_zone_key("dc1", &old).expect("remove");
        assert_eq!(a.zone_keys("dc1").len(), 1);
        let mut stale = Keyring::default();
        stale.set_own_zone("dc1");
        stale.set_zone_key("dc1", old.clone());
        assert_eq!(
            a.open(&stale.seal(&rng, b"4", T), T),
            Err(OpenError::UnknownKey)
        );
        assert!(matches!(
            a.use_zone_key("dc1", &key(6)),
            Err(KeyringError::NotInstalled(_))
        ));
    }

    #[test]
    fn rotation_install_use_remove() {
        let rng = system_random();
        let mut a = Keyring::with_key(key(1));
        let mut b = Keyring::with_key(key(1));
        // Install the new key everywhere: both still seal with the old one, both open the new one.
        a.install(key(2));
        b.install(key(2));
        a.use_key(&key(2)).expect("use");
        assert_eq!(
            b.open(&a.seal(&rng, b"m", T), T)
                .expect("b opens new-key packets"),
            b"m"
        );
        assert_eq!(
            a.open(&b.seal(&rng, b"n", T), T)
                .expect("a opens old-key packets"),
            b"n"
        );
        assert!(matches!(a.remove(&key(2)), Err(KeyringError::Primary(_))));
        b.use_key(&key(2)).expect("use");
        a.remove(&key(1)).expect("remove old");
        b.remove(&key(1)).expect("remove old");
        assert_eq!(b.open(&a.seal(&rng, b"z", T), T).expect("open"), b"z");
        assert!(matches!(
            a.use_key(&key(9)),
            Err(KeyringError::NotInstalled(_))
        ));
    }

    #[test]
    fn keyring_file_round_trips_privately() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("keyring.json");
        let mut ring = Keyring::with_key(key(1));
        ring.install(key(2));
        ring.use_key(&key(2)).expect("use");
        ring.save(&path).expect("save");
        let loaded = Keyring::load(&path).expect("load");
        assert_eq!(loaded.primary().expect("primary").id_hex(), key(2).id_hex());
        assert_eq!(loaded.keys().len(), 2);
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn keys_parse_from_base64_and_never_print() {
        let k = Key::from_base64(&key(7).to_base64()).expect("parse");
        assert_eq!(k.id_hex(), key(7).id_hex());
        assert!(!format!("{k:?}").contains(&k.to_base64()));
        assert!(Key::from_base64("c2hvcnQ=").is_err());
        assert!(Key::from_base64("!!").is_err());
    }

    #[test]
    fn a_replayed_packet_is_refused_and_counted() {
        // Regression (audit): a captured sealed KV write replayed 3 s later undid a newer
        // acknowledged value.
        let rng = system_random();
        let ring = Keyring::with_key(key(1));
        let receiver = Keyring::with_key(key(1));
        let packet = ring.seal(&rng, b"write k=v", T);
        assert_eq!(receiver.open(&packet, T + 5).expect("first"), b"write k=v");
        assert_eq!(receiver.open(&packet, T + 3000), Err(OpenError::Replayed));
        // Clones share the guard: the gossip and KV paths see the same replays.
        assert_eq!(
            receiver.clone().open(&packet, T + 3001),
            Err(OpenError::Replayed)
        );
        // Too old, or from the future: stale.
        let old = ring.seal(&rng, b"x", T - REPLAY_WINDOW_MS - 1);
        assert_eq!(receiver.open(&old, T), Err(OpenError::Stale));
        let ahead = ring.seal(&rng, b"x", T + REPLAY_WINDOW_MS + 1);
        assert_eq!(receiver.open(&ahead, T), Err(OpenError::Stale));
        assert_eq!(receiver.replay_stats(), (2, 2, 1));
        // Forged packets never reach the guard.
        let mut forged = ring.seal(&rng, b"y", T);
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert_eq!(receiver.open(&forged, T), Err(OpenError::Tampered));
        assert_eq!(receiver.replay_stats().2, 1);
    }

    #[test]
    fn the_replay_memory_is_bounded_and_never_lets_a_replay_through() {
        let mut g = ReplayGuard::default();
        let nonce = |i: usize| {
            let mut n = [0u8; NONCE_LEN];
            n[..8].copy_from_slice(&(i as u64).to_be_bytes());
            n
        };
        let first_sent = T;
        g.check(T, first_sent, nonce(0)).expect("first");
        for i in 1..=REPLAY_MAX_NONCES {
            g.check(T + 1, T + 1, nonce(i)).expect("fresh");
        }
        assert_eq!(g.len(), REPLAY_MAX_NONCES);
        // nonce(0) was forgotten: its packet is now refused as stale, not accepted again.
        assert_eq!(g.check(T + 2, first_sent, nonce(0)), Err(OpenError::Stale));
        // The window passes: everything is forgotten, memory back to nothing.
        g.check(T + 2 * REPLAY_WINDOW_MS, T + 2 * REPLAY_WINDOW_MS, nonce(7))
            .expect("new");
        assert_eq!(g.len(), 1);
    }

    #[test]
    fn a_peer_whose_clock_runs_ahead_cannot_push_the_others_out() {
        // Regression (review): the memory was kept in arrival order, so under load the floor
        // followed the peer furthest ahead and in-sync peers' packets became "stale".
        let mut g = ReplayGuard::default();
        let nonce = |i: u64| {
            let mut n = [0u8; NONCE_LEN];
            n[..8].copy_from_slice(&i.to_be_bytes());
            n
        };
        // 20 packets per ms for two windows and more; one in ten from a peer 30 s ahead.
        let mut in_sync_refused = 0;
        for i in 0..(20 * 150_000u64) {
            let now = T + i / 20;
            let ahead = i % 10 == 0;
            let sent = if ahead { now + 30_000 } else { now };
            if g.check(now, sent, nonce(i)).is_err() && !ahead {
                in_sync_refused += 1;
            }
        }
        assert_eq!(
            in_sync_refused, 0,
            "the in-sync peers' packets are all accepted"
        );
        assert!(g.len() <= REPLAY_MAX_NONCES);
        assert!(g.stale > 0, "the fast clock is counted");
    }

    proptest! {
        #[test]
        fn arbitrary_packets_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let ring = Keyring::with_key(key(3));
            let _ = ring.open(&bytes, T);
            let mut sealed = bytes.clone();
            sealed.insert(0, MAGIC);
            let _ = ring.open(&sealed, T);
        }
    }
}
