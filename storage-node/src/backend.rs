//! The redb file under a member's data directory, and typed access to its meta table.
//!
//! Helpers that must run inside a transaction take `&WriteTransaction` or `&ReadTransaction`,
//! so the compiler enforces what etcd marks with an `Unsafe` prefix.

use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard};

use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, TableHandle, WriteTransaction,
};
use thiserror::Error;

use crate::schema::{self, AUTH_ROLES, AUTH_USERS, KV, LEASES, META};

/// Name of the database file inside the data directory.
pub const DB_FILE: &str = "member.redb";

/// A storage failure. The engine cannot continue past one without reloading from disk.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// redb reported a failure.
    #[error("backend: {0}")]
    Redb(#[from] redb::Error),
    /// The data directory could not be used.
    #[error("backend: {path}: {source}")]
    Io {
        /// Path involved.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A stored value does not decode: the file is corrupt or of another format.
    #[error("backend: corrupt value in {table}: {detail}")]
    Corrupt {
        /// Table or meta key holding the value.
        table: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// The database cannot be compacted while a transaction is open.
    #[error("backend: a transaction is in progress")]
    InUse,
    /// The files were written by a build with another on-disk format.
    #[error("backend: data format {found} is not supported (this build reads {expected})")]
    Format {
        /// Format found on disk.
        found: u64,
        /// Format this build writes.
        expected: u64,
    },
}

/// Implements `From` for each of redb's specific errors on an error enum with a
/// `Redb(redb::Error)` variant, so `?` works on every redb call.
macro_rules! redb_errors_into {
    ($error:ty) => {
        $crate::backend::redb_errors_into!(
            $error;
            redb::StorageError,
            redb::TableError,
            redb::TransactionError,
            redb::CommitError,
            redb::DatabaseError
        );
    };
    ($error:ty; $($t:ty),*) => {$(
        impl From<$t> for $error {
            fn from(e: $t) -> Self {
                Self::Redb(e.into())
            }
        }
    )*};
}
pub(crate) use redb_errors_into;

redb_errors_into!(Error);

/// Result of backend operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Opens the redb file at `path`, creating it first if it does not exist. A new file is made
/// under a temporary name and renamed into place once redb has written its header, so a member
/// killed while creating it leaves no half-made file behind that would refuse every later
/// start ("Not a redb database").
pub fn create_database(path: &Path) -> Result<Database> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    if !path.exists() {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".creating");
        let tmp = PathBuf::from(tmp);
        match std::fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        drop(Database::create(&tmp)?);
        std::fs::rename(&tmp, path).map_err(io)?;
        // The rename must be durable before anything is written into the file.
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io)?;
        }
    }
    Ok(Database::create(path)?)
}

/// The member's database.
pub struct Backend {
    /// Transactions begin under the read side (they do not borrow the database once begun);
    /// compaction, which needs the database to itself, takes the write side.
    db: RwLock<Database>,
    path: PathBuf,
}

