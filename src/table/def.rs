//! A table's definition, as the catalog events record it.

/// A table's definition, as recorded by its `CreateTable` event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TableDef {
    /// Table id (never reused).
    #[serde(skip)]
    pub id: u32,
    /// Name.
    pub name: String,
    /// Primary key field.
    pub pk: String,
    /// Indexed fields.
    pub indexes: Vec<String>,
    /// Declared columns (`ALTER TABLE ... ADD COLUMN`), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<crate::table::schema::Column>,
    /// Sequence number of its creation.
    #[serde(skip)]
    pub created_seq: u64,
}
