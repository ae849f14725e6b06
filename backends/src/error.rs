//! Errors of the backends. Each names what the user can act on: the layer and node
//! of an op, the binding that does not fit, or the MLIR / LLVM diagnostics.

use attnc_ir::DType;
use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum BackendError {
    /// An op this backend cannot lower (yet).
    #[error("{}op `{op}` (%{node}) is not supported by the CPU backend yet", layer_prefix(.layer))]
    Unsupported {
        op: String,
        layer: Option<String>,
        node: usize,
    },
    /// An op whose attributes this backend cannot compile (a block size its kernels
    /// do not tile, a mask function with run-time arguments).
    #[error("{}%{node} = {op}: {message}", layer_prefix(.layer))]
    Unlowerable {
        op: String,
        layer: Option<String>,
        node: usize,
        message: String,
    },
    /// A graph that breaks an IR invariant (it was not verified).
    #[error("invalid graph: {message}")]
    InvalidGraph { message: String },
    /// MLIR rejected the module at some stage (parse, verify, a pass); `message` holds
    /// the diagnostics, located at the IR nodes they come from.
    #[error("MLIR {stage} failed: {message}")]
    Mlir {
        stage: &'static str,
        message: String,
    },
    /// Translation to LLVM IR or LLVM's own checks and passes failed.
    #[error("LLVM: {message}")]
    Llvm { message: String },
    /// The JIT could not compile, find or run the function.
    #[error("JIT: {message}")]
    Jit { message: String },
    /// The GPU runner: no driver or device, or a driver call that failed.
    #[error("GPU: {message}")]
    Gpu { message: String },
    /// An input or param of the graph has no binding.
    #[error("no value bound for {kind} `{name}`")]
    MissingBinding { kind: &'static str, name: String },
    /// A binding whose dtype or shape differs from the graph's.
    #[error("{kind} `{name}`: expected {expected}, got {got}")]
    BindingMismatch {
        kind: &'static str,
        name: String,
        expected: String,
        got: String,
    },
    /// A run-time check failed: an index out of range (gather, embedding), an integer
    /// division by zero. The interpreter reports the same conditions as errors.
    #[error("{}%{node} = {op}: {message}", layer_prefix(.layer))]
    Runtime {
        op: String,
        layer: Option<String>,
        node: usize,
        message: String,
    },
}

fn layer_prefix(layer: &Option<String>) -> String {
    match layer {
        Some(l) => format!("layer `{l}`: "),
        None => String::new(),
    }
}

/// `[3, 5] f32`, the form binding messages use.
pub(crate) fn describe(sizes: &[usize], dtype: DType) -> String {
    let dims: Vec<String> = sizes.iter().map(|n| n.to_string()).collect();
    format!("[{}] {dtype}", dims.join(", "))
}

pub type Result<T, E = BackendError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_names_layer_op_and_node() {
        let e = BackendError::Unsupported {
            op: "topk_values".into(),
            layer: Some("layers.0.moe".into()),
            node: 12,
        };
        assert_eq!(
            e.to_string(),
            "layer `layers.0.moe`: op `topk_values` (%12) is not supported by the CPU backend yet"
        );
    }
}
