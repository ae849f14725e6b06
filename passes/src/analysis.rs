//! The class analysis: every tensor e-class knows its `TensorType`, inferred with
//! `attnc_ir::infer` from its children's types and the graph's `Dims`, and what is
//! known of where its values are zero ([`Sparsity`]). Merging two classes whose types
//! differ is an unsound rewrite, and fails loudly.

use crate::{Attn, Attr, SourceKind};
use attnc_ir::{infer, BinaryOp, CmpOp, Dims, ReduceKind, TensorType, UnaryOp};
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
        |c| egraph[c].data.ty.clone(),
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

/// What the analysis knows of one class.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassData {
    /// `None` for an attribute class, the tensor type otherwise.
    pub ty: Option<TensorType>,
    pub sparsity: Sparsity,
    /// The class is `iota` along this axis: its values differ along that axis.
    pub iota: Option<usize>,
}

/// Upper bounds on the non-zeros of a tensor `[.., rows, cols]`: at most `row`
/// non-zeros along the last axis (in each row, whatever the other indices) and at
/// most `col` along the second-to-last (in each column). A top-k one-hot `[T, E]` has
/// `row = k`: that is what makes a mixture's gate provably sparse. Both are sound
/// upper bounds, so two classes proven equal keep the smaller of each.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sparsity {
    pub row: Option<u64>,
    pub col: Option<u64>,
}

impl Sparsity {
    /// No zero known.
    pub const DENSE: Sparsity = Sparsity {
        row: None,
        col: None,
    };
}

impl ClassData {
    fn sizes(&self, dims: &Dims) -> Option<Vec<u64>> {
        dims.resolve(&self.ty.as_ref()?.shape).ok()
    }
}

impl Analysis<Attn> for TypeAnalysis {
    type Data = ClassData;

    /// Nodes come from a verified graph or from a rule that checked them with
    /// [`type_of`]; an ill-typed one here is a bug in that rule.
    fn make(egraph: &mut EGraph, enode: &Attn, _id: Id) -> Self::Data {
        let ty = match type_of(egraph, enode) {
            Ok(ty) => ty,
            Err(message) => panic!("ill-typed e-node `{enode}` added: {message}"),
        };
        let iota = match enode {
            Attn::Source(s) => match s.kind {
                SourceKind::Iota(axis) => Some(axis),
                _ => None,
            },
            _ => None,
        };
        let sparsity = match ty
            .as_ref()
            .and_then(|t| egraph.analysis.dims.resolve(&t.shape).ok())
        {
            Some(out) => sparsity(egraph, enode, &out),
            None => Sparsity::DENSE,
        };
        ClassData { ty, sparsity, iota }
    }

    /// The one intended panic: a rewrite that equates differently-typed classes is
    /// unsound, and must fail its test rather than produce wrong code.
    fn merge(&mut self, to: &mut Self::Data, from: Self::Data) -> DidMerge {
        let typed = match (&to.ty, &from.ty) {
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
        };
        // Both bounds hold of the merged class: keep the tighter.
        let tighter = |a: &mut Option<u64>, b: Option<u64>| -> DidMerge {
            match (*a, b) {
                (Some(x), Some(y)) if y < x => {
                    *a = Some(y);
                    DidMerge(true, false)
                }
                (None, Some(y)) => {
                    *a = Some(y);
                    DidMerge(true, false)
                }
                (x, y) => DidMerge(false, x != y),
            }
        };
        let row = tighter(&mut to.sparsity.row, from.sparsity.row);
        let col = tighter(&mut to.sparsity.col, from.sparsity.col);
        let iota = match (to.iota, from.iota) {
            (None, Some(a)) => {
                to.iota = Some(a);
                DidMerge(true, false)
            }
            (a, b) => DidMerge(false, a != b),
        };
        typed | row | col | iota
    }
}

