//! Approximations: conversions that change the model's function, so they never run
//! inside saturation — only when the user names them (`--convert performer:256`,
//! `--convert window:4096,sinks:4`), on the optimized graph's fused attention, after
//! which the optimizer runs again so the new form gets its own fast form (FAVOR+
//! becomes chunkwise linear attention, a window becomes block-sparse). The error
//! they introduce is measured by the caller on seeded inputs ([`attention_alone`]
//! gives the one-attention graph it measures on).

use attnc_ir::{
    Attention, BinaryOp, Dim, Graph, GraphBuilder, IrError, LinearAttention, LinearForm, MaskExpr,
    NodeId, Op, Result, Shape, TensorType, UnaryOp,
};
use std::collections::HashMap;
use std::fmt;

/// A named approximation of softmax attention.
#[derive(Clone, Debug, PartialEq)]
pub enum Approximation {
    /// FAVOR+ (Performer): `features` positive orthogonal random features drawn from
    /// `seed`, causal when the attention is.
    Performer { features: u64, seed: u64 },
    /// Sliding window of `window` keys (each side, for bidirectional attention) plus
    /// the first `sinks` keys (StreamingLLM), on top of the attention's own mask.
    Window { window: u64, sinks: u64 },
    /// Scatterbrain: exact scores on a band of `window` keys, FAVOR+ with `features`
    /// random features (from `seed`) everywhere else.
    Scatterbrain {
        features: u64,
        seed: u64,
        window: u64,
    },
}

impl fmt::Display for Approximation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Approximation::Performer { features, .. } => write!(f, "performer:{features}"),
            Approximation::Window { window, sinks } => write!(f, "window:{window},sinks:{sinks}"),
            Approximation::Scatterbrain {
                features, window, ..
            } => write!(f, "scatterbrain:{features},window:{window}"),
        }
    }
}

impl Approximation {
    /// `performer:M[,seed:S]` or `window:W[,sinks:S]`.
    pub fn parse(text: &str) -> std::result::Result<Approximation, String> {
        let mut fields: HashMap<&str, u64> = HashMap::new();
        let mut kind = None;
        for (i, part) in text.split(',').map(str::trim).enumerate() {
            let (name, value) = part.split_once(':').ok_or_else(|| {
                format!("`{part}` in `--convert {text}`: expected NAME:VALUE (e.g. performer:256, window:4096,sinks:4)")
            })?;
            let value: u64 = value
                .trim()
                .parse()
                .map_err(|_| format!("`{value}` in `--convert {text}` is not a count"))?;
            if i == 0 {
                kind = Some(name.trim());
            }
            if fields.insert(name.trim(), value).is_some() {
                return Err(format!("`{name}` is given twice in `--convert {text}`"));
            }
        }
        let allowed: &[&str] = match kind {
            Some("performer") => &["performer", "seed"],
            Some("window") => &["window", "sinks"],
            Some("scatterbrain") => &["scatterbrain", "window", "seed"],
            other => {
                return Err(format!(
                    "unknown conversion `{}`: expected performer:FEATURES[,seed:S], window:W[,sinks:S] or scatterbrain:FEATURES,window:W[,seed:S]",
                    other.unwrap_or(text)
                ))
            }
        };
        if let Some(bad) = fields.keys().find(|k| !allowed.contains(k)) {
            return Err(format!(
                "`{bad}` does not go with `{}` in `--convert {text}`",
                allowed[0]
            ));
        }
        let get = |k: &str| fields.get(k).copied();
        Ok(match kind {
            Some("performer") => {
                let features = get("performer").unwrap_or(0);
                if features == 0 || features > 65536 {
                    return Err(format!(
                        "performer needs 1 to 65536 features, got {features}"
                    ));
                }
                Approximation::Performer {
                    features,
                    seed: get("seed").unwrap_or(0),
                }
            }
            Some("scatterbrain") => {
                let features = get("scatterbrain").unwrap_or(0);
                let window = get("window").unwrap_or(0);
                if features == 0 || features > 65536 || window == 0 {
                    return Err(format!(
                        "scatterbrain needs 1 to 65536 features and a window: `scatterbrain:256,window:64`, got `{text}`"
                    ));
                }
                Approximation::Scatterbrain {
                    features,
                    seed: get("seed").unwrap_or(0),
                    window,
                }
            }
            _ => {
                let window = get("window").unwrap_or(0);
                if window == 0 {
                    return Err("window needs at least one key".into());
                }
                Approximation::Window {
                    window,
                    sinks: get("sinks").unwrap_or(0),
                }
            }
        })
    }
}

