//! The time-series store: per series, minute records kept 1 day, hour records 31 days and day
//! records 365 days, in an `opsbro_store::Store` (sled in the agent).
//!
//! A record is `(sum, count, min, max)` of the values that fell in its slot, so rolling up is
//! exact and every graphite aggregation (average, sum, min, max) can be read back from any
//! resolution. Points are added to an in-memory buffer of minute records; [`TsDb::flush`] folds
//! the buffer into the minute, hour and day records of the store (read-modify-write, so a slot
//! filled over several flushes adds up). Queries see the buffer too, so a point is visible at
//! once. Keys: `n:<name>` (the index of names) and `<m|h|d>:<name> <slot start, 10 digits>`
//! — names never contain a space, so a series' records are one key range.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use opsbro_store::{Store, StoreError};

use crate::Point;

/// A storage resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// 60 s slots, kept 1 day.
    Minute,
    /// 1 h slots, kept 31 days.
    Hour,
    /// 1 day slots, kept 365 days.
    Day,
}

impl Resolution {
    /// Every resolution, finest first.
    pub const ALL: [Resolution; 3] = [Resolution::Minute, Resolution::Hour, Resolution::Day];

    /// Slot length in seconds.
    pub fn step(self) -> u64 {
        match self {
            Resolution::Minute => 60,
            Resolution::Hour => 3600,
            Resolution::Day => 86_400,
        }
    }

    /// How long records are kept, in seconds.
    pub fn retention(self) -> u64 {
        match self {
            Resolution::Minute => 86_400,
            Resolution::Hour => 31 * 86_400,
            Resolution::Day => 365 * 86_400,
        }
    }

    fn prefix(self) -> char {
        match self {
            Resolution::Minute => 'm',
            Resolution::Hour => 'h',
            Resolution::Day => 'd',
        }
    }

    /// The finest resolution that still holds data as old as `from` (graphite's archive choice).
    pub fn for_range(from: u64, now: u64) -> Resolution {
        let age = now.saturating_sub(from);
        Resolution::ALL
            .into_iter()
            .find(|r| age <= r.retention())
            .unwrap_or(Resolution::Day)
    }
}

/// The values of one slot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rec {
    /// Sum of the values.
    pub sum: f64,
    /// Number of values.
    pub count: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
}

impl Rec {
    /// A slot with one value.
    pub fn one(v: f64) -> Rec {
        Rec {
            sum: v,
            count: 1.0,
            min: v,
            max: v,
        }
    }

    /// Add `other`'s values.
    pub fn merge(&mut self, other: &Rec) {
        self.sum += other.sum;
        self.count += other.count;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    fn encode(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, v) in [self.sum, self.count, self.min, self.max]
            .iter()
            .enumerate()
        {
            out[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        out
    }

    fn decode(bytes: &[u8]) -> Option<Rec> {
        let field = |i: usize| -> Option<f64> {
            Some(f64::from_le_bytes(
                bytes.get(i * 8..i * 8 + 8)?.try_into().ok()?,
            ))
        };
        Some(Rec {
            sum: field(0)?,
            count: field(1)?,
            min: field(2)?,
            max: field(3)?,
        })
    }

    /// The slot's value under `how`.
    pub fn value(&self, how: Aggregation) -> f64 {
        match how {
            Aggregation::Average => self.sum / self.count,
            Aggregation::Sum => self.sum,
            Aggregation::Min => self.min,
            Aggregation::Max => self.max,
        }
    }
}

/// How the values of one slot make its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregation {
    /// Mean (the default).
    Average,
    /// Total.
    Sum,
    /// Smallest.
    Min,
    /// Largest.
    Max,
}

/// carbon's default `storage-aggregation.conf`: `.count`/`.sum` add up, `.lower`/`.min` keep the
/// smallest, `.upper*`/`.max` the largest, everything else averages.
pub fn aggregation_for(name: &str) -> Aggregation {
    let last = name.rsplit('.').next().unwrap_or(name);
    match last {
        "count" | "sum" => Aggregation::Sum,
        "lower" | "min" => Aggregation::Min,
        "max" => Aggregation::Max,
        l if l == "upper"
            || l.strip_prefix("upper_")
                .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit())) =>
        {
            Aggregation::Max
        }
        _ => Aggregation::Average,
    }
}

