//! Spec → IR, in textbook form.
//!
//! Attention is written the way a paper writes it — Q/K/V projections, heads split
//! by reshape/transpose, K/V repeated for GQA (or, for MLA, up-projected from the
//! latent and joined with the shared rotary key), `softmax(mask(Q·Kᵀ·scale))·V` — and
//! the FFN as plain matmuls and activations. Finding the fused, sparse or linear form
//! is the optimizer's job, so the frontend never takes a shortcut.

mod mixers;
mod moe;

use super::{
    Arch, Attention, Ffn, FfnKind, LayerConfig, Mla, NormKind, NormPlacement, Position,
    ScoreModifier, Spec,
};
use crate::{BinaryOp, DType, Dim, Dims, Graph, GraphBuilder, IrError, NodeId, Op, Shape, UnaryOp};

/// Lower a spec to a verified graph with one output: `logits` for a decoder,
/// `hidden` for an encoder.
pub fn lower(spec: &Spec) -> Result<Graph, IrError> {
    let layers = spec.layer_configs()?;
    let dtype = DType::from_name(&spec.dtype).unwrap_or(DType::F32);
    let mut dims = Dims::new();
    for (name, &v) in &spec.dims {
        dims.bind(name.clone(), v);
    }
    // `validate` keeps these names out of `[dims]`.
    if spec.arch != Arch::Vit {
        dims.bind("vocab", spec.vocab);
    }
    dims.bind("d_model", spec.d_model);
    let mut l = Lowerer {
        b: GraphBuilder::new(spec.name.clone(), dims),
        spec,
        dtype,
        token_table: None,
        segments: None,
        layer_index: 0,
    };
    let mut x = l.embed()?;
    for cfg in &layers {
        x = l.layer(cfg, x)?;
    }
    l.head(x)?;
    l.b.finish()
}

struct Lowerer<'s> {
    b: GraphBuilder,
    spec: &'s Spec,
    dtype: DType,
    token_table: Option<NodeId>,
    /// The `segments` input (document ids), made on first use.
    segments: Option<NodeId>,
    /// The layer being lowered.
    layer_index: u64,
}

