//! The keyring file: master key versions, every data key (wrapped), and the
//! authenticated manifest of live files. Pure encode/decode; no I/O.
//!
//! ```text
//! plaintext header (authenticated as AAD) | u32 body length | body ciphertext+tag | crc32
//! ```
//!
//! The header carries what is needed to derive and check the master key
//! (database id, KDF parameters and salt, key check values) and, from
//! version 3, the *public manifest*: the ids, kinds, states and lengths of
//! the live files (what a directory listing shows anyway), the files being
//! written and the files removed but not yet deleted, and the id high-water
//! mark, so that presence, truncation and strays are checked without a key.
//! The body (data keys, file list, application root) is AES-256-GCM under a
//! key derived from the master key and a fresh random salt for every write.

use super::codec::{DecodeError, Reader, Writer};
use super::{DB_ID_LEN, FileKind};
use crate::crypto::aead::{AeadError, Backend, NONCE_LEN, TAG_LEN, cipher};
use crate::crypto::kdf::{Argon2Params, hkdf, label};
use crate::crypto::keys::{KEY_LEN, SecretKey};

/// Magic bytes of the keyring file.
pub const KEYRING_MAGIC: [u8; 8] = *b"DRIFTKR\0";
/// The keyring format version this build writes.
pub const KEYRING_VERSION: u16 = 3;
/// The oldest keyring format version this build reads (it has no public manifest).
pub const KEYRING_VERSION_MIN: u16 = 2;
/// Largest keyring body accepted (bytes).
pub const MAX_BODY: usize = 256 * 1024 * 1024;
/// Largest keyring file written or read: the body and 64 MiB for the header
/// (which holds the public manifest, 26 bytes a live file).
pub const MAX_KEYRING_FILE: usize = MAX_BODY + (64 << 20);
/// Most retired master versions kept in the header.
pub const MAX_RETIRED: usize = 4096;
/// Most files the manifest may list.
pub const MAX_FILES: usize = 1 << 24;
/// Most master versions in the body's history.
pub const MAX_MASTERS: usize = 1 << 20;
/// Largest per-file metadata blob.
pub const MAX_FILE_META: usize = 64 * 1024;
/// Largest application root blob.
pub const MAX_ROOT: usize = 16 * 1024 * 1024;
/// Length of a key check value.
pub const KCV_LEN: usize = 16;
/// Length of a wrapped data key (ciphertext + tag).
pub const WRAPPED_LEN: usize = KEY_LEN + TAG_LEN;

/// How a master key version is obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MasterSpec {
    /// A 256-bit key (file, environment variable, command, raw).
    Key,
    /// A passphrase stretched with Argon2id.
    Passphrase {
        /// Cost parameters.
        params: Argon2Params,
        /// Salt.
        salt: [u8; 16],
    },
}

impl MasterSpec {
    fn encode(&self, w: &mut Writer) {
        match self {
            MasterSpec::Key => {
                w.u8(1);
                w.bytes(&[0; 3 + 12 + 16]);
            }
            MasterSpec::Passphrase { params, salt } => {
                w.u8(2);
                w.bytes(&[0; 3]);
                w.u32(params.m_cost_kib);
                w.u32(params.t_cost);
                w.u32(params.p_cost);
                w.bytes(salt);
            }
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let at = r.pos();
        let kind = r.u8("master kind")?;
        let reserved: [u8; 3] = r.array("reserved")?;
        let m = r.u32("argon2 memory")?;
        let t = r.u32("argon2 iterations")?;
        let p = r.u32("argon2 lanes")?;
        let salt: [u8; 16] = r.array("argon2 salt")?;
        if reserved != [0; 3] {
            return Err(DecodeError { offset: at + 1, reason: "reserved bytes are not zero".into() });
        }
        match kind {
            1 if m == 0 && t == 0 && p == 0 && salt == [0; 16] => Ok(MasterSpec::Key),
            1 => Err(DecodeError { offset: at + 4, reason: "KDF fields set for a key (not passphrase) master".into() }),
            2 => {
                let params = Argon2Params { m_cost_kib: m, t_cost: t, p_cost: p };
                params.validate().map_err(|e| DecodeError { offset: at, reason: e.to_string() })?;
                Ok(MasterSpec::Passphrase { params, salt })
            }
            _ => Err(DecodeError { offset: at, reason: format!("unknown master kind {kind}") }),
        }
    }
}

/// A master version recorded in the header: how to derive it and its check value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MasterCheck {
    /// Master key version.
    pub version: u32,
    /// How the key is obtained.
    pub spec: MasterSpec,
    /// Key check value (HKDF of the master key; reveals nothing about it).
    pub kcv: [u8; KCV_LEN],
}