/// Why a point was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    /// Older than the longest retention.
    #[error("timestamp older than the 365-day retention")]
    TooOld,
    /// More than a day ahead.
    #[error("timestamp more than a day in the future")]
    InFuture,
    /// The store already holds the maximum number of series.
    #[error("too many series: the store is full (100,000 series by default)")]
    TooManySeries,
    /// Not a valid name.
    #[error("invalid metric name")]
    BadName,
}

/// Counts since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TsStats {
    /// Points stored.
    pub points: u64,
    /// Points refused.
    pub rejected: u64,
    /// Records written by flushes.
    pub records_written: u64,
    /// Records removed by expiry.
    pub records_expired: u64,
}

/// Values of one series over a time range.
#[derive(Debug, Clone, PartialEq)]
pub struct Fetched {
    /// Start of the first slot.
    pub start: u64,
    /// Slot length.
    pub step: u64,
    /// One entry per slot.
    pub recs: Vec<Option<Rec>>,
}

/// Points taken out of the buffer by [`TsDb::take_pending`].
pub struct Pending(HashMap<String, BTreeMap<u64, Rec>>);

impl Pending {
    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Longest answer of one fetch, in slots.
pub const MAX_SLOTS: u64 = 100_000;

/// The store.
pub struct TsDb {
    store: Arc<dyn Store>,
    names: BTreeSet<String>,
    pending: HashMap<String, BTreeMap<u64, Rec>>,
    max_series: usize,
    stats: TsStats,
    /// Minute records of recently read series (see [`Recent`]).
    recent: Mutex<Recent>,
    /// Buffers taken by [`TsDb::take_pending`] whose write is not done yet.
    writes_in_flight: u32,
}

/// Most minute records kept in [`Recent`] (about 25 MB; 270 series over a whole day).
pub const RECENT_MAX_RECORDS: usize = 400_000;

/// The minute records of the series read lately, so that a dashboard reading the last day of a
/// few series again and again does not walk the store (one key per minute) each time. A cached
/// series holds every store record from `from` on; the buffer taken by each
/// [`TsDb::take_pending`] is folded in at once, so the cache never lags the store. Least
/// recently read series make way past [`RECENT_MAX_RECORDS`].
#[derive(Default)]
struct Recent {
    series: HashMap<String, RecentSeries>,
    records: usize,
    tick: u64,
}

struct RecentSeries {
    /// Every store record at or after this slot is in `recs`.
    from: u64,
    recs: BTreeMap<u64, Rec>,
    used: u64,
}

impl Recent {
    fn evict(&mut self) {
        while self.records > RECENT_MAX_RECORDS {
            let Some(oldest) = self
                .series
                .iter()
                .min_by_key(|(_, s)| s.used)
                .map(|(k, _)| k.clone())
            else {
                return;
            };
            if let Some(gone) = self.series.remove(&oldest) {
                self.records -= gone.recs.len();
            }
        }
    }

