//! Random well-typed graphs for property tests and fuzzing.
//!
//! Every decision is drawn from a [`Choices`] source: a seeded [`Rng`] for property
//! tests, or the fuzzer's bytes ([`ByteChoices`]), so libFuzzer's mutations become
//! structural changes of a graph that always builds. The ops are those a model spec
//! lowers to, in the shapes the rules look for: attention written out (scaled scores,
//! optional mask, softmax, values), projections sharing an input, scalars through
//! matmuls and layout ops, layout pairs that cancel, norms, gated MLPs, residuals.
//! Layers change as the graph grows, so layer boundaries are exercised too.

use crate::{
    BinaryOp, DType, Dim, Dims, Graph, GraphBuilder, NodeId, Op, ReduceKind, Result, Rng, Shape,
    UnaryOp,
};

/// A source of decisions: `choose(n)` is in `[0, n)`, for `n >= 1`.
pub trait Choices {
    fn choose(&mut self, n: u32) -> u32;
}

impl Choices for Rng {
    fn choose(&mut self, n: u32) -> u32 {
        self.below(n.max(1) as u64) as u32
    }
}

/// Decisions read from bytes, two per choice; zeros once the bytes run out (so every
/// byte string, the empty one included, is a graph).
pub struct ByteChoices<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> ByteChoices<'a> {
    pub fn new(bytes: &'a [u8]) -> ByteChoices<'a> {
        ByteChoices { bytes, at: 0 }
    }

    /// Bytes not read yet (what a fuzz target may use for something else).
    pub fn rest(&self) -> &'a [u8] {
        &self.bytes[self.at.min(self.bytes.len())..]
    }
}

impl Choices for ByteChoices<'_> {
    fn choose(&mut self, n: u32) -> u32 {
        let mut v = 0u32;
        for _ in 0..2 {
            v = (v << 8) | *self.bytes.get(self.at).unwrap_or(&0) as u32;
            self.at += 1;
        }
        v % n.max(1)
    }
}

/// Most ops a generated graph has (the residual chain, before outputs).
pub const MAX_STEPS: u32 = 24;

/// A random graph of [`MAX_STEPS`] steps at most over `x: [batch, seq, d]` (f32).
pub fn random_graph(c: &mut impl Choices) -> Result<Graph> {
    let batch = 1 + c.choose(2) as u64;
    let seq = [1, 2, 3, 4, 8][c.choose(5) as usize];
    let heads = 1 + c.choose(2) as u64;
    let head_dim = [1, 2, 4][c.choose(3) as usize];
    let d = heads * head_dim;
    let mut dims = Dims::new();
    for (name, v) in [("batch", batch), ("seq", seq), ("d", d)] {
        dims.bind(name, v);
    }
    let mut g = Gen {
        b: GraphBuilder::new("random", dims),
        params: 0,
        heads,
        head_dim,
    };
    let bsd = Shape::new([Dim::sym("batch"), Dim::sym("seq"), Dim::sym("d")]);
    g.b.set_layer(Some("embed".into()));
    let mut x = g.b.input("x", bsd.clone(), DType::F32)?;
    let mut pool = vec![x];
    if c.choose(2) == 1 {
        pool.push(g.b.input("y", bsd, DType::F32)?);
    }
    let steps = 1 + c.choose(MAX_STEPS);
    let mut layer = 0;
    for _ in 0..steps {
        if c.choose(4) == 0 {
            layer += 1;
        }
        g.b.set_layer(Some(format!("layers.{layer}")));
        let y = g.step(c, x, &pool)?;
        // A residual add now and then, as between the blocks of a model.
        x = if c.choose(3) == 0 {
            g.b.op(Op::Binary(BinaryOp::Add), &[x, y])?
        } else {
            y
        };
        pool.push(x);
    }
    g.b.set_layer(None);
    g.b.output("out", x)?;
    if c.choose(3) == 0 {
        let other = pool[c.choose(pool.len() as u32) as usize];
        if other != x && !g.b.graph().node(other).op.is_source() {
            g.b.output("aux", other)?;
        }
    }
    g.b.finish()
}

