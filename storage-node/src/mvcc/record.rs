//! The on-disk encoding of one key version in the `kv` table.
//!
//! Layout (integers little-endian): `flags: u8` (bit 0: tombstone), `create_revision: i64`,
//! `version: i64`, `lease: i64`, `key_len: u32`, key bytes, value bytes. The mod revision is the
//! table key. The encoding is deterministic, so equal histories hash equally (HashKV).

use crate::api::KeyValue;
use crate::backend::Error;

const TOMBSTONE: u8 = 1;
const HEADER: usize = 1 + 8 + 8 + 8 + 4;

/// Encodes a version of `kv`; a tombstone keeps only the key.
pub(crate) fn encode(kv: &KeyValue, tombstone: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + kv.key.len() + kv.value.len());
    out.push(if tombstone { TOMBSTONE } else { 0 });
    out.extend_from_slice(&kv.create_revision.to_le_bytes());
    out.extend_from_slice(&kv.version.to_le_bytes());
    out.extend_from_slice(&kv.lease.to_le_bytes());
    // Keys are bounded far below 4 GiB by the request size limit.
    out.extend_from_slice(&(kv.key.len() as u32).to_le_bytes());
    out.extend_from_slice(&kv.key);
    out.extend_from_slice(&kv.value);
    out
}

/// Decodes a record stored at `mod_revision`; returns the pair and whether it is a tombstone.
pub(crate) fn decode(mod_revision: i64, bytes: &[u8]) -> Result<(KeyValue, bool), Error> {
    let corrupt = |detail: &str| Error::Corrupt {
        table: "kv",
        detail: format!("revision {mod_revision}: {detail}"),
    };
    if bytes.len() < HEADER {
        return Err(corrupt("record shorter than its header"));
    }
    let i64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[at..at + 8]);
        i64::from_le_bytes(b)
    };
    let mut len = [0u8; 4];
    len.copy_from_slice(&bytes[25..29]);
    let key_len = u32::from_le_bytes(len) as usize;
    let key_end = HEADER
        .checked_add(key_len)
        .filter(|end| *end <= bytes.len())
        .ok_or_else(|| corrupt("key runs past the record"))?;
    let tombstone = bytes[0] & TOMBSTONE != 0;
    let kv = KeyValue {
        key: bytes[HEADER..key_end].to_vec(),
        create_revision: i64_at(1),
        mod_revision,
        version: i64_at(9),
        value: bytes[key_end..].to_vec(),
        lease: i64_at(17),
    };
    Ok((kv, tombstone))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips() {
        let kv = KeyValue {
            key: b"k".to_vec(),
            create_revision: 3,
            mod_revision: 7,
            version: 2,
            value: b"value".to_vec(),
            lease: -9,
        };
        let (back, tomb) = decode(7, &encode(&kv, false)).unwrap();
        assert_eq!((back, tomb), (kv, false));
    }

    #[test]
    fn truncated_record_is_corrupt_not_a_panic() {
        let kv = KeyValue {
            key: b"key".to_vec(),
            ..Default::default()
        };
        let bytes = encode(&kv, true);
        assert!(decode(1, &bytes[..10]).is_err());
        assert!(decode(1, &bytes[..HEADER + 1]).is_err());
    }
}
