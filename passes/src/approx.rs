//! Approximations: conversions that change the model's function, so they never run
//! inside saturation — only when the user names them (`--convert performer:256`,
//! `--convert window:4096,sinks:4`), on the optimized graph's fused attention, after
//! which the optimizer runs again so the new form gets its own fast form (FAVOR+
//! becomes chunkwise linear attention, a window becomes block-sparse). The error
//! they introduce is measured by the caller on seeded inputs ([`attention_alone`]
//! gives the one-attention graph it measures on).

use attnc_ir::{
    Attention, BinaryOp, Dim, Graph, GraphBuilder, IrError, LinearAttention, LinearForm, MaskExpr,
    NodeId, Op, ReduceKind, Result, Shape, TensorType, UnaryOp,
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
}

impl fmt::Display for Approximation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Approximation::Performer { features, .. } => write!(f, "performer:{features}"),
            Approximation::Window { window, sinks } => write!(f, "window:{window},sinks:{sinks}"),
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
            other => {
                return Err(format!(
                    "unknown conversion `{}`: expected performer:FEATURES[,seed:S] or window:W[,sinks:S]",
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
        Approximation::Performer { .. } => {
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
    let mut b = GraphBuilder::new(graph.name.clone(), graph.dims.clone());
    let mut map: HashMap<NodeId, NodeId> = HashMap::new();
    let mut layers = Vec::new();
    for id in graph.node_ids() {
        let node = graph.node(id);
        b.set_layer(node.layer.clone());
        let operands: Vec<NodeId> = graph.operands(id).iter().map(|o| map[o]).collect();
        let new = match &node.op {
            Op::Attention(a) => {
                if let Some(why) = unsupported(a, approx) {
                    return Err(IrError::Type {
                        layer: node.layer.clone(),
                        op: node.op.name().into(),
                        message: format!("cannot convert to {approx}: {why}"),
                    });
                }
                if let Some(l) = &node.layer {
                    if !layers.contains(l) {
                        layers.push(l.clone());
                    }
                }
                match approx {
                    Approximation::Window { window, sinks } => {
                        let w = window_mask(a.mask.as_ref(), *window, *sinks);
                        let op = Op::Attention(Attention {
                            mask: Some(w),
                            block: None,
                            ..a.clone()
                        });
                        b.op(op, &operands)?
                    }
                    Approximation::Performer { features, seed } => {
                        performer(&mut b, a, &operands, *features, *seed)?
                    }
                }
            }
            op => {
                let declared = op.is_source().then(|| node.ty.clone());
                b.add(op.clone(), &operands, declared)?
            }
        };
        map.insert(id, new);
    }
    for (name, id) in graph.outputs() {
        b.output(name.clone(), map[id])?;
    }
    Ok((b.finish()?, layers))
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
    let (q, mut k, mut v) = (ops[0], ops[1], ops[2]);
    let qs = sizes(b, q)?;
    let dtype = b.ty(q).dtype;
    if a.groups > 1 {
        k = repeat_heads(b, k, a.groups)?;
        v = repeat_heads(b, v, a.groups)?;
    }
    let omega = b.add(
        Op::RandomFeatures { seed },
        &[],
        Some(TensorType::new(Shape::new([m, qs[3] as u64]), dtype)),
    )?;
    let wt = b.op(Op::Transpose { perm: vec![1, 0] }, &[omega])?;
    let features = |b: &mut GraphBuilder, x: NodeId| -> Result<NodeId> {
        let s = b.constant(a.scale.sqrt(), dtype)?;
        let xs = b.op(Op::Binary(BinaryOp::Mul), &[x, s])?;
        let proj = b.op(Op::MatMul, &[xs, wt])?;
        let sq = b.op(Op::Binary(BinaryOp::Mul), &[xs, xs])?;
        let sq = b.op(
            Op::Reduce {
                kind: ReduceKind::Sum,
                axes: vec![3],
                keep_dims: true,
            },
            &[sq],
        )?;
        let half = b.constant(0.5, dtype)?;
        let sq = b.op(Op::Binary(BinaryOp::Mul), &[sq, half])?;
        let e = b.op(Op::Binary(BinaryOp::Sub), &[proj, sq])?;
        let e = b.op(Op::Unary(UnaryOp::Exp), &[e])?;
        let norm = b.constant(1.0 / (m as f64).sqrt(), dtype)?;
        b.op(Op::Binary(BinaryOp::Mul), &[e, norm])
    };
    let fq = features(b, q)?;
    let fk = features(b, k)?;
    let l = LinearAttention {
        causal: a.mask.is_some(),
        decay: attnc_ir::Decay::None,
        normalize: true,
        form: LinearForm::Parallel,
    };
    b.op(Op::LinearAttention(l), &[fq, fk, v])
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