struct Gen {
    b: GraphBuilder,
    params: usize,
    heads: u64,
    head_dim: u64,
}

const EPS: f64 = 1e-5;

impl Gen {
    fn param(&mut self, shape: Shape) -> Result<NodeId> {
        self.params += 1;
        self.b.param(format!("w{}", self.params), shape, DType::F32)
    }

    fn constant(&mut self, c: &mut impl Choices) -> Result<NodeId> {
        let v = [0.5, 2.0, -1.0, 0.125, 3.0][c.choose(5) as usize];
        self.b.constant(v, DType::F32)
    }

    fn d(&self) -> Dim {
        Dim::sym("d")
    }

    /// `x @ w` with a fresh `[d, d]` weight, sometimes with a bias.
    fn linear(&mut self, c: &mut impl Choices, x: NodeId) -> Result<NodeId> {
        let w = self.param(Shape::new([self.d(), self.d()]))?;
        let y = self.b.op(Op::MatMul, &[x, w])?;
        if c.choose(3) == 0 {
            let bias = self.param(Shape::new([self.d()]))?;
            return self.b.op(Op::Binary(BinaryOp::Add), &[y, bias]);
        }
        Ok(y)
    }

    /// `[b, s, d]` → `[b, h, s, dh]`.
    fn split_heads(&mut self, x: NodeId) -> Result<NodeId> {
        let (h, dh) = (Dim::Const(self.heads), Dim::Const(self.head_dim));
        let shape = Shape::new([Dim::sym("batch"), Dim::sym("seq"), h, dh]);
        let r = self.b.op(Op::Reshape { shape }, &[x])?;
        self.b.op(
            Op::Transpose {
                perm: vec![0, 2, 1, 3],
            },
            &[r],
        )
    }

    fn merge_heads(&mut self, x: NodeId) -> Result<NodeId> {
        let t = self.b.op(
            Op::Transpose {
                perm: vec![0, 2, 1, 3],
            },
            &[x],
        )?;
        let shape = Shape::new([Dim::sym("batch"), Dim::sym("seq"), self.d()]);
        self.b.op(Op::Reshape { shape }, &[t])
    }

    /// Softmax attention written out, as the spec lowering writes it.
    fn attention(&mut self, c: &mut impl Choices, x: NodeId) -> Result<NodeId> {
        let q = self.linear(c, x)?;
        let k = self.linear(c, x)?;
        let v = self.linear(c, x)?;
        let (q, k, v) = (
            self.split_heads(q)?,
            self.split_heads(k)?,
            self.split_heads(v)?,
        );
        let kt = self.b.op(
            Op::Transpose {
                perm: vec![0, 1, 3, 2],
            },
            &[k],
        )?;
        let scale = self
            .b
            .constant(1.0 / (self.head_dim as f64).sqrt(), DType::F32)?;
        let mut scores = if c.choose(2) == 0 {
            let s = self.b.op(Op::MatMul, &[q, kt])?;
            self.b.op(Op::Binary(BinaryOp::Mul), &[s, scale])?
        } else {
            let qs = self.b.op(Op::Binary(BinaryOp::Mul), &[q, scale])?;
            self.b.op(Op::MatMul, &[qs, kt])?
        };
        if c.choose(2) == 0 {
            let mask = self.mask(c)?;
            let neg = self.b.constant(f64::NEG_INFINITY, DType::F32)?;
            scores = self.b.op(Op::Select, &[mask, scores, neg])?;
        }
        let p = self.b.op(Op::Softmax { axis: 3 }, &[scores])?;
        let o = self.b.op(Op::MatMul, &[p, v])?;
        let o = self.merge_heads(o)?;
        self.linear(c, o)
    }

    /// A `[seq, seq]` mask as the spec lowering writes it; every query keeps a key.
    fn mask(&mut self, c: &mut impl Choices) -> Result<NodeId> {
        let text = [
            "k <= q",
            "k <= q && q - k < 2",
            "q - k < 3 && k - q < 3",
            "k >= q",
        ][c.choose(4) as usize];
        let expr = crate::MaskExpr::parse(text).map_err(|e| crate::IrError::Spec {
            layer: None,
            message: format!("generator mask `{text}`: {e}"),
        })?;
        let ss = Shape::new([Dim::sym("seq"), Dim::sym("seq")]);
        self.b.add(
            Op::Mask { expr },
            &[],
            Some(crate::TensorType::new(ss, DType::Bool)),
        )
    }