impl MasterCheck {
    fn encode(&self, w: &mut Writer) {
        w.u32(self.version);
        self.spec.encode(w);
        w.bytes(&self.kcv);
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(MasterCheck {
            version: r.u32("master version")?,
            spec: MasterSpec::decode(r)?,
            kcv: r.array("key check value")?,
        })
    }
}

/// A live file as the public manifest lists it (no key needed to read it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicFile {
    /// File id (its name).
    pub file_id: u64,
    /// What it holds.
    pub kind: FileKind,
    /// Active, or sealed with its frame count and length.
    pub state: FileState,
}

/// The plaintext part of a version-3 keyring header beyond the master key
/// checks: nothing a directory listing does not show, authenticated as the
/// body's associated data.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PublicManifest {
    /// Every file id this database ever allocated is below this mark.
    pub id_mark: u64,
    /// The live files (the same as the body's file list; [`encode_keyring`]
    /// derives it from the body).
    pub files: Vec<PublicFile>,
    /// Files being written and not yet in the manifest: a crash leaves them
    /// behind, and the next open removes them.
    pub building: Vec<(u64, FileKind)>,
    /// Files removed from the manifest whose deletion is not yet known to be
    /// durable: the next open deletes them.
    pub removed: Vec<(u64, FileKind)>,
}

/// The public manifest's view of a list of file entries.
pub fn public_files(files: &[FileEntry]) -> Vec<PublicFile> {
    files.iter().map(|f| PublicFile { file_id: f.file_id, kind: f.kind, state: f.state }).collect()
}

/// The plaintext, authenticated keyring header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyringHeader {
    /// Keyring format version: [`KEYRING_VERSION`] for every write; 2 for a
    /// keyring read from an older database (no public manifest).
    pub version: u16,
    /// Random database id.
    pub db_id: [u8; DB_ID_LEN],
    /// Incremented on every keyring write.
    pub generation: u64,
    /// Fresh random salt of this write (derives the body key).
    pub write_salt: [u8; 32],
    /// The active master key.
    pub active: MasterCheck,
    /// Master versions retired by rotations (so a retired key gets a clear error).
    pub retired: Vec<MasterCheck>,
    /// The public manifest (version 3; empty for version 2).
    pub public: PublicManifest,
}

/// Bytes of the encoded header before the retired list.
const HEADER_FIXED: usize = 8 + 2 + 1 + 1 + DB_ID_LEN + 8 + 32 + 52 + 4;
const MASTER_CHECK_LEN: usize = 52;
const PUBLIC_FILE_LEN: usize = 26;
const PUBLIC_ID_LEN: usize = 9;

fn encode_ids(w: &mut Writer, ids: &[(u64, FileKind)]) {
    w.u32(ids.len() as u32);
    for (id, kind) in ids {
        w.u64(*id);
        w.u8(*kind as u8);
    }
}

fn decode_kind(r: &mut Reader<'_>) -> Result<FileKind, DecodeError> {
    let at = r.pos();
    let b = r.u8("file kind")?;
    match FileKind::from_u8(b) {
        Some(k) if k != FileKind::Keyring => Ok(k),
        _ => Err(DecodeError { offset: at, reason: format!("unknown file kind {b}") }),
    }
}

fn decode_ids(r: &mut Reader<'_>, mark: u64, what: &str) -> Result<Vec<(u64, FileKind)>, DecodeError> {
    let n = r.count(MAX_FILES, PUBLIC_ID_LEN, what)?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let at = r.pos();
        let id = r.u64("file id")?;
        let kind = decode_kind(r)?;
        if id >= mark {
            return Err(DecodeError {
                offset: at,
                reason: format!("{what}: file id {id:016x} is not below the id mark"),
            });
        }
        v.push((id, kind));
    }
    Ok(v)
}

impl PublicManifest {
    fn encode(&self, w: &mut Writer) {
        w.u64(self.id_mark);
        w.u32(self.files.len() as u32);
        for f in &self.files {
            w.u64(f.file_id);
            w.u8(f.kind as u8);
            match f.state {
                FileState::Active => {
                    w.u8(1);
                    w.u64(0);
                    w.u64(0);
                }
                FileState::Sealed { frames, len, final_frame } => {
                    w.u8(if final_frame { 2 } else { 3 });
                    w.u64(frames);
                    w.u64(len);
                }
            }
        }
        encode_ids(w, &self.building);
        encode_ids(w, &self.removed);
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let id_mark = r.u64("id mark")?;
        let n = r.count(MAX_FILES, PUBLIC_FILE_LEN, "public manifest files")?;
        let mut files = Vec::with_capacity(n);
        for _ in 0..n {
            let at = r.pos();
            let file_id = r.u64("file id")?;
            let kind = decode_kind(r)?;
            let st_at = r.pos();
            let st = r.u8("file state")?;
            let frames = r.u64("frame count")?;
            let len = r.u64("file length")?;
            let state = match st {
                1 if frames == 0 && len == 0 => FileState::Active,
                2 | 3 => FileState::Sealed { frames, len, final_frame: st == 2 },
                _ => return Err(DecodeError { offset: st_at, reason: format!("invalid file state {st}") }),
            };
            if file_id >= id_mark {
                return Err(DecodeError {
                    offset: at,
                    reason: format!("file id {file_id:016x} is not below the id mark"),
                });
            }
            files.push(PublicFile { file_id, kind, state });
        }
        let building = decode_ids(r, id_mark, "files being written")?;
        let removed = decode_ids(r, id_mark, "files removed")?;
        Ok(PublicManifest { id_mark, files, building, removed })
    }
}

