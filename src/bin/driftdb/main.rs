//! The `driftdb` command-line tool.
//!
//! Exit codes: 0 ok · 1 operation failed · 2 usage · 3 key problem ·
//! 4 integrity problem · 5 database in use · 6 transaction conflict.
//! A closed standard output (`driftdb select ... | head -1`) ends a command
//! quietly, with exit code 0; any other output error is exit code 1.

#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use clap::{Args, Parser, Subcommand};
use driftdb::query::ast::{AsOf, quote_ident};
use driftdb::{Argon2Params, CreateOptions, Db, Error, KeyCommand, KeySource, Options, Outcome, Store, StoreOptions};
use serde_json::Value;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A line on standard output (see [`output::line`]).
macro_rules! outln {
    ($($t:tt)*) => { $crate::output::line(format_args!($($t)*)) };
}

/// A line on standard error.
macro_rules! errln {
    () => { $crate::output::err(format_args!("\n")) };
    ($($t:tt)*) => { $crate::output::err(format_args!("{}\n", format_args!($($t)*))) };
}

/// Text on standard error, no newline (a progress bar).
macro_rules! errp {
    ($($t:tt)*) => { $crate::output::err(format_args!($($t)*)) };
}

mod args;
mod commands;
mod ingest;
mod keys;
mod output;

use args::*;
use commands::*;
use ingest::*;
use keys::*;
use output::{plural, print_outcome, print_report};

fn main() -> ExitCode {
    let raw: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let json_errors = raw.iter().any(|a| a == "--json");
    let cli = match Cli::try_parse_from(legacy_migrate_args(raw)) {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) || !json_errors {
                let _ = e.print();
                return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
            }
            let msg = e.kind().as_str().map(str::to_string).unwrap_or_else(|| e.to_string());
            errln!("{}", serde_json::json!({"error": msg, "detail": e.to_string().trim(), "exit_code": 2}));
            return ExitCode::from(2);
        }
    };
    let r = run(cli);
    output::flush();
    match r {
        Ok(code) => match output::failure() {
            Some(f) => {
                report(&format!("cannot write the output: {f}"), 1, json_errors);
                ExitCode::from(1)
            }
            None => ExitCode::from(code),
        },
        Err(e) => {
            let code = e.exit_code();
            report(&e.to_string(), code, json_errors);
            ExitCode::from(code as u8)
        }
    }
}

/// An error on standard error: a line of text, or a JSON object under `--json`.
fn report(msg: &str, code: i32, json: bool) {
    if json {
        errln!("{}", serde_json::json!({"error": msg, "exit_code": code}));
    } else {
        errln!("error: {msg}");
    }
}

fn run(cli: Cli) -> Result<u8, Error> {
    match cli.cmd {
        Command::Keygen { path } => {
            keygen(&path)?;
            outln!(
                "wrote a new 256-bit master key to {} (mode 0600); keep it away from the data directory",
                path.display()
            );
            Ok(0)
        }
        Command::Init { dir_arg, dir, key, kdf } => init(dir_arg, dir, &key, &kdf),
        Command::Sql { db, execute, file, json } => sql(&db, execute, file, json),
        Command::Select { db, table, filter, as_of, limit, json } => select(&db, &table, filter, as_of, limit, json),
        Command::Migrate { args, action } => migrate(args, action),
        Command::Drift { db, table, row, json } => {
            let d = open_db(&db, true)?;
            let k = parse_key(&row)?;
            print_outcome(&Outcome::Drift(d.history(&table, &k)?), json);
            Ok(0)
        }
        Command::Snapshot { db, table } => {
            let d = open_db(&db, false)?;
            print_outcome(&Outcome::Snapshot(d.snapshot(&table)?), false);
            d.close()?;
            Ok(0)
        }
        Command::Compact { db, table, before, yes } => compact(&db, &table, before.as_deref(), yes),
        Command::Tables { db, json } => {
            let d = open_db(&db, true)?;
            print_outcome(&Outcome::Tables(d.tables()), json);
            Ok(0)
        }
        Command::Ingest { db, table, file, batch, batch_bytes, skip_existing } => {
            ingest_cmd(&db, &table, &file, batch, &batch_bytes, skip_existing)
        }
        Command::Keys { cmd } => keys(cmd),
        Command::Verify { db, no_key, json } => verify(&db, no_key, json),
    }
}
