//! Keys: where the master key comes from, `keygen`, and `keys rotate|resume|status|audit`.

use crate::*;

impl KeyOpts {
    pub(super) fn command(&self, script: &str) -> Result<KeySource, Error> {
        let t = self.key_command_timeout;
        if !(t.is_finite() && t > 0.0 && t <= 86_400.0) {
            return Err(Error::InvalidArgument(format!(
                "--key-command-timeout {t}: expected a number of seconds above 0 and at most 86400"
            )));
        }
        let mut c = KeyCommand::shell(script).timeout(Duration::from_secs_f64(t));
        for v in &self.key_command_env {
            c = c.allow_env(v.clone());
        }
        Ok(KeySource::Exec(c))
    }
}

impl NewKeyOpts {
    pub(super) fn source(&self, key: &KeyOpts) -> Result<Option<KeySource>, Error> {
        Ok(if let Some(p) = &self.new_key_file {
            Some(KeySource::KeyFile { path: p.clone(), allow_insecure: key.allow_insecure_key_file })
        } else if let Some(v) = &self.new_passphrase_env {
            let p = std::env::var(v).map_err(|_| Error::KeySource(format!("environment variable {v} is not set")))?;
            Some(KeySource::passphrase(p))
        } else if let Some(v) = &self.new_key_env {
            Some(KeySource::Env(v.clone()))
        } else {
            self.new_key_command.as_ref().map(|c| key.command(c)).transpose()?
        })
    }
}

pub(super) fn key_source(k: &KeyOpts, confirm: bool) -> Result<KeySource, Error> {
    if let Some(p) = &k.key_file {
        return Ok(KeySource::KeyFile { path: p.clone(), allow_insecure: k.allow_insecure_key_file });
    }
    if let Some(v) = &k.passphrase_env {
        let p = std::env::var(v).map_err(|_| Error::KeySource(format!("environment variable {v} is not set")))?;
        return Ok(KeySource::passphrase(p));
    }
    if let Some(v) = &k.key_env {
        return Ok(KeySource::Env(v.clone()));
    }
    if let Some(c) = &k.key_command {
        return k.command(c);
    }
    if let Some(p) = std::env::var_os("DRIFTDB_KEY_FILE") {
        return Ok(KeySource::KeyFile { path: p.into(), allow_insecure: k.allow_insecure_key_file });
    }
    if let Ok(p) = std::env::var("DRIFTDB_PASSPHRASE") {
        return Ok(KeySource::passphrase(p));
    }
    if std::io::stdin().is_terminal() && std::io::stderr().is_terminal() {
        let p = zeroize::Zeroizing::new(
            rpassword::prompt_password("Passphrase: ")
                .map_err(|e| Error::KeySource(format!("cannot read the passphrase: {e}")))?,
        );
        if confirm {
            let again = zeroize::Zeroizing::new(
                rpassword::prompt_password("Repeat passphrase: ")
                    .map_err(|e| Error::KeySource(format!("cannot read the passphrase: {e}")))?,
            );
            if *again != *p {
                return Err(Error::KeySource("the passphrases do not match".into()));
            }
        }
        return Ok(KeySource::Passphrase(p));
    }
    Err(Error::KeySource(
        "no key given: pass --key-file, --passphrase-env, --key-env or --key-command, or set DRIFTDB_KEY_FILE or DRIFTDB_PASSPHRASE".into(),
    ))
}

pub(super) fn parse_rate(s: &str) -> Result<u64, Error> {
    parse_size(s, "--throttle").map_err(|_| {
        Error::InvalidArgument(format!("--throttle {s:?}: expected a rate such as 500K, 50M or 1G (bytes/s)"))
    })
}

pub(super) fn human_bytes(b: u64) -> String {
    match b {
        0..1024 => format!("{b} B"),
        1024..1_048_576 => format!("{:.1} KiB", b as f64 / 1024.0),
        1_048_576..1_073_741_824 => format!("{:.1} MiB", b as f64 / 1_048_576.0),
        _ => format!("{:.2} GiB", b as f64 / 1_073_741_824.0),
    }
}

/// Re-encrypt in the foreground with a progress bar on a terminal.
pub(super) fn reencrypt(db: &Db, throttle: Option<u64>) -> Result<(), Error> {
    let on = std::io::stderr().is_terminal();
    let start = std::time::Instant::now();
    let r = db.resume_rotation(throttle, |st| {
        if !on {
            return;
        }
        let p = &st.rotation;
        let frac = if p.bytes_total == 0 { 1.0 } else { (p.bytes_done as f64 / p.bytes_total as f64).min(1.0) };
        let filled = (frac * 30.0) as usize;
        let secs = start.elapsed().as_secs_f64().max(1e-9);
        let eta = if frac > 0.0 { secs * (1.0 - frac) / frac } else { 0.0 };
        errp!(
            "\r[{}{}] {:>3.0}%  {}/{} files  {} of {}  {}/s  ETA {eta:.0}s ",
            "#".repeat(filled),
            " ".repeat(30 - filled),
            frac * 100.0,
            p.files_done,
            p.files_total,
            human_bytes(p.bytes_done),
            human_bytes(p.bytes_total),
            human_bytes((p.bytes_done as f64 / secs) as u64),
        );
    });
    if on {
        errln!();
    }
    r
}