impl KeyringHeader {
    /// Encode the header, including the trailing body length (all authenticated).
    pub fn encode(&self, body_len: u32) -> Vec<u8> {
        let mut w = Writer::default();
        w.bytes(&KEYRING_MAGIC);
        w.u16(self.version);
        w.u8(FileKind::Keyring as u8);
        w.u8(0);
        w.bytes(&self.db_id);
        w.u64(self.generation);
        w.bytes(&self.write_salt);
        self.active.encode(&mut w);
        w.u32(self.retired.len() as u32);
        for r in &self.retired {
            r.encode(&mut w);
        }
        if self.version >= 3 {
            self.public.encode(&mut w);
        }
        w.u32(body_len);
        w.buf
    }
}

/// A data key wrapped (AES-256-GCM) under a master key version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedKey {
    /// Master key version that wraps it.
    pub kek_version: u32,
    /// Random nonce of the wrap.
    pub nonce: [u8; NONCE_LEN],
    /// Ciphertext and tag.
    pub ct: [u8; WRAPPED_LEN],
}

/// Where a file is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileState {
    /// Being written by the session that created it.
    Active,
    /// Complete; never written again.
    Sealed {
        /// Data frames in the file.
        frames: u64,
        /// Exact file length in bytes.
        len: u64,
        /// Whether the file ends with a sealing frame (false when sealed by crash recovery).
        final_frame: bool,
    },
}

impl FileState {
    /// The length of a sealed file (0 while it is being written).
    pub fn sealed_len(&self) -> u64 {
        match self {
            FileState::Sealed { len, .. } => *len,
            FileState::Active => 0,
        }
    }
}

/// One live file in the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// File id (its name).
    pub file_id: u64,
    /// What it holds.
    pub kind: FileKind,
    /// Id of its data key.
    pub key_id: u64,
    /// Its data key, wrapped.
    pub wrapped: WrappedKey,
    /// Lifecycle state.
    pub state: FileState,
    /// Stream the file belongs to (application-defined).
    pub stream: u32,
    /// Position within the stream.
    pub ordinal: u64,
    /// Application metadata (small).
    pub meta: Vec<u8>,
}

/// State of a master key version in the body's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MasterState {
    /// Opens the database.
    Active,
    /// Replaced by a newer version; no longer opens the database.
    Retired,
    /// Retired, and no live file has a data key from its time: every data
    /// key it ever wrapped is gone from the keyring.
    Destroyed,
}

/// One master version in the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterRecord {
    /// Version number.
    pub version: u32,
    /// When it was added (Unix seconds).
    pub created_unix: u64,
    /// Its state.
    pub state: MasterState,
    /// The first file id allocated while this version was active: a file
    /// with a smaller id got its data key under an older version.
    pub first_file_id: u64,
}

/// A re-encryption in progress: every live file with an id below `mark`
/// still has a data key from before it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationState {
    /// The master version active when it started.
    pub target_version: u32,
    /// Files with ids below this are to be re-encrypted.
    pub mark: u64,
    /// When it started (Unix seconds).
    pub started_unix: u64,
    /// Files and bytes to re-encrypt when it started.
    pub files_total: u64,
    /// Bytes to re-encrypt when it started.
    pub bytes_total: u64,
    /// Started as a data-key-only rotation (same master key).
    pub data_keys_only: bool,
    /// When it finished (Unix seconds; 0 while files remain).
    pub finished_unix: u64,
}

/// The head of the key audit log's hash chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AuditHead {
    /// Entries in the log.
    pub count: u64,
    /// Chain hash after the last entry (all zero for an empty log).
    pub hash: [u8; 32],
}

