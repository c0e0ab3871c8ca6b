//! On-disk encodings: pure functions over bytes, no I/O. Every decoder checks
//! lengths before allocating and never panics on any input.
//! `docs/FORMAT.md` describes every byte.

pub mod audit;
pub mod codec;
pub mod frame;
pub mod header;
pub mod keyring;
pub mod run;

/// The format version in every data file header this build writes and reads
/// (the keyring has its own: [`keyring::KEYRING_VERSION`]). The database
/// format as a whole (`docs/FORMAT.md`) is version 3.
pub const FORMAT_VERSION: u16 = 2;

/// Length of a database id.
pub const DB_ID_LEN: usize = 16;

/// What a file holds. Stored in every file header and in the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[repr(u8)]
#[non_exhaustive]
pub enum FileKind {
    /// The keyring: master key versions, wrapped data keys, manifest.
    Keyring = 1,
    /// An event log segment.
    Segment = 2,
    /// A write-ahead log file.
    Wal = 3,
    /// A table snapshot.
    Snapshot = 4,
    /// A secondary index.
    Index = 5,
    /// The catalog (table names and schemas).
    Catalog = 6,
    /// The key audit log.
    AuditLog = 7,
    /// A sorted run (`run::`): entries in blocks, index partitions, footer.
    Run = 8,
}

impl FileKind {
    /// Decode from the on-disk byte.
    pub fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => FileKind::Keyring,
            2 => FileKind::Segment,
            3 => FileKind::Wal,
            4 => FileKind::Snapshot,
            5 => FileKind::Index,
            6 => FileKind::Catalog,
            7 => FileKind::AuditLog,
            8 => FileKind::Run,
            _ => return None,
        })
    }

    /// File name extension for data files of this kind.
    pub fn extension(self) -> &'static str {
        match self {
            FileKind::Keyring => "keyring",
            FileKind::Segment => "seg",
            FileKind::Wal => "wal",
            FileKind::Snapshot => "snap",
            FileKind::Index => "idx",
            FileKind::Catalog => "cat",
            FileKind::AuditLog => "audit",
            FileKind::Run => "run",
        }
    }

    /// Parse a data-file extension.
    pub fn from_extension(ext: &str) -> Option<Self> {
        [
            FileKind::Segment,
            FileKind::Wal,
            FileKind::Snapshot,
            FileKind::Index,
            FileKind::Catalog,
            FileKind::AuditLog,
            FileKind::Run,
        ]
        .into_iter()
        .find(|k| k.extension() == ext)
    }
}

/// The file name of data file `id` of kind `kind`: an opaque id, never a
/// table, field or index name.
pub fn file_name(id: u64, kind: FileKind) -> String {
    format!("{id:016x}.{}", kind.extension())
}

/// Parse a data file name back to (id, kind).
pub fn parse_file_name(name: &str) -> Option<(u64, FileKind)> {
    let (stem, ext) = name.split_once('.')?;
    if stem.len() != 16 || !stem.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()) {
        return None;
    }
    let id = u64::from_str_radix(stem, 16).ok()?;
    Some((id, FileKind::from_extension(ext)?))
}
