//! `attnc-passes`: the optimizer. A verified `attnc_ir::Graph` becomes an `egg`
//! e-graph over the [`Attn`] language ([`to_egraph`]), rule families saturate it
//! ([`rules`]), a per-target roofline ([`Target`]) costs every e-node, and DAG
//! extraction ([`DagChoice`]) rebuilds the cheapest equivalent `Graph` ([`optimize`]).
//!
//! Invariant: rewrites are exact; the analysis rejects any merge of differently-typed
//! classes. Every e-class carries its `TensorType` ([`TypeAnalysis`]), and a merge of
//! two classes whose concrete sizes or dtypes differ panics with both types named, so
//! an unsound rule fails its test instead of producing wrong code.

mod analysis;
pub mod approx;
mod convert;
mod cost;
mod explain;
mod extract;
mod lang;
mod optimize;
pub mod rules;

pub use {
    analysis::{attr_in, type_of, type_with, ClassData, EGraph, Sparsity, TypeAnalysis},
    approx::{approximate, Approximation},
    convert::{
        build_graph, build_graph_mapped, extract, extract_with, to_egraph, to_egraph_with, Program,
    },
    cost::{Cost, Target, TargetKind},
    explain::{explain, layer_graph, Explanation, Step},
    extract::DagChoice,
    lang::{attr_of, Attn, Attr, Source, SourceKind, F64},
    optimize::{
        node_costs, optimize, optimize_with_rules, LayerReport, Optimized, Options, Report,
        ITER_LIMIT, NODE_LIMIT, TIME_LIMIT,
    },
    rules::RuleSelection,
};