    fn merge(&mut self, name: &str, minutes: &BTreeMap<u64, Rec>) {
        let Some(cached) = self.series.get_mut(name) else {
            return;
        };
        for (minute, rec) in minutes.range(cached.from..) {
            match cached.recs.get_mut(minute) {
                Some(have) => have.merge(rec),
                None => {
                    cached.recs.insert(*minute, *rec);
                    self.records += 1;
                }
            }
        }
        // Older than the minute retention: the store expires them too.
        if let Some(newest) = cached.recs.keys().next_back().copied() {
            let cutoff = newest.saturating_sub(Resolution::Minute.retention() + 3600);
            if cutoff > cached.from {
                let kept = cached.recs.split_off(&cutoff);
                self.records -= cached.recs.len();
                cached.recs = kept;
                cached.from = cutoff;
            }
        }
    }
}

fn key(res: Resolution, name: &str, slot: u64) -> String {
    format!("{}:{name} {slot:010}", res.prefix())
}

fn slot_of(key: &str) -> Option<u64> {
    key.rsplit(' ').next()?.parse().ok()
}

impl TsDb {
    /// Open over `store` (loads the index of names).
    pub fn open(store: Arc<dyn Store>, max_series: usize) -> Result<TsDb, StoreError> {
        let names = store
            .scan_prefix("n:")?
            .into_iter()
            .filter_map(|(k, _)| k.strip_prefix("n:").map(str::to_owned))
            .collect();
        Ok(TsDb {
            store,
            names,
            pending: HashMap::new(),
            max_series,
            stats: TsStats::default(),
            recent: Mutex::new(Recent::default()),
            writes_in_flight: 0,
        })
    }

    /// Counts since start.
    pub fn stats(&self) -> TsStats {
        self.stats
    }

    /// Number of series.
    pub fn series(&self) -> usize {
        self.names.len()
    }

    /// Every series name, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }

    /// Whether `name` is a series.
    pub fn contains(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    /// Add one point (kept in memory until [`TsDb::flush`], visible to queries at once).
    pub fn add(&mut self, p: &Point, now: u64) -> Result<(), Reject> {
        let result = self.add_inner(p, now);
        match result {
            Ok(()) => self.stats.points += 1,
            Err(_) => self.stats.rejected += 1,
        }
        result
    }

    fn add_inner(&mut self, p: &Point, now: u64) -> Result<(), Reject> {
        if p.ts + Resolution::Day.retention() < now {
            return Err(Reject::TooOld);
        }
        if p.ts > now + 86_400 {
            return Err(Reject::InFuture);
        }
        if !p.value.is_finite() {
            return Err(Reject::BadName);
        }
        if !self.names.contains(&p.name) {
            if !crate::name::is_valid(&p.name) {
                return Err(Reject::BadName);
            }
            if self.names.len() >= self.max_series {
                return Err(Reject::TooManySeries);
            }
            self.names.insert(p.name.clone());
            // The index entry is written at once: a crash before the flush loses points, never
            // the name of a series whose records exist.
            let _ = self.store.put(&format!("n:{}", p.name), b"");
        }
        let minute = p.ts - p.ts % 60;
        let slots = match self.pending.get_mut(&p.name) {
            Some(s) => s,
            None => self.pending.entry(p.name.clone()).or_default(),
        };
        slots
            .entry(minute)
            .and_modify(|r| r.merge(&Rec::one(p.value)))
            .or_insert_with(|| Rec::one(p.value));
        Ok(())
    }

    /// Points waiting for the next flush.
    pub fn pending(&self) -> usize {
        self.pending.values().map(BTreeMap::len).sum()
    }

    /// Fold the buffer into the store's minute, hour and day records.
    pub fn flush(&mut self) -> Result<u64, StoreError> {
        let pending = self.take_pending();
        let written = TsDb::write(&*self.store, pending)?;
        self.note_written(written);
        Ok(written)
    }

    /// Take the buffer out, to [`TsDb::write`] it without holding up adds and queries (until it
    /// is written those points are in neither place; callers never run two writes at once).
    pub fn take_pending(&mut self) -> Pending {
        let pending = std::mem::take(&mut self.pending);
        let recent = self
            .recent
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        for (name, minutes) in &pending {
            recent.merge(name, minutes);
        }
        recent.evict();
        // An empty buffer is not written (callers skip it): nothing is in flight.
        if !pending.is_empty() {
            self.writes_in_flight += 1;
        }
        Pending(pending)
    }

    /// The store (for [`TsDb::write`] and [`TsDb::expire_series`]).
    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// Count records written by [`TsDb::write`].
    pub fn note_written(&mut self, n: u64) {
        self.stats.records_written += n;
        self.writes_in_flight = self.writes_in_flight.saturating_sub(1);
    }

    /// A [`TsDb::write`] failed: its points are not in the store, so the read cache, which has
    /// them, is dropped.
    pub fn note_write_failed(&mut self) {
        self.writes_in_flight = self.writes_in_flight.saturating_sub(1);
        *self
            .recent
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner) = Recent::default();
    }