/// The encrypted keyring body.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyringBody {
    /// Next file / key id to allocate.
    pub next_id: u64,
    /// When the database was created (Unix seconds).
    pub created_unix: u64,
    /// Master version history.
    pub masters: Vec<MasterRecord>,
    /// The manifest: every live file.
    pub files: Vec<FileEntry>,
    /// Application root (small metadata committed atomically with file changes).
    pub root: Vec<u8>,
    /// The re-encryption in progress, if any.
    pub rotation: Option<RotationState>,
    /// The audit log's chain head.
    pub audit: AuditHead,
}

const FILE_ENTRY_MIN: usize = 8 + 1 + 8 + 4 + NONCE_LEN + WRAPPED_LEN + 1 + 8 + 8 + 1 + 4 + 8 + 4;

impl KeyringBody {
    /// Encode the body plaintext.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u64(self.next_id);
        w.u64(self.created_unix);
        w.u32(self.masters.len() as u32);
        for m in &self.masters {
            w.u32(m.version);
            w.u64(m.created_unix);
            w.u8(match m.state {
                MasterState::Active => 1,
                MasterState::Retired => 2,
                MasterState::Destroyed => 3,
            });
            w.u64(m.first_file_id);
        }
        w.u32(self.files.len() as u32);
        for f in &self.files {
            w.u64(f.file_id);
            w.u8(f.kind as u8);
            w.u64(f.key_id);
            w.u32(f.wrapped.kek_version);
            w.bytes(&f.wrapped.nonce);
            w.bytes(&f.wrapped.ct);
            match f.state {
                FileState::Active => {
                    w.u8(1);
                    w.u64(0);
                    w.u64(0);
                    w.u8(0);
                }
                FileState::Sealed { frames, len, final_frame } => {
                    w.u8(2);
                    w.u64(frames);
                    w.u64(len);
                    w.u8(final_frame as u8);
                }
            }
            w.u32(f.stream);
            w.u64(f.ordinal);
            w.blob(&f.meta);
        }
        w.blob(&self.root);
        match &self.rotation {
            None => w.u8(0),
            Some(r) => {
                w.u8(1);
                w.u32(r.target_version);
                w.u64(r.mark);
                w.u64(r.started_unix);
                w.u64(r.files_total);
                w.u64(r.bytes_total);
                w.u8(r.data_keys_only as u8);
                w.u64(r.finished_unix);
            }
        }
        w.u64(self.audit.count);
        w.bytes(&self.audit.hash);
        w.buf
    }

    /// Decode the body plaintext; rejects duplicate file ids.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let next_id = r.u64("next id")?;
        let created_unix = r.u64("creation time")?;
        let nm = r.count(MAX_MASTERS, 21, "master versions")?;
        let mut masters = Vec::with_capacity(nm);
        for _ in 0..nm {
            let version = r.u32("master version")?;
            let created_unix = r.u64("master creation time")?;
            let at = r.pos();
            let state = match r.u8("master state")? {
                1 => MasterState::Active,
                2 => MasterState::Retired,
                3 => MasterState::Destroyed,
                s => return Err(DecodeError { offset: at, reason: format!("unknown master state {s}") }),
            };
            let first_file_id = r.u64("first file id")?;
            masters.push(MasterRecord { version, created_unix, state, first_file_id });
        }
        let nf = r.count(MAX_FILES, FILE_ENTRY_MIN, "files")?;
        let mut files = Vec::with_capacity(nf);
        let mut seen = std::collections::HashSet::with_capacity(nf);
        for _ in 0..nf {
            let at = r.pos();
            let file_id = r.u64("file id")?;
            let kind_b = r.u8("file kind")?;
            let kind = match FileKind::from_u8(kind_b) {
                Some(k) if k != FileKind::Keyring => k,
                _ => return Err(DecodeError { offset: at + 8, reason: format!("unknown file kind {kind_b}") }),
            };
            let key_id = r.u64("key id")?;
            let wrapped = WrappedKey {
                kek_version: r.u32("kek version")?,
                nonce: r.array("wrap nonce")?,
                ct: r.array("wrapped key")?,
            };
            let st_at = r.pos();
            let st = r.u8("file state")?;
            let frames = r.u64("frame count")?;
            let len = r.u64("file length")?;
            let fin = r.u8("final flag")?;
            let state = match (st, fin) {
                (1, 0) if frames == 0 && len == 0 => FileState::Active,
                (2, 0 | 1) => FileState::Sealed { frames, len, final_frame: fin == 1 },
                _ => return Err(DecodeError { offset: st_at, reason: format!("invalid file state {st}/{fin}") }),
            };
            let stream = r.u32("stream")?;
            let ordinal = r.u64("ordinal")?;
            let meta = r.blob(MAX_FILE_META, "file metadata")?.to_vec();
            if !seen.insert(file_id) {
                return Err(DecodeError { offset: at, reason: format!("duplicate file id {file_id:016x}") });
            }
            files.push(FileEntry { file_id, kind, key_id, wrapped, state, stream, ordinal, meta });
        }
        let root = r.blob(MAX_ROOT, "root")?.to_vec();
        let at = r.pos();
        let rotation = match r.u8("rotation flag")? {
            0 => None,
            1 => {
                let target_version = r.u32("rotation target")?;
                let mark = r.u64("rotation mark")?;
                let started_unix = r.u64("rotation start")?;
                let files_total = r.u64("rotation files")?;
                let bytes_total = r.u64("rotation bytes")?;
                let fat = r.pos();
                let data_keys_only = match r.u8("data-keys-only flag")? {
                    0 => false,
                    1 => true,
                    x => return Err(DecodeError { offset: fat, reason: format!("invalid flag {x}") }),
                };
                let finished_unix = r.u64("rotation end")?;
                Some(RotationState {
                    target_version,
                    mark,
                    started_unix,
                    files_total,
                    bytes_total,
                    data_keys_only,
                    finished_unix,
                })
            }
            x => return Err(DecodeError { offset: at, reason: format!("invalid rotation flag {x}") }),
        };
        let audit = AuditHead { count: r.u64("audit entries")?, hash: r.array("audit chain hash")? };
        r.finish("keyring body")?;
        Ok(KeyringBody { next_id, created_unix, masters, files, root, rotation, audit })
    }
}

