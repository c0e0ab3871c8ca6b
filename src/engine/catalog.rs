//! Catalog checkpoints: the state opening would otherwise rebuild from the
//! whole log (table definitions, schema histories, index ids, counters,
//! where each log segment starts), written into the version tree as of a
//! sequence number after every entry up to it. Opening restores the
//! newest one the runs hold and replays only the log after it.

use super::*;
use crate::table::version as ver;

/// Bytes of the catalog's text per tree entry.
const PART_BYTES: usize = 8 << 10;

#[derive(serde::Serialize, serde::Deserialize)]
struct Catalog {
    /// Always 1.
    version: u32,
    /// The state is as of the end of the commit ending here.
    seq: u64,
    last_time: i64,
    next_table_id: u32,
    tables: Vec<CatalogTable>,
    /// (segment file id, its first sequence number).
    segments: Vec<(u64, u64)>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct CatalogTable {
    id: u32,
    created_seq: u64,
    def: TableDef,
    live: u64,
    since_events: u64,
    since_bytes: u64,
    horizon: u64,
    alters: Vec<(u64, Alter)>,
    schema: Vec<(u64, TableDef)>,
    /// (field, index id: sequence number and place).
    indexes: Vec<(String, u64, u32)>,
}

impl State {
    /// The tree entries of a catalog checkpoint of this state (as of its
    /// latest sequence number).
    pub(super) fn catalog_entries(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut tables = Vec::with_capacity(self.defs.len());
        for (id, def) in &self.defs {
            let t = self.tables.get(id);
            tables.push(CatalogTable {
                id: *id,
                created_seq: def.created_seq,
                def: def.clone(),
                live: t.map_or(0, |t| t.live),
                since_events: t.map_or(0, |t| t.since_events),
                since_bytes: t.map_or(0, |t| t.since_bytes),
                horizon: t.map_or(0, |t| t.horizon),
                alters: t.map(|t| t.alters.clone()).unwrap_or_default(),
                schema: t.map(|t| t.schema.clone()).unwrap_or_default(),
                indexes: t.map_or_else(Vec::new, |t| t.indexes.iter().map(|(f, ix)| (f.clone(), ix.0, ix.1)).collect()),
            });
        }
        tables.sort_by_key(|t| t.id);
        let c = Catalog {
            version: 1,
            seq: self.latest_seq(),
            last_time: self.last_time,
            next_table_id: self.next_table_id,
            tables,
            segments: self.segment_starts.iter().map(|(f, s)| (*f, *s)).collect(),
        };
        let text = serde_json::to_vec(&c).map_err(|e| Error::Internal(format!("catalog checkpoint: {e}")))?;
        let parts: Vec<&[u8]> = text.chunks(PART_BYTES).collect();
        let n = u32::try_from(parts.len()).map_err(|_| Error::Internal("catalog checkpoint too large".into()))?;
        Ok(parts
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                let mut v = Vec::with_capacity(4 + p.len());
                v.extend_from_slice(&n.to_be_bytes());
                v.extend_from_slice(p);
                (ver::catalog_key(c.seq, self.catalog_gen, i as u32), v)
            })
            .collect())
    }

    /// Put a catalog checkpoint of this state into the version tree (after
    /// everything up to its sequence number). One that cannot be made is
    /// logged and left out: opening then replays more of the log.
    pub(super) fn put_catalog(&mut self) {
        self.put_version_batch();
        // None of an empty database; each under a number of its own (two
        // at one point may differ: where log segments start).
        // Nor one that would say what the last one says (a close after no
        // change writes nothing).
        let now = (self.latest_seq(), self.segment_starts.clone());
        if now.0 == 0 || self.catalog_last.as_ref() == Some(&now) {
            return;
        }
        self.catalog_last = Some(now);
        self.catalog_gen = self.catalog_gen.wrapping_add(1);
        match (self.catalog_entries(), &self.versions) {
            // (Not a reason for another flush: it is put in when one is due.)
            (Ok(entries), Some(tree)) => {
                tree.insert(entries);
            }
            (Err(e), _) => log::warn!("catalog checkpoint: {e}"),
            (Ok(_), None) => {}
        }
    }

    /// Restore the newest catalog checkpoint in `tree` (whose runs hold
    /// everything up to it), if there is one: returns its sequence number.
    pub(super) fn restore_catalog(&mut self, tree: &crate::storage::tree::Tree) -> Result<Option<u64>> {
        let bad = |why: String| Error::tampered("version tree", 0, format!("catalog checkpoint: {why}"));
        let view = tree.view();
        let start = [ver::NS_CATALOG];
        let end = [ver::NS_CATALOG + 1];
        let mut it = view.range(&start, Some(&end))?;
        if !it.valid() {
            return Ok(None);
        }
        let (seq, number, _) = ver::decode_catalog_key(it.key()).map_err(|e| bad(e.reason))?;
        // Part 0 says how many parts there are; exactly those are read.
        let mut text = Vec::new();
        let mut want = 1u32;
        let mut next = 0u32;
        while it.valid() && next < want {
            let (s, g, part) = ver::decode_catalog_key(it.key()).map_err(|e| bad(e.reason))?;
            if s != seq || g != number || part != next {
                break;
            }
            let v = it.value();
            let (n, chunk) = v.split_first_chunk::<4>().ok_or_else(|| bad("a part of fewer than 4 bytes".into()))?;
            let n = u32::from_be_bytes(*n);
            if next == 0 {
                want = n;
            } else if n != want {
                return Err(bad(format!("part {part} of @seq:{seq} counts {n} parts, part 0 {want}")));
            }
            next += 1;
            text.extend_from_slice(chunk);
            it.advance()?;
        }
        if want == 0 || next != want {
            return Err(bad(format!("the checkpoint at @seq:{seq} is missing parts")));
        }
        let c: Catalog = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
        if c.version != 1 || c.seq != seq {
            return Err(bad(format!("version {} at @seq:{} under the key of @seq:{seq}", c.version, c.seq)));
        }
        self.next_seq = seq.checked_add(1).ok_or_else(|| bad("at the last sequence number".into()))?;
        self.catalog_gen = number;
        self.last_time = c.last_time;
        self.next_table_id = c.next_table_id;
        for ct in c.tables {
            let mut def = ct.def;
            def.id = ct.id;
            def.created_seq = ct.created_seq;
            let schema = ct
                .schema
                .into_iter()
                .map(|(s, mut d)| {
                    d.id = ct.id;
                    d.created_seq = ct.created_seq;
                    (s, d)
                })
                .collect();
            self.names.insert(def.name.clone(), ct.id);
            self.defs.insert(ct.id, def);
            let t = self.tables.entry(ct.id).or_default();
            t.live = ct.live;
            t.since_events = ct.since_events;
            t.since_bytes = ct.since_bytes;
            t.horizon = ct.horizon;
            t.alters = ct.alters;
            t.schema = schema;
            t.indexes = ct.indexes.into_iter().map(|(f, s, o)| (f, (s, o))).collect();
        }
        self.segment_starts = c.segments.into_iter().collect();
        self.catalog_last = Some((seq, self.segment_starts.clone()));
        Ok(Some(seq))
    }
}