impl Lowerer<'_> {
    /// A dimension named `name` of size `value`: the name is bound on first use and
    /// reused while it means the same size; a clash (a layer override with another
    /// width) falls back to the number.
    fn dim(&mut self, name: &str, value: u64) -> Dim {
        match self.b.dims().get(name) {
            Some(v) if v == value => Dim::sym(name),
            Some(_) => Dim::Const(value),
            None => {
                self.bind(name, value);
                Dim::sym(name)
            }
        }
    }

    fn bind(&mut self, name: &str, value: u64) {
        // The builder owns the dims; binding a fresh name never invalidates a node.
        let mut dims = self.b.dims().clone();
        dims.bind(name, value);
        self.b.set_dims(dims);
    }

    fn shape(&self, dims: &[&Dim]) -> Shape {
        Shape(dims.iter().map(|d| (*d).clone()).collect())
    }

    fn reshape(&mut self, x: NodeId, dims: &[&Dim]) -> Result<NodeId, IrError> {
        let shape = self.shape(dims);
        self.b.op(Op::Reshape { shape }, &[x])
    }

    fn param(&mut self, name: String, dims: &[&Dim]) -> Result<NodeId, IrError> {
        let shape = self.shape(dims);
        self.b.param(name, shape, self.dtype)
    }

    /// RoPE with the spec's base and scaling.
    fn rope(&mut self, x: NodeId) -> Result<NodeId, IrError> {
        let op = Op::Rope {
            theta: self.spec.rope_theta,
            scaling: self.spec.rope_scaling()?,
        };
        self.op(op, &[x])
    }

    fn op(&mut self, op: Op, args: &[NodeId]) -> Result<NodeId, IrError> {
        self.b.op(op, args)
    }

    fn bin(&mut self, op: BinaryOp, a: NodeId, b: NodeId) -> Result<NodeId, IrError> {
        self.b.op(Op::Binary(op), &[a, b])
    }

    fn unary(&mut self, op: UnaryOp, a: NodeId) -> Result<NodeId, IrError> {
        self.b.op(Op::Unary(op), &[a])
    }

    fn scalar(&mut self, v: f64) -> Result<NodeId, IrError> {
        self.b.constant(v, self.dtype)
    }

    /// `x·W (+ b)` for `W: [in, out]`.
    fn linear(
        &mut self,
        x: NodeId,
        prefix: &str,
        w: &str,
        bias: Option<&str>,
        din: &Dim,
        dout: &Dim,
    ) -> Result<NodeId, IrError> {
        let w = self.param(format!("{prefix}.{w}"), &[din, dout])?;
        let mut y = self.op(Op::MatMul, &[x, w])?;
        if let Some(bname) = bias {
            let bias = self.param(format!("{prefix}.{bname}"), &[dout])?;
            y = self.bin(BinaryOp::Add, y, bias)?;
        }
        Ok(y)
    }

    fn norm(&mut self, x: NodeId, prefix: &str) -> Result<NodeId, IrError> {
        let d = Dim::sym("d_model");
        let eps = self.spec.norm_eps;
        let gamma = self.param(format!("{prefix}.weight"), &[&d])?;
        match self.spec.norm {
            NormKind::LayerNorm => {
                let beta = self.param(format!("{prefix}.bias"), &[&d])?;
                self.op(Op::LayerNorm { eps }, &[x, gamma, beta])
            }
            NormKind::RmsNorm => self.op(Op::RmsNorm { eps }, &[x, gamma]),
        }
    }

    fn embed(&mut self) -> Result<NodeId, IrError> {
        if let Some(v) = self.spec.vision()? {
            return self.embed_patches(&v);
        }
        self.b.set_layer(Some("embed".into()));
        let (batch, seq) = (Dim::sym("batch"), Dim::sym("seq"));
        let (vocab, d) = (Dim::sym("vocab"), Dim::sym("d_model"));
        let tokens = self
            .b
            .input("tokens", self.shape(&[&batch, &seq]), DType::I64)?;
        let table = self.param("embed.tokens".into(), &[&vocab, &d])?;
        self.token_table = Some(table);
        let mut x = self.op(Op::Embedding, &[table, tokens])?;
        if self.spec.position == Position::Learned {
            let max = self.spec.max_positions.unwrap_or(0);
            let max_pos = self.dim("max_positions", max);
            let pos = self.param("embed.positions".into(), &[&max_pos, &d])?;
            let pos = self.op(
                Op::Slice {
                    axis: 0,
                    start: Dim::Const(0),
                    end: seq,
                },
                &[pos],
            )?;
            x = self.bin(BinaryOp::Add, x, pos)?;
        }
        if let Some(types) = self.spec.token_types {
            // Every token is of type 0: the table's first row, added everywhere.
            let n = self.dim("token_types", types);
            let table = self.param("embed.token_types".into(), &[&n, &d])?;
            let first = Op::Slice {
                axis: 0,
                start: Dim::Const(0),
                end: Dim::Const(1),
            };
            let row = self.op(first, &[table])?;
            x = self.bin(BinaryOp::Add, x, row)?;
        }
        if self.spec.embed_norm {
            x = self.norm(x, "embed.norm")?;
        }
        Ok(x)
    }

    fn layer(&mut self, cfg: &LayerConfig, x: NodeId) -> Result<NodeId, IrError> {
        let prefix = format!("layers.{}", cfg.index);
        self.layer_index = cfg.index;
        self.b.set_layer(Some(format!("{prefix}.attn")));
        let x = self.residual(x, &format!("{prefix}.attn_norm"), |l, h| {
            l.attention(&cfg.attention, h, &format!("{prefix}.attn"))
        })?;
        if cfg.ffn.kind == FfnKind::None {
            return Ok(x);
        }
        self.b.set_layer(Some(format!("{prefix}.ffn")));
        self.residual(x, &format!("{prefix}.ffn_norm"), |l, h| {
            l.ffn(&cfg.ffn, h, &format!("{prefix}.ffn"), cfg.index)
        })
    }

    /// `x + f(norm(x))` (pre-norm) or `norm(x + f(x))` (post-norm).
    fn residual(
        &mut self,
        x: NodeId,
        norm: &str,
        f: impl FnOnce(&mut Self, NodeId) -> Result<NodeId, IrError>,
    ) -> Result<NodeId, IrError> {
        match self.spec.norm_placement {
            NormPlacement::Pre => {
                let h = self.norm(x, norm)?;
                let y = f(self, h)?;
                self.bin(BinaryOp::Add, x, y)
            }
            NormPlacement::Post => {
                let y = f(self, x)?;
                let s = self.bin(BinaryOp::Add, x, y)?;
                self.norm(s, norm)
            }
        }
    }

    fn attention(&mut self, a: &Attention, x: NodeId, prefix: &str) -> Result<NodeId, IrError> {
        match (&a.mla, a.mixer) {
            (Some(m), _) => self.mla(a, m, x, prefix),
            (None, Some(m)) => self.mixer(a, m, x, prefix),
            (None, None) => self.mha(a, x, prefix),
        }
    }

    /// Multi-head, grouped-query or multi-query attention.
    fn mha(&mut self, a: &Attention, x: NodeId, prefix: &str) -> Result<NodeId, IrError> {
        let heads = self.dim("heads", a.heads);
        let kv_heads = self.dim("kv_heads", a.kv_heads);
        let head_dim = self.dim("head_dim", a.head_dim);
        let q_dim = self.width("q_dim", a.heads * a.head_dim);

        if let Some((clusters, window)) = a.routing {
            // Routing Transformer: shared queries and keys routed to k-means centroids
            // (a parameter: in training, an online k-means of the unit vectors).
            let (qk, v) = self.shared_qk(a, x, prefix, &q_dim, &heads, &head_dim)?;
            let c = Dim::Const(clusters);
            let mu = self.param(
                format!("{prefix}.routing_centroids"),
                &[&heads, &c, &head_dim],
            )?;
            let r = crate::Routing {
                scale: a.scale,
                clusters,
                window,
                causal: self.spec.arch == Arch::Decoder,
            };
            let o = self.op(Op::Routing(r), &[qk, v, mu])?;
            return self.merge_heads(o, a, &q_dim, prefix);
        }
        if let Some((n_hashes, buckets, chunk)) = a.lsh {
            // Reformer: one projection for queries and keys; random rotations (a
            // parameter: drawn when bound) hash them into buckets.
            let (qk, v) = self.shared_qk(a, x, prefix, &q_dim, &heads, &head_dim)?;
            let rounds = Dim::Const(n_hashes);
            let half = Dim::Const(buckets / 2);
            let rot = self.param(
                format!("{prefix}.lsh_rotations"),
                &[&rounds, &head_dim, &half],
            )?;
            let l = crate::Lsh {
                scale: a.scale,
                n_hashes,
                buckets,
                chunk,
                causal: self.spec.arch == Arch::Decoder,
            };
            let o = self.op(Op::Lsh(l), &[qk, v, rot])?;
            return self.merge_heads(o, a, &q_dim, prefix);
        }
        let (q, mut k, mut v) = self.project_heads(a, x, prefix)?;
        if let Some((block, top_k)) = a.moba {
            // MoBA's gating is the model, not a schedule: written as its own op.
            let m = crate::Moba {
                scale: a.scale,
                groups: a.heads / a.kv_heads,
                block,
                top_k,
            };
            let o = self.op(Op::Moba(m), &[q, k, v])?;
            return self.merge_heads(o, a, &q_dim, prefix);
        }
        if a.heads != a.kv_heads {
            k = self.repeat_kv(k, a, &kv_heads, &head_dim)?;
            v = self.repeat_kv(v, a, &kv_heads, &head_dim)?;
        }
        self.attend(a, q, k, v, &heads, &q_dim, prefix)
    }

    /// Shared-QK heads (Reformer, Routing Transformer): one projection `wqk` for queries
    /// and keys (rotated when the model uses RoPE) and `wv`, split into heads.
    fn shared_qk(
        &mut self,
        a: &Attention,
        x: NodeId,
        prefix: &str,
        q_dim: &Dim,
        heads: &Dim,
        head_dim: &Dim,
    ) -> Result<(NodeId, NodeId), IrError> {
        let d = Dim::sym("d_model");
        let bias = |name: &'static str| a.qkv_bias.then_some(name);
        let qk = self.linear(x, prefix, "wqk", bias("bqk"), &d, q_dim)?;
        let v = self.linear(x, prefix, "wv", bias("bv"), &d, q_dim)?;
        let mut qk = self.split_heads(qk, heads, head_dim)?;
        let v = self.split_heads(v, heads, head_dim)?;
        if self.spec.position == Position::Rope {
            qk = self.rope(qk)?;
        }
        Ok((qk, v))
    }

    /// Multi-head latent attention (DeepSeek-V2), in the paper's uncompressed form:
    /// keys and values are up-projected from the latent `c = rms_norm(x·W_kv_a)` of
    /// rank `r`; each head's query and key are a non-rotary part of width `dn` and a
    /// rotary part of width `dr`, the key's rotary part shared by all heads.
    fn mla(&mut self, a: &Attention, m: &Mla, x: NodeId, prefix: &str) -> Result<NodeId, IrError> {
        let (batch, seq, d) = (Dim::sym("batch"), Dim::sym("seq"), Dim::sym("d_model"));
        let one = Dim::Const(1);
        let eps = self.spec.norm_eps;
        let heads = self.dim("heads", a.heads);
        let rank = self.dim("kv_lora_rank", m.kv_lora_rank);
        let dr = self.dim("qk_rope_head_dim", m.qk_rope_head_dim);
        let dn = self.dim("qk_nope_head_dim", m.qk_nope_head_dim);
        let dv = self.dim("v_head_dim", m.v_head_dim);
        let dqk = self.dim("qk_head_dim", m.qk_head_dim());
        let q_dim = self.dim("mla_q_dim", a.heads * m.qk_head_dim());
        let kv_dim = self.dim("mla_kv_dim", a.heads * m.qk_nope_head_dim);
        let v_dim = self.dim("mla_v_dim", a.heads * m.v_head_dim);

        // Queries: [batch, seq, heads·(dn+dr)] -> [batch, heads, seq, dn+dr], split.
        let q = match m.q_lora_rank {
            None => self.linear(x, prefix, "wq", None, &d, &q_dim)?,
            Some(qr) => {
                let q_rank = self.dim("q_lora_rank", qr);
                let cq = self.linear(x, prefix, "wq_a", None, &d, &q_rank)?;
                let gamma = self.param(format!("{prefix}.q_norm.weight"), &[&q_rank])?;
                let cq = self.op(Op::RmsNorm { eps }, &[cq, gamma])?;
                self.linear(cq, prefix, "wq_b", None, &q_rank, &q_dim)?
            }
        };
        let q = self.split_heads(q, &heads, &dqk)?;
        let q_nope = self.op(
            Op::Slice {
                axis: 3,
                start: Dim::Const(0),
                end: dn.clone(),
            },
            &[q],
        )?;
        let q_rope = self.op(
            Op::Slice {
                axis: 3,
                start: dn.clone(),
                end: dqk.clone(),
            },
            &[q],
        )?;
        let q_rope = self.rope(q_rope)?;

        // The latent: [batch, seq, r].
        let c = self.linear(x, prefix, "wkv_a", None, &d, &rank)?;
        let gamma = self.param(format!("{prefix}.kv_norm.weight"), &[&rank])?;
        let c = self.op(Op::RmsNorm { eps }, &[c, gamma])?;

        // The rotary key, one for all heads: [batch, 1, seq, dr].
        let k_rope = self.linear(x, prefix, "wk_rope", None, &d, &dr)?;
        let k_rope = self.op(
            Op::Reshape {
                shape: self.shape(&[&batch, &one, &seq, &dr]),
            },
            &[k_rope],
        )?;
        let k_rope = self.rope(k_rope)?;

        // Keys and values up-projected from the latent: [batch, heads, seq, dn | dv].
        let k_nope = self.linear(c, prefix, "wk_b", None, &rank, &kv_dim)?;
        let k_nope = self.split_heads(k_nope, &heads, &dn)?;
        let v = self.linear(c, prefix, "wv_b", None, &rank, &v_dim)?;
        let v = self.split_heads(v, &heads, &dv)?;

        let q = self.op(Op::Concat { axis: 3 }, &[q_nope, q_rope])?;
        let k_rope = self.op(
            Op::Broadcast {
                shape: self.shape(&[&batch, &heads, &seq, &dr]),
            },
            &[k_rope],
        )?;
        let k = self.op(Op::Concat { axis: 3 }, &[k_nope, k_rope])?;
        self.attend(a, q, k, v, &heads, &v_dim, prefix)
    }

    /// The tail shared by every attention form: `softmax(mask(modify(q·kᵀ·scale)))·v`,
    /// heads merged back to `[batch, seq, out_dim]` and projected by `wo`. `q`, `k`
    /// and `v` are `[batch, heads, seq, ·]` with one key/value head per query head.
    #[allow(clippy::too_many_arguments)]
    fn attend(
        &mut self,
        a: &Attention,
        q: NodeId,
        k: NodeId,
        v: NodeId,
        heads: &Dim,
        out_dim: &Dim,
        prefix: &str,
    ) -> Result<NodeId, IrError> {
        let (batch, seq) = (Dim::sym("batch"), Dim::sym("seq"));
        let kt = self.op(
            Op::Transpose {
                perm: vec![0, 1, 3, 2],
            },
            &[k],
        )?;
        let mut s = self.op(Op::MatMul, &[q, kt])?;
        let scale = self.scalar(a.scale)?;
        s = self.bin(BinaryOp::Mul, s, scale)?;
        if let ScoreModifier::Softcap(c) = a.score_modifier {
            let c = self.scalar(c)?;
            let t = self.bin(BinaryOp::Div, s, c)?;
            let t = self.unary(UnaryOp::Tanh, t)?;
            s = self.bin(BinaryOp::Mul, t, c)?;
        }
        if self.spec.position == Position::Alibi {
            let bias = self.alibi(a.heads, heads, &seq)?;
            s = self.bin(BinaryOp::Add, s, bias)?;
        }
        if let Some(expr) = &a.mask {
            let uses = |c: crate::Coord| expr.coords().contains(&c);
            let mut shape = vec![seq.clone(), seq.clone()];
            if uses(crate::Coord::H) || uses(crate::Coord::B) {
                shape.insert(0, heads.clone());
            }
            if uses(crate::Coord::B) {
                shape.insert(0, batch.clone());
            }
            let m = self.b.add(
                Op::Mask { expr: expr.clone() },
                &[],
                Some(crate::TensorType::new(Shape(shape), DType::Bool)),
            )?;
            let neg_inf = self.scalar(f64::NEG_INFINITY)?;
            s = self.op(Op::Select, &[m, s, neg_inf])?;
        }
        if a.document_mask {
            // seg[b, q] == seg[b, k]: the same document.
            let seg = self.segments()?;
            let one = Dim::Const(1);
            let sq = self.op(
                Op::Reshape {
                    shape: self.shape(&[&batch, &one, &seq, &one]),
                },
                &[seg],
            )?;
            let sk = self.op(
                Op::Reshape {
                    shape: self.shape(&[&batch, &one, &one, &seq]),
                },
                &[seg],
            )?;
            let same = self.op(Op::Compare(crate::CmpOp::Eq), &[sq, sk])?;
            let neg_inf = self.scalar(f64::NEG_INFINITY)?;
            s = self.op(Op::Select, &[same, s, neg_inf])?;
        }
        let p = self.op(Op::Softmax { axis: 3 }, &[s])?;
        let o = self.op(Op::MatMul, &[p, v])?;
        self.merge_heads(o, a, out_dim, prefix)
    }

    /// `[batch, heads, seq, d] -> [batch, seq, out_dim]`, projected by `wo`.
    fn merge_heads(
        &mut self,
        o: NodeId,
        a: &Attention,
        out_dim: &Dim,
        prefix: &str,
    ) -> Result<NodeId, IrError> {
        let o = self.join_heads(o, out_dim)?;
        let out_bias = a.out_bias.then_some("bo");
        self.linear(o, prefix, "wo", out_bias, out_dim, &Dim::sym("d_model"))
    }

    /// `[batch, heads, seq, head_dim] -> [batch, seq, heads·head_dim]`.
    fn join_heads(&mut self, o: NodeId, out_dim: &Dim) -> Result<NodeId, IrError> {
        let (batch, seq) = (Dim::sym("batch"), Dim::sym("seq"));
        let o = self.op(
            Op::Transpose {
                perm: vec![0, 2, 1, 3],
            },
            &[o],
        )?;
        self.op(
            Op::Reshape {
                shape: self.shape(&[&batch, &seq, out_dim]),
            },
            &[o],
        )
    }

    /// The document ids `segments: i64 [batch, seq]`, an input of the embedding layer.
    fn segments(&mut self) -> Result<NodeId, IrError> {
        if let Some(s) = self.segments {
            return Ok(s);
        }
        let layer = self.b.layer().map(str::to_string);
        self.b.set_layer(Some("embed".into()));
        let shape = self.shape(&[&Dim::sym("batch"), &Dim::sym("seq")]);
        let s = self.b.input("segments", shape, DType::I64)?;
        self.b.set_layer(layer);
        self.segments = Some(s);
        Ok(s)
    }

    fn split_heads(&mut self, x: NodeId, heads: &Dim, head_dim: &Dim) -> Result<NodeId, IrError> {
        let (batch, seq) = (Dim::sym("batch"), Dim::sym("seq"));
        let x = self.op(
            Op::Reshape {
                shape: self.shape(&[&batch, &seq, heads, head_dim]),
            },
            &[x],
        )?;
        self.op(
            Op::Transpose {
                perm: vec![0, 2, 1, 3],
            },
            &[x],
        )
    }

    /// GQA's `repeat_kv`: `[b, kv, s, d] -> [b, kv, 1, s, d] -> [b, kv, g, s, d] -> [b, kv·g, s, d]`.
    fn repeat_kv(
        &mut self,
        x: NodeId,
        a: &Attention,
        kv_heads: &Dim,
        head_dim: &Dim,
    ) -> Result<NodeId, IrError> {
        let (batch, seq) = (Dim::sym("batch"), Dim::sym("seq"));
        let one = Dim::Const(1);
        let group = self.dim("kv_group", a.heads / a.kv_heads);
        let heads = self.dim("heads", a.heads);
        let x = self.op(
            Op::Reshape {
                shape: self.shape(&[&batch, kv_heads, &one, &seq, head_dim]),
            },
            &[x],
        )?;
        let x = self.op(
            Op::Broadcast {
                shape: self.shape(&[&batch, kv_heads, &group, &seq, head_dim]),
            },
            &[x],
        )?;
        self.op(
            Op::Reshape {
                shape: self.shape(&[&batch, &heads, &seq, head_dim]),
            },
            &[x],
        )
    }

    /// ALiBi bias `slope_h · (k − q)` with `slope_h = 2^(−8(h+1)/H)` (Press et al.;
    /// the geometric sequence of the paper, used for every head count).
    fn alibi(&mut self, n_heads: u64, heads: &Dim, seq: &Dim) -> Result<NodeId, IrError> {
        let one = Dim::Const(1);
        let ty = |shape: Shape| Some(crate::TensorType::new(shape, DType::I64));
        let h = self.b.add(
            Op::Iota { axis: 0 },
            &[],
            ty(self.shape(&[heads, &one, &one])),
        )?;
        let h = self.op(Op::Cast { to: self.dtype }, &[h])?;
        let c1 = self.scalar(1.0)?;
        let h = self.bin(BinaryOp::Add, h, c1)?;
        let step = self.scalar(-8.0 / n_heads as f64)?;
        let e = self.bin(BinaryOp::Mul, h, step)?;
        let two = self.scalar(2.0)?;
        let slopes = self.bin(BinaryOp::Pow, two, e)?;
        let qi = self
            .b
            .add(Op::Iota { axis: 0 }, &[], ty(self.shape(&[seq, seq])))?;
        let ki = self
            .b
            .add(Op::Iota { axis: 1 }, &[], ty(self.shape(&[seq, seq])))?;
        let dist = self.bin(BinaryOp::Sub, ki, qi)?;
        let dist = self.op(Op::Cast { to: self.dtype }, &[dist])?;
        self.bin(BinaryOp::Mul, slopes, dist)
    }

    fn ffn(&mut self, f: &Ffn, x: NodeId, prefix: &str, index: u64) -> Result<NodeId, IrError> {
        let d = Dim::sym("d_model");
        let hidden = self.dim("ffn_hidden", f.hidden);
        let bias = |name: &'static str| f.bias.then_some(name);
        let act = match f.kind {
            FfnKind::Gelu => UnaryOp::Gelu,
            FfnKind::GeluTanh => UnaryOp::GeluTanh,
            FfnKind::Relu => UnaryOp::Relu,
            FfnKind::Swiglu => {
                let g = self.linear(x, prefix, "w_gate", bias("b_gate"), &d, &hidden)?;
                let u = self.linear(x, prefix, "w_up", bias("b_up"), &d, &hidden)?;
                let g = self.unary(UnaryOp::Silu, g)?;
                let h = self.bin(BinaryOp::Mul, g, u)?;
                return self.linear(h, prefix, "w_down", bias("b_down"), &hidden, &d);
            }
            FfnKind::None => return Ok(x),
            FfnKind::Moe => {
                let m = f.moe.as_ref().ok_or_else(|| IrError::Spec {
                    layer: Some(format!("layers.{index}")),
                    message: "internal: a mixture of experts without its router".into(),
                })?;
                return self.moe(f, m, x, prefix);
            }
        };
        let h = self.linear(x, prefix, "w_up", bias("b_up"), &d, &hidden)?;
        let h = self.unary(act, h)?;
        self.linear(h, prefix, "w_down", bias("b_down"), &hidden, &d)
    }

    /// ViT: `pixels [B, C, H, W]` cut into `P × P` patches, each flattened in `(c, i,
    /// j)` order and projected (`x·W + b`), the class token in front, learned
    /// positions added.
    fn embed_patches(&mut self, v: &super::Vision) -> Result<NodeId, IrError> {
        self.b.set_layer(Some("embed".into()));
        let (batch, seq, d) = (Dim::sym("batch"), Dim::sym("seq"), Dim::sym("d_model"));
        let (g, p) = (v.grid(), v.patch_size);
        let channels = self.dim("channels", v.num_channels);
        let image = self.dim("image_size", v.image_size);
        let grid = Dim::Const(g);
        let patch = Dim::Const(p);
        let pixels = self.b.input(
            "pixels",
            self.shape(&[&batch, &channels, &image, &image]),
            self.dtype,
        )?;
        let x = self.reshape(pixels, &[&batch, &channels, &grid, &patch, &grid, &patch])?;
        let x = self.op(
            Op::Transpose {
                perm: vec![0, 2, 4, 1, 3, 5],
            },
            &[x],
        )?;
        let patches = self.dim("patches", g * g);
        let patch_dim = self.dim("patch_dim", v.num_channels * p * p);
        let x = self.reshape(x, &[&batch, &patches, &patch_dim])?;
        let mut x = self.linear(x, "embed.patch", "weight", Some("bias"), &patch_dim, &d)?;
        if v.class_token {
            let one = Dim::Const(1);
            let cls = self.param("embed.class_token".into(), &[&one, &one, &d])?;
            let shape = self.shape(&[&batch, &one, &d]);
            let cls = self.op(Op::Broadcast { shape }, &[cls])?;
            x = self.op(Op::Concat { axis: 1 }, &[cls, x])?;
        }
        let pos = self.param("embed.positions".into(), &[&seq, &d])?;
        self.bin(BinaryOp::Add, x, pos)
    }

    /// ViT: the class token (or the mean of the patch tokens) through `head.weight`.
    fn head_vit(&mut self, x: NodeId, v: &super::Vision) -> Result<(), IrError> {
        let (batch, d) = (Dim::sym("batch"), Dim::sym("d_model"));
        let pooled = match v.pool {
            super::Pool::Cls => {
                let first = self.op(
                    Op::Slice {
                        axis: 1,
                        start: Dim::Const(0),
                        end: Dim::Const(1),
                    },
                    &[x],
                )?;
                self.reshape(first, &[&batch, &d])?
            }
            super::Pool::Mean => {
                // The mean of the patch tokens: the class token, if any, is left out.
                let patches = if v.class_token {
                    let slice = Op::Slice {
                        axis: 1,
                        start: Dim::Const(1),
                        end: Dim::sym("seq"),
                    };
                    self.op(slice, &[x])?
                } else {
                    x
                };
                self.op(
                    Op::Reduce {
                        kind: crate::ReduceKind::Mean,
                        axes: vec![1],
                        keep_dims: false,
                    },
                    &[patches],
                )?
            }
        };
        let classes = self.dim("classes", v.num_classes);
        let logits = self.linear(pooled, "head", "weight", Some("bias"), &d, &classes)?;
        self.b.output("logits", logits)
    }

    fn head(&mut self, x: NodeId) -> Result<(), IrError> {
        self.b.set_layer(Some("head".into()));
        let x = if self.spec.norm_placement == NormPlacement::Pre {
            self.norm(x, "final_norm")?
        } else {
            x
        };
        if let Some(v) = self.spec.vision()? {
            return self.head_vit(x, &v);
        }
        if self.spec.arch == Arch::Encoder {
            return self.b.output("hidden", x);
        }
        let (vocab, d) = (Dim::sym("vocab"), Dim::sym("d_model"));
        let w = if self.spec.tie_embeddings {
            // The token table [vocab, d] is reused, transposed.
            let table = self.token_table.ok_or_else(|| IrError::Spec {
                layer: Some("head".into()),
                message: "tied embeddings need the token table".into(),
            })?;
            self.op(Op::Transpose { perm: vec![1, 0] }, &[table])?
        } else {
            self.param("lm_head".into(), &[&d, &vocab])?
        };
        let logits = self.op(Op::MatMul, &[x, w])?;
        self.b.output("logits", logits)
    }
}