/// Where `out[..] = 0` is known for `enode`, from its operands' facts. `out` is the
/// node's concrete shape. Every rule says which zeros of an operand survive the op
/// at the same place: a zero times anything is zero, `f(0) = 0` for the activations,
/// a one-hot compare against an iota has one non-zero per row, sums over `m` rows
/// have at most `m` times the non-zeros.
fn sparsity(egraph: &EGraph, enode: &Attn, out: &[u64]) -> Sparsity {
    let r = out.len();
    if r == 0 {
        return Sparsity::DENSE;
    }
    let dims = &egraph.analysis.dims;
    let data = |c: Id| &egraph[c].data;
    let sizes = |c: Id| data(c).sizes(dims).unwrap_or_default();
    let attr = |c: Id| crate::attr_in(egraph, c);
    // An operand's bounds that hold at the same place of the result: a row bound
    // where it spans the result's rows (last axes equal), a column bound likewise.
    let carried = |c: Id| {
        let s = sizes(c);
        let f = data(c).sparsity;
        Sparsity {
            row: f.row.filter(|_| s.last() == Some(&out[r - 1])),
            col: f
                .col
                .filter(|_| r >= 2 && s.len() >= 2 && s[s.len() - 2] == out[r - 2]),
        }
    };
    let min = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) | (None, x) => x,
    };
    let zero = |c: Id| {
        egraph[c].nodes.iter().any(|n| {
            matches!(n, Attn::Source(s) if matches!(s.kind, SourceKind::Const(v) if v.get() == 0.0))
        })
    };
    let f = match enode {
        Attn::Source(s) => match s.kind {
            SourceKind::Const(v) if v.get() == 0.0 => Sparsity {
                row: Some(0),
                col: Some(0),
            },
            _ => Sparsity::DENSE,
        },
        Attn::Cast([_, x]) => carried(*x),
        Attn::Unary([a, x]) => match attr(*a) {
            Some(Attr::Unary(
                UnaryOp::Neg
                | UnaryOp::Abs
                | UnaryOp::Sqrt
                | UnaryOp::Tanh
                | UnaryOp::Silu
                | UnaryOp::Gelu
                | UnaryOp::GeluTanh
                | UnaryOp::Elu
                | UnaryOp::Relu,
            )) => carried(*x),
            _ => Sparsity::DENSE,
        },
        Attn::Binary([a, x, y]) => match attr(*a) {
            Some(Attr::Binary(BinaryOp::Mul)) => {
                let (fx, fy) = (carried(*x), carried(*y));
                Sparsity {
                    row: min(fx.row, fy.row),
                    col: min(fx.col, fy.col),
                }
            }
            // Zero where the numerator is (`0/0` is NaN in every form alike, and a
            // NaN gate counts as selected: a bound it breaks is a run-time error).
            Some(Attr::Binary(BinaryOp::Div)) => carried(*x),
            _ => Sparsity::DENSE,
        },
        // `select(c, a, 0)`: zero where `c` is false or `a` is zero.
        Attn::Select([c, x, y]) if zero(*y) => {
            let (fc, fx) = (carried(*c), carried(*x));
            Sparsity {
                row: min(fc.row, fx.row),
                col: min(fc.col, fx.col),
            }
        }
        // `a == iota` with `a` constant along the iota's axis: one hit per line.
        Attn::Compare([a, x, y]) if attr(*a) == Some(&Attr::Compare(CmpOp::Eq)) => {
            let one_hot = |i: Id, other: Id| {
                let (s, ri) = (sizes(other), sizes(i).len());
                // The iota's axis, counted from the end (broadcasting aligns there).
                let along = |axis_from_end: usize| {
                    data(i).iota.is_some_and(|a| ri - a == axis_from_end)
                        && (s.len() < axis_from_end || s[s.len() - axis_from_end] == 1)
                };
                Sparsity {
                    row: along(1).then_some(1),
                    col: (r >= 2 && along(2)).then_some(1),
                }
            };
            let (p, q) = (one_hot(*x, *y), one_hot(*y, *x));
            Sparsity {
                row: min(p.row, q.row),
                col: min(p.col, q.col),
            }
        }
        Attn::Reduce([a, x]) => match attr(*a) {
            Some(Attr::Reduce {
                kind: ReduceKind::Sum | ReduceKind::Max | ReduceKind::Mean,
                axes,
                ..
            }) => {
                let s = sizes(*x);
                let rin = s.len();
                let f = data(*x).sparsity;
                let product: u64 = axes
                    .iter()
                    .map(|&ax| s.get(ax).copied().unwrap_or(1))
                    .product();
                let times = |b: Option<u64>| b.map(|b| b.saturating_mul(product));
                if rin < 2 || axes.contains(&(rin - 1)) {
                    Sparsity::DENSE
                } else if axes.contains(&(rin - 2)) {
                    // Rows summed together: the last axis is still the result's.
                    Sparsity {
                        row: times(f.row),
                        col: None,
                    }
                } else {
                    Sparsity {
                        row: times(f.row),
                        col: times(f.col),
                    }
                }
            }
            _ => Sparsity::DENSE,
        },
        Attn::Reshape([_, x]) => {
            let s = sizes(*x);
            let f = data(*x).sparsity;
            let same = |n: usize| s.len() >= n && r >= n && s[s.len() - n..] == out[r - n..];
            Sparsity {
                row: f.row.filter(|_| same(1)),
                col: f.col.filter(|_| same(2)),
            }
        }
        Attn::Broadcast([_, x]) => carried(*x),
        Attn::Transpose([p, x]) => match attr(*p) {
            Some(Attr::Perm(perm)) if perm.len() == r && r >= 2 => {
                let f = data(*x).sparsity;
                let along = |axis: usize| match axis {
                    a if a == r - 1 => f.row,
                    a if a == r - 2 => f.col,
                    _ => None,
                };
                Sparsity {
                    row: along(perm[r - 1]),
                    col: along(perm[r - 2]),
                }
            }
            _ => Sparsity::DENSE,
        },
        Attn::Slice([_, x]) => data(*x).sparsity,
        Attn::Concat(c) => match attr(c[0]) {
            Some(Attr::Axis(axis)) => {
                let parts = &c[1..];
                let bound = |pick: fn(Sparsity) -> Option<u64>, from_end: usize| {
                    parts.iter().map(move |&p| {
                        let s = sizes(p);
                        pick(data(p).sparsity)
                            .or_else(|| s.len().checked_sub(from_end).map(|i| s[i]))
                    })
                };
                let sum = |pick, from_end| {
                    bound(pick, from_end).try_fold(0u64, |acc, b| Some(acc.saturating_add(b?)))
                };
                let max = |pick, from_end| {
                    bound(pick, from_end).try_fold(0u64, |acc, b| Some(acc.max(b?)))
                };
                let row = |f: Sparsity| f.row;
                let col = |f: Sparsity| f.col;
                if *axis + 1 == r {
                    Sparsity {
                        row: sum(row, 1),
                        col: max(col, 2),
                    }
                } else if *axis + 2 == r {
                    Sparsity {
                        row: max(row, 1),
                        col: sum(col, 2),
                    }
                } else {
                    Sparsity {
                        row: max(row, 1),
                        col: max(col, 2),
                    }
                }
            }
            _ => Sparsity::DENSE,
        },
        _ => Sparsity::DENSE,
    };
    // A bound past the axis says nothing.
    Sparsity {
        row: f.row.filter(|&b| b < out[r - 1]),
        col: f.col.filter(|&b| r >= 2 && b < out[r - 2]),
    }
}