impl Backend {
    /// Opens (or creates) the database in `dir`, creating the directory and every table.
    pub fn open(dir: &Path) -> Result<Backend> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(DB_FILE);
        let db = RwLock::new(create_database(&path)?);
        let backend = Backend { db, path };
        backend.init()?;
        Ok(backend)
    }

    /// Opens a database held in memory only (benchmarks and model tests).
    pub fn in_memory() -> Result<Backend> {
        let db = Database::builder().create_with_backend(redb::backends::InMemoryBackend::new())?;
        let backend = Backend {
            db: RwLock::new(db),
            path: PathBuf::new(),
        };
        backend.init()?;
        Ok(backend)
    }

    fn db(&self) -> RwLockReadGuard<'_, Database> {
        // Nothing can be left half-done under the lock: a poisoned one holds a usable database.
        self.db.read().unwrap_or_else(|p| p.into_inner())
    }

    fn init(&self) -> Result<()> {
        let txn = self.db().begin_write()?;
        txn.open_table(KV)?;
        txn.open_table(LEASES)?;
        txn.open_table(AUTH_USERS)?;
        txn.open_table(AUTH_ROLES)?;
        let format = get_u64(&txn.open_table(META)?, schema::meta::FORMAT_VERSION)?;
        match format {
            None => put_u64(&txn, schema::meta::FORMAT_VERSION, schema::FORMAT_VERSION)?,
            Some(v) if v == schema::FORMAT_VERSION => {}
            Some(found) => {
                return Err(Error::Format {
                    found,
                    expected: schema::FORMAT_VERSION,
                });
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Starts a write transaction; its changes are durable once `commit` returns.
    pub fn begin_write(&self) -> Result<WriteTransaction> {
        Ok(self.db().begin_write()?)
    }

    /// Starts a read transaction on the last committed state.
    pub fn begin_read(&self) -> Result<ReadTransaction> {
        Ok(self.db().begin_read()?)
    }

    /// Moves live pages to the front of the file and gives the free space at its end back to
    /// the file system (etcd's defragment). Fails with [`Error::InUse`] while any transaction
    /// is open: the caller retries once it has ended.
    pub fn compact(&self) -> Result<()> {
        let mut db = self.db.write().unwrap_or_else(|p| p.into_inner());
        match db.compact() {
            Ok(_) => Ok(()),
            Err(redb::CompactionError::TransactionInProgress) => Err(Error::InUse),
            Err(e) => Err(redb::Error::from(e).into()),
        }
    }

    /// Size of the database file in bytes (0 in memory).
    pub fn size(&self) -> u64 {
        std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
    }

    /// Bytes of the file in pages that hold data (etcd's `SizeInUse`: the size less the free
    /// pages, which a compaction of the history leaves behind and defragment gives back).
    pub fn size_in_use(&self) -> Result<u64> {
        let txn = self.db().begin_write()?;
        let stats = txn.stats()?;
        let in_use = stats.allocated_pages() * stats.page_size() as u64;
        txn.abort()?;
        Ok(in_use)
    }
}

/// Meta keys the whole-backend hash leaves out: they say how far this member applied, not what
/// it holds, so members with equal data hash equally (etcd's `DefaultIgnores`).
const HASH_IGNORES: [&str; 2] = [
    schema::meta::CONSISTENT_INDEX,
    schema::meta::CONSISTENT_TERM,
];

/// The whole-backend hash, fed table by table in name order (roles, users, kv, leases, meta),
/// each table's name followed by its keys and values in key order. Shared by [`hash`] and the
/// snapshot reader, so a snapshot's hash equals the member's `Hash` at the snapshot's moment.
#[derive(Clone, Copy, Debug, Default)]
pub struct Hasher(u32);

impl Hasher {
    fn add(&mut self, bytes: &[u8]) {
        // Lengths first, so that moving a byte between key and value changes the hash.
        self.0 = crc32c::crc32c_append(self.0, &(bytes.len() as u64).to_be_bytes());
        self.0 = crc32c::crc32c_append(self.0, bytes);
    }

    /// Starts the next table.
    pub fn table(&mut self, name: &str) {
        self.add(name.as_bytes());
    }

    /// Adds an auth role or user record.
    pub fn named(&mut self, name: &str, value: &[u8]) {
        self.add(name.as_bytes());
        self.add(value);
    }

    /// Adds a key-value record.
    pub fn kv(&mut self, (main, sub): (i64, i64), value: &[u8]) {
        self.add(&[main.to_be_bytes(), sub.to_be_bytes()].concat());
        self.add(value);
    }

    /// Adds a lease.
    pub fn lease(&mut self, id: i64, ttl: i64) {
        self.add(&id.to_be_bytes());
        self.add(&ttl.to_be_bytes());
    }

    /// Adds a meta value, unless it is one the hash leaves out.
    pub fn meta(&mut self, key: &str, value: &[u8]) {
        if !HASH_IGNORES.contains(&key) {
            self.named(key, value);
        }
    }

    /// The hash of everything added.
    pub fn finish(self) -> u32 {
        self.0
    }
}

/// A CRC-32C of every table in `txn` (etcd's backend `Hash`), as [`Hasher`] describes.
pub fn hash(txn: &ReadTransaction) -> Result<u32> {
    let mut h = Hasher::default();
    h.table(AUTH_ROLES.name());
    for item in txn.open_table(AUTH_ROLES)?.iter()? {
        let (k, v) = item?;
        h.named(k.value(), v.value());
    }
    h.table(AUTH_USERS.name());
    for item in txn.open_table(AUTH_USERS)?.iter()? {
        let (k, v) = item?;
        h.named(k.value(), v.value());
    }
    h.table(KV.name());
    for item in txn.open_table(KV)?.iter()? {
        let (k, v) = item?;
        h.kv(k.value(), v.value());
    }
    h.table(LEASES.name());
    for item in txn.open_table(LEASES)?.iter()? {
        let (k, v) = item?;
        h.lease(k.value(), v.value());
    }
    h.table(META.name());
    for item in txn.open_table(META)?.iter()? {
        let (k, v) = item?;
        h.meta(k.value(), v.value());
    }
    Ok(h.finish())
}

/// Reads a u64 meta value from any readable meta table.
pub fn get_u64(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &'static str,
) -> Result<Option<u64>> {
    match table.get(key)? {
        None => Ok(None),
        Some(v) => {
            let bytes: [u8; 8] = v.value().try_into().map_err(|_| Error::Corrupt {
                table: key,
                detail: format!("expected 8 bytes, found {}", v.value().len()),
            })?;
            Ok(Some(u64::from_be_bytes(bytes)))
        }
    }
}

/// Reads a u64 meta value in a read transaction (0 when absent).
pub fn read_u64(txn: &ReadTransaction, key: &'static str) -> Result<u64> {
    Ok(get_u64(&txn.open_table(META)?, key)?.unwrap_or(0))
}

/// Writes a u64 meta value.
pub fn put_u64(txn: &WriteTransaction, key: &'static str, value: u64) -> Result<()> {
    txn.open_table(META)?
        .insert(key, value.to_be_bytes().as_slice())?;
    Ok(())
}

/// Reads a serialized meta value in a read transaction.
pub fn read_value<T: serde::de::DeserializeOwned>(
    txn: &ReadTransaction,
    key: &'static str,
) -> Result<Option<T>> {
    let table = txn.open_table(META)?;
    let Some(v) = table.get(key)? else {
        return Ok(None);
    };
    decode(key, v.value()).map(Some)
}

/// Writes a serialized meta value.
pub fn put_value<T: serde::Serialize>(
    txn: &WriteTransaction,
    key: &'static str,
    value: &T,
) -> Result<()> {
    let bytes = encode(value);
    txn.open_table(META)?.insert(key, bytes.as_slice())?;
    Ok(())
}

/// Encodes a stored value (postcard: compact and deterministic).
pub fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Serializing plain data types into a Vec cannot fail.
    postcard::to_stdvec(value).unwrap_or_default()
}

/// Decodes a stored value, naming `table` in the error.
pub fn decode<T: serde::de::DeserializeOwned>(table: &'static str, bytes: &[u8]) -> Result<T> {
    postcard::from_bytes(bytes).map_err(|e| Error::Corrupt {
        table,
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_file_appears_only_once_redb_has_made_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        // What a member killed in the middle of creating the file leaves behind.
        std::fs::write(dir.path().join("db.redb.creating"), b"").unwrap();
        drop(create_database(&path).unwrap());
        assert!(!dir.path().join("db.redb.creating").exists());
        // The file is a redb database: it opens again.
        drop(Database::open(&path).unwrap());
        drop(create_database(&path).unwrap());
    }

    #[test]
    fn meta_values_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let b = Backend::open(dir.path()).unwrap();
            let txn = b.begin_write().unwrap();
            put_u64(&txn, schema::meta::CONSISTENT_INDEX, 42).unwrap();
            txn.commit().unwrap();
        }
        let b = Backend::open(dir.path()).unwrap();
        let txn = b.begin_read().unwrap();
        assert_eq!(read_u64(&txn, schema::meta::CONSISTENT_INDEX).unwrap(), 42);
        assert_eq!(read_u64(&txn, schema::meta::AUTH_REVISION).unwrap(), 0);
    }

    #[test]
    fn a_store_of_another_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let b = Backend::open(dir.path()).unwrap();
            let txn = b.begin_write().unwrap();
            put_u64(&txn, schema::meta::FORMAT_VERSION, 99).unwrap();
            txn.commit().unwrap();
        }
        let err = Backend::open(dir.path()).err().unwrap();
        assert!(matches!(err, Error::Format { found: 99, .. }), "{err}");
    }

    #[test]
    fn the_hash_covers_every_table_but_not_the_applied_position() {
        let b = Backend::in_memory().unwrap();
        let hash = || hash(&b.begin_read().unwrap()).unwrap();
        let empty = hash();
        let txn = b.begin_write().unwrap();
        put_u64(&txn, schema::meta::CONSISTENT_INDEX, 42).unwrap();
        put_u64(&txn, schema::meta::CONSISTENT_TERM, 3).unwrap();
        txn.commit().unwrap();
        assert_eq!(hash(), empty, "the consistent index is not data");
        let txn = b.begin_write().unwrap();
        txn.open_table(LEASES).unwrap().insert(7, 60).unwrap();
        txn.commit().unwrap();
        let with_lease = hash();
        assert_ne!(with_lease, empty);
        let txn = b.begin_write().unwrap();
        put_u64(&txn, schema::meta::AUTH_REVISION, 2).unwrap();
        txn.commit().unwrap();
        assert_ne!(
            hash(),
            with_lease,
            "meta values other than the position count"
        );
    }

    #[test]
    fn a_corrupt_meta_value_is_reported() {
        let b = Backend::in_memory().unwrap();
        let txn = b.begin_write().unwrap();
        txn.open_table(META)
            .unwrap()
            .insert(schema::meta::AUTH_REVISION, [1u8, 2].as_slice())
            .unwrap();
        txn.commit().unwrap();
        let txn = b.begin_read().unwrap();
        let err = read_u64(&txn, schema::meta::AUTH_REVISION).unwrap_err();
        assert!(err.to_string().contains("corrupt"), "{err}");
    }
}