/// A keyring file split into its parts (CRC checked, header parsed; body still sealed).
#[derive(Debug)]
pub struct SealedKeyring<'a> {
    /// The parsed header.
    pub header: KeyringHeader,
    /// The exact header bytes (the AAD of the body).
    pub header_bytes: &'a [u8],
    /// Body ciphertext and tag.
    pub body: &'a [u8],
}

/// The format version of a keyring file, if its magic is right.
pub fn format_version_of(buf: &[u8]) -> Option<u16> {
    (buf.len() >= 10 && buf[..8] == KEYRING_MAGIC).then(|| u16::from_le_bytes([buf[8], buf[9]]))
}

/// Structural decode of a keyring file: CRC (no key needed), then header.
pub fn decode_keyring(buf: &[u8]) -> Result<SealedKeyring<'_>, DecodeError> {
    if buf.len() < HEADER_FIXED + 4 + TAG_LEN + 4 {
        return Err(DecodeError { offset: buf.len(), reason: format!("keyring too short ({} bytes)", buf.len()) });
    }
    let crc_at = buf.len() - 4;
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&buf[crc_at..]);
    if crc32fast::hash(&buf[..crc_at]) != u32::from_le_bytes(crc) {
        return Err(DecodeError { offset: crc_at, reason: "keyring CRC mismatch (damaged or truncated)".into() });
    }
    let content = &buf[..crc_at];
    let mut r = Reader::new(content);
    let magic: [u8; 8] = r.array("magic")?;
    if magic != KEYRING_MAGIC {
        return Err(DecodeError { offset: 0, reason: "bad magic: not a DriftDB keyring".into() });
    }
    let version = r.u16("format version")?;
    if !(KEYRING_VERSION_MIN..=KEYRING_VERSION).contains(&version) {
        return Err(DecodeError { offset: 8, reason: format!("unsupported format version {version}") });
    }
    let kind = r.u8("file kind")?;
    if kind != FileKind::Keyring as u8 {
        return Err(DecodeError { offset: 10, reason: format!("file kind {kind} is not a keyring") });
    }
    if r.u8("reserved")? != 0 {
        return Err(DecodeError { offset: 11, reason: "reserved byte is not zero".into() });
    }
    let db_id = r.array("database id")?;
    let generation = r.u64("generation")?;
    let write_salt = r.array("write salt")?;
    let active = MasterCheck::decode(&mut r)?;
    let nr = r.count(MAX_RETIRED, MASTER_CHECK_LEN, "retired master versions")?;
    let mut retired = Vec::with_capacity(nr);
    for _ in 0..nr {
        retired.push(MasterCheck::decode(&mut r)?);
    }
    let public = if version >= 3 { PublicManifest::decode(&mut r)? } else { PublicManifest::default() };
    let len_at = r.pos();
    let body_len = r.u32("body length")? as usize;
    if !(TAG_LEN..=MAX_BODY).contains(&body_len) || body_len != r.remaining() {
        return Err(DecodeError {
            offset: len_at,
            reason: format!("keyring body length {body_len} does not match the file"),
        });
    }
    let header_bytes = &content[..r.pos()];
    let body = r.take(body_len, "body")?;
    Ok(SealedKeyring {
        header: KeyringHeader { version, db_id, generation, write_salt, active, retired, public },
        header_bytes,
        body,
    })
}

