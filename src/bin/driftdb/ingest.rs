//! `ingest`: JSON Lines into a table in batched commits, by count and size.

use crate::*;

/// `50M` → 50,000,000 (bytes); `K`, `M`, `G` are powers of 1000.
pub(super) fn parse_size(s: &str, flag: &str) -> Result<u64, Error> {
    let t = s.trim().trim_end_matches("/s").trim_end_matches(['B', 'b']);
    let (num, mul) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 1_000u64),
        Some('M' | 'm') => (&t[..t.len() - 1], 1_000_000),
        Some('G' | 'g') => (&t[..t.len() - 1], 1_000_000_000),
        _ => (t, 1),
    };
    match num.trim().parse::<f64>() {
        Ok(n) if n.is_finite() && n * mul as f64 >= 1.0 && n * (mul as f64) < 1e18 => Ok((n * mul as f64) as u64),
        _ => Err(Error::InvalidArgument(format!("{flag} {s:?}: expected a size such as 500K, 50M or 1G"))),
    }
}

/// A progress bar on standard error (only on a terminal).
pub(super) struct Progress {
    pub(super) on: bool,
    pub(super) total_bytes: u64,
    pub(super) start: std::time::Instant,
    pub(super) last: std::time::Instant,
}

impl Progress {
    pub(super) fn new(total_bytes: u64) -> Self {
        let now = std::time::Instant::now();
        Progress { on: std::io::stderr().is_terminal(), total_bytes, start: now, last: now }
    }

    pub(super) fn show(&mut self, bytes: u64, docs: u64, force: bool) {
        if !self.on || (!force && self.last.elapsed() < std::time::Duration::from_millis(100)) {
            return;
        }
        self.last = std::time::Instant::now();
        let frac = if self.total_bytes == 0 { 1.0 } else { (bytes as f64 / self.total_bytes as f64).min(1.0) };
        let filled = (frac * 30.0) as usize;
        let secs = self.start.elapsed().as_secs_f64().max(1e-9);
        let rate = docs as f64 / secs;
        let eta = if frac > 0.0 { secs * (1.0 - frac) / frac } else { 0.0 };
        errp!(
            "\r[{}{}] {:>3.0}%  {docs} documents  {rate:.0} docs/s  ETA {eta:.0}s ",
            "#".repeat(filled),
            " ".repeat(30 - filled),
            frac * 100.0
        );
    }

    pub(super) fn finish(&mut self, bytes: u64, docs: u64) {
        if self.on {
            self.show(bytes, docs, true);
            errln!();
        }
    }
}

/// `lines 1–1000`, `line 7`, `no line`.
pub(super) fn lines_text(upto: usize) -> String {
    match upto {
        0 => "no line".into(),
        1 => "line 1".into(),
        n => format!("lines 1–{n}"),
    }
}

/// What an ingest did.
pub(super) struct Ingested {
    pub(super) docs: u64,
    pub(super) skipped: u64,
    /// Every line up to this one is committed (or skipped).
    pub(super) committed_lines: usize,
    pub(super) interrupted: bool,
}

