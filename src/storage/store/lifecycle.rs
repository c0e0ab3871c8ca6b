//! Creating, opening (the key checked before anything is written) and closing a store.

use super::*;

pub(super) fn take_lock(vfs: &dyn Vfs, dir: &Path, exclusive: bool) -> Result<Box<dyn LockGuard>> {
    let p = dir.join(LOCK_FILE);
    vfs.try_lock(&p, exclusive)
        .map_err(|e| Error::io("locking", &p, e))?
        .ok_or_else(|| Error::InUse { path: dir.to_path_buf() })
}

pub(super) fn session_token() -> Result<u64> {
    let mut b = [0u8; 8];
    crate::crypto::random_bytes(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

/// A JSON string literal.
pub(super) fn json_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

pub(super) fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The error for a directory without a keyring: not a database at all, or
/// (when data files are there) a database whose keyring is missing.
pub(crate) fn missing_keyring(vfs: &dyn Vfs, dir: &Path) -> Error {
    let names = vfs.read_dir(dir).unwrap_or_default();
    let data = names.iter().filter(|n| parse_file_name(n).is_some()).count();
    if data > 0 {
        Error::tampered(
            KEYRING_FILE,
            0,
            format!(
                "the keyring is missing, but {} holds {data} DriftDB data {}: without its keyring nothing can be read (restore the keyring from a backup)",
                dir.display(),
                if data == 1 { "file" } else { "files" }
            ),
        )
    } else {
        Error::NotADatabase { path: dir.to_path_buf() }
    }
}

/// Derive the master key for `spec` from key-source material.
pub(super) fn master_for(material: &Material, spec: &MasterSpec) -> Result<Option<SecretKey>> {
    Ok(match (material, spec) {
        (Material::Key(k), MasterSpec::Key) => Some(k.duplicate()),
        (Material::Passphrase(p), MasterSpec::Passphrase { params, salt }) => Some(argon2id(p, salt, *params)?),
        _ => None,
    })
}

/// Most Argon2 derivations tried against retired passphrase versions on a failed unlock.
pub(super) const MAX_RETIRED_ARGON2_RUNS: usize = 4;

impl Store {
    /// Create a new database in `dir` (which must be missing or empty).
    /// Everything that can be checked (the key, the KDF parameters) is
    /// checked before anything is created; a failure after that removes
    /// what was created, so the directory is left as it was found.
    pub fn create(dir: impl AsRef<Path>, key: &KeySource, opts: CreateOptions) -> Result<Store> {
        let dir = dir.as_ref().to_path_buf();
        let vfs = opts.store.vfs.clone();
        if opts.store.read_only {
            return Err(Error::ReadOnly);
        }
        let existed = vfs.exists(&dir).map_err(|e| Error::io("checking", &dir, e))?;
        // What an interrupted `init` leaves (a lock file, a keyring that was
        // never renamed into place) holds nothing: such a directory is empty.
        let leftover = |n: &String| n == LOCK_FILE || n == KEYRING_TMP;
        if existed {
            let entries = vfs.read_dir(&dir).map_err(|e| Error::io("listing", &dir, e))?;
            let entries: Vec<String> = entries.into_iter().filter(|n| !leftover(n)).collect();
            if !entries.is_empty() {
                return Err(Error::AlreadyExists(format!(
                    "{} is not empty ({} {}); init needs a new or empty directory",
                    dir.display(),
                    entries.len(),
                    if entries.len() == 1 { "entry" } else { "entries" }
                )));
            }
        }
        let material = key.material()?;
        if matches!(material, Material::Passphrase(_)) {
            opts.argon2.check_new(opts.allow_weak_kdf, opts.store.max_kdf_memory_kib)?;
        }
        vfs.create_dir_all(&dir).map_err(|e| Error::io("creating directory", &dir, e))?;
        let lock = match take_lock(vfs.as_ref(), &dir, true) {
            Ok(l) => l,
            Err(e) => {
                if !existed {
                    let _ = vfs.remove_file(&dir.join(LOCK_FILE));
                    let _ = vfs.remove_dir(&dir);
                }
                return Err(e);
            }
        };
        // Someone may have created a database here between the check and the lock.
        let entries = vfs.read_dir(&dir).map_err(|e| Error::io("listing", &dir, e))?;
        if entries.iter().any(|n| !leftover(n)) {
            return Err(Error::AlreadyExists(format!("{} is not empty", dir.display())));
        }
        if entries.iter().any(|n| n == KEYRING_TMP) {
            let p = dir.join(KEYRING_TMP);
            vfs.remove_file(&p).map_err(|e| Error::io("removing", &p, e))?;
        }
        match Self::create_locked(&dir, key, material, opts, lock) {
            Ok(s) => Ok(s),
            Err(e) => {
                // Only this call wrote here (the directory was empty, and locked).
                if let Ok(names) = vfs.read_dir(&dir) {
                    for n in names {
                        if n == LOCK_FILE || n == KEYRING_FILE || n == KEYRING_TMP || parse_file_name(&n).is_some() {
                            let _ = vfs.remove_file(&dir.join(&n));
                        }
                    }
                }
                if !existed {
                    let _ = vfs.remove_dir(&dir);
                }
                Err(e)
            }
        }
    }

    pub(super) fn create_locked(
        dir: &Path,
        key: &KeySource,
        material: Material,
        opts: CreateOptions,
        lock: Box<dyn LockGuard>,
    ) -> Result<Store> {
        let vfs = opts.store.vfs.clone();
        let mut db_id = [0u8; DB_ID_LEN];
        crate::crypto::random_bytes(&mut db_id)?;
        let spec = match &material {
            Material::Key(_) => MasterSpec::Key,
            Material::Passphrase(_) => {
                let mut salt = [0u8; 16];
                crate::crypto::random_bytes(&mut salt)?;
                MasterSpec::Passphrase { params: opts.argon2, salt }
            }
        };
        let master = master_for(&material, &spec)?.ok_or_else(|| Error::KeySource("key material mismatch".into()))?;
        drop(material);
        let header = KeyringHeader {
            version: keyring::KEYRING_VERSION,
            db_id,
            generation: 0,
            write_salt: [0; 32],
            active: MasterCheck { version: 1, spec, kcv: keyring::key_check_value(&master, &db_id) },
            retired: Vec::new(),
            public: PublicManifest::default(),
        };
        let now = now_unix();
        let body = KeyringBody {
            next_id: 1,
            created_unix: now,
            masters: vec![MasterRecord { version: 1, created_unix: now, state: MasterState::Active, first_file_id: 0 }],
            files: Vec::new(),
            root: Vec::new(),
            rotation: None,
            audit: Default::default(),
        };
        let store = Store {
            session: session_token()?,
            dir: dir.to_path_buf(),
            opts: opts.store,
            db_id,
            inner: Mutex::new(Inner::new(header, body.clone(), master)),
            recovery: Vec::new(),
            abandoned: Abandoned::default(),
            _lock: Some(lock),
        };
        {
            let mut inner = store.lock_inner();
            store.persist(&mut inner, body)?;
        }
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            vfs.sync_dir(parent).map_err(|e| Error::io("syncing directory", parent, e))?;
        }
        let kind = match &spec {
            MasterSpec::Key => "key",
            MasterSpec::Passphrase { .. } => "passphrase",
        };
        store.audit_event(
            "database-created",
            format!("{{\"master_version\":1,\"master_kind\":\"{kind}\",\"key_source\":{}}}", json_str(&key.describe())),
        )?;
        Ok(store)
    }

    /// Open an existing database. A wrong key fails before anything is written.
    pub fn open(dir: impl AsRef<Path>, key: &KeySource, opts: StoreOptions) -> Result<Store> {
        let dir = dir.as_ref().to_path_buf();
        let vfs = opts.vfs.clone();
        let kr_path = dir.join(KEYRING_FILE);
        if !vfs.exists(&kr_path).map_err(|e| Error::io("checking", &kr_path, e))? {
            return Err(missing_keyring(vfs.as_ref(), &dir));
        }
        // Lock before reading when the lock file exists. When it does not
        // (a restored copy), it is created only once the key is verified, so
        // a wrong key never writes anything.
        let lock_exists =
            vfs.exists(&dir.join(LOCK_FILE)).map_err(|e| Error::io("checking", dir.join(LOCK_FILE), e))?;
        let mut lock = if lock_exists { Some(take_lock(vfs.as_ref(), &dir, !opts.read_only)?) } else { None };
        let bytes = read_keyring_bytes(vfs.as_ref(), &kr_path)?;
        if let Some(v) = keyring::format_version_of(&bytes)
            && !(keyring::KEYRING_VERSION_MIN..=keyring::KEYRING_VERSION).contains(&v)
        {
            return Err(Error::UnsupportedVersion {
                file: KEYRING_FILE.into(),
                found: v,
                supported: keyring::KEYRING_VERSION,
            });
        }
        let sealed =
            keyring::decode_keyring(&bytes).map_err(|e| Error::corrupted(KEYRING_FILE, e.offset as u64, e.reason))?;
        let material = key.material()?;
        let header = sealed.header.clone();
        let cap = opts.max_kdf_memory_kib;
        if let MasterSpec::Passphrase { params, .. } = &header.active.spec
            && matches!(material, Material::Passphrase(_))
            && params.m_cost_kib > cap
        {
            return Err(Error::KeySource(format!(
                "the keyring asks for {} MiB of Argon2id memory to derive the key, more than the {} MiB allowed; if you set that cost yourself, allow it (--max-kdf-memory-mib, StoreOptions::max_kdf_memory_kib)",
                params.m_cost_kib / 1024,
                cap / 1024
            )));
        }
        let master = match master_for(&material, &header.active.spec)? {
            Some(m) if ct_eq(&keyring::key_check_value(&m, &header.db_id), &header.active.kcv) => m,
            candidate => {
                // Newest first; at most a few Argon2 runs, whatever the header says.
                let mut argon_runs = 0;
                for r in header.retired.iter().rev() {
                    if let MasterSpec::Passphrase { params, .. } = &r.spec {
                        if argon_runs == MAX_RETIRED_ARGON2_RUNS || params.m_cost_kib > cap {
                            continue;
                        }
                        if matches!(material, Material::Passphrase(_)) {
                            argon_runs += 1;
                        }
                    }
                    if let Some(m) = master_for(&material, &r.spec)?
                        && ct_eq(&keyring::key_check_value(&m, &header.db_id), &r.kcv)
                    {
                        log::warn!(
                            target: "driftdb::keys",
                            "failed unlock of {}: the {} is master key version {}, retired by a rotation",
                            dir.display(),
                            key.describe(),
                            r.version
                        );
                        return Err(Error::KeyRetired { version: r.version });
                    }
                }
                log::warn!(
                    target: "driftdb::keys",
                    "failed unlock of {}: the {} does not open it (nothing was written)",
                    dir.display(),
                    key.describe()
                );
                return Err(Error::WrongKey(match (candidate, &header.active.spec) {
                    (None, MasterSpec::Passphrase { .. }) => {
                        "this database is unlocked with a passphrase, but a key was given".into()
                    }
                    (None, MasterSpec::Key) => format!(
                        "this database is unlocked with a key (file, variable or command), but a {} was given",
                        key.describe()
                    ),
                    (Some(_), _) => format!(
                        "the {} does not open this database (master key version {})",
                        key.describe(),
                        header.active.version
                    ),
                }));
            }
        };
        drop(material);
        let plain = keyring::open_keyring(&sealed, &master).map_err(|_| {
            Error::tampered(KEYRING_FILE, sealed.header_bytes.len() as u64, "keyring body failed authentication")
        })?;
        let body = KeyringBody::decode(&plain)
            .map_err(|e| Error::corrupted(KEYRING_FILE, (sealed.header_bytes.len() + e.offset) as u64, e.reason))?;
        drop(plain);
        if header.version >= 3 {
            if header.public.files != keyring::public_files(&body.files) {
                return Err(Error::tampered(KEYRING_FILE, 0, "the public manifest differs from the encrypted one"));
            }
            if header.public.id_mark != body.next_id {
                return Err(Error::tampered(KEYRING_FILE, 0, "the public id mark differs from the encrypted one"));
            }
        }
        if let Some(expected) = opts.expect_generation
            && header.generation < expected
        {
            return Err(Error::RolledBack { found: header.generation, expected });
        }
        if lock.is_none() && !opts.read_only {
            lock = Some(take_lock(vfs.as_ref(), &dir, true)?);
            if read_keyring_bytes(vfs.as_ref(), &kr_path)? != bytes {
                return Err(Error::InUse { path: dir });
            }
        }
        let mut store = Store {
            session: session_token()?,
            dir,
            db_id: header.db_id,
            opts,
            inner: Mutex::new(Inner::new(header, body, master)),
            recovery: Vec::new(),
            abandoned: Abandoned::default(),
            _lock: lock,
        };
        if !store.opts.read_only {
            store.recovery = store.recover()?;
            // Merging is housekeeping: an I/O failure (a full disk, say) must
            // not keep the database from opening. Integrity errors do.
            match store.merge_small_files() {
                Ok(merged) => store.recovery.extend(merged),
                Err(e) if e.is_integrity() => return Err(e),
                Err(e) => store.recovery.push(RecoveryEvent::MergeSkipped { reason: e.to_string() }),
            }
            for e in &store.recovery {
                match e {
                    RecoveryEvent::Merged { .. } => {
                        log::info!(target: "driftdb::recovery", "{}: {e}", store.dir.display())
                    }
                    _ => log::warn!(target: "driftdb::recovery", "{}: {e}", store.dir.display()),
                }
            }
        }
        Ok(store)
    }

    /// Seal every active file and release the store.
    pub fn close(self) -> Result<()> {
        self.close_inner()
    }

    /// [`Store::close`] through a shared reference: seal every active file;
    /// afterwards every write is refused.
    pub fn close_shared(&self) -> Result<()> {
        self.close_inner()
    }

    pub(super) fn close_inner(&self) -> Result<()> {
        let mut guard = self.lock_inner();
        let inner = &mut *guard;
        if inner.closed || self.opts.read_only || inner.poisoned.is_some() {
            // After a failure nothing more is written: the next open recovers.
            inner.closed = true;
            return Ok(());
        }
        let streams: Vec<u32> = inner.writers.keys().copied().collect();
        for s in streams {
            if let Some(mut w) = inner.writers.remove(&s) {
                self.seal_writer(inner, &mut w)?;
            }
        }
        inner.closed = true;
        Ok(())
    }
}