fn body_key(master: &SecretKey, h: &KeyringHeader) -> SecretKey {
    hkdf(master.expose(), Some(&h.write_salt), &[label::KEYRING, &h.db_id])
}

/// Encode a whole keyring file, sealing `body` under `master`. For version 3
/// the public manifest's file list is derived from the body's.
/// Fails (without sealing anything) if the body would exceed what the decoder accepts.
pub fn encode_keyring(header: &KeyringHeader, body: &KeyringBody, master: &SecretKey) -> Result<Vec<u8>, AeadError> {
    if body.files.len() > MAX_FILES
        || body.masters.len() > MAX_MASTERS
        || header.retired.len() > MAX_RETIRED
        || header.public.building.len() > MAX_FILES
        || header.public.removed.len() > MAX_FILES
    {
        return Err(AeadError);
    }
    let mut header = header.clone();
    if header.version >= 3 {
        header.public.files = public_files(&body.files);
        let mark = header.public.id_mark;
        let below = |id: u64| id < mark;
        if !header.public.files.iter().all(|f| below(f.file_id))
            || !header.public.building.iter().chain(&header.public.removed).all(|(id, _)| below(*id))
        {
            return Err(AeadError);
        }
    }
    let header = &header;
    let mut pt = body.encode();
    if pt.len() + TAG_LEN > MAX_BODY {
        return Err(AeadError);
    }
    let hb = header.encode((pt.len() + TAG_LEN) as u32);
    if hb.len() + pt.len() + TAG_LEN + 4 > MAX_KEYRING_FILE {
        return Err(AeadError);
    }
    let c = cipher(Backend::Ring, &body_key(master, header));
    // The body key is fresh for every write (random write salt), so a zero nonce is never reused.
    c.seal(&[0u8; NONCE_LEN], &hb, &mut pt)?;
    let mut out = hb;
    out.extend_from_slice(&pt);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Authenticate and decrypt a keyring body.
pub fn open_keyring(sk: &SealedKeyring<'_>, master: &SecretKey) -> Result<Vec<u8>, AeadError> {
    let c = cipher(Backend::Ring, &body_key(master, &sk.header));
    let mut buf = sk.body.to_vec();
    let n = c.open(&[0u8; NONCE_LEN], sk.header_bytes, &mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

/// The key check value of a master key for a database.
pub fn key_check_value(master: &SecretKey, db_id: &[u8; DB_ID_LEN]) -> [u8; KCV_LEN] {
    let k = hkdf(master.expose(), Some(db_id), &[label::KEY_CHECK]);
    let mut out = [0u8; KCV_LEN];
    out.copy_from_slice(&k.expose()[..KCV_LEN]);
    out
}

/// The key that wraps data keys under a master key.
pub fn wrap_key(master: &SecretKey, db_id: &[u8; DB_ID_LEN]) -> SecretKey {
    hkdf(master.expose(), Some(db_id), &[label::DEK_WRAP])
}

fn wrap_aad(db_id: &[u8; DB_ID_LEN], file_id: u64, key_id: u64, kek_version: u32, kind: FileKind) -> Vec<u8> {
    let mut w = Writer::default();
    w.bytes(b"DDBK");
    w.bytes(db_id);
    w.u64(file_id);
    w.u64(key_id);
    w.u32(kek_version);
    w.u8(kind as u8);
    w.buf
}

/// Wrap a data key for (database, file, key id, master version, purpose).
pub fn wrap_dek(
    wrap_key: &SecretKey,
    kek_version: u32,
    db_id: &[u8; DB_ID_LEN],
    file_id: u64,
    key_id: u64,
    kind: FileKind,
    dek: &SecretKey,
) -> crate::Result<WrappedKey> {
    let mut nonce = [0u8; NONCE_LEN];
    crate::crypto::random_bytes(&mut nonce)?;
    let c = cipher(Backend::Ring, wrap_key);
    let mut buf = zeroize::Zeroizing::new(dek.expose().to_vec());
    c.seal(&nonce, &wrap_aad(db_id, file_id, key_id, kek_version, kind), &mut buf)
        .map_err(|_| crate::Error::InvalidArgument("key wrap failed".into()))?;
    let mut ct = [0u8; WRAPPED_LEN];
    ct.copy_from_slice(&buf);
    Ok(WrappedKey { kek_version, nonce, ct })
}

/// Unwrap a file's data key; fails if anything bound into the wrap differs.
pub fn unwrap_dek(wrap_key: &SecretKey, db_id: &[u8; DB_ID_LEN], e: &FileEntry) -> Result<SecretKey, AeadError> {
    let c = cipher(Backend::Ring, wrap_key);
    let mut buf = zeroize::Zeroizing::new(e.wrapped.ct.to_vec());
    let n = c.open(&e.wrapped.nonce, &wrap_aad(db_id, e.file_id, e.key_id, e.wrapped.kek_version, e.kind), &mut buf)?;
    SecretKey::from_slice(&buf[..n]).ok_or(AeadError)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(spec: MasterSpec, retired: usize) -> KeyringHeader {
        let m = SecretKey::from_bytes([1; 32]);
        KeyringHeader {
            version: KEYRING_VERSION,
            public: PublicManifest {
                id_mark: 40,
                files: Vec::new(),
                building: vec![(21, FileKind::Snapshot)],
                removed: vec![(13, FileKind::Segment), (15, FileKind::Wal)],
            },
            db_id: [7; 16],
            generation: 3,
            write_salt: [9; 32],
            active: MasterCheck { version: 2, spec, kcv: key_check_value(&m, &[7; 16]) },
            retired: (0..retired)
                .map(|i| MasterCheck { version: i as u32, spec: MasterSpec::Key, kcv: [i as u8; 16] })
                .collect(),
        }
    }

    fn arb_entry() -> impl Strategy<Value = FileEntry> {
        (
            any::<u64>(),
            2u8..=7,
            any::<u64>(),
            any::<u32>(),
            any::<[u8; 12]>(),
            proptest::collection::vec(any::<u8>(), 48),
            prop_oneof![
                Just(FileState::Active),
                (any::<u64>(), any::<u64>(), any::<bool>()).prop_map(|(frames, len, final_frame)| FileState::Sealed {
                    frames,
                    len,
                    final_frame
                })
            ],
            any::<u32>(),
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..40),
        )
            .prop_map(|(file_id, k, key_id, v, nonce, ct, state, stream, ordinal, meta)| {
                let mut c = [0u8; 48];
                c.copy_from_slice(&ct);
                FileEntry {
                    file_id,
                    kind: FileKind::from_u8(k).unwrap(),
                    key_id,
                    wrapped: WrappedKey { kek_version: v, nonce, ct: c },
                    state,
                    stream,
                    ordinal,
                    meta,
                }
            })
    }

    proptest! {
        #[test]
        fn body_round_trip(entries in proptest::collection::vec(arb_entry(), 0..8), root in proptest::collection::vec(any::<u8>(), 0..100), next_id in any::<u64>()) {
            let mut files = Vec::new();
            let mut seen = std::collections::HashSet::new();
            for e in entries { if seen.insert(e.file_id) { files.push(e); } }
            let body = KeyringBody { next_id, created_unix: 5, masters: vec![MasterRecord { version: 1, created_unix: 2, state: MasterState::Retired, first_file_id: 0 }, MasterRecord { version: 2, created_unix: 3, state: MasterState::Active, first_file_id: 9 }], files, root, rotation: Some(RotationState { target_version: 2, mark: 9, started_unix: 4, files_total: 3, bytes_total: 999, data_keys_only: false, finished_unix: 0 }), audit: AuditHead { count: 3, hash: [7; 32] } };
            let enc = body.encode();
            let dec = KeyringBody::decode(&enc).unwrap();
            prop_assert_eq!(&dec, &body);
            prop_assert_eq!(dec.encode(), enc);
        }

        #[test]
        fn whole_file_round_trip(retired in 0usize..4, pass in any::<bool>(), salt in any::<[u8; 16]>(), entries in proptest::collection::vec(arb_entry(), 0..4), v2 in any::<bool>()) {
            let spec = if pass { MasterSpec::Passphrase { params: Argon2Params { m_cost_kib: 64, t_cost: 1, p_cost: 1 }, salt } } else { MasterSpec::Key };
            let mut h = header(spec, retired);
            let mut files = Vec::new();
            for (i, mut e) in entries.into_iter().enumerate() { e.file_id = 2 * i as u64 + 1; files.push(e); }
            if v2 {
                h.version = 2;
                h.public = PublicManifest::default();
            } else {
                h.public.files = public_files(&files);
            }
            let body = KeyringBody { next_id: 40, files, ..Default::default() };
            let m = SecretKey::from_bytes([1; 32]);
            let bytes = encode_keyring(&h, &body, &m).unwrap();
            let sk = decode_keyring(&bytes).unwrap();
            prop_assert_eq!(&sk.header, &h);
            prop_assert_eq!(&sk.header.encode(sk.body.len() as u32)[..], sk.header_bytes);
            let pt = open_keyring(&sk, &m).unwrap();
            prop_assert_eq!(KeyringBody::decode(&pt).unwrap(), body);
            prop_assert!(open_keyring(&sk, &SecretKey::from_bytes([2; 32])).is_err());
        }

        #[test]
        fn body_decoder_never_panics(b in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = KeyringBody::decode(&b);
            let _ = decode_keyring(&b);
        }
    }

    #[test]
    fn every_byte_flip_of_a_keyring_is_detected() {
        let m = SecretKey::from_bytes([1; 32]);
        let body = KeyringBody { next_id: 9, root: b"root".to_vec(), ..Default::default() };
        let bytes = encode_keyring(&header(MasterSpec::Key, 1), &body, &m).unwrap();
        for i in 0..bytes.len() {
            for x in [0x01u8, 0x80, 0xFF] {
                let mut b = bytes.clone();
                b[i] ^= x;
                let ok = match decode_keyring(&b) {
                    Err(_) => false,
                    Ok(sk) => open_keyring(&sk, &m).is_ok(),
                };
                assert!(!ok, "flip at {i} not detected");
            }
        }
    }

    #[test]
    fn the_public_manifest_is_derived_from_the_body_and_bounded_by_the_id_mark() {
        let m = SecretKey::from_bytes([1; 32]);
        let mut h = header(MasterSpec::Key, 0);
        // Whatever the caller put in the header's file list, the body's files are written.
        h.public.files = vec![PublicFile { file_id: 3, kind: FileKind::Wal, state: FileState::Active }];
        let e = FileEntry {
            file_id: 5,
            kind: FileKind::Segment,
            key_id: 6,
            wrapped: WrappedKey { kek_version: 1, nonce: [0; 12], ct: [0; 48] },
            state: FileState::Sealed { frames: 2, len: 99, final_frame: false },
            stream: 1,
            ordinal: 0,
            meta: vec![],
        };
        let body = KeyringBody { next_id: 40, files: vec![e.clone()], ..Default::default() };
        let sk_bytes = encode_keyring(&h, &body, &m).unwrap();
        let sk = decode_keyring(&sk_bytes).unwrap();
        assert_eq!(
            sk.header.public.files,
            vec![PublicFile { file_id: 5, kind: FileKind::Segment, state: e.state }],
            "read without the key"
        );
        // An id at or above the mark is refused on both sides.
        h.public.id_mark = 5;
        assert!(encode_keyring(&h, &body, &m).is_err());
        h.public.id_mark = 40;
        h.public.removed.push((40, FileKind::Segment));
        assert!(encode_keyring(&h, &body, &m).is_err());
    }

    #[test]
    fn forged_header_with_fixed_crc_fails_authentication() {
        let m = SecretKey::from_bytes([1; 32]);
        let body = KeyringBody::default();
        let mut bytes = encode_keyring(&header(MasterSpec::Key, 0), &body, &m).unwrap();
        bytes[20] ^= 1; // generation byte
        let n = bytes.len() - 4;
        let crc = crc32fast::hash(&bytes[..n]);
        bytes[n..].copy_from_slice(&crc.to_le_bytes());
        let sk = decode_keyring(&bytes).unwrap();
        assert!(open_keyring(&sk, &m).is_err());
    }

    #[test]
    fn wrapped_key_is_bound_to_everything() {
        let m = SecretKey::from_bytes([4; 32]);
        let wk = wrap_key(&m, &[1; 16]);
        let dek = SecretKey::from_bytes([6; 32]);
        let w = wrap_dek(&wk, 1, &[1; 16], 10, 11, FileKind::Segment, &dek).unwrap();
        let e = FileEntry {
            file_id: 10,
            kind: FileKind::Segment,
            key_id: 11,
            wrapped: w,
            state: FileState::Active,
            stream: 0,
            ordinal: 0,
            meta: vec![],
        };
        assert_eq!(unwrap_dek(&wk, &[1; 16], &e).unwrap().expose(), dek.expose());
        assert!(unwrap_dek(&wk, &[2; 16], &e).is_err(), "database id");
        assert!(unwrap_dek(&wk, &[1; 16], &FileEntry { file_id: 12, ..e.clone() }).is_err(), "file id");
        assert!(unwrap_dek(&wk, &[1; 16], &FileEntry { key_id: 12, ..e.clone() }).is_err(), "key id");
        assert!(unwrap_dek(&wk, &[1; 16], &FileEntry { kind: FileKind::Wal, ..e.clone() }).is_err(), "purpose");
        let mut e2 = e.clone();
        e2.wrapped.kek_version = 2;
        assert!(unwrap_dek(&wk, &[1; 16], &e2).is_err(), "master version");
        assert!(unwrap_dek(&wrap_key(&SecretKey::from_bytes([5; 32]), &[1; 16]), &[1; 16], &e).is_err(), "master key");
    }
}
