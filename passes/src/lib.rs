//! `attnc-passes`: the optimizer. A verified `attnc_ir::Graph` becomes an `egg`
//! e-graph over the [`Attn`] language ([`to_egraph`]), rule families saturate it (next
//! step), and [`extract`] rebuilds the cheapest equivalent `Graph`.
//!
//! Invariant: rewrites are exact; the analysis rejects any merge of differently-typed
//! classes. Every e-class carries its `TensorType` ([`TypeAnalysis`]), and a merge of
//! two classes whose concrete sizes or dtypes differ panics with both types named, so
//! an unsound rule fails its test instead of producing wrong code.

mod analysis;
mod convert;
mod lang;

pub use {
    analysis::{attr_in, type_of, EGraph, TypeAnalysis},
    convert::{extract, extract_with, to_egraph, Program},
    lang::{attr_of, Attn, Attr, Source, SourceKind, F64},
};