pub(super) fn print_status(st: &driftdb::RotationStatus) {
    outln!("database {}", st.database_id);
    outln!("active master key version: {}", st.active_key_version);
    for k in &st.keys {
        match k.state {
            "active" => outln!(
                "  key version {}: active; {}, {}",
                k.version,
                plural(k.files, "file", "files"),
                human_bytes(k.bytes)
            ),
            "retiring" => outln!(
                "  key version {}: retired as master key, but {} ({}) still encrypted under data keys from its time",
                k.version,
                if k.files == 1 { "1 file is".to_string() } else { format!("{} files are", k.files) },
                human_bytes(k.bytes)
            ),
            _ => outln!(
                "  key version {}: retired; no live file is encrypted under key version {}",
                k.version,
                k.version
            ),
        }
    }
    let r = &st.rotation;
    match r.state {
        "idle" => outln!("rotation: none"),
        state => outln!(
            "rotation: {state}; {}/{} files, {} of {} re-encrypted{}",
            r.files_done,
            r.files_total,
            human_bytes(r.bytes_done),
            human_bytes(r.bytes_total),
            if state == "interrupted" { " (run `driftdb keys resume`)" } else { "" }
        ),
    }
    outln!(
        "keyring generation: {} (pin it with --expect-generation {} to detect a rollback)",
        st.keyring_generation,
        st.keyring_generation
    );
    outln!("key audit log: {}, chain head {}", plural(st.audit_head.entries, "entry", "entries"), st.audit_head.hash);
}

pub(super) fn keys(cmd: KeysCmd) -> Result<u8, Error> {
    match cmd {
        KeysCmd::Rotate { db, new, rewrap_only, data_keys_only, throttle, kdf, retune_kdf } => {
            let throttle = throttle.as_deref().map(parse_rate).transpose()?;
            let new_key = new.source(&db.key)?;
            if new_key.is_none() && !data_keys_only {
                return Err(Error::InvalidArgument(
                    "give the new master key (--new-key-file, --new-passphrase-env, --new-key-env or --new-key-command), or --data-keys-only".into(),
                ));
            }
            let d = open_db(&db, false)?;
            let o = driftdb::RotateOptions {
                rewrap_only,
                throttle_bytes_per_sec: throttle,
                argon2: kdf.params(),
                background: false,
                allow_weak_kdf: kdf.allow_weak_kdf,
                retune_kdf,
            };
            match &new_key {
                Some(k) => {
                    let v = d.rotate_master_key(k, o)?;
                    outln!(
                        "master key version {v} is active: every data key is re-wrapped under it; only {} opens the database now",
                        k.describe()
                    );
                }
                None => {
                    d.rotate_data_keys(o)?;
                    outln!("re-encrypting every file under fresh data keys (master key unchanged)");
                }
            }
            if !rewrap_only {
                reencrypt(&d, throttle)?;
            }
            print_status(&d.rotation_status());
            d.close()?;
            Ok(0)
        }
        KeysCmd::Resume { db, throttle } => {
            let throttle = throttle.as_deref().map(parse_rate).transpose()?;
            let d = open_db(&db, false)?;
            reencrypt(&d, throttle)?;
            print_status(&d.rotation_status());
            d.close()?;
            Ok(0)
        }
        KeysCmd::Status { db, json } => {
            let d = open_db(&db, true)?;
            let st = d.rotation_status();
            if json {
                outln!("{}", serde_json::to_string(&st).unwrap_or_else(|_| "{}".into()));
            } else {
                print_status(&st);
            }
            Ok(0)
        }
        KeysCmd::Audit { db, json } => {
            let d = open_db(&db, true)?;
            let log = d.store().audit()?;
            for (e, committed) in log.entries.iter().zip(&log.committed) {
                if output::closed() {
                    break;
                }
                let time = driftdb::table::time::format_rfc3339(e.time_micros);
                let detail: Value = serde_json::from_str(&e.detail).unwrap_or(Value::String(e.detail.clone()));
                if json {
                    outln!(
                        "{}",
                        serde_json::json!({"seq": e.seq, "time": time, "event": e.kind, "master_version": e.master_version, "committed": committed, "detail": detail})
                    );
                } else {
                    let mark = if *committed { "" } else { "  (did not happen: its keyring write never completed)" };
                    outln!("#{:<4} {time}  {:<20} v{}  {}{mark}", e.seq, e.kind, e.master_version, detail);
                }
            }
            Ok(0)
        }
    }
}

pub(super) fn keygen(path: &Path) -> Result<(), Error> {
    use std::os::unix::fs::OpenOptionsExt;
    let key = driftdb::crypto::keys::SecretKey::random()?;
    let hex = driftdb::crypto::keysource::key_to_hex(&key);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            Error::AlreadyExists(format!("{} exists; keygen never overwrites a key", path.display()))
        } else {
            Error::io("creating", path, e)
        }
    })?;
    f.write_all(hex.as_bytes())
        .and_then(|()| f.write_all(b"\n"))
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io("writing", path, e))?;
    Ok(())
}

/// `init`: a new database in an empty or missing directory.
pub(super) fn init(dir_arg: Option<PathBuf>, dir: Option<PathBuf>, key: &KeyOpts, kdf: &KdfOpts) -> Result<u8, Error> {
    let dir = match (dir_arg, dir) {
        (Some(a), _) => a,
        (None, Some(d)) => d,
        (None, None) => {
            return Err(Error::InvalidArgument("give the data directory: init DIR (or -d DIR)".into()));
        }
    };
    let ks = key_source(key, true)?;
    let store = Store::create(
        &dir,
        &ks,
        CreateOptions { argon2: kdf.params(), allow_weak_kdf: kdf.allow_weak_kdf, store: StoreOptions::default() },
    )?;
    let id: String = store.db_id().iter().map(|b| format!("{b:02x}")).collect();
    store.close()?;
    outln!("created database {id} in {} (master key: {})", dir.display(), ks.describe());
    Ok(0)
}
