//! The type analysis: every tensor e-class knows its `TensorType`, inferred with
//! `attnc_ir::infer` from its children's types and the graph's `Dims`. Merging two
//! classes whose types differ is an unsound rewrite, and fails loudly.

use crate::Attn;
use attnc_ir::{infer, Dims, TensorType};
use egg::{Analysis, DidMerge, Id};

/// The e-graph every pass works on.
pub type EGraph = egg::EGraph<Attn, TypeAnalysis>;

/// Holds the dims table that binds the symbolic sizes of every type in the e-graph,
/// and the log of rule applications (the analysis is the one piece of state every
/// applier can reach).
#[derive(Clone, Debug, Default)]
pub struct TypeAnalysis {
    pub dims: Dims,
    /// `(rule, class)` for every application that changed the e-graph, in order.
    pub fired: Vec<(egg::Symbol, Id)>,
}

impl TypeAnalysis {
    pub fn new(dims: Dims) -> TypeAnalysis {
        TypeAnalysis {
            dims,
            fired: Vec::new(),
        }
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
    type_with(
        &egraph.analysis.dims,
        node,
        |c| attr_in(egraph, c).cloned(),
        |c| egraph[c].data.clone(),
    )
}

/// [`type_of`] with the children looked up by `attr` and `ty`: a candidate not yet in
/// the e-graph is checked node by node this way.
pub fn type_with(
    dims: &Dims,
    node: &Attn,
    attr: impl Fn(Id) -> Option<crate::Attr>,
    ty: impl Fn(Id) -> Option<TensorType>,
) -> Result<Option<TensorType>, String> {
    match node {
        Attn::Attr(_) => Ok(None),
        Attn::Source(s) => infer(&s.op(), &[], Some(&s.ty), dims).map(Some),
        _ => {
            let attr = match node.attr() {
                Some(id) => {
                    Some(attr(id).ok_or_else(|| format!("`{node}`: first child is a tensor"))?)
                }
                None => None,
            };
            let op = node.to_op(attr.as_ref())?;
            let args: Vec<TensorType> = node
                .operands()
                .iter()
                .map(|&c| ty(c).ok_or_else(|| format!("`{node}`: an operand is an attribute")))
                .collect::<Result<_, _>>()?;
            let args: Vec<&TensorType> = args.iter().collect();
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
