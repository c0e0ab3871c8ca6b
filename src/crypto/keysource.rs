//! Where a master key comes from: a key file, a passphrase (Argon2id), an
//! environment variable, or an external command (the way to plug in a KMS,
//! Vault or an HSM without linking their SDKs).

use super::keys::{KEY_LEN, SecretKey};
use crate::{Error, Result};
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;
use zeroize::Zeroizing;

/// Largest key text accepted from a file, variable or command (bytes).
const MAX_KEY_TEXT: usize = 64 * 1024;

/// A source of master key material.
///
/// `Debug` shows where the key comes from, never the key or passphrase.
pub enum KeySource {
    /// A file holding exactly 32 raw bytes, or 64 hex digits, or base64 of 32
    /// bytes (text forms may carry `#` comment lines). Files readable by group
    /// or others are refused unless `allow_insecure` is set.
    KeyFile {
        /// Path of the key file.
        path: PathBuf,
        /// Accept a key file with group/other permission bits.
        allow_insecure: bool,
    },
    /// A passphrase, stretched with Argon2id (salt and cost are kept in the keyring header).
    Passphrase(Zeroizing<String>),
    /// An environment variable holding the key as hex or base64.
    Env(String),
    /// A shell command (`sh -c`) whose standard output is the key (raw, hex
    /// or base64), run as [`KeyCommand::shell`] does: in a cleared
    /// environment, killed after [`KeyCommand::DEFAULT_TIMEOUT`].
    Command(String),
    /// Key bytes supplied directly by an embedding application.
    Raw(SecretKey),
    /// An external program run directly (no shell), with its own
    /// arguments, environment allow-list and timeout.
    Exec(KeyCommand),
}

/// An external command that prints the master key: the way to reach a KMS,
/// Vault or an HSM without linking their SDKs.
///
/// It runs with standard input closed, in a cleared environment (only the
/// variables of [`KeyCommand::DEFAULT_ENV`] and those allowed with
/// [`KeyCommand::allow_env`] pass: a passphrase or an old key in another
/// variable never reaches it), in its own process group, and is killed with
/// everything it started if it has not finished within its timeout.
/// `Debug` shows nothing of its program or arguments (they may carry a token).
#[derive(Clone)]
pub struct KeyCommand {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<String>,
    timeout: Duration,
}

impl std::fmt::Debug for KeyCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyCommand(<redacted>, timeout={:?})", self.timeout)
    }
}

impl KeyCommand {
    /// How long a key command may run by default.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
    /// The variables a key command gets from the environment without being
    /// allowed explicitly (none of them is meant to carry a secret).
    pub const DEFAULT_ENV: &'static [&'static str] =
        &["PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "TMPDIR"];

    /// Run `program` directly (found on `PATH` if it has no slash).
    pub fn new(program: impl Into<OsString>) -> Self {
        KeyCommand {
            program: program.into(),
            args: Vec::new(),
            env: Self::DEFAULT_ENV.iter().map(|s| s.to_string()).collect(),
            timeout: Self::DEFAULT_TIMEOUT,
        }
    }

    /// Run `script` with `sh -c`.
    pub fn shell(script: impl Into<OsString>) -> Self {
        KeyCommand::new("sh").arg("-c").arg(script)
    }

    /// Add an argument.
    pub fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }

    /// Add arguments.
    pub fn args<I: IntoIterator<Item = A>, A: Into<OsString>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Let the environment variable `name` through to the command (say
    /// `VAULT_ADDR` and `VAULT_TOKEN`).
    pub fn allow_env(mut self, name: impl Into<String>) -> Self {
        let name = name.into();
        if !self.env.contains(&name) {
            self.env.push(name);
        }
        self
    }

    /// Kill the command if it has not finished after `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Its timeout.
    pub fn time_limit(&self) -> Duration {
        self.timeout
    }
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::KeyFile { path, allow_insecure } => {
                write!(f, "KeySource::KeyFile({:?}, allow_insecure={allow_insecure})", path)
            }
            KeySource::Passphrase(_) => f.write_str("KeySource::Passphrase(<redacted>)"),
            KeySource::Env(v) => write!(f, "KeySource::Env({v:?})"),
            // Nothing of the command: a `VAR=secret` prefix or an argument
            // may carry a token.
            KeySource::Command(_) => f.write_str("KeySource::Command(<redacted>)"),
            KeySource::Exec(c) => write!(f, "KeySource::Exec({c:?})"),
            KeySource::Raw(_) => f.write_str("KeySource::Raw(<redacted>)"),
        }
    }
}

