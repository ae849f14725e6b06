//! The type analysis: every tensor e-class knows its `TensorType`, inferred with
//! `attnc_ir::infer` from its children's types and the graph's `Dims`. Merging two
//! classes whose types differ is an unsound rewrite, and fails loudly.

use crate::Attn;
use attnc_ir::{infer, Dims, TensorType};
use egg::{Analysis, DidMerge, Id};

/// The e-graph every pass works on.
pub type EGraph = egg::EGraph<Attn, TypeAnalysis>;

/// Holds the dims table that binds the symbolic sizes of every type in the e-graph.
#[derive(Clone, Debug, Default)]
pub struct TypeAnalysis {
    pub dims: Dims,
}

impl TypeAnalysis {
    pub fn new(dims: Dims) -> TypeAnalysis {
        TypeAnalysis { dims }
    }

    /// Same dtype and the same concrete sizes (`attnc_ir::same_type`'s test).
    pub fn same_type(&self, a: &TensorType, b: &TensorType) -> bool {
        a.dtype == b.dtype
            && match (self.dims.resolve(&a.shape), self.dims.resolve(&b.shape)) {
                (Ok(x), Ok(y)) => x == y,
                _ => false,
            }
    }

    /// `[batch, seq, 768] (= [1, 32, 768]) f32`, as messages spell a type.
    pub fn describe(&self, ty: &TensorType) -> String {
        format!("{} {}", self.dims.describe(&ty.shape), ty.dtype)
    }
}

/// The attribute leaf of class `id`, if it is an attribute class.
pub fn attr_in(egraph: &EGraph, id: Id) -> Option<&crate::Attr> {
    egraph[id].nodes.iter().find_map(|n| match n {
        Attn::Attr(a) => Some(a),
        _ => None,
    })
}

/// The type `node` would have in `egraph`: `Ok(None)` for an attribute leaf, an error
/// when the node is ill-typed. Rule appliers check a candidate with this before adding
/// it (an invalid candidate is simply not applied).
pub fn type_of(egraph: &EGraph, node: &Attn) -> Result<Option<TensorType>, String> {
    let dims = &egraph.analysis.dims;
    match node {
        Attn::Attr(_) => Ok(None),
        Attn::Source(s) => infer(&s.op(), &[], Some(&s.ty), dims).map(Some),
        _ => {
            let attr = match node.attr() {
                Some(id) => Some(
                    attr_in(egraph, id)
                        .ok_or_else(|| format!("`{node}`: first child is a tensor"))?,
                ),
                None => None,
            };
            let op = node.to_op(attr)?;
            let args: Vec<&TensorType> = node
                .operands()
                .iter()
                .map(|&c| {
                    egraph[c]
                        .data
                        .as_ref()
                        .ok_or_else(|| format!("`{node}`: an operand is an attribute"))
                })
                .collect::<Result<_, _>>()?;
            infer(&op, &args, None, dims).map(Some)
        }
    }
}

impl Analysis<Attn> for TypeAnalysis {
    /// `None` for an attribute class, the tensor type otherwise.
    type Data = Option<TensorType>;

    /// Nodes come from a verified graph or from a rule that checked them with
    /// [`type_of`]; an ill-typed one here is a bug in that rule.
    fn make(egraph: &mut EGraph, enode: &Attn, _id: Id) -> Self::Data {
        match type_of(egraph, enode) {
            Ok(ty) => ty,
            Err(message) => panic!("ill-typed e-node `{enode}` added: {message}"),
        }
    }

    /// The one intended panic: a rewrite that equates differently-typed classes is
    /// unsound, and must fail its test rather than produce wrong code.
    fn merge(&mut self, to: &mut Self::Data, from: Self::Data) -> DidMerge {
        match (&*to, &from) {
            (Some(a), Some(b)) => {
                assert!(
                    self.same_type(a, b),
                    "unsound merge: an e-class of type {} merged with one of type {}",
                    self.describe(a),
                    self.describe(b)
                );
                // Equal sizes, maybe spelled differently: the older spelling stays.
                DidMerge(false, a != b)
            }
            (None, None) => DidMerge(false, false),
            (Some(t), None) | (None, Some(t)) => panic!(
                "unsound merge: an e-class of type {} merged with an attribute",
                self.describe(t)
            ),
        }
    }
}