/// Why an attention cannot take an approximation, or `None` when it can.
fn unsupported(a: &Attention, approx: &Approximation) -> Option<String> {
    if a.listed || a.segments {
        return Some("its blocks or documents are data".into());
    }
    match approx {
        Approximation::Window { .. } => None,
        Approximation::Performer { .. } | Approximation::Scatterbrain { .. } => {
            let causal = MaskExpr::parse("k <= q").expect("a valid mask");
            if a.bias || a.softcap.is_some() {
                Some("FAVOR+ estimates exp(q·k): no score bias or softcap".into())
            } else if a.mask.as_ref().is_some_and(|m| *m != causal) {
                Some(format!(
                    "FAVOR+ keeps only a causal mask or none, not `{}`",
                    a.mask.as_ref().map(ToString::to_string).unwrap_or_default()
                ))
            } else {
                None
            }
        }
    }
}

/// `graph` with every fused attention it can take replaced by `approx`, and the
/// names of the layers changed. An attention that cannot take it is an error naming
/// its layer.
pub fn approximate(graph: &Graph, approx: &Approximation) -> Result<(Graph, Vec<String>)> {
    let mut layers: Vec<String> = Vec::new();
    let converted = attnc_ir::expand::rebuild(graph, |b, op, operands| {
        let Op::Attention(a) = op else {
            return Ok(None);
        };
        let layer = b.layer().map(str::to_string);
        let refuse = |why: String| IrError::Type {
            layer: layer.clone(),
            op: op.name().into(),
            message: format!("cannot convert to {approx}: {why}"),
        };
        if let Some(why) = unsupported(a, approx) {
            return Err(refuse(why));
        }
        if let Some(l) = &layer {
            if !layers.contains(l) {
                layers.push(l.clone());
            }
        }
        Ok(Some(match approx {
            Approximation::Window { window, sinks } => {
                let w = window_mask(a.mask.as_ref(), *window, *sinks);
                let op = Op::Attention(Attention {
                    mask: Some(w),
                    block: None,
                    ..a.clone()
                });
                b.op(op, operands)?
            }
            Approximation::Performer { features, seed } => {
                performer(b, a, operands, *features, *seed)?
            }
            Approximation::Scatterbrain {
                features,
                seed,
                window,
            } => {
                let n = sizes(b, operands[0])?[2] as u64;
                if !n.is_multiple_of(*window) || *window >= n {
                    return Err(refuse(format!(
                        "the window must divide the sequence ({n}) and be shorter"
                    )));
                }
                scatterbrain(b, a, operands, [*features, *seed, *window])?
            }
        }))
    })?;
    Ok((converted, layers))
}

/// `mask && (|q − k| < window || k < sinks)`.
fn window_mask(mask: Option<&MaskExpr>, window: u64, sinks: u64) -> MaskExpr {
    let near = format!("(q - k < {window} && k - q < {window})");
    let keep = if sinks > 0 {
        format!("({near} || k < {sinks})")
    } else {
        near
    };
    let text = match mask {
        Some(m) => format!("({m}) && {keep}"),
        None => keep,
    };
    MaskExpr::parse(&text).expect("a well-formed window mask")
}

/// FAVOR+: `φ(x) = exp(ω·x̃ − |x̃|²/2) / √m`, `x̃ = x·√scale`, so `φ(q)·φ(k)` is an
/// unbiased estimate of `exp(scale·q·k)`; then normalized (causal) linear attention.
/// GQA keys and values are repeated to every query head.
fn performer(
    b: &mut GraphBuilder,
    a: &Attention,
    ops: &[NodeId],
    m: u64,
    seed: u64,
) -> Result<NodeId> {
    let (q, k, v) = heads(b, a, ops)?;
    let (fq, fk) = favor(b, a, q, k, m, seed)?;
    let l = LinearAttention {
        causal: a.mask.is_some(),
        decay: attnc_ir::Decay::None,
        normalize: true,
        form: LinearForm::Parallel,
    };
    b.op(Op::LinearAttention(l), &[fq, fk, v])
}

/// `q, k, v` with GQA keys and values repeated to every query head.
fn heads(b: &mut GraphBuilder, a: &Attention, ops: &[NodeId]) -> Result<(NodeId, NodeId, NodeId)> {
    let (q, mut k, mut v) = (ops[0], ops[1], ops[2]);
    if a.groups > 1 {
        k = repeat_heads(b, k, a.groups)?;
        v = repeat_heads(b, v, a.groups)?;
    }
    Ok((q, k, v))
}

/// FAVOR+ features `(φ(q), φ(k))` of `m` orthogonal random features from `seed`.
fn favor(
    b: &mut GraphBuilder,
    a: &Attention,
    q: NodeId,
    k: NodeId,
    m: u64,
    seed: u64,
) -> Result<(NodeId, NodeId)> {
    let qs = sizes(b, q)?;
    let dtype = b.ty(q).dtype;
    let omega = b.add(
        Op::RandomFeatures { seed },
        &[],
        Some(TensorType::new(Shape::new([m, qs[3] as u64]), dtype)),
    )?;
    Ok((
        attnc_ir::favor_features(b, q, omega, a.scale)?,
        attnc_ir::favor_features(b, k, omega, a.scale)?,
    ))
}