/// What a key source yields before the keyring header is known.
pub(crate) enum Material {
    /// A ready 256-bit key.
    Key(SecretKey),
    /// A passphrase still to be stretched.
    Passphrase(Zeroizing<Vec<u8>>),
}

impl KeySource {
    /// Convenience: a key file that must have safe permissions.
    pub fn key_file(path: impl Into<PathBuf>) -> Self {
        KeySource::KeyFile { path: path.into(), allow_insecure: false }
    }

    /// Convenience: a passphrase.
    pub fn passphrase(p: impl Into<String>) -> Self {
        KeySource::Passphrase(Zeroizing::new(p.into()))
    }

    /// True for passphrase sources.
    pub fn is_passphrase(&self) -> bool {
        matches!(self, KeySource::Passphrase(_))
    }

    /// True for external commands (which may print another key each run).
    pub fn is_command(&self) -> bool {
        matches!(self, KeySource::Command(_) | KeySource::Exec(_))
    }

    /// A short description for messages (never the key).
    pub fn describe(&self) -> String {
        match self {
            KeySource::KeyFile { path, .. } => format!("key file {}", path.display()),
            KeySource::Passphrase(_) => "passphrase".into(),
            KeySource::Env(v) => format!("environment variable {v}"),
            KeySource::Command(_) | KeySource::Exec(_) => "key command".into(),
            KeySource::Raw(_) => "raw key".into(),
        }
    }

    pub(crate) fn material(&self) -> Result<Material> {
        match self {
            KeySource::KeyFile { path, allow_insecure } => {
                let bytes = read_key_file(path, *allow_insecure)?;
                parse_key_text(&bytes)
                    .map(Material::Key)
                    .map_err(|why| Error::KeySource(format!("key file {}: {why}", path.display())))
            }
            KeySource::Passphrase(p) => {
                if p.is_empty() {
                    return Err(Error::KeySource("the passphrase is empty".into()));
                }
                Ok(Material::Passphrase(Zeroizing::new(p.as_bytes().to_vec())))
            }
            KeySource::Env(var) => {
                let v = std::env::var_os(var)
                    .ok_or_else(|| Error::KeySource(format!("environment variable {var} is not set")))?;
                let v = Zeroizing::new(v.into_encoded_bytes());
                parse_key_text(&v)
                    .map(Material::Key)
                    .map_err(|why| Error::KeySource(format!("environment variable {var}: {why}")))
            }
            KeySource::Command(cmd) => {
                let out = run_key_command(&KeyCommand::shell(cmd))?;
                parse_key_text(&out)
                    .map(Material::Key)
                    .map_err(|why| Error::KeySource(format!("output of key command: {why}")))
            }
            KeySource::Exec(c) => {
                let out = run_key_command(c)?;
                parse_key_text(&out)
                    .map(Material::Key)
                    .map_err(|why| Error::KeySource(format!("output of key command: {why}")))
            }
            KeySource::Raw(k) => Ok(Material::Key(k.duplicate())),
        }
    }
}

