//! `attnc-ir`: the tensor IR every other crate works on.
//!
//! Invariant: a [`Graph`] that leaves this crate has passed [`verify`] — every node's
//! type is the one its op infers from its operands, operands precede their users, and
//! every symbolic dimension is bound. The interpreter ([`interp`]) evaluates any such
//! graph and is the oracle for every rewrite and backend.

mod dot;
mod dtype;
mod error;
pub mod expand;
mod features;
pub mod gen;
mod graph;
mod infer;
pub mod interp;
mod mask;
mod op;
mod random;
pub mod rope;
mod shape;
mod source;
mod sparse;
pub mod spec;
mod stats;
mod tensor;
mod text;
mod verify;

pub use dot::to_dot;
pub use dtype::DType;
pub use error::{IrError, Result};
pub use features::{favor_features, orthogonal_features};
pub use graph::{Graph, GraphBuilder, Node, NodeId};
pub use infer::{broadcast_shapes, infer};
pub use mask::{
    random_blocks, Coord, Coverage, MaskBinOp, MaskError, MaskExpr, MaskKind, MAX_MASK_DEPTH,
};
pub use op::{
    Attention, BinaryOp, CmpOp, Decay, LinearAttention, LinearForm, Lsh, Moba, MoeChoice,
    MoeDispatch, MoeShared, Op, ReduceKind, Routing, TopKOutput, UnaryOp,
};
pub use random::{random_binding, random_bindings, Rng};
pub use rope::RopeScaling;
pub use shape::{num_elements, Dim, Dims, Shape, TensorType, MAX_ELEMENTS};
pub use source::{read_at_most, read_source, MAX_SOURCE_BYTES};
pub use sparse::{dense_attention_block, listed_tile, BlockLayout, MAX_LAYOUT_BLOCKS};
pub use stats::{layer_stats, node_bytes, node_flops, op_bytes, op_flops, LayerStats};
pub use tensor::{strides, Tensor};
pub use text::{parse, print};
pub use verify::{same_type, verify};
