//! Engine snapshots: every table of a consistent read transaction, streamed as checksummed
//! frames, and installed in a single write transaction that replaces everything.
//!
//! Format: the magic `MENDSNAP`, then frames of `u32` little-endian length + postcard-encoded
//! [`Frame`]; the first is a header, the last an end frame holding the frame count and a
//! CRC-32C of every frame before it. An install that meets a bad frame, a wrong checksum or a
//! missing end aborts its transaction: the member keeps what it had.
//!
//! A snapshot file (what `Maintenance.Snapshot` streams and `etcdctl snapshot save` keeps) is
//! the stream sealed as etcd seals a bbolt file: zeros up to a multiple of 512 bytes, then the
//! SHA-256 of everything before it. etcdctl saves only streams of that shape, and
//! [`inspect_file`] checks both the seal and the frames.

use std::io::{self, Read, Write};

use redb::{ReadTransaction, ReadableTable, TableHandle, WriteTransaction};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::backend::{self, put_u64};
use crate::entry::{LogId, StoredMembership};
use crate::schema::{self, AUTH_ROLES, AUTH_USERS, KV, LEASES, META, meta};

const MAGIC: &[u8; 8] = b"MENDSNAP";
/// Frames larger than this are refused as corrupt (a key-value record is far smaller).
const MAX_FRAME: usize = 64 << 20;

/// Length of the SHA-256 seal at the end of a snapshot file.
const SEAL: usize = 32;
/// The sealed file's length is a multiple of this, plus the seal (etcd's check).
const SEAL_ALIGN: u64 = 512;

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
    // Tables in the order of the whole-backend hash, so a reader can compute it on the way.
    for item in txn.open_table(AUTH_ROLES)?.iter()? {
        let (k, v) = item?;
        w.frame(&Frame::Role(k.value().to_string(), v.value().to_vec()))?;
    }
    for item in txn.open_table(AUTH_USERS)?.iter()? {
        let (k, v) = item?;
        w.frame(&Frame::User(k.value().to_string(), v.value().to_vec()))?;
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
    for item in txn.open_table(META)?.iter()? {
        let (k, v) = item?;
        w.frame(&Frame::Meta(k.value().to_string(), v.value().to_vec()))?;
    }
    let end = Frame::End {
        frames: w.frames,
        crc: w.crc,
    };
    w.frame(&end)?;
    w.out.flush()?;
    Ok(())
}

/// Reads frames and checks them against the end frame.
struct Reader<R> {
    input: R,
    frames: u64,
    crc: u32,
    bytes: u64,
}

impl<R: Read> Reader<R> {
    fn open(mut input: R) -> Result<Reader<R>, Error> {
        let mut magic = [0u8; 8];
        input
            .read_exact(&mut magic)
            .map_err(|_| Error::Corrupt("too short for a snapshot".into()))?;
        if &magic != MAGIC {
            return Err(Error::Corrupt("not a Mend snapshot (bad magic)".into()));
        }
        Ok(Reader {
            input,
            frames: 0,
            crc: 0,
            bytes: MAGIC.len() as u64,
        })
    }

    /// The next frame; `None` once the end frame arrived and matched everything before it.
    fn next(&mut self) -> Result<Option<Frame>, Error> {
        let frames = self.frames;
        let mut len = [0u8; 4];
        self.input.read_exact(&mut len).map_err(|_| {
            Error::Corrupt(format!("ends after {frames} frames without an end frame"))
        })?;
        let size = u32::from_le_bytes(len) as usize;
        if size > MAX_FRAME {
            return Err(Error::Corrupt(format!(
                "frame {frames} claims {size} bytes"
            )));
        }
        let mut bytes = vec![0u8; size];
        self.input
            .read_exact(&mut bytes)
            .map_err(|_| Error::Corrupt(format!("frame {frames} is truncated")))?;
        self.bytes += 4 + size as u64;
        let frame: Frame = postcard::from_bytes(&bytes)
            .map_err(|e| Error::Corrupt(format!("frame {frames}: {e}")))?;
        if let Frame::End {
            frames: expected,
            crc: expected_crc,
        } = frame
        {
            if (expected, expected_crc) != (frames, self.crc) {
                return Err(Error::Corrupt(format!(
                    "checksum mismatch after {frames} frames"
                )));
            }
            return Ok(None);
        }
        self.crc = crc32c::crc32c_append(crc32c::crc32c_append(self.crc, &len), &bytes);
        self.frames += 1;
        match frame {
            Frame::Header(_) if frames > 0 => Err(Error::Corrupt("second header".into())),
            Frame::Header(_) => Ok(Some(frame)),
            _ if frames == 0 => Err(Error::Corrupt("missing header".into())),
            _ => Ok(Some(frame)),
        }
    }