fn read_key_file(path: &std::path::Path, allow_insecure: bool) -> Result<Zeroizing<Vec<u8>>> {
    use std::io::Read;
    // Not a regular file (a FIFO would block the open itself): refused first.
    match std::fs::metadata(path) {
        Ok(m) if !m.is_file() => {
            return Err(Error::KeySource(format!("key file {} is not a regular file", path.display())));
        }
        _ => {}
    }
    let f = std::fs::File::open(path)
        .map_err(|e| Error::KeySource(format!("cannot open key file {}: {}", path.display(), e)))?;
    let meta = f.metadata().map_err(|e| Error::KeySource(format!("cannot stat key file {}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(Error::KeySource(format!("key file {} is not a regular file", path.display())));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 && !allow_insecure {
            return Err(Error::KeySource(format!(
                "key file {} is readable by group or others (mode {:04o}); run `chmod 600` on it, or pass --allow-insecure-key-file",
                path.display(),
                mode
            )));
        }
    }
    #[cfg(not(unix))]
    let _ = allow_insecure;
    if meta.len() > MAX_KEY_TEXT as u64 {
        return Err(Error::KeySource(format!("key file {} is too large to be a key", path.display())));
    }
    // Bounded even if the file grows after the size check; capacity for all
    // of it up front, so no reallocation leaves an unwiped copy behind.
    let mut buf = Zeroizing::new(Vec::with_capacity(MAX_KEY_TEXT + 1));
    f.take(MAX_KEY_TEXT as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::KeySource(format!("cannot read key file {}: {e}", path.display())))?;
    if buf.len() > MAX_KEY_TEXT {
        return Err(Error::KeySource(format!("key file {} is too large to be a key", path.display())));
    }
    Ok(buf)
}

fn run_key_command(cmd: &KeyCommand) -> Result<Zeroizing<Vec<u8>>> {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let mut c = Command::new(&cmd.program);
    c.args(&cmd.args).env_clear().stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit());
    for name in &cmd.env {
        if let Some(v) = std::env::var_os(name) {
            c.env(name, v);
        }
    }
    // Its own process group, so that a timeout kills what it started too.
    // (So it is not in the terminal's foreground group: a key command
    // cannot prompt on the terminal. A descendant that leaves the group
    // and keeps standard output open keeps the reader thread waiting
    // until it closes; the caller has its error at the timeout anyway.)
    c.process_group(0);
    let mut child = c.spawn().map_err(|e| Error::KeySource(format!("cannot start key command: {e}")))?;
    // Ten years is as good as no limit, and can always be added.
    let deadline = std::time::Instant::now() + cmd.timeout.min(Duration::from_secs(10 * 365 * 24 * 3600));
    let kill = |child: &mut std::process::Child| {
        let _ =
            rustix::process::kill_process_group(rustix::process::Pid::from_child(child), rustix::process::Signal::KILL);
        let _ = child.kill();
        let _ = child.wait();
    };
    let (tx, rx) = std::sync::mpsc::channel();
    if let Some(stdout) = child.stdout.take() {
        let reader = std::thread::Builder::new().name("driftdb-key-command".into()).spawn(move || {
            // Capacity for the whole allowed output up front: no
            // reallocation leaves an unwiped copy behind.
            let mut out = Zeroizing::new(Vec::with_capacity(MAX_KEY_TEXT + 1));
            let r = stdout.take(MAX_KEY_TEXT as u64 + 1).read_to_end(&mut out).map(|_| out);
            let _ = tx.send(r);
        });
        if let Err(e) = reader {
            kill(&mut child);
            return Err(Error::KeySource(format!("cannot read key command output: {e}")));
        }
    }
    let timed_out = || {
        Error::KeySource(format!(
            "key command did not finish within {} s and was killed (raise the limit with --key-command-timeout)",
            cmd.timeout.as_secs_f64()
        ))
    };
    let out = match rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())) {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => {
            kill(&mut child);
            return Err(Error::KeySource(format!("cannot read key command output: {e}")));
        }
        Err(_) => {
            kill(&mut child);
            return Err(timed_out());
        }
    };
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if std::time::Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                kill(&mut child);
                return Err(timed_out());
            }
            Err(e) => {
                kill(&mut child);
                return Err(Error::KeySource(format!("key command did not finish: {e}")));
            }
        }
    };
    if !status.success() {
        return Err(Error::KeySource(format!("key command failed ({status})")));
    }
    if out.len() > MAX_KEY_TEXT {
        return Err(Error::KeySource("key command printed too much output to be a key".into()));
    }
    Ok(out)
}