    /// Fold taken points into the store's records (read-modify-write: one at a time).
    pub fn write(store: &dyn Store, pending: Pending) -> Result<u64, StoreError> {
        let mut written = 0;
        for (name, minutes) in pending.0 {
            for res in Resolution::ALL {
                let mut by_slot: BTreeMap<u64, Rec> = BTreeMap::new();
                for (minute, rec) in &minutes {
                    let slot = minute - minute % res.step();
                    by_slot
                        .entry(slot)
                        .and_modify(|r| r.merge(rec))
                        .or_insert(*rec);
                }
                for (slot, mut rec) in by_slot {
                    let k = key(res, &name, slot);
                    if let Some(old) = store.get(&k)?.as_deref().and_then(Rec::decode) {
                        rec.merge(&old);
                    }
                    store.put(&k, &rec.encode())?;
                    written += 1;
                }
            }
        }
        Ok(written)
    }

    /// The records of `name` between `from` and `until` (both unix seconds, inclusive) at the
    /// finest resolution that covers `from`.
    pub fn fetch(
        &self,
        name: &str,
        from: u64,
        until: u64,
        now: u64,
    ) -> Result<Fetched, StoreError> {
        self.fetch_res(name, Resolution::for_range(from, now), from, until)
    }

    /// The records of `name` between `from` and `until` (inclusive) at resolution `res`.
    pub fn fetch_res(
        &self,
        name: &str,
        res: Resolution,
        from: u64,
        until: u64,
    ) -> Result<Fetched, StoreError> {
        let step = res.step();
        let start = from - from % step;
        let end = until.max(from);
        let end = end - end % step;
        let n = ((end - start) / step + 1).min(MAX_SLOTS);
        let end = start + (n - 1) * step;
        let mut recs = vec![None; usize::try_from(n).unwrap_or(0)];
        if self.names.contains(name) {
            let mut place = |slot: u64, rec: Rec| {
                if let Some(r) = usize::try_from((slot - start) / step)
                    .ok()
                    .and_then(|i| recs.get_mut(i))
                {
                    *r = Some(rec);
                }
            };
            if res == Resolution::Minute {
                self.read_minutes(name, start, end, &mut place)?;
            } else {
                for (k, v) in self
                    .store
                    .scan_range(&key(res, name, start), &key(res, name, end + 1))?
                {
                    if let (Some(slot), Some(rec)) = (slot_of(&k), Rec::decode(&v)) {
                        place(slot, rec);
                    }
                }
            }
            if let Some(minutes) = self.pending.get(name) {
                for (minute, rec) in minutes.range(start..=end.saturating_add(step - 1)) {
                    let i = usize::try_from((minute - start) / step).unwrap_or(usize::MAX);
                    if let Some(r) = recs.get_mut(i) {
                        match r {
                            Some(have) => have.merge(rec),
                            None => *r = Some(*rec),
                        }
                    }
                }
            }
        }
        Ok(Fetched { start, step, recs })
    }

