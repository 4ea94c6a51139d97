//! The in-memory key index: for every key, the revisions at which it was written or deleted.
//!
//! It is rebuilt from the `kv` table when the store opens (as etcd rebuilds its tree index) and
//! answers "which version of which keys is live at revision R" without touching the disk.

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::api::KeyInterval;

/// A revision: the main revision of a write transaction and the position inside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Revision {
    pub(crate) main: i64,
    pub(crate) sub: i64,
}

#[derive(Clone, Copy, Debug)]
struct Version {
    rev: Revision,
    tombstone: bool,
}

/// Revisions of every key, oldest first per key.
#[derive(Default)]
pub(crate) struct Index {
    keys: BTreeMap<Vec<u8>, Vec<Version>>,
}

impl Index {
    /// Records that `key` was written (or deleted, with `tombstone`) at `rev`.
    pub(crate) fn record(&mut self, key: &[u8], rev: Revision, tombstone: bool) {
        let version = Version { rev, tombstone };
        match self.keys.get_mut(key) {
            Some(versions) => versions.push(version),
            None => {
                self.keys.insert(key.to_vec(), vec![version]);
            }
        }
    }

    /// The revision of `key`'s version live at main revision `at`, if the key exists then.
    pub(crate) fn live_at(&self, key: &[u8], at: i64) -> Option<Revision> {
        live(self.keys.get(key)?, at)
    }

    /// The keys in `interval` live at `at`, in key order, with the revision of each.
    pub(crate) fn range_at<'a>(
        &'a self,
        interval: &'a KeyInterval,
        at: i64,
    ) -> impl Iterator<Item = (&'a [u8], Revision)> + 'a {
        let start = Bound::Included(interval.start.as_slice());
        let end = match &interval.end {
            Some(end) => Bound::Excluded(end.as_slice()),
            None => Bound::Unbounded,
        };
        // BTreeMap::range panics on an inverted range; etcd answers it with nothing.
        let empty = interval
            .end
            .as_deref()
            .is_some_and(|end| end <= interval.start.as_slice());
        let range = if empty {
            None
        } else {
            Some(self.keys.range::<[u8], _>((start, end)))
        };
        range
            .into_iter()
            .flatten()
            .filter_map(move |(k, versions)| Some((k.as_slice(), live(versions, at)?)))
    }

    /// The live version of `key` written before `rev`, if any (the `prev_kv` of a change).
    pub(crate) fn before(&self, key: &[u8], rev: Revision) -> Option<Revision> {
        let versions = self.keys.get(key)?;
        let i = versions.partition_point(|v| v.rev < rev);
        let prev = versions[..i].last()?;
        (!prev.tombstone).then_some(prev.rev)
    }

    /// Drops history at or below main revision `at`, keeping each key's latest version there
    /// unless it is a deletion. Returns the revisions whose records must be removed.
    pub(crate) fn compact(&mut self, at: i64) -> Vec<Revision> {
        let mut removed = Vec::new();
        self.keys.retain(|_, versions| {
            let upto = versions.partition_point(|v| v.rev.main <= at);
            if upto == 0 {
                return true;
            }
            let keep_last = !versions[upto - 1].tombstone;
            let drop = if keep_last { upto - 1 } else { upto };
            removed.extend(versions.drain(..drop).map(|v| v.rev));
            !versions.is_empty()
        });
        removed
    }

    /// The latest revisions of every key that is live now, in key order.
    pub(crate) fn live_now(&self) -> impl Iterator<Item = (&[u8], Revision)> {
        self.keys.iter().filter_map(|(k, versions)| {
            let last = versions.last()?;
            (!last.tombstone).then_some((k.as_slice(), last.rev))
        })
    }
}

fn live(versions: &[Version], at: i64) -> Option<Revision> {
    let i = versions.partition_point(|v| v.rev.main <= at);
    let v = versions[..i].last()?;
    (!v.tombstone).then_some(v.rev)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(main: i64) -> Revision {
        Revision { main, sub: 0 }
    }

    #[test]
    fn a_key_is_live_between_its_put_and_its_delete() {
        let mut index = Index::default();
        index.record(b"a", rev(2), false);
        index.record(b"a", rev(4), true);
        index.record(b"a", rev(6), false);
        assert_eq!(index.live_at(b"a", 1), None);
        assert_eq!(index.live_at(b"a", 3), Some(rev(2)));
        assert_eq!(index.live_at(b"a", 5), None);
        assert_eq!(index.live_at(b"a", 9), Some(rev(6)));
        assert_eq!(
            index.before(b"a", rev(6)),
            None,
            "deleted before the re-put"
        );
        assert_eq!(index.before(b"a", rev(4)), Some(rev(2)));
    }

    #[test]
    fn compaction_keeps_the_latest_live_version_only() {
        let mut index = Index::default();
        index.record(b"a", rev(1), false);
        index.record(b"a", rev(2), false);
        index.record(b"b", rev(3), false);
        index.record(b"b", rev(4), true);
        index.record(b"c", rev(5), false);
        let mut removed = index.compact(4);
        removed.sort();
        assert_eq!(removed, vec![rev(1), rev(3), rev(4)]);
        assert_eq!(index.live_at(b"a", 4), Some(rev(2)));
        assert_eq!(
            index
                .live_now()
                .map(|(k, _)| k.to_vec())
                .collect::<Vec<_>>(),
            vec![b"a".to_vec(), b"c".to_vec()]
        );
    }

    #[test]
    fn an_inverted_range_is_empty() {
        let mut index = Index::default();
        index.record(b"m", rev(1), false);
        let inverted = KeyInterval {
            start: b"z".to_vec(),
            end: Some(b"a".to_vec()),
        };
        assert_eq!(index.range_at(&inverted, 1).count(), 0);
    }
}
