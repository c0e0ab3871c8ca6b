//! DriftQL: lexer, parser, syntax tree, access paths and evaluation.

pub mod ast;
pub mod eval;
pub mod parser;
pub mod plan;

pub use ast::Stmt;
pub use parser::{parse, parse_one};