    /// The stored minute records of `name` in `[start, end]`, through the read cache.
    fn read_minutes(
        &self,
        name: &str,
        start: u64,
        end: u64,
        place: &mut dyn FnMut(u64, Rec),
    ) -> Result<(), StoreError> {
        let scan = |from: u64, to: u64| -> Result<Vec<(u64, Rec)>, StoreError> {
            Ok(self
                .store
                .scan_range(
                    &key(Resolution::Minute, name, from),
                    &key(Resolution::Minute, name, to),
                )?
                .into_iter()
                .filter_map(|(k, v)| Some((slot_of(&k)?, Rec::decode(&v)?)))
                .collect())
        };
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        recent.tick += 1;
        let tick = recent.tick;
        let cached_from = recent.series.get(name).map(|c| c.from);
        match cached_from {
            Some(from) if from <= start => {}
            // While a write is under way the store lacks the buffer it took: read it directly.
            _ if self.writes_in_flight > 0 => {
                for (slot, rec) in scan(start, end + 1)? {
                    place(slot, rec);
                }
                return Ok(());
            }
            Some(from) => {
                let older = scan(start, from)?;
                let added = older.len();
                if let Some(c) = recent.series.get_mut(name) {
                    c.recs.extend(older);
                    c.from = start;
                }
                recent.records += added;
            }
            None => {
                let recs: BTreeMap<u64, Rec> = scan(start, 9_999_999_999)?.into_iter().collect();
                recent.records += recs.len();
                recent.series.insert(
                    name.to_owned(),
                    RecentSeries {
                        from: start,
                        recs,
                        used: tick,
                    },
                );
            }
        }
        if let Some(c) = recent.series.get_mut(name) {
            c.used = tick;
            for (slot, rec) in c.recs.range(start..=end) {
                place(*slot, *rec);
            }
        }
        recent.evict();
        Ok(())
    }

    /// Remove records past their retention, and series with nothing left.
    pub fn expire(&mut self, now: u64) -> Result<u64, StoreError> {
        let names: Vec<String> = self.names.iter().cloned().collect();
        let (removed, empty) = TsDb::expire_series(&*self.store, &names, now)?;
        self.forget(&empty, removed)?;
        Ok(removed)
    }

    /// Remove the records of `names` past their retention (only the store is touched, so no
    /// lock on the `TsDb` is needed); answers how many, and the series left with no record.
    pub fn expire_series(
        store: &dyn Store,
        names: &[String],
        now: u64,
    ) -> Result<(u64, Vec<String>), StoreError> {
        let mut removed = 0;
        let mut empty = Vec::new();
        for name in names {
            for res in Resolution::ALL {
                let cutoff = now.saturating_sub(res.retention());
                for (k, _) in store.scan_range(&key(res, name, 0), &key(res, name, cutoff))? {
                    store.remove(&k)?;
                    removed += 1;
                }
            }
            if store.scan_prefix(&format!("d:{name} "))?.is_empty() {
                empty.push(name.clone());
            }
        }
        Ok((removed, empty))
    }

