//! Engine snapshots: every table of a consistent read transaction, streamed as checksummed
//! frames, and installed in a single write transaction that replaces everything.
//!
//! Format: the magic `MENDSNAP`, then frames of `u32` little-endian length + postcard-encoded
//! [`Frame`]; the first is a header, the last an end frame holding the frame count and a
//! CRC-32C of every frame before it. An install that meets a bad frame, a wrong checksum or a
//! missing end aborts its transaction: the member keeps what it had.

use std::io::{self, Read, Write};

use redb::{ReadTransaction, ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::backend::{self, put_u64};
use crate::entry::{LogId, StoredMembership};
use crate::schema::{self, AUTH_ROLES, AUTH_USERS, KV, LEASES, META, meta};

const MAGIC: &[u8; 8] = b"MENDSNAP";
/// Frames larger than this are refused as corrupt (a key-value record is far smaller).
const MAX_FRAME: usize = 64 << 20;

/// Why a snapshot could not be written or installed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing the stream failed.
    #[error("snapshot: {0}")]
    Io(#[from] io::Error),
    /// The stream is not a complete, intact snapshot.
    #[error("snapshot: corrupt: {0}")]
    Corrupt(String),
    /// Storage failed.
    #[error(transparent)]
    Backend(#[from] backend::Error),
}

impl From<redb::StorageError> for Error {
    fn from(e: redb::StorageError) -> Self {
        Error::Backend(e.into())
    }
}

impl From<redb::TableError> for Error {
    fn from(e: redb::TableError) -> Self {
        Error::Backend(e.into())
    }
}

/// What a snapshot covers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// Last entry whose effects it contains.
    pub applied: LogId,
    /// Membership as of that entry.
    pub membership: Option<StoredMembership>,
}

#[derive(Serialize, Deserialize)]
enum Frame {
    Header(SnapshotMeta),
    Meta(String, Vec<u8>),
    Kv(i64, i64, Vec<u8>),
    Lease(i64, i64),
    User(String, Vec<u8>),
    Role(String, Vec<u8>),
    End { frames: u64, crc: u32 },
}

struct Writer<W> {
    out: W,
    frames: u64,
    crc: u32,
}

impl<W: Write> Writer<W> {
    fn frame(&mut self, frame: &Frame) -> io::Result<()> {
        let bytes = backend::encode(frame);
        let len = (bytes.len() as u32).to_le_bytes();
        self.crc = crc32c::crc32c_append(crc32c::crc32c_append(self.crc, &len), &bytes);
        self.frames += 1;
        self.out.write_all(&len)?;
        self.out.write_all(&bytes)
    }
}

/// Streams every table of `txn` to `out`, labelled with `meta`.
pub(crate) fn write(
    txn: &ReadTransaction,
    meta: &SnapshotMeta,
    out: impl Write,
) -> Result<(), Error> {
    let mut w = Writer {
        out,
        frames: 0,
        crc: 0,
    };
    w.out.write_all(MAGIC)?;
    w.frame(&Frame::Header(meta.clone()))?;
    for item in txn.open_table(META)?.iter()? {
        let (k, v) = item?;
        w.frame(&Frame::Meta(k.value().to_string(), v.value().to_vec()))?;
    }
    for item in txn.open_table(KV)?.iter()? {
        let (k, v) = item?;
        let (main, sub) = k.value();
        w.frame(&Frame::Kv(main, sub, v.value().to_vec()))?;
    }
    for item in txn.open_table(LEASES)?.iter()? {
        let (k, v) = item?;
        w.frame(&Frame::Lease(k.value(), v.value()))?;
    }
    for item in txn.open_table(AUTH_USERS)?.iter()? {
        let (k, v) = item?;
        w.frame(&Frame::User(k.value().to_string(), v.value().to_vec()))?;
    }
    for item in txn.open_table(AUTH_ROLES)?.iter()? {
        let (k, v) = item?;
        w.frame(&Frame::Role(k.value().to_string(), v.value().to_vec()))?;
    }
    let end = Frame::End {
        frames: w.frames,
        crc: w.crc,
    };
    w.frame(&end)?;
    w.out.flush()?;
    Ok(())
}

/// Replaces every table in `txn` with the snapshot read from `input`; the caller commits only
/// if this returns Ok.
pub(crate) fn install(txn: &WriteTransaction, mut input: impl Read) -> Result<SnapshotMeta, Error> {
    let mut magic = [0u8; 8];
    input
        .read_exact(&mut magic)
        .map_err(|_| Error::Corrupt("too short for a snapshot".into()))?;
    if &magic != MAGIC {
        return Err(Error::Corrupt("not a Mend snapshot (bad magic)".into()));
    }
    txn.delete_table(KV)?;
    txn.delete_table(META)?;
    txn.delete_table(LEASES)?;
    txn.delete_table(AUTH_USERS)?;
    txn.delete_table(AUTH_ROLES)?;
    let mut kv = txn.open_table(KV)?;
    let mut meta_table = txn.open_table(META)?;
    let mut leases = txn.open_table(LEASES)?;
    let mut users = txn.open_table(AUTH_USERS)?;
    let mut roles = txn.open_table(AUTH_ROLES)?;
    let (mut frames, mut crc) = (0u64, 0u32);
    let mut header = None;
    loop {
        let mut len = [0u8; 4];
        input.read_exact(&mut len).map_err(|_| {
            Error::Corrupt(format!("ends after {frames} frames without an end frame"))
        })?;
        let size = u32::from_le_bytes(len) as usize;
        if size > MAX_FRAME {
            return Err(Error::Corrupt(format!(
                "frame {frames} claims {size} bytes"
            )));
        }
        let mut bytes = vec![0u8; size];
        input
            .read_exact(&mut bytes)
            .map_err(|_| Error::Corrupt(format!("frame {frames} is truncated")))?;
        let frame: Frame = postcard::from_bytes(&bytes)
            .map_err(|e| Error::Corrupt(format!("frame {frames}: {e}")))?;
        if let Frame::End {
            frames: expected,
            crc: expected_crc,
        } = frame
        {
            if (expected, expected_crc) != (frames, crc) {
                return Err(Error::Corrupt(format!(
                    "checksum mismatch after {frames} frames"
                )));
            }
            break;
        }
        crc = crc32c::crc32c_append(crc32c::crc32c_append(crc, &len), &bytes);
        frames += 1;
        match frame {
            Frame::Header(h) if header.is_none() => header = Some(h),
            _ if header.is_none() => return Err(Error::Corrupt("missing header".into())),
            Frame::Header(_) => return Err(Error::Corrupt("second header".into())),
            Frame::Meta(k, v) => {
                meta_table.insert(k.as_str(), v.as_slice())?;
            }
            Frame::Kv(main, sub, v) => {
                kv.insert((main, sub), v.as_slice())?;
            }
            Frame::Lease(id, ttl) => {
                leases.insert(id, ttl)?;
            }
            Frame::User(name, v) => {
                users.insert(name.as_str(), v.as_slice())?;
            }
            Frame::Role(name, v) => {
                roles.insert(name.as_str(), v.as_slice())?;
            }
            Frame::End { .. } => unreachable!("handled above"),
        }
    }
    drop((kv, meta_table, leases, users, roles));
    let header = header.ok_or_else(|| Error::Corrupt("empty snapshot".into()))?;
    // The snapshot holds the effects of every entry up to `applied`, whatever index its meta
    // table recorded (under the fault switch that can be lower).
    put_u64(txn, meta::CONSISTENT_INDEX, header.applied.index)?;
    put_u64(txn, meta::CONSISTENT_TERM, header.applied.term)?;
    put_u64(txn, meta::FORMAT_VERSION, schema::FORMAT_VERSION)?;
    Ok(header)
}