pub(super) fn ingest(
    db: &Db,
    table: &str,
    file: &Path,
    batch: usize,
    max_bytes: u64,
    skip_existing: bool,
    stop: &AtomicBool,
) -> Result<Ingested, Error> {
    use std::io::BufRead;
    let pk = db.describe(table)?.pk;
    let (reader, size): (Box<dyn BufRead>, u64) = if file.as_os_str() == "-" {
        (Box::new(std::io::BufReader::new(std::io::stdin())), 0)
    } else {
        let f = std::fs::File::open(file).map_err(|e| Error::io("opening", file, e))?;
        let size = f.metadata().map(|m| m.len()).unwrap_or(0);
        (Box::new(std::io::BufReader::new(f)), size)
    };
    let mut reader = reader;
    let mut bar = Progress::new(size);
    let mut done = Ingested { docs: 0, skipped: 0, committed_lines: 0, interrupted: false };
    // (line number, document) waiting for the next commit.
    let mut pending: Vec<(usize, Value)> = Vec::with_capacity(batch);
    let mut pending_bytes = 0u64;
    let mut staged_keys = std::collections::HashSet::new();
    let mut bytes = 0u64;
    let mut last_line = 0usize;
    let at = |n: usize| format!("{}:{n}", file.display());
    let fail = |done: &Ingested, e: Error| -> Error {
        errln!(
            "\n{} of {} committed ({}); nothing after that",
            lines_text(done.committed_lines),
            file.display(),
            plural(done.docs, "document", "documents")
        );
        e
    };
    let flush = |pending: &mut Vec<(usize, Value)>, upto: usize, done: &mut Ingested| -> Result<(), Error> {
        if !pending.is_empty() {
            let count = pending.len() as u64;
            db.write(|w| {
                for (line, doc) in pending.drain(..) {
                    w.insert(table, doc).map_err(|e| match e {
                        Error::Query(m) => Error::Query(format!("{}: {m}", at(line))),
                        Error::Constraint(m) => Error::Constraint(format!("{}: {m}", at(line))),
                        other => other,
                    })?;
                }
                Ok(())
            })?;
            done.docs += count;
        }
        done.committed_lines = upto;
        Ok(())
    };
    let mut buf = Vec::new();
    loop {
        if stop.load(Ordering::SeqCst) {
            done.interrupted = true;
            return Ok(done);
        }
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(|e| fail(&done, Error::io("reading", file, e)))?;
        if n == 0 {
            break;
        }
        last_line += 1;
        bytes += n as u64;
        let line = match std::str::from_utf8(&buf) {
            Ok(l) => l,
            Err(e) => {
                return Err(fail(
                    &done,
                    Error::Query(format!(
                        "{}: not valid UTF-8 (byte {} of the line)",
                        at(last_line),
                        e.valid_up_to() + 1
                    )),
                ));
            }
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let doc: Value = driftdb::table::doc::parse_strict(line)
            .map_err(|e| fail(&done, Error::Query(format!("{}: invalid JSON: {e}", at(last_line)))))?;
        if skip_existing {
            let key = doc.get(&pk).and_then(driftdb::Pk::from_json);
            if let Some(k) = key {
                if staged_keys.contains(&k) || db.get(table, &k).map_err(|e| fail(&done, e))?.is_some() {
                    done.skipped += 1;
                    continue;
                }
                staged_keys.insert(k);
            }
        }
        let len = line.len() as u64;
        if !pending.is_empty() && pending_bytes + len > max_bytes {
            let upto = pending.last().map_or(0, |p| p.0);
            flush(&mut pending, upto, &mut done).map_err(|e| fail(&done, e))?;
            pending_bytes = 0;
            staged_keys.clear();
            bar.show(bytes, done.docs, false);
        }
        pending.push((last_line, doc));
        pending_bytes += len;
        if pending.len() >= batch {
            flush(&mut pending, last_line, &mut done).map_err(|e| fail(&done, e))?;
            pending_bytes = 0;
            staged_keys.clear();
            bar.show(bytes, done.docs, false);
        }
    }
    flush(&mut pending, last_line, &mut done).map_err(|e| fail(&done, e))?;
    bar.finish(bytes, done.docs);
    Ok(done)
}

/// `ingest` with its flags checked, Ctrl-C handled and the outcome reported.
pub(super) fn ingest_cmd(
    db: &DbArgs,
    table: &str,
    file: &Path,
    batch: usize,
    batch_bytes: &str,
    skip_existing: bool,
) -> Result<u8, Error> {
    if batch == 0 {
        return Err(Error::InvalidArgument("--batch 0: a commit holds at least one document".into()));
    }
    let max_bytes = parse_size(batch_bytes, "--batch-bytes")?;
    if max_bytes > 15 << 20 {
        return Err(Error::InvalidArgument(format!(
            "--batch-bytes {batch_bytes}: at most 15M (a commit is at most 16 MiB)"
        )));
    }
    // Ctrl-C (or a TERM) stops between commits, and says how far it got.
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).map_err(|e| Error::io("handling signals for", file, e))?;
    }
    let d = open_db(db, false)?;
    let t0 = std::time::Instant::now();
    let done = ingest(&d, table, file, batch, max_bytes, skip_existing, &stop)?;
    let secs = t0.elapsed().as_secs_f64();
    if done.interrupted {
        errln!(
            "\ninterrupted: {} of {} committed ({}); rerun with --skip-existing to load the rest",
            lines_text(done.committed_lines),
            file.display(),
            plural(done.docs, "document", "documents")
        );
        d.close()?;
        return Ok(130);
    }
    outln!(
        "ingested {} into {table} in {secs:.2} s ({:.0} docs/s; latest sequence {}){}",
        plural(done.docs, "document", "documents"),
        done.docs as f64 / secs.max(1e-9),
        d.latest_seq(),
        if done.skipped > 0 {
            format!("; skipped {} already there", plural(done.skipped, "document", "documents"))
        } else {
            String::new()
        }
    );
    d.close()?;
    Ok(0)
}