    /// One step on `x: [b, s, d]`; every step returns `[b, s, d]`.
    fn step(&mut self, c: &mut impl Choices, x: NodeId, pool: &[NodeId]) -> Result<NodeId> {
        let other = pool[c.choose(pool.len() as u32) as usize];
        Ok(match c.choose(12) {
            0 => self.attention(c, x)?,
            1 => self.linear(c, x)?,
            2 => {
                // Gated MLP: act(x @ w1) * (x @ w2), then a projection.
                let act = [
                    UnaryOp::Silu,
                    UnaryOp::GeluTanh,
                    UnaryOp::Gelu,
                    UnaryOp::Relu,
                ][c.choose(4) as usize];
                let a = self.linear(c, x)?;
                let a = self.b.op(Op::Unary(act), &[a])?;
                let g = self.linear(c, x)?;
                let h = self.b.op(Op::Binary(BinaryOp::Mul), &[a, g])?;
                self.linear(c, h)?
            }
            3 => {
                let gamma = self.param(Shape::new([self.d()]))?;
                if c.choose(2) == 0 {
                    self.b.op(Op::RmsNorm { eps: EPS }, &[x, gamma])?
                } else {
                    let beta = self.param(Shape::new([self.d()]))?;
                    self.b.op(Op::LayerNorm { eps: EPS }, &[x, gamma, beta])?
                }
            }
            4 => {
                let u = [
                    UnaryOp::Neg,
                    UnaryOp::Tanh,
                    UnaryOp::Sigmoid,
                    UnaryOp::Silu,
                    UnaryOp::Abs,
                ][c.choose(5) as usize];
                self.b.op(Op::Unary(u), &[x])?
            }
            5 => {
                let k = self.constant(c)?;
                let (a, b) = if c.choose(2) == 0 { (x, k) } else { (k, x) };
                self.b.op(Op::Binary(BinaryOp::Mul), &[a, b])?
            }
            6 => {
                let op = [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Max]
                    [c.choose(4) as usize];
                self.b.op(Op::Binary(op), &[x, other])?
            }
            7 => {
                // A layout pair that cancels, with a scalar inside half the time.
                let t = self.split_heads(x)?;
                let t = if c.choose(2) == 0 {
                    let k = self.constant(c)?;
                    self.b.op(Op::Binary(BinaryOp::Mul), &[t, k])?
                } else {
                    t
                };
                self.merge_heads(t)?
            }
            8 => {
                // Softmax over features, or a reduction broadcast back.
                if c.choose(2) == 0 {
                    self.b.op(Op::Softmax { axis: 2 }, &[x])?
                } else {
                    let kind =
                        [ReduceKind::Sum, ReduceKind::Max, ReduceKind::Mean][c.choose(3) as usize];
                    let r = self.b.op(
                        Op::Reduce {
                            kind,
                            axes: vec![2],
                            keep_dims: true,
                        },
                        &[x],
                    )?;
                    self.b.op(Op::Binary(BinaryOp::Sub), &[x, r])?
                }
            }
            9 => {
                // Two projections of one input, summed (projection merging).
                let a = self.linear(c, x)?;
                let b = self.linear(c, x)?;
                self.b.op(Op::Binary(BinaryOp::Add), &[a, b])?
            }
            10 => {
                // A scaled matmul: (x·c) @ w.
                let k = self.constant(c)?;
                let xs = self.b.op(Op::Binary(BinaryOp::Mul), &[x, k])?;
                self.linear(c, xs)?
            }
            _ => {
                // Transposes that cancel.
                let t = self.b.op(
                    Op::Transpose {
                        perm: vec![0, 2, 1],
                    },
                    &[x],
                )?;
                self.b.op(
                    Op::Transpose {
                        perm: vec![0, 2, 1],
                    },
                    &[t],
                )?
            }
        })
    }
}
