//! DriftQL: lexer, parser, syntax tree and evaluation.

pub mod ast;
pub mod eval;
pub mod parser;

pub use ast::Stmt;
pub use parser::{parse, parse_one};