/// Parse key material: exactly 32 raw bytes; or, as text with optional `#`
/// comment lines and surrounding whitespace, 64 hex digits or base64
/// (standard alphabet, padding optional) of 32 bytes.
/// The error never contains the input.
pub fn parse_key_text(bytes: &[u8]) -> std::result::Result<SecretKey, String> {
    if bytes.len() == KEY_LEN && std::str::from_utf8(bytes).is_err() {
        return SecretKey::from_slice(bytes).ok_or_else(|| "bad length".to_string());
    }
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Err(format!(
            "expected 32 raw bytes, 64 hex digits or base64 of 32 bytes; found {} bytes of binary data",
            bytes.len()
        ));
    };
    let mut compact = Zeroizing::new(String::with_capacity(text.len()));
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        compact.extend(line.chars().filter(|c| !c.is_whitespace()));
    }
    if compact.is_empty() {
        if bytes.len() == KEY_LEN {
            return SecretKey::from_slice(bytes).ok_or_else(|| "bad length".to_string());
        }
        return Err("no key found (empty, or only comments)".into());
    }
    if compact.len() == 2 * KEY_LEN && compact.bytes().all(|c| c.is_ascii_hexdigit()) {
        let k: Result<SecretKey, ()> = SecretKey::fill(|k| {
            for (i, pair) in compact.as_bytes().chunks(2).enumerate() {
                k[i] = (hex_val(pair[0]) << 4) | hex_val(pair[1]);
            }
            Ok(())
        });
        return k.map_err(|()| "bad hex".to_string());
    }
    {
        use base64::Engine;
        let engine = base64::engine::general_purpose::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        );
        if let Ok(decoded) = engine.decode(compact.as_bytes()) {
            let decoded = Zeroizing::new(decoded);
            if decoded.len() == KEY_LEN {
                return SecretKey::from_slice(&decoded).ok_or_else(|| "bad length".to_string());
            }
            return Err(format!("base64 text decodes to {} bytes, a key is 32", decoded.len()));
        }
    }
    if bytes.len() == KEY_LEN {
        return SecretKey::from_slice(bytes).ok_or_else(|| "bad length".to_string());
    }
    Err(format!(
        "expected 32 raw bytes, 64 hex digits or base64 of 32 bytes; found {} characters of text that are neither",
        compact.len()
    ))
}

fn hex_val(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => 0,
    }
}