    /// Forget the series [`TsDb::expire_series`] found empty (unless points arrived since).
    pub fn forget(&mut self, empty: &[String], removed: u64) -> Result<(), StoreError> {
        for name in empty {
            if self.pending.contains_key(name) {
                continue;
            }
            self.store.remove(&format!("n:{name}"))?;
            self.names.remove(name);
            let recent = self
                .recent
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(gone) = recent.series.remove(name) {
                recent.records -= gone.recs.len();
            }
        }
        self.stats.records_expired += removed;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opsbro_store::MemStore;

    const T0: u64 = 1_700_000_000 - 1_700_000_000 % 86_400;

    fn db() -> TsDb {
        TsDb::open(Arc::new(MemStore::default()), 1000).expect("open")
    }

    fn p(name: &str, value: f64, ts: u64) -> Point {
        Point {
            name: name.into(),
            value,
            ts,
        }
    }

    #[test]
    fn minute_hour_and_day_records_roll_up_exactly() {
        let mut db = db();
        let now = T0 + 2 * 3600;
        // Two values in each of the first 90 minutes, flushed in three batches.
        for batch in 0..3 {
            for m in (batch * 30u32)..(batch * 30 + 30) {
                db.add(&p("a.b", f64::from(m), T0 + u64::from(m) * 60), now)
                    .expect("add");
                db.add(
                    &p("a.b", f64::from(m) + 1.0, T0 + u64::from(m) * 60 + 30),
                    now,
                )
                .expect("add");
            }
            db.flush().expect("flush");
        }
        let f = db.fetch("a.b", T0, T0 + 3599, now).expect("fetch");
        assert_eq!((f.start, f.step, f.recs.len()), (T0, 60, 60));
        let r = f.recs[10].expect("minute 10");
        assert_eq!((r.sum, r.count, r.min, r.max), (21.0, 2.0, 10.0, 11.0));
        // Hours from a range older than a day.
        let later = T0 + 3 * 86_400;
        let h = db.fetch("a.b", T0, T0 + 7199, later).expect("hours");
        assert_eq!((h.step, h.recs.len()), (3600, 2));
        let h0 = h.recs[0].expect("hour 0");
        assert_eq!((h0.count, h0.min, h0.max), (120.0, 0.0, 60.0));
        assert_eq!(h0.sum, (0..60).map(|m| f64::from(2 * m + 1)).sum::<f64>());
        let h1 = h.recs[1].expect("hour 1");
        assert_eq!(h1.count, 60.0);
        let d = db.fetch("a.b", T0, T0, T0 + 100 * 86_400).expect("days");
        assert_eq!(d.step, 86_400);
        assert_eq!(d.recs[0].expect("day").count, 180.0);
    }

    #[test]
    fn pending_points_are_visible_and_flushed_once() {
        let mut db = db();
        let now = T0 + 600;
        db.add(&p("x", 4.0, T0 + 61), now).expect("add");
        let f = db.fetch("x", T0, now, now).expect("fetch");
        assert_eq!(f.recs[1], Some(Rec::one(4.0)));
        db.flush().expect("flush");
        assert_eq!(db.pending(), 0);
        assert_eq!(
            db.fetch("x", T0, now, now).expect("again").recs[1],
            Some(Rec::one(4.0))
        );
        assert_eq!(
            db.fetch("missing", T0, now, now).expect("none").recs,
            vec![None; 11]
        );
    }

    #[test]
    fn names_survive_reopen_and_bad_points_are_refused() {
        let store: Arc<dyn Store> = Arc::new(MemStore::default());
        let mut db = TsDb::open(store.clone(), 2).expect("open");
        let now = T0;
        db.add(&p("one", 1.0, now), now).expect("add");
        db.add(&p("two", 1.0, now), now).expect("add");
        assert_eq!(
            db.add(&p("three", 1.0, now), now),
            Err(Reject::TooManySeries)
        );
        assert_eq!(
            db.add(&p("one", 1.0, now - 400 * 86_400), now),
            Err(Reject::TooOld)
        );
        assert_eq!(
            db.add(&p("one", 1.0, now + 2 * 86_400), now),
            Err(Reject::InFuture)
        );
        assert_eq!(db.add(&p("a..b", 1.0, now), now), Err(Reject::BadName));
        assert_eq!(db.stats().rejected, 4);
        db.flush().expect("flush");
        let db = TsDb::open(store, 10).expect("reopen");
        assert_eq!(db.names().collect::<Vec<_>>(), ["one", "two"]);
    }

    #[test]
    fn expiry_follows_each_retention() {
        let mut db = db();
        db.add(&p("old", 1.0, T0), T0).expect("add");
        db.add(&p("new", 1.0, T0 + 40 * 86_400), T0 + 40 * 86_400)
            .expect("add");
        db.flush().expect("flush");
        // Two days later: the minute record is gone, hour and day remain.
        assert_eq!(db.expire(T0 + 2 * 86_400).expect("expire"), 1);
        assert!(db.contains("old"));
        // 40 days later: only the day record is left.
        db.expire(T0 + 40 * 86_400).expect("expire");
        let d = db.fetch("old", T0, T0, T0 + 40 * 86_400).expect("days");
        assert_eq!(d.recs[0].map(|r| r.count), Some(1.0));
        // After a year, the series is forgotten.
        db.expire(T0 + 366 * 86_400).expect("expire");
        assert!(!db.contains("old"));
        assert!(db.contains("new"));
    }

    /// The read cache answers exactly what the store holds, whatever the order of reads,
    /// late points and flushes.
    #[test]
    fn the_read_cache_answers_what_the_store_holds() {
        let store: Arc<dyn Store> = Arc::new(MemStore::default());
        let mut db = TsDb::open(store.clone(), 10).expect("open");
        let now = T0 + 3600;
        let fresh = |name: &str| {
            TsDb::open(store.clone(), 10)
                .expect("reopen")
                .fetch_res(name, Resolution::Minute, T0, now)
                .expect("fetch")
                .recs
        };
        let cached = |db: &TsDb, name: &str| {
            db.fetch_res(name, Resolution::Minute, T0, now)
                .expect("fetch")
                .recs
        };
        for m in 0..30u32 {
            db.add(&p("c", f64::from(m), T0 + u64::from(m) * 60), now)
                .expect("add");
        }
        db.flush().expect("flush");
        // Cached from minute 10 on.
        let part = db
            .fetch_res("c", Resolution::Minute, T0 + 600, now)
            .expect("part");
        assert_eq!(part.recs[0], Some(Rec::one(10.0)));
        // Late points before and inside the cached range, and a new one.
        db.add(&p("c", 100.0, T0 + 5 * 60 + 1), now).expect("add");
        db.add(&p("c", 7.0, T0 + 20 * 60), now).expect("add");
        db.add(&p("c", 9.0, T0 + 40 * 60), now).expect("add");
        let before_flush = cached(&db, "c");
        db.flush().expect("flush");
        assert_eq!(cached(&db, "c"), fresh("c"));
        assert_eq!(before_flush, fresh("c"));
        let mut twenty = Rec::one(20.0);
        twenty.merge(&Rec::one(7.0));
        assert_eq!(cached(&db, "c")[20], Some(twenty));
        // While a write is under way, an uncached series is read from the store, a cached one
        // from the cache (which already has the taken points).
        db.add(&p("d", 1.0, T0), now).expect("add");
        db.add(&p("c", 5.0, T0 + 50 * 60), now).expect("add");
        let taken = db.take_pending();
        assert_eq!(cached(&db, "c")[50], Some(Rec::one(5.0)));
        assert_eq!(cached(&db, "d")[0], None, "in neither place until written");
        let n = TsDb::write(&*store, taken).expect("write");
        db.note_written(n);
        assert_eq!(cached(&db, "d")[0], Some(Rec::one(1.0)));
        assert_eq!(cached(&db, "c"), fresh("c"));
        // Taking an empty buffer (nothing to write) does not hold the cache back.
        assert!(db.take_pending().is_empty());
        assert_eq!(db.writes_in_flight, 0);
        // A failed write drops the cache.
        db.add(&p("c", 1.0, T0), now).expect("add");
        let _ = db.take_pending();
        db.note_write_failed();
        assert_eq!(cached(&db, "c"), fresh("c"));
    }

    #[test]
    fn carbon_default_aggregations() {
        assert_eq!(aggregation_for("stats.counters.x.count"), Aggregation::Sum);
        assert_eq!(aggregation_for("stats.timers.x.upper_90"), Aggregation::Max);
        assert_eq!(aggregation_for("stats.timers.x.upper"), Aggregation::Max);
        assert_eq!(aggregation_for("stats.timers.x.lower"), Aggregation::Min);
        assert_eq!(aggregation_for("stats.timers.x.mean"), Aggregation::Average);
        assert_eq!(
            aggregation_for("stats.timers.upper_x"),
            Aggregation::Average
        );
    }
}
