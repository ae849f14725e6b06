//! Errors of the IR crate. Every variant carries enough context (layer, node, line
//! and column) for the driver to print one clear message.

use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum IrError {
    /// An op applied to operands of the wrong shape or dtype while building a graph.
    #[error("{}{}", layer_prefix(.layer), op_prefixed(.op, .message))]
    Type {
        layer: Option<String>,
        op: String,
        message: String,
    },
    /// A graph that violates an invariant.
    #[error("{}%{node} = {op}: {message}", layer_prefix(.layer))]
    Verify {
        layer: Option<String>,
        node: usize,
        op: String,
        message: String,
    },
    /// Malformed text (IR, spec or mask expression) at a 1-based line and column.
    #[error("{line}:{col}: {message}")]
    Parse {
        line: usize,
        col: usize,
        message: String,
    },
    /// A spec that parses but cannot describe a model.
    #[error("{}{message}", layer_prefix(.layer))]
    Spec {
        layer: Option<String>,
        message: String,
    },
    /// Evaluation failed (e.g. an index out of range at run time).
    #[error("{}%{node} = {op}: {message}", layer_prefix(.layer))]
    Eval {
        layer: Option<String>,
        node: usize,
        op: String,
        message: String,
    },
}

/// `` `op`: message `` unless the message already names the op.
fn op_prefixed(op: &str, message: &str) -> String {
    if message.contains(&format!("`{op}`")) {
        message.to_string()
    } else {
        format!("`{op}`: {message}")
    }
}

fn layer_prefix(layer: &Option<String>) -> String {
    match layer {
        Some(l) => format!("layer `{l}`: "),
        None => String::new(),
    }
}

pub type Result<T, E = IrError> = std::result::Result<T, E>;
