//! DriftQL: lexer, parser, syntax tree, access paths and evaluation.

pub mod ast;
pub(crate) mod eval;
pub(crate) mod parser;
pub(crate) mod plan;

pub use ast::Stmt;
pub use parser::{parse, parse_one};