/// Scatterbrain (Chen et al., 2021): the attention matrix as its FAVOR+ low-rank
/// estimate `L = φ(q)·φ(k)ᵀ` plus a sparse correction `S = exp(scale·q·kᵀ) − L` on a
/// band of `window` keys (causal: `i − window < j ≤ i`; else `|i − j| < window`), so
/// the band is exact and the rest low-rank: `out = (S + L)·[v, 1]` normalized by its
/// last column. The band runs chunk by chunk (each query chunk of `window` rows
/// against its own and the neighbouring key chunks), the low-rank part as linear
/// attention: `O(N·window + N·m·D)`, never `N²`. Scores are not max-shifted: like
/// the features, they assume moderate `scale·q·k`.
fn scatterbrain(
    b: &mut GraphBuilder,
    a: &Attention,
    ops: &[NodeId],
    [m, seed, w]: [u64; 3],
) -> Result<NodeId> {
    let (q, k, v) = heads(b, a, ops)?;
    let (fq, fk) = favor(b, a, q, k, m, seed)?;
    let s = sizes(b, q)?;
    let dv = sizes(b, v)?[3];
    let (bs, h, n, d, w) = (s[0], s[1], s[2], s[3], w as usize);
    let dtype = b.ty(q).dtype;
    let causal = a.mask.is_some();
    let fm = m as usize;
    let one = b.constant(1.0, dtype)?;
    let ones = b.op(
        Op::Broadcast {
            shape: dims(&[bs, h, n, 1]),
        },
        &[one],
    )?;
    let v1 = b.op(Op::Concat { axis: 3 }, &[v, ones])?;
    // Low rank, everywhere: φ(q)·(φ(k)ᵀ·[v, 1]) (causal: prefix sums).
    let low = LinearAttention {
        causal,
        decay: attnc_ir::Decay::None,
        normalize: false,
        form: LinearForm::Parallel,
    };
    let low = b.op(Op::LinearAttention(low), &[fq, fk, v1])?;
    // The band, per query chunk: its keys are the chunks before (and after) it.
    let nc = n / w;
    let chunks = |b: &mut GraphBuilder, x: NodeId, f: usize| {
        b.op(
            Op::Reshape {
                shape: dims(&[bs, h, nc, w, f]),
            },
            &[x],
        )
    };
    let zero = b.constant(0.0, dtype)?;
    let band = |b: &mut GraphBuilder, x: NodeId, f: usize| -> Result<NodeId> {
        let c = chunks(b, x, f)?;
        let pad = b.op(
            Op::Broadcast {
                shape: dims(&[bs, h, 1, w, f]),
            },
            &[zero],
        )?;
        let mut parts = Vec::new();
        let cut = |b: &mut GraphBuilder, x, start, end| {
            b.op(
                Op::Slice {
                    axis: 2,
                    start: Dim::Const(start as u64),
                    end: Dim::Const(end as u64),
                },
                &[x],
            )
        };
        let before = cut(b, c, 0, nc - 1)?;
        parts.push(b.op(Op::Concat { axis: 2 }, &[pad, before])?);
        parts.push(c);
        if !causal {
            let after = cut(b, c, 1, nc)?;
            parts.push(b.op(Op::Concat { axis: 2 }, &[after, pad])?);
        }
        b.op(Op::Concat { axis: 3 }, &parts)
    };
    let kw = if causal { 2 * w } else { 3 * w };
    // Key slot `j` of query row `r` in chunk `c` is position (c − 1)·w + j.
    let expr = if causal {
        format!("k > q && k <= q + {w} && (h > 0 || k >= {w})")
    } else {
        format!(
            "k > q && k < q + {} && (h > 0 || k >= {w}) && (h < {} || k < {})",
            2 * w,
            nc - 1,
            2 * w
        )
    };
    let mask = b.add(
        Op::Mask {
            expr: MaskExpr::parse(&expr).expect("a well-formed band mask"),
        },
        &[],
        Some(TensorType::new(dims(&[nc, w, kw]), attnc_ir::DType::Bool)),
    )?;
    let t = |b: &mut GraphBuilder, x| {
        b.op(
            Op::Transpose {
                perm: vec![0, 1, 2, 4, 3],
            },
            &[x],
        )
    };
    let (qc, kb, vb) = (chunks(b, q, d)?, band(b, k, d)?, band(b, v1, dv + 1)?);
    let (fqc, fkb) = (chunks(b, fq, fm)?, band(b, fk, fm)?);
    let kbt = t(b, kb)?;
    let scores = b.op(Op::MatMul, &[qc, kbt])?;
    let scale = b.constant(a.scale, dtype)?;
    let scores = b.op(Op::Binary(BinaryOp::Mul), &[scores, scale])?;
    let ninf = b.constant(f64::NEG_INFINITY, dtype)?;
    let scores = b.op(Op::Select, &[mask, scores, ninf])?;
    let exact = b.op(Op::Unary(UnaryOp::Exp), &[scores])?;
    let fkbt = t(b, fkb)?;
    let estimate = b.op(Op::MatMul, &[fqc, fkbt])?;
    let estimate = b.op(Op::Select, &[mask, estimate, zero])?;
    let correction = b.op(Op::Binary(BinaryOp::Sub), &[exact, estimate])?;
    let sparse = b.op(Op::MatMul, &[correction, vb])?;
    let sparse = b.op(
        Op::Reshape {
            shape: dims(&[bs, h, n, dv + 1]),
        },
        &[sparse],
    )?;
    let total = b.op(Op::Binary(BinaryOp::Add), &[low, sparse])?;
    let cut = |b: &mut GraphBuilder, start: usize, end: usize| {
        b.op(
            Op::Slice {
                axis: 3,
                start: Dim::Const(start as u64),
                end: Dim::Const(end as u64),
            },
            &[total],
        )
    };
    let num = cut(b, 0, dv)?;
    let den = cut(b, dv, dv + 1)?;
    b.op(Op::Binary(BinaryOp::Div), &[num, den])
}

