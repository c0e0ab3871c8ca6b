//! The one narrow way to the disk. Every read, write, sync, rename and
//! removal DriftDB performs goes through [`Vfs`], so tests can substitute an
//! in-memory file system that injects torn writes, I/O errors and crashes
//! ([`super::memfs::MemFs`]).

use std::io;
use std::path::Path;

/// How to open a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Existing file, read only.
    Read,
    /// Existing file, read and write.
    ReadWrite,
    /// New file (fails if it exists), read and write.
    CreateNew,
    /// Create or truncate, read and write.
    Truncate,
}

/// An open file.
pub trait VfsFile: Send + Sync {
    /// Read up to `buf.len()` bytes at `offset`; returns bytes read (0 at EOF).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Write all of `buf` at `offset`.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Current length.
    fn len(&self) -> io::Result<u64>;
    /// Whether the file is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Truncate or extend.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Make written data durable.
    fn sync_data(&self) -> io::Result<()>;

    /// Read exactly `buf.len()` bytes at `offset`.
    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            let n = self.read_at(buf, offset)?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short read"));
            }
            buf = &mut buf[n..];
            offset += n as u64;
        }
        Ok(())
    }
}

/// A held lock; released when dropped (and by the OS when the process dies).
pub trait LockGuard: Send + Sync {}

/// A file system.
pub trait Vfs: Send + Sync {
    /// Open a file.
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn VfsFile>>;
    /// Create a directory and its parents.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Names of the entries of a directory.
    fn read_dir(&self, path: &Path) -> io::Result<Vec<String>>;
    /// Remove a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Remove an empty directory. (File systems without real directories
    /// have nothing to remove.)
    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        let _ = path;
        Ok(())
    }
    /// Atomically rename a file (replacing the target).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Make a directory's entries durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// Whether a path exists.
    fn exists(&self, path: &Path) -> io::Result<bool>;
    /// Try to take a lock on `path`: exclusive (creating the file if
    /// missing) or shared (the file must exist).
    /// `Ok(None)` when someone else holds a conflicting lock.
    fn try_lock(&self, path: &Path, exclusive: bool) -> io::Result<Option<Box<dyn LockGuard>>>;
}

/// The real file system (`std::fs`, positional I/O, OS advisory locks).
#[derive(Debug, Default, Clone, Copy)]
pub struct StdFs;

struct StdFile(std::fs::File);

impl VfsFile for StdFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(&self.0, buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(&self.0, buf, offset)
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
}

struct StdLock(#[allow(dead_code)] std::fs::File);
impl LockGuard for StdLock {}

impl Vfs for StdFs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn VfsFile>> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut o = std::fs::OpenOptions::new();
        o.read(true);
        match mode {
            OpenMode::Read => {}
            OpenMode::ReadWrite => {
                o.write(true);
            }
            OpenMode::CreateNew => {
                o.write(true).create_new(true).mode(0o600);
            }
            OpenMode::Truncate => {
                o.write(true).create(true).truncate(true).mode(0o600);
            }
        }
        Ok(Box::new(StdFile(o.open(path)?)))
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(path)
    }
    fn read_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(path)? {
            out.push(e?.file_name().to_string_lossy().into_owned());
        }
        out.sort();
        Ok(out)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::File::open(path)?.sync_all()
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        path.try_exists()
    }
    fn try_lock(&self, path: &Path, exclusive: bool) -> io::Result<Option<Box<dyn LockGuard>>> {
        use std::os::unix::fs::OpenOptionsExt;
        // A shared (reader) lock never creates the file.
        let f = if exclusive {
            std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(path)?
        } else {
            std::fs::File::open(path)?
        };
        let r = if exclusive { f.try_lock() } else { f.try_lock_shared() };
        match r {
            Ok(()) => Ok(Some(Box::new(StdLock(f)))),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }
}