/// Format a key as 64 lowercase hex digits (used by `keygen`).
pub fn key_to_hex(key: &SecretKey) -> Zeroizing<String> {
    let mut s = Zeroizing::new(String::with_capacity(2 * KEY_LEN));
    for b in key.expose() {
        s.push(char::from(b"0123456789abcdef"[(b >> 4) as usize]));
        s.push(char::from(b"0123456789abcdef"[(b & 15) as usize]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn hex_and_base64_round_trip(k in any::<[u8; 32]>()) {
            let key = SecretKey::from_bytes(k);
            let hex = key_to_hex(&key);
            prop_assert_eq!(*parse_key_text(hex.as_bytes()).unwrap().expose(), k);
            let upper = format!("# comment\n  {}\n", hex.to_uppercase());
            prop_assert_eq!(*parse_key_text(upper.as_bytes()).unwrap().expose(), k);
            use base64::Engine;
            let b64 = base64::engine::general_purpose::STANDARD.encode(k);
            prop_assert_eq!(*parse_key_text(format!("{b64}\n").as_bytes()).unwrap().expose(), k);
            let nopad = b64.trim_end_matches('=');
            prop_assert_eq!(*parse_key_text(nopad.as_bytes()).unwrap().expose(), k);
        }

        #[test]
        fn raw_32_bytes_accepted(k in any::<[u8; 32]>()) {
            prop_assert_eq!(*parse_key_text(&k).unwrap().expose(), k);
        }

        #[test]
        fn garbage_never_panics(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_key_text(&b);
        }
    }

    #[test]
    fn wrong_lengths_refused_without_echoing_input() {
        let e = match parse_key_text(b"abcdef0123") {
            Err(e) => e,
            Ok(_) => panic!("accepted short hex"),
        };
        assert!(!e.contains("abcdef0123"));
        assert!(parse_key_text(&[0u8; 31]).is_err());
        assert!(parse_key_text(b"# only a comment\n").is_err());
        assert!(parse_key_text(&"ab".repeat(33).into_bytes()).is_err());
    }

    #[test]
    fn debug_redacts_secrets() {
        let s = format!("{:?}", KeySource::passphrase("hunter2-secret"));
        assert!(!s.contains("hunter2"));
        let s = format!("{:?}", KeySource::Raw(SecretKey::from_bytes([0xAB; 32])));
        assert!(!s.to_lowercase().contains("abab"));
    }

    #[test]
    fn group_readable_key_file_refused_unless_forced() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, "11".repeat(32)).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = match KeySource::key_file(&p).material() {
            Err(e) => e.to_string(),
            Ok(_) => panic!("accepted a world-readable key file"),
        };
        assert!(err.contains("readable by group or others"), "{err}");
        assert!(KeySource::KeyFile { path: p.clone(), allow_insecure: true }.material().is_ok());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(KeySource::key_file(&p).material().is_ok());
    }

    #[test]
    fn a_program_runs_without_a_shell_and_is_never_shown() {
        let hex = "44".repeat(32);
        let argv = KeySource::Exec(KeyCommand::new("printf").arg("%s").arg(&hex));
        match argv.material().unwrap() {
            Material::Key(k) => assert_eq!(k.expose(), &[0x44; 32]),
            Material::Passphrase(_) => panic!(),
        }
        // An argument is one argument: nothing a shell would expand.
        let literal = KeySource::Exec(KeyCommand::new("printf").arg("%s").arg("$(echo 44)"));
        assert!(literal.material().is_err());
        for src in [
            KeySource::Exec(KeyCommand::new("vault").args(["read", "token=s3cr3t"]).allow_env("VAULT_TOKEN")),
            KeySource::Command("VAULT_TOKEN=s3cr3t vault read".into()),
        ] {
            let d = format!("{src:?}");
            assert!(!d.contains("s3cr3t") && !d.contains("vault") && !d.contains("VAULT"), "{d}");
            assert_eq!(src.describe(), "key command");
        }
    }

    #[test]
    fn a_hung_key_command_is_killed_at_its_timeout() {
        let c = KeySource::Exec(KeyCommand::new("sleep").arg("30").timeout(Duration::from_millis(300)));
        let t0 = std::time::Instant::now();
        let e = c.material().err().unwrap().to_string();
        assert!(e.contains("did not finish within 0.3 s"), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(5));
        // A huge timeout is no timeout, not a panic.
        let c = KeySource::Exec(KeyCommand::new("printf").arg("%s").arg("55".repeat(32)).timeout(Duration::MAX));
        assert!(c.material().is_ok());
    }

    #[test]
    fn a_key_file_is_read_within_its_bound_even_if_it_is_longer_than_it_said() {
        // A file whose length says 0 but which holds more than any key: the
        // read stops at the bound instead of taking all of it.
        let p = std::path::Path::new("/proc/kallsyms");
        let real = std::fs::read(p).unwrap().len();
        assert!(real > MAX_KEY_TEXT, "the test needs a longer {} ({real} bytes)", p.display());
        assert_eq!(std::fs::metadata(p).unwrap().len(), 0);
        let e = KeySource::KeyFile { path: p.into(), allow_insecure: true }.material().err().unwrap().to_string();
        assert!(e.contains("too large to be a key"), "{e}");
        // A FIFO is refused before the open could block on it.
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let e = KeySource::key_file(&fifo).material().err().unwrap().to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }

    #[test]
    fn missing_env_and_command_sources() {
        // The variable-present path is exercised by the CLI tests, which set
        // variables on a child process (set_var is unsafe in edition 2024).
        let e = KeySource::Env("DRIFTDB_TEST_UNSET_VAR_XYZ".into()).material().err().unwrap();
        assert!(e.to_string().contains("is not set"));
        match KeySource::Command(format!("echo {}", "33".repeat(32))).material().unwrap() {
            Material::Key(k) => assert_eq!(k.expose(), &[0x33; 32]),
            Material::Passphrase(_) => panic!(),
        }
        let e = KeySource::Command("exit 7".into()).material().err().unwrap();
        assert!(e.to_string().contains("key command failed"));
        let e = KeySource::Command("echo not-a-key".into()).material().err().unwrap();
        assert!(!e.to_string().contains("not-a-key"));
    }
}