fn dims(d: &[usize]) -> Shape {
    Shape(d.iter().map(|&n| Dim::Const(n as u64)).collect())
}

fn sizes(b: &GraphBuilder, x: NodeId) -> Result<Vec<usize>> {
    let s = b
        .dims()
        .resolve(&b.ty(x).shape)
        .map_err(|message| IrError::Type {
            layer: b.layer().map(str::to_string),
            op: "attention".into(),
            message,
        })?;
    Ok(s.iter().map(|&n| n as usize).collect())
}

/// `[B, Hkv, N, D] -> [B, Hkv·G, N, D]`, each KV head repeated for its `G` query heads.
fn repeat_heads(b: &mut GraphBuilder, x: NodeId, g: u64) -> Result<NodeId> {
    let s: Vec<u64> = sizes(b, x)?.iter().map(|&n| n as u64).collect();
    let shape = |d: &[u64]| Shape(d.iter().map(|&n| Dim::Const(n)).collect());
    let x = b.op(
        Op::Reshape {
            shape: shape(&[s[0], s[1], 1, s[2], s[3]]),
        },
        &[x],
    )?;
    let x = b.op(
        Op::Broadcast {
            shape: shape(&[s[0], s[1], g, s[2], s[3]]),
        },
        &[x],
    )?;
    b.op(
        Op::Reshape {
            shape: shape(&[s[0], s[1] * g, s[2], s[3]]),
        },
        &[x],
    )
}

/// The first fused attention of `graph` alone, on inputs `q, k, v` of its shapes with
/// batch 1 and one KV head (and its query heads): what the error of an approximation
/// is measured on. `None` if `graph` has no fused attention.
pub fn attention_alone(graph: &Graph) -> Option<(Graph, String)> {
    let (id, a) = graph.node_ids().find_map(|id| match &graph.node(id).op {
        Op::Attention(a) if !a.listed && !a.segments && !a.bias => Some((id, a.clone())),
        _ => None,
    })?;
    let ops = graph.operands(id);
    let (q, k, v) = (
        graph.sizes(ops[0]),
        graph.sizes(ops[1]),
        graph.sizes(ops[2]),
    );
    let g = a.groups as usize;
    let mut b = GraphBuilder::new(format!("{}.attention", graph.name), graph.dims.clone());
    let layer = graph.node(id).layer.clone().unwrap_or_default();
    b.set_layer(Some(layer.clone()));
    let shape = |d: &[usize]| Shape(d.iter().map(|&n| Dim::Const(n as u64)).collect());
    let dtype = graph.node(ops[0]).ty.dtype;
    let qi = b.input("q", shape(&[1, g, q[2], q[3]]), dtype).ok()?;
    let ki = b.input("k", shape(&[1, 1, k[2], k[3]]), dtype).ok()?;
    let vi = b.input("v", shape(&[1, 1, v[2], v[3]]), dtype).ok()?;
    let o = b
        .op(Op::Attention(Attention { block: None, ..a }), &[qi, ki, vi])
        .ok()?;
    b.output("o", o).ok()?;
    Some((b.finish().ok()?, layer))
}
