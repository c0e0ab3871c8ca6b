//! An application embedding DriftDB: a small invoice ledger that must keep
//! every version of every invoice, encrypted at rest, and answer "what did
//! we know on that date?".
//!
//! Run with `cargo run --example embedded`.

use driftdb::query::ast::AsOf;
use driftdb::{Db, KeySource, Options, Pk};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Debug, Serialize, Deserialize)]
struct Invoice {
    id: String,
    customer: String,
    amount_cents: i64,
    status: String,
}

struct Ledger {
    db: Db,
}

impl Ledger {
    fn open(dir: &std::path::Path, key: &KeySource) -> driftdb::Result<Ledger> {
        let db = if dir.join("keyring").exists() {
            Db::open(dir, key, Options::default())?
        } else {
            let db = Db::create(dir, key, Options::default())?;
            db.create_table("invoices", "id", &["customer", "status"])?;
            db
        };
        Ok(Ledger { db })
    }

    fn issue(&self, inv: &Invoice) -> driftdb::Result<u64> {
        self.db.insert("invoices", serde_json::to_value(inv).map_err(|e| driftdb::Error::Query(e.to_string()))?)
    }

    fn set_status(&self, id: &str, status: &str) -> driftdb::Result<u64> {
        let set = json!({ "status": status }).as_object().cloned().unwrap_or_default();
        self.db.patch("invoices", &Pk::Str(id.into()), set)
    }

    fn open_invoices_of(&self, customer: &str) -> driftdb::Result<Vec<Invoice>> {
        // `customer` is indexed: only that customer's rows are read.
        self.db.query(&format!(
            "SELECT * FROM invoices WHERE customer = {} AND status != 'paid' ORDER BY id",
            serde_json::Value::from(customer)
        ))
    }

    fn total_outstanding(&self, as_of: Option<u64>) -> driftdb::Result<i64> {
        let q = match as_of {
            Some(seq) => format!("SELECT SUM(amount_cents) FROM invoices WHERE status != 'paid' AS OF @seq:{seq}"),
            None => "SELECT SUM(amount_cents) FROM invoices WHERE status != 'paid'".to_string(),
        };
        let rows: Vec<serde_json::Value> = self.db.query(&q)?;
        Ok(rows.first().and_then(|r| r["SUM(amount_cents)"].as_i64()).unwrap_or(0))
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    // A real application takes its key from a key file kept off the data
    // disk, a passphrase, or a KMS command; this demo uses a random key.
    let key = KeySource::Raw(driftdb::crypto::keys::SecretKey::random()?);
    let ledger = Ledger::open(&tmp.path().join("ledger"), &key)?;

    for (i, (customer, amount)) in [("acme", 12_000), ("acme", 8_050), ("globex", 31_000)].iter().enumerate() {
        let inv = Invoice {
            id: format!("inv-{i}"),
            customer: customer.to_string(),
            amount_cents: *amount,
            status: "open".into(),
        };
        ledger.issue(&inv)?;
    }
    let before_payments = ledger.db.latest_seq();
    ledger.set_status("inv-0", "paid")?;
    ledger.set_status("inv-2", "disputed")?;

    println!("acme's open invoices: {:?}", ledger.open_invoices_of("acme")?);
    println!("outstanding now: {} cents", ledger.total_outstanding(None)?);
    println!(
        "outstanding before the payments (@seq:{before_payments}): {} cents",
        ledger.total_outstanding(Some(before_payments))?
    );
    println!(
        "invoices as of @seq:{before_payments}: {}",
        ledger.db.scan("invoices", Some(&AsOf::Seq(before_payments)))?.len()
    );
    for e in ledger.db.history("invoices", &Pk::Str("inv-2".into()))? {
        println!("inv-2 at seq {} ({}): {} -> status {}", e.seq, e.time, e.op, e.doc["status"]);
    }
    ledger.db.close()?;
    Ok(())
}