    /// The header: the first frame.
    fn header(&mut self) -> Result<SnapshotMeta, Error> {
        match self.next()? {
            Some(Frame::Header(h)) => Ok(h),
            _ => Err(Error::Corrupt("empty snapshot".into())),
        }
    }
}

/// Refuses a snapshot written in another on-disk format than this build's.
fn check_format(key: &str, value: &[u8]) -> Result<(), Error> {
    if key == meta::FORMAT_VERSION {
        let version = value
            .try_into()
            .map(u64::from_be_bytes)
            .map_err(|_| Error::Corrupt("unreadable format version".into()))?;
        if version != schema::FORMAT_VERSION {
            return Err(Error::Corrupt(format!(
                "written in format {version}; this build reads format {}",
                schema::FORMAT_VERSION
            )));
        }
    }
    Ok(())
}

/// Replaces every table in `txn` with the snapshot read from `input`; the caller commits only
/// if this returns Ok.
pub(crate) fn install(txn: &WriteTransaction, input: impl Read) -> Result<SnapshotMeta, Error> {
    let mut reader = Reader::open(input)?;
    let header = reader.header()?;
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
    while let Some(frame) = reader.next()? {
        match frame {
            Frame::Meta(k, v) => {
                check_format(&k, &v)?;
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
            Frame::Header(_) | Frame::End { .. } => unreachable!("the reader returns neither"),
        }
    }
    drop((kv, meta_table, leases, users, roles));
    // The snapshot holds the effects of every entry up to `applied`, whatever index its meta
    // table recorded (under the fault switch that can be lower).
    put_u64(txn, meta::CONSISTENT_INDEX, header.applied.index)?;
    put_u64(txn, meta::CONSISTENT_TERM, header.applied.term)?;
    put_u64(txn, meta::FORMAT_VERSION, schema::FORMAT_VERSION)?;
    Ok(header)
}

/// Seals a snapshot stream into a snapshot file (see the module doc).
pub struct Sealer<W> {
    inner: W,
    sha: Sha256,
    len: u64,
}

impl<W: Write> Sealer<W> {
    /// Seals what is written through it into `inner`.
    pub fn new(inner: W) -> Sealer<W> {
        Sealer {
            inner,
            sha: Sha256::new(),
            len: 0,
        }
    }

    /// Pads, appends the SHA-256 and hands back the writer.
    pub fn seal(mut self) -> io::Result<W> {
        let pad = (SEAL_ALIGN - self.len % SEAL_ALIGN) % SEAL_ALIGN;
        let zeros = vec![0u8; pad as usize];
        self.write_all(&zeros)?;
        let digest = self.sha.finalize();
        self.inner.write_all(&digest)?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for Sealer<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(data)?;
        self.sha.update(&data[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Hashes what is read through it.
struct Hashing<R> {
    inner: R,
    sha: Sha256,
    len: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// Reads what follows the end frame of a snapshot file through `hashing` and checks the seal;
/// returns the file's length.
fn check_seal<R: Read>(mut hashing: Hashing<R>) -> Result<u64, Error> {
    let mut rest = Vec::new();
    // Padding and seal: less than SEAL_ALIGN + SEAL bytes; more is not a snapshot file.
    (&mut hashing.inner)
        .take(SEAL_ALIGN + SEAL as u64 + 1)
        .read_to_end(&mut rest)?;
    let total = hashing.len + rest.len() as u64;
    if rest.len() < SEAL || total % SEAL_ALIGN != SEAL as u64 {
        return Err(Error::Corrupt(format!(
            "no SHA-256 seal at the end ({total} bytes)"
        )));
    }
    let (pad, seal) = rest.split_at(rest.len() - SEAL);
    if pad.iter().any(|b| *b != 0) {
        return Err(Error::Corrupt("data after the end frame".into()));
    }
    hashing.sha.update(pad);
    if hashing.sha.finalize().as_slice() != seal {
        return Err(Error::Corrupt("SHA-256 mismatch".into()));
    }
    Ok(total)
}

fn hashing<R: Read>(inner: R) -> Hashing<R> {
    Hashing {
        inner,
        sha: Sha256::new(),
        len: 0,
    }
}

/// Checks a whole snapshot file, its seal and every frame, and summarises it.
pub fn inspect_file(input: impl Read) -> Result<Summary, Error> {
    let mut reader = hashing(input);
    let mut summary = inspect(&mut reader)?;
    summary.total_size = check_seal(reader)?;
    Ok(summary)
}

/// [`install`] for a snapshot file: the seal is checked too, before the caller commits.
pub(crate) fn install_file(
    txn: &WriteTransaction,
    input: impl Read,
) -> Result<SnapshotMeta, Error> {
    let mut reader = hashing(input);
    let meta = install(txn, &mut reader)?;
    check_seal(reader)?;
    Ok(meta)
}

/// What `snapshot status` reports of a snapshot file, after checking it whole.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// The whole-backend hash of the member's state at the snapshot (equal to what
    /// `Maintenance.Hash` answered then).
    pub hash: u32,
    /// The highest revision among the key-value records (as etcd reads it from its key bucket).
    pub revision: i64,
    /// Records of every table, as etcd counts the keys of every bucket.
    #[serde(rename = "totalKey")]
    pub total_key: u64,
    /// Bytes of the snapshot (the file, with its seal, for [`inspect_file`]).
    #[serde(rename = "totalSize")]
    pub total_size: u64,
}

/// Reads a whole snapshot, checking every frame and the end checksum, and summarises it.
pub fn inspect(input: impl Read) -> Result<Summary, Error> {
    let mut reader = Reader::open(input)?;
    reader.header()?;
    let mut hasher = backend::Hasher::default();
    // The writer sends the tables in the hash's order; a table with no records still counts.
    let order = [
        AUTH_ROLES.name(),
        AUTH_USERS.name(),
        KV.name(),
        LEASES.name(),
        META.name(),
    ];
    let mut next_table = 0;
    let mut enter = |hasher: &mut backend::Hasher, table: usize| -> Result<(), Error> {
        if table + 1 < next_table {
            return Err(Error::Corrupt("tables out of order".into()));
        }
        while next_table <= table {
            hasher.table(order[next_table]);
            next_table += 1;
        }
        Ok(())
    };
    let (mut revision, mut total_key) = (0i64, 0u64);
    while let Some(frame) = reader.next()? {
        total_key += 1;
        match frame {
            Frame::Role(name, v) => {
                enter(&mut hasher, 0)?;
                hasher.named(&name, &v);
            }
            Frame::User(name, v) => {
                enter(&mut hasher, 1)?;
                hasher.named(&name, &v);
            }
            Frame::Kv(main, sub, v) => {
                enter(&mut hasher, 2)?;
                hasher.kv((main, sub), &v);
                revision = revision.max(main);
            }
            Frame::Lease(id, ttl) => {
                enter(&mut hasher, 3)?;
                hasher.lease(id, ttl);
            }
            Frame::Meta(k, v) => {
                enter(&mut hasher, 4)?;
                check_format(&k, &v)?;
                hasher.meta(&k, &v);
            }
            Frame::Header(_) | Frame::End { .. } => unreachable!("the reader returns neither"),
        }
    }
    enter(&mut hasher, order.len() - 1)?;
    Ok(Summary {
        hash: hasher.finish(),
        revision,
        total_key,
        total_size: reader.bytes,
    })
}
