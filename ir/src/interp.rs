//! The reference interpreter: evaluates any verified graph with plain, readable loops.
//!
//! It is the oracle for every rewrite and backend, so it favours obviousness over
//! speed: one function per op family, each a loop over row-major indices, computing in
//! `f64` and then rounding the result to the node's dtype (see [`Precision`]).
//!
//! Where `op.rs` leaves a choice open, the interpreter decides as follows, and every
//! backend must agree:
//! - NaN propagates through `max`, `min`, `reduce_max` and `relu` (as in numpy).
//! - `softmax` is the textbook `exp(x - max) / sum(exp(x - max))`: a row whose maximum
//!   is `-inf` (every entry masked) gives NaN, not zeros.
//! - `topk` ranks NaN above `+inf`; equal values go to the lower index.
//! - Integer arithmetic runs on exact integers in `f64` and wraps to the dtype
//!   (two's complement for i32); division truncates toward zero and dividing by zero
//!   is an error. Casting float to integer truncates toward zero, to bool is `!= 0`.
//! - An index outside its axis (embedding, gather, scatter_add) is an error: there is no
//!   clamping and no negative indexing.
//! - Sums (reductions, matmul, norms) add in index order.

use crate::{
    strides, Attention, BinaryOp, DType, Dims, Graph, IrError, MaskExpr, NodeId, Op, ReduceKind,
    Result, Tensor, TopKOutput, UnaryOp,
};
use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::HashMap;

/// How f32 results are kept. f16 and bf16 results are always rounded to their dtype and
/// integer and bool results are always exact, whatever the precision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// Round every f32 result to f32 after each op, as compiled f32 code does.
    F32,
    /// Keep f32 tensors in f64: the oracle.
    F64,
}

/// Round every element to what `t.dtype` can hold (f32, f16, bf16; integers truncate
/// toward zero; bools become 0 or 1).
pub fn round_to_dtype(t: &mut Tensor) {
    let dtype = t.dtype;
    t.data.iter_mut().for_each(|v| *v = round_value(*v, dtype));
}

/// One value rounded to `dtype` (see [`round_to_dtype`]).
fn round_value(v: f64, dtype: DType) -> f64 {
    match dtype {
        DType::F32 => v as f32 as f64,
        DType::F16 => half::f16::from_f64(v).to_f64(),
        DType::BF16 => half::bf16::from_f64(v).to_f64(),
        DType::I32 => (v.trunc() as i64 as i32) as f64,
        DType::I64 => v.trunc() as i64 as f64,
        DType::Bool => (v != 0.0) as u8 as f64,
    }
}

/// Round a result as `precision` asks: everything but f32 kept in f64 goes to its dtype.
fn round(t: &mut Tensor, precision: Precision) {
    if !(t.dtype == DType::F32 && precision == Precision::F64) {
        round_to_dtype(t);
    }
}

/// Whether rounding `t` under `precision` would leave it unchanged.
fn is_rounded(t: &Tensor, precision: Precision) -> bool {
    if t.dtype == DType::F32 && precision == Precision::F64 {
        return true;
    }
    t.data.iter().all(|&v| {
        let r = round_value(v, t.dtype);
        r == v || (r.is_nan() && v.is_nan())
    })
}

/// Evaluate `graph` and return one tensor per [`Graph::outputs`], in order.
///
/// Bindings are keyed by input and param name. Only the nodes the outputs depend on are
/// evaluated (an input nothing uses need not be bound), and each intermediate is freed
/// right after its last use, since models are large. Bound weights are borrowed, not
/// copied, unless `precision` has to round them.
pub fn eval(
    graph: &Graph,
    bindings: &HashMap<String, Tensor>,
    precision: Precision,
) -> Result<Vec<Tensor>> {
    let n = graph.len();
    let outputs = graph.outputs();
    let mut is_output = vec![false; n];
    for (name, id) in outputs {
        if id.index() >= n {
            return Err(IrError::Eval {
                layer: None,
                node: id.index(),
                op: "output".into(),
                message: format!(
                    "output `{name}` refers to %{}, which does not exist",
                    id.index()
                ),
            });
        }
        is_output[id.index()] = true;
    }

    // Operands precede their users, so one backward sweep finds every needed node.
    let mut live = is_output.clone();
    for i in (0..n).rev() {
        if live[i] {
            for o in graph.operands(NodeId::new(i)) {
                live[o.index()] = true;
            }
        }
    }
    // The last node that reads each value; after it runs the value can go.
    let mut last_use = vec![None; n];
    for i in (0..n).filter(|&i| live[i]) {
        for o in graph.operands(NodeId::new(i)) {
            last_use[o.index()] = Some(i);
        }
    }

    let mut values: Vec<Option<Cow<Tensor>>> = (0..n).map(|_| None).collect();
    for i in (0..n).filter(|&i| live[i]) {
        let id = NodeId::new(i);
        let operands = graph.operands(id);
        let value = {
            let args = operand_values(graph, id, &operands, &values)?;
            eval_node(graph, id, &args, bindings, precision)?
        };
        values[i] = Some(value);
        for o in operands {
            if last_use[o.index()] == Some(i) && !is_output[o.index()] {
                values[o.index()] = None;
            }
        }
    }

    let mut result = Vec::with_capacity(outputs.len());
    for (k, (_, id)) in outputs.iter().enumerate() {
        // The same node may be named twice; only its last mention may take the value.
        let needed_again = outputs[k + 1..].iter().any(|(_, later)| later == id);
        let slot = &mut values[id.index()];
        let value = if needed_again {
            slot.clone()
        } else {
            slot.take()
        };
        let value = value.ok_or_else(|| missing_value(graph, *id, *id))?;
        result.push(value.into_owned());
    }
    Ok(result)
}

/// The value of every node, indexed by node index (for layer-by-layer comparison).
/// Unlike [`eval`] this evaluates every node, so every input and param must be bound.
pub fn eval_nodes(
    graph: &Graph,
    bindings: &HashMap<String, Tensor>,
    precision: Precision,
) -> Result<Vec<Tensor>> {
    let mut values: Vec<Option<Cow<Tensor>>> = Vec::with_capacity(graph.len());
    for id in graph.node_ids() {
        let operands = graph.operands(id);
        let value = {
            let args = operand_values(graph, id, &operands, &values)?;
            eval_node(graph, id, &args, bindings, precision)?
        };
        values.push(Some(value));
    }
    // Every slot was filled above.
    Ok(values.into_iter().flatten().map(Cow::into_owned).collect())
}

/// The computed values of `operands`; a missing one is an interpreter bug, reported as
/// an error rather than a panic.
fn operand_values<'v>(
    graph: &Graph,
    id: NodeId,
    operands: &[NodeId],
    values: &'v [Option<Cow<Tensor>>],
) -> Result<Vec<&'v Tensor>> {
    operands
        .iter()
        .map(|&o| match values.get(o.index()) {
            Some(Some(v)) => Ok(v.as_ref()),
            _ => Err(missing_value(graph, id, o)),
        })
        .collect()
}

fn missing_value(graph: &Graph, id: NodeId, operand: NodeId) -> IrError {
    let node = (id.index() < graph.len()).then(|| graph.node(id));
    IrError::Eval {
        layer: node.and_then(|n| n.layer.clone()),
        node: id.index(),
        op: node.map_or("output", |n| n.op.name()).to_string(),
        message: format!(
            "internal error: the value of %{} is not available",
            operand.index()
        ),
    }
}

/// Evaluate one node from its operand values, checking bindings and rounding the result.
fn eval_node<'a>(
    graph: &Graph,
    id: NodeId,
    args: &[&Tensor],
    bindings: &'a HashMap<String, Tensor>,
    precision: Precision,
) -> Result<Cow<'a, Tensor>> {
    let node = graph.node(id);
    let fail = |message: String| IrError::Eval {
        layer: node.layer.clone(),
        node: id.index(),
        op: node.op.name().to_string(),
        message,
    };
    let shape = graph.sizes(id);
    let dtype = node.ty.dtype;
    if let Op::Input { name } | Op::Param { name } = &node.op {
        let kind = if matches!(node.op, Op::Input { .. }) {
            "input"
        } else {
            "param"
        };
        let t = bound_value(bindings, kind, name, &shape, dtype).map_err(fail)?;
        // Weights are large: borrow the binding unless rounding would change it.
        if is_rounded(t, precision) {
            return Ok(Cow::Borrowed(t));
        }
        let mut t = t.clone();
        round(&mut t, precision);
        return Ok(Cow::Owned(t));
    }
    let data = compute(graph, &node.op, &shape, args).map_err(&fail)?;
    let expected: usize = shape.iter().product();
    if data.len() != expected {
        return Err(fail(format!(
            "internal error: computed {} elements for a {} result",
            data.len(),
            describe(&shape, dtype)
        )));
    }
    let mut t = Tensor { dtype, shape, data };
    round(&mut t, precision);
    Ok(Cow::Owned(t))
}

/// The binding of an input or param, checked against the node's type.
fn bound_value<'a>(
    bindings: &'a HashMap<String, Tensor>,
    kind: &str,
    name: &str,
    shape: &[usize],
    dtype: DType,
) -> Result<&'a Tensor, String> {
    let t = bindings
        .get(name)
        .ok_or_else(|| format!("no value bound for {kind} `{name}`"))?;
    if t.shape != shape || t.dtype != dtype {
        return Err(format!(
            "{kind} `{name}` expects a {} tensor, got {}",
            describe(shape, dtype),
            describe(&t.shape, t.dtype)
        ));
    }
    let n: usize = shape.iter().product();
    if t.data.len() != n {
        return Err(format!(
            "{kind} `{name}` is bound to a {} tensor holding {} elements instead of {n}",
            describe(shape, dtype),
            t.data.len()
        ));
    }
    Ok(t)
}

/// `[2, 3] f32`, the form messages use.
fn describe(shape: &[usize], dtype: DType) -> String {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}] {dtype}", dims.join(", "))
}

/// The elements (row-major, before rounding) of the result of `op`, whose shape is
/// `shape`, applied to `args`. Operand shapes are those the verified graph promises.
fn compute(graph: &Graph, op: &Op, shape: &[usize], args: &[&Tensor]) -> Result<Vec<f64>, String> {
    Ok(match op {
        Op::Input { .. } | Op::Param { .. } => {
            return Err("internal error: sources are bound, not computed".into())
        }
        Op::Const { value } => vec![*value],
        Op::Iota { axis } => iota(shape, *axis),
        Op::Mask { expr } => mask(shape, expr, &graph.dims)?,
        Op::Unary(u) => args[0].data.iter().map(|&x| unary(*u, x)).collect(),
        Op::Binary(b) => binary(*b, args[0], args[1], shape)?,
        Op::Compare(c) => {
            let (x, y) = (expand(args[0], shape), expand(args[1], shape));
            x.iter()
                .zip(y.iter())
                .map(|(&x, &y)| c.holds(x, y) as u8 as f64)
                .collect()
        }
        Op::Select => select(args[0], args[1], args[2], shape),
        Op::Cast { to } => cast(args[0], *to),
        Op::Reduce {
            kind,
            axes,
            keep_dims: _,
        } => reduce(args[0], *kind, axes),
        Op::Softmax { axis } => softmax(args[0], *axis),
        Op::LayerNorm { eps } => layer_norm(args[0], args[1], args[2], *eps),
        Op::RmsNorm { eps } => rms_norm(args[0], args[1], *eps),
        Op::MatMul => matmul(args[0], args[1], shape),
        // Row-major order is unchanged by a reshape: only the shape differs.
        Op::Reshape { .. } => args[0].data.clone(),
        Op::Transpose { perm } => transpose(args[0], perm, shape),
        Op::Broadcast { .. } => expand(args[0], shape).into_owned(),
        Op::Concat { axis } => concat(args, *axis),
        Op::Slice { axis, start, end } => {
            let start = graph.dims.resolve_dim(start)? as usize;
            let end = graph.dims.resolve_dim(end)? as usize;
            slice(args[0], *axis, start, end)?
        }
        Op::Gather { axis } => gather(args[0], args[1], *axis)?,
        Op::ScatterAdd { axis } => scatter_add(args[0], args[1], args[2], *axis)?,
        Op::Embedding => embedding(args[0], args[1])?,
        Op::Rope { theta, scaling } => rope(args[0], *theta, scaling),
        Op::TopK { k, output } => topk(args[0], *k as usize, *output),
        Op::CumSum { axis } => cumsum(args[0], *axis),
        Op::Scan { axis } => scan(args[0], args[1], *axis),
        Op::RandomFeatures { seed } => crate::orthogonal_features(shape[0], shape[1], *seed),
        Op::LinearAttention(l) => linear_attention(l, args),
        Op::MoeDispatch(m) => moe_dispatch(m, args)?,
        Op::Attention(a) => attention(a, args, &graph.dims),
        Op::Moba(m) => moba(m, args),
        Op::Lsh(l) => lsh(l, args),
        Op::Routing(r) => routing(r, args),
    })
}

/// `x / sqrt(|x|² + 1e-6)`: a unit key of shared-QK attention.
fn unit_row(x: &[f64]) -> Vec<f64> {
    let norm = 1.0 / (x.iter().map(|a| a * a).sum::<f64>() + 1e-6).sqrt();
    x.iter().map(|a| a * norm).collect()
}

/// The Routing Transformer's attention, cluster by cluster as [`crate::Routing`]
/// defines it.
fn routing(r: &crate::Routing, args: &[&Tensor]) -> Vec<f64> {
    let (x, v, mu) = (args[0], args[1], args[2]);
    let (b, h, n, d) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let dv = v.shape[3];
    let (nc, w) = (r.clusters as usize, r.window as usize);
    let mut out = vec![0.0; b * h * n * dv];
    for bi in 0..b {
        for hi in 0..h {
            let base = (bi * h + hi) * n;
            let xr = |i: usize| &x.data[(base + i) * d..(base + i + 1) * d];
            let unit: Vec<Vec<f64>> = (0..n).map(|i| unit_row(xr(i))).collect();
            let mut sum = vec![0.0; n * dv];
            let mut count = vec![0usize; n];
            for c in 0..nc {
                let centroid = &mu.data[(hi * nc + c) * d..(hi * nc + c + 1) * d];
                let aff: Vec<f64> = (0..n)
                    .map(|i| unit[i].iter().zip(centroid).map(|(a, b)| a * b).sum())
                    .collect();
                let mut order: Vec<usize> = (0..n).collect();
                order.sort_by(|&i, &j| descending(aff[i], aff[j])); // stable
                let members = &order[..w];
                for &qi in members {
                    let keys: Vec<usize> = members
                        .iter()
                        .copied()
                        .filter(|&kj| !r.causal || kj <= qi)
                        .collect();
                    let scores: Vec<f64> = keys
                        .iter()
                        .map(|&kj| {
                            xr(qi)
                                .iter()
                                .zip(&unit[kj])
                                .map(|(a, b)| a * b)
                                .sum::<f64>()
                                * r.scale
                        })
                        .collect();
                    let mx = scores.iter().copied().fold(f64::NEG_INFINITY, nan_max);
                    let ps: Vec<f64> = scores.iter().map(|s| (s - mx).exp()).collect();
                    let total: f64 = ps.iter().sum();
                    for (&kj, p) in keys.iter().zip(&ps) {
                        let vr = &v.data[(base + kj) * dv..(base + kj + 1) * dv];
                        for t in 0..dv {
                            sum[qi * dv + t] += p / total * vr[t];
                        }
                    }
                    count[qi] += 1;
                }
            }
            for i in 0..n {
                for t in 0..dv {
                    out[(base + i) * dv + t] = sum[i * dv + t] / count[i].max(1) as f64;
                }
            }
        }
    }
    out
}

/// Reformer's LSH attention, round by round as [`crate::Lsh`] defines it.
fn lsh(l: &crate::Lsh, args: &[&Tensor]) -> Vec<f64> {
    let (x, v, rot) = (args[0], args[1], args[2]);
    let (b, h, n, d) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let dv = v.shape[3];
    let half = (l.buckets / 2) as usize;
    let c = l.chunk as usize;
    let nc = n / c;
    let rounds = l.n_hashes as usize;
    let mut out = vec![0.0; b * h * n * dv];
    for bi in 0..b {
        for hi in 0..h {
            let base = (bi * h + hi) * n;
            let xr = |i: usize| &x.data[(base + i) * d..(base + i + 1) * d];
            let vr = |i: usize| &v.data[(base + i) * dv..(base + i + 1) * dv];
            let unit: Vec<Vec<f64>> = (0..n).map(|i| unit_row(xr(i))).collect();
            // Per round: output rows and log-sum-exps, in original order.
            let mut outs = vec![vec![0.0; n * dv]; rounds];
            let mut lses = vec![vec![0.0; n]; rounds];
            for r in 0..rounds {
                let bucket: Vec<usize> = (0..n)
                    .map(|i| {
                        let mut best = (f64::NEG_INFINITY, 0);
                        for j in 0..2 * half {
                            let col = j % half;
                            let p: f64 = (0..d)
                                .map(|t| xr(i)[t] * rot.data[(r * d + t) * half + col])
                                .sum();
                            let p = if j < half { p } else { -p };
                            if p > best.0 {
                                best = (p, j);
                            }
                        }
                        best.1
                    })
                    .collect();
                let mut order: Vec<usize> = (0..n).collect();
                order.sort_by_key(|&i| (bucket[i], i));
                for (sp, &qi) in order.iter().enumerate() {
                    let chunk = sp / c;
                    let prev = (chunk + nc - 1) % nc;
                    let keys: Vec<usize> = (prev * c..prev * c + c)
                        .chain(chunk * c..chunk * c + c)
                        .map(|p| order[p])
                        .collect();
                    let scores: Vec<f64> = keys
                        .iter()
                        .map(|&ki| {
                            if l.causal && ki > qi {
                                f64::NEG_INFINITY
                            } else if ki == qi {
                                -1e5
                            } else {
                                xr(qi)
                                    .iter()
                                    .zip(&unit[ki])
                                    .map(|(a, b)| a * b)
                                    .sum::<f64>()
                                    * l.scale
                            }
                        })
                        .collect();
                    let mx = scores.iter().copied().fold(f64::NEG_INFINITY, nan_max);
                    let ps: Vec<f64> = scores.iter().map(|s| (s - mx).exp()).collect();
                    let sum: f64 = ps.iter().sum();
                    lses[r][qi] = sum.ln() + mx;
                    for (&ki, p) in keys.iter().zip(&ps) {
                        for t in 0..dv {
                            outs[r][qi * dv + t] += p / sum * vr(ki)[t];
                        }
                    }
                }
            }
            for i in 0..n {
                let mx = (0..rounds)
                    .map(|r| lses[r][i])
                    .fold(f64::NEG_INFINITY, nan_max);
                let ws: Vec<f64> = (0..rounds).map(|r| (lses[r][i] - mx).exp()).collect();
                let total: f64 = ws.iter().sum();
                for (r, w) in ws.iter().enumerate() {
                    for t in 0..dv {
                        out[(base + i) * dv + t] += w / total * outs[r][i * dv + t];
                    }
                }
            }
        }
    }
    out
}

/// MoBA: per query block, its own block plus the `top_k` earlier key blocks whose mean
/// key scores highest against the block's mean query (a stable sort: ties keep the
/// earlier block); then causal softmax attention over the chosen blocks' keys.
fn moba(m: &crate::Moba, args: &[&Tensor]) -> Vec<f64> {
    let (q, k, v) = (args[0], args[1], args[2]);
    let (b, h, s, dk) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3]);
    let (hkv, dv) = (k.shape[1], v.shape[3]);
    let (bs, groups) = (m.block as usize, m.groups.max(1) as usize);
    let nb = s / bs;
    let row = |head: usize, heads: usize, bi: usize, i: usize, d: usize| -> usize {
        ((bi * heads + head) * s + i) * d
    };
    let mean = |t: &Tensor, heads: usize, bi: usize, head: usize, blk: usize| -> Vec<f64> {
        let mut out = vec![0.0; dk];
        for i in blk * bs..(blk + 1) * bs {
            let r = row(head, heads, bi, i, dk);
            out.iter_mut()
                .zip(&t.data[r..r + dk])
                .for_each(|(o, x)| *o += x);
        }
        out.iter_mut().for_each(|o| *o /= bs as f64);
        out
    };
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let mut out = vec![0.0; b * h * s * dv];
    for bi in 0..b {
        for hi in 0..h {
            let kv = hi / groups;
            let kbar: Vec<Vec<f64>> = (0..nb).map(|j| mean(k, hkv, bi, kv, j)).collect();
            for blk in 0..nb {
                let qbar = mean(q, h, bi, hi, blk);
                let mut past: Vec<usize> = (0..blk).collect();
                let score: Vec<f64> = past.iter().map(|&j| dot(&qbar, &kbar[j])).collect();
                past.sort_by(|&x, &y| descending(score[x], score[y]));
                let mut chosen: Vec<usize> = past.into_iter().take(m.top_k as usize).collect();
                chosen.push(blk);
                for qi in blk * bs..(blk + 1) * bs {
                    let qr = row(hi, h, bi, qi, dk);
                    let q_row = &q.data[qr..qr + dk];
                    let keys: Vec<usize> = chosen
                        .iter()
                        .flat_map(|&j| j * bs..(j + 1) * bs)
                        .filter(|&ki| ki <= qi)
                        .collect();
                    let scores: Vec<f64> = keys
                        .iter()
                        .map(|&ki| {
                            let kr = row(kv, hkv, bi, ki, dk);
                            dot(q_row, &k.data[kr..kr + dk]) * m.scale
                        })
                        .collect();
                    let mx = scores.iter().copied().fold(f64::NEG_INFINITY, nan_max);
                    let ps: Vec<f64> = scores.iter().map(|x| (x - mx).exp()).collect();
                    let l: f64 = ps.iter().sum();
                    let o = row(hi, h, bi, qi, dv);
                    for (&ki, p) in keys.iter().zip(&ps) {
                        let vr = row(kv, hkv, bi, ki, dv);
                        for d in 0..dv {
                            out[o + d] += p / l * v.data[vr + d];
                        }
                    }
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------
// Index helpers.

/// Calls `f` with `sum(index[d] * strides[d])` for every multi-index of `shape`, in
/// row-major order. With a tensor's own strides that is just 0, 1, 2, ...; other strides
/// walk a transposed or broadcast view of it.
fn for_each_offset(shape: &[usize], strides: &[usize], mut f: impl FnMut(usize)) {
    let count: usize = shape.iter().product();
    let mut index = vec![0; shape.len()];
    let mut offset = 0;
    for _ in 0..count {
        f(offset);
        // Advance like an odometer: bump the last axis, carrying into earlier ones.
        for d in (0..shape.len()).rev() {
            index[d] += 1;
            offset += strides[d];
            if index[d] < shape[d] {
                break;
            }
            offset -= strides[d] * shape[d];
            index[d] = 0;
        }
    }
}

/// Strides that read a row-major tensor of shape `from` as if it had the (numpy
/// broadcast) shape `to`: missing leading axes and axes of size 1 get stride 0.
fn broadcast_strides(from: &[usize], to: &[usize]) -> Vec<usize> {
    let own = strides(from);
    let offset = to.len() - from.len();
    (0..to.len())
        .map(|d| {
            if d < offset || from[d - offset] == 1 {
                0
            } else {
                own[d - offset]
            }
        })
        .collect()
}

/// The elements of `t` broadcast to `shape`, row-major (borrowed when no broadcasting
/// is needed).
fn expand<'t>(t: &'t Tensor, shape: &[usize]) -> Cow<'t, [f64]> {
    if t.shape == shape {
        return Cow::Borrowed(&t.data);
    }
    let mut out = Vec::with_capacity(shape.iter().product());
    for_each_offset(shape, &broadcast_strides(&t.shape, shape), |src| {
        out.push(t.data[src])
    });
    Cow::Owned(out)
}

/// `(outer, n, inner)`: a row-major `shape` viewed as `[outer, n, inner]` around `axis`,
/// so element `(o, i, r)` sits at `(o * n + i) * inner + r`.
fn split_at_axis(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    let outer = shape[..axis].iter().product();
    let inner = shape[axis + 1..].iter().product();
    (outer, shape[axis], inner)
}

/// An index value as a position below `bound`, or `None` when it is out of range.
fn check_index(v: f64, bound: usize) -> Option<usize> {
    (v >= 0.0 && v < bound as f64).then_some(v as usize)
}

/// NaN-propagating maximum and minimum.
fn nan_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

fn nan_min(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.min(b)
    }
}

// ---------------------------------------------------------------------------------
// Sources.

/// `out[i...] = i_axis`.
fn iota(shape: &[usize], axis: usize) -> Vec<f64> {
    let (outer, n, inner) = split_at_axis(shape, axis);
    (0..outer * n * inner)
        .map(|flat| ((flat / inner) % n) as f64)
        .collect()
}

/// The mask expression at every element. Coordinates are the trailing indices: `k` is
/// the last axis, `q` the one before, then `h`, then `b`; missing ones are 0.
fn mask(shape: &[usize], expr: &MaskExpr, dims: &Dims) -> Result<Vec<f64>, String> {
    let rank = shape.len();
    if rank > 4 {
        return Err(format!(
            "a mask has at most 4 dims (b, h, q, k), got {rank}"
        ));
    }
    let st = strides(shape);
    let count: usize = shape.iter().product();
    Ok((0..count)
        .map(|flat| {
            let mut at = [0i64; 4]; // b, h, q, k
            for d in 0..rank {
                at[4 - rank + d] = ((flat / st[d]) % shape[d]) as i64;
            }
            expr.holds(at[0], at[1], at[2], at[3], dims) as u8 as f64
        })
        .collect())
}

// ---------------------------------------------------------------------------------
// Elementwise ops.

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn unary(op: UnaryOp, x: f64) -> f64 {
    use std::f64::consts::{FRAC_1_SQRT_2, PI};
    match op {
        UnaryOp::Neg => -x,
        UnaryOp::Abs => x.abs(),
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Rsqrt => 1.0 / x.sqrt(),
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Sigmoid => sigmoid(x),
        UnaryOp::Silu => x * sigmoid(x),
        // x·Φ(x), Φ the standard normal CDF.
        UnaryOp::Gelu => 0.5 * x * (1.0 + libm::erf(x * FRAC_1_SQRT_2)),
        UnaryOp::GeluTanh => {
            0.5 * x * (1.0 + ((2.0 / PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
        }
        // e^x - 1 for x <= 0 (exp_m1 computes it without cancellation near 0).
        UnaryOp::Elu => {
            if x > 0.0 {
                x
            } else {
                x.exp_m1()
            }
        }
        // Written so NaN stays NaN.
        UnaryOp::Relu => {
            if x < 0.0 {
                0.0
            } else {
                x
            }
        }
    }
}

/// `a op b` with broadcasting; on integers division truncates toward zero.
fn binary(op: BinaryOp, a: &Tensor, b: &Tensor, shape: &[usize]) -> Result<Vec<f64>, String> {
    let int = a.dtype.is_int();
    let (x, y) = (expand(a, shape), expand(b, shape));
    x.iter()
        .zip(y.iter())
        .map(|(&x, &y)| {
            Ok(match op {
                BinaryOp::Add => x + y,
                BinaryOp::Sub => x - y,
                BinaryOp::Mul => x * y,
                BinaryOp::Div if int => {
                    if y == 0.0 {
                        return Err(format!("integer division by zero ({x} / 0)"));
                    }
                    // Rust's integer division truncates toward zero, like C.
                    (x as i64).wrapping_div(y as i64) as f64
                }
                BinaryOp::Div => x / y,
                BinaryOp::Max => nan_max(x, y),
                BinaryOp::Min => nan_min(x, y),
                BinaryOp::Pow => x.powf(y),
            })
        })
        .collect()
}

/// `cond ? a : b`, all three broadcast to `shape`.
fn select(cond: &Tensor, a: &Tensor, b: &Tensor, shape: &[usize]) -> Vec<f64> {
    let (c, x, y) = (expand(cond, shape), expand(a, shape), expand(b, shape));
    (0..c.len())
        .map(|i| if c[i] != 0.0 { x[i] } else { y[i] })
        .collect()
}

/// Float to integer truncates toward zero, anything to bool is `!= 0`; the result is
/// then rounded to `to` like every other result (f16 overflow gives inf, i32 wraps).
fn cast(a: &Tensor, to: DType) -> Vec<f64> {
    a.data
        .iter()
        .map(|&v| match to {
            DType::I32 | DType::I64 => v.trunc(),
            DType::Bool => (v != 0.0) as u8 as f64,
            DType::F32 | DType::F16 | DType::BF16 => v,
        })
        .collect()
}

// ---------------------------------------------------------------------------------
// Reductions and normalisations.

/// Sum, max or mean over `axes`. The flat index of the result is the same with or
/// without `keep_dims` (dropping size-1 axes does not move anything in row-major
/// order), so one loop serves both.
fn reduce(a: &Tensor, kind: ReduceKind, axes: &[usize]) -> Vec<f64> {
    let mut kept = a.shape.clone();
    for &ax in axes {
        kept[ax] = 1;
    }
    // Strides into the result; a reduced axis does not move the result offset.
    let mut out_strides = strides(&kept);
    for &ax in axes {
        out_strides[ax] = 0;
    }
    let init = match kind {
        ReduceKind::Sum | ReduceKind::Mean => 0.0,
        ReduceKind::Max => f64::NEG_INFINITY,
    };
    let mut out = vec![init; kept.iter().product()];
    let mut flat = 0; // walking the input in row-major order
    for_each_offset(&a.shape, &out_strides, |o| {
        let x = a.data[flat];
        out[o] = match kind {
            ReduceKind::Sum | ReduceKind::Mean => out[o] + x,
            ReduceKind::Max => nan_max(out[o], x),
        };
        flat += 1;
    });
    if kind == ReduceKind::Mean {
        let count: usize = axes.iter().map(|&ax| a.shape[ax]).product();
        out.iter_mut().for_each(|v| *v /= count as f64);
    }
    out
}

/// `exp(x - max) / sum(exp(x - max))` along `axis`. Subtracting the max keeps exp from
/// overflowing; a row whose max is -inf gives NaN, as the formula does.
fn softmax(a: &Tensor, axis: usize) -> Vec<f64> {
    let (outer, n, inner) = split_at_axis(&a.shape, axis);
    let mut out = vec![0.0; a.len()];
    for o in 0..outer {
        for r in 0..inner {
            let at = |i: usize| (o * n + i) * inner + r;
            let max = (0..n)
                .map(|i| a.data[at(i)])
                .fold(f64::NEG_INFINITY, nan_max);
            let mut sum = 0.0;
            for i in 0..n {
                let e = (a.data[at(i)] - max).exp();
                out[at(i)] = e;
                sum += e;
            }
            for i in 0..n {
                out[at(i)] /= sum;
            }
        }
    }
    out
}

/// `(x - mean) / sqrt(var + eps) * gamma + beta` over the last axis, with the biased
/// variance (divided by d, as PyTorch's LayerNorm does).
fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Vec<f64> {
    let d = x.shape[x.rank() - 1];
    let mut out = vec![0.0; x.len()];
    for row in 0..x.len().checked_div(d).unwrap_or(0) {
        let xs = &x.data[row * d..(row + 1) * d];
        let mean = xs.iter().sum::<f64>() / d as f64;
        let var = xs.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / d as f64;
        let denom = (var + eps).sqrt();
        for i in 0..d {
            out[row * d + i] = (xs[i] - mean) / denom * gamma.data[i] + beta.data[i];
        }
    }
    out
}

/// `x / sqrt(mean(x²) + eps) * gamma` over the last axis.
fn rms_norm(x: &Tensor, gamma: &Tensor, eps: f64) -> Vec<f64> {
    let d = x.shape[x.rank() - 1];
    let mut out = vec![0.0; x.len()];
    for row in 0..x.len().checked_div(d).unwrap_or(0) {
        let xs = &x.data[row * d..(row + 1) * d];
        let mean_square = xs.iter().map(|v| v * v).sum::<f64>() / d as f64;
        let denom = (mean_square + eps).sqrt();
        for i in 0..d {
            out[row * d + i] = xs[i] / denom * gamma.data[i];
        }
    }
    out
}

/// Inclusive prefix sum along `axis`.
fn cumsum(a: &Tensor, axis: usize) -> Vec<f64> {
    let (outer, n, inner) = split_at_axis(&a.shape, axis);
    let mut out = vec![0.0; a.len()];
    for o in 0..outer {
        for r in 0..inner {
            let mut sum = 0.0;
            for i in 0..n {
                let at = (o * n + i) * inner + r;
                sum += a.data[at];
                out[at] = sum;
            }
        }
    }
    out
}

/// `out[t] = a[t]·out[t-1] + x[t]` along `axis`.
fn scan(x: &Tensor, a: &Tensor, axis: usize) -> Vec<f64> {
    let (outer, n, inner) = split_at_axis(&x.shape, axis);
    let mut out = vec![0.0; x.len()];
    for o in 0..outer {
        for r in 0..inner {
            let mut state = 0.0;
            for i in 0..n {
                let at = (o * n + i) * inner + r;
                state = a.data[at] * state + x.data[at];
                out[at] = state;
            }
        }
    }
    out
}

/// `linear_attention` straight from its definition, every form alike: for each query
/// `i`, the keys `j` it sees with their decay `g_ij = exp(L_i − L_j)` (`L` the prefix
/// sums of the log decay, per channel for a gate), `O(N²)`.
fn linear_attention(l: &crate::LinearAttention, args: &[&Tensor]) -> Vec<f64> {
    use crate::Decay;
    let (q, k, v) = (args[0], args[1], args[2]);
    let (b, h, n, dk) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3]);
    let dv = v.shape[3];
    let mut out = vec![0.0; b * h * n * dv];
    // `L[t][c]` for one (b, h): one channel unless the decay is a gate.
    let channels = if l.decay == Decay::Gate { dk } else { 1 };
    for bh in 0..b * h {
        let mut prefix = vec![0.0; n * channels];
        let mut acc = vec![0.0; channels];
        for t in 0..n {
            for (c, a) in acc.iter_mut().enumerate() {
                *a += match l.decay {
                    Decay::None => 0.0,
                    Decay::Head => args[3].data[bh % h],
                    Decay::Step => args[3].data[bh * n + t],
                    Decay::Gate => args[3].data[(bh * n + t) * dk + c],
                };
            }
            prefix[t * channels..(t + 1) * channels].copy_from_slice(&acc);
        }
        let row = |i: usize, d: usize| (bh * n + i) * d..(bh * n + i + 1) * d;
        for i in 0..n {
            let qi = &q.data[row(i, dk)];
            let (mut num, mut den) = (vec![0.0; dv], 0.0);
            for j in 0..if l.causal { i + 1 } else { n } {
                let kj = &k.data[row(j, dk)];
                let gate = |c: usize| (prefix[i * channels + c] - prefix[j * channels + c]).exp();
                let score: f64 = if channels == 1 {
                    gate(0) * qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f64>()
                } else {
                    (0..dk).map(|c| qi[c] * gate(c) * kj[c]).sum()
                };
                for (o, x) in num.iter_mut().zip(&v.data[row(j, dv)]) {
                    *o += score * x;
                }
                den += score;
            }
            let scale = if l.normalize { 1.0 / den } else { 1.0 };
            for (o, x) in out[row(i, dv)].iter_mut().zip(num) {
                *o = x * scale;
            }
        }
    }
    out
}

/// `moe_dispatch` from its definition: for each token, each expert whose gate is
/// non-zero, in expert order. A gate with more non-zeros than the op's bound is an
/// error (the bound is what the optimizer proved, and what sizes compiled code).
fn moe_dispatch(m: &crate::MoeDispatch, args: &[&Tensor]) -> Result<Vec<f64>, String> {
    let (x, gate) = (args[0], args[1]);
    let routed = 3 + m.gated as usize;
    let (t, d) = (x.shape[0], x.shape[1]);
    let (e, h) = (gate.shape[1], args[routed - 1].shape[2]);
    let nonzero = |r: usize, c: usize| gate.data[r * e + c] != 0.0;
    let k = m.k as usize;
    match m.choice {
        crate::MoeChoice::Token => {
            if let Some(r) = (0..t).find(|&r| (0..e).filter(|&c| nonzero(r, c)).count() > k) {
                return Err(format!(
                    "`moe_dispatch` (choice = token, k = {k}): gate row {r} selects more than {k} experts"
                ));
            }
        }
        crate::MoeChoice::Expert => {
            if let Some(c) = (0..e).find(|&c| (0..t).filter(|&r| nonzero(r, c)).count() > k) {
                return Err(format!(
                    "`moe_dispatch` (choice = expert, k = {k}): expert {c} is selected by more than {k} tokens"
                ));
            }
        }
    }
    // `row · w[ex]` for `w [.., rows, cols]`.
    let project = |w: &Tensor, ex: usize, row: &[f64], (rows, cols): (usize, usize)| {
        let w = &w.data[ex * rows * cols..(ex + 1) * rows * cols];
        let mut out = vec![0.0; cols];
        for (p, &a) in row.iter().enumerate() {
            for (o, &b) in out.iter_mut().zip(&w[p * cols..(p + 1) * cols]) {
                *o += a * b;
            }
        }
        out
    };
    // One expert's MLP on one token: weights `[w_gate,] w_up, w_down` of expert `ex`.
    let mlp = |w: &[&Tensor], ex: usize, row: &[f64], h: usize| {
        let up = project(w[w.len() - 2], ex, row, (d, h));
        let hidden: Vec<f64> = if m.gated {
            let g = project(w[0], ex, row, (d, h));
            g.iter()
                .zip(&up)
                .map(|(&g, &u)| unary(m.activation, g) * u)
                .collect()
        } else {
            up.iter().map(|&u| unary(m.activation, u)).collect()
        };
        project(w[w.len() - 1], ex, &hidden, (h, d))
    };
    let shared = &args[routed + 1..];
    let mut out = vec![0.0; t * d];
    for r in 0..t {
        let row = &x.data[r * d..(r + 1) * d];
        let acc = |out: &mut [f64], g: f64, y: Vec<f64>| {
            for (o, v) in out[r * d..(r + 1) * d].iter_mut().zip(y) {
                *o += g * v;
            }
        };
        for ex in (0..e).filter(|&c| nonzero(r, c)) {
            let y = mlp(&args[2..routed + 1], ex, row, h);
            acc(&mut out, gate.data[r * e + ex], y);
        }
        if m.shared != crate::MoeShared::None {
            let n = 2 + m.gated as usize;
            let hs = shared[n - 1].shape[0];
            let s = match m.shared {
                crate::MoeShared::Gated => shared[n].data[r],
                _ => 1.0,
            };
            acc(&mut out, s, mlp(&shared[..n], 0, row, hs));
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------
// Matrix multiplication.

/// Columns of the result computed together: one tile of `b` (`k × TILE`) stays in cache
/// while every row of `a` passes over it. Tiling changes no sum's order.
const MATMUL_TILE: usize = 128;

/// `[.., m, k] × [.., k, n] → [.., m, n]`, batch dims broadcast to those of `shape`.
/// `out[i, j] = sum_p a[i, p] * b[p, j]`, summed in order of `p`.
fn matmul(a: &Tensor, b: &Tensor, shape: &[usize]) -> Vec<f64> {
    let rank = shape.len();
    let (m, n) = (shape[rank - 2], shape[rank - 1]);
    let k = a.shape[a.rank() - 1];
    let batch = &shape[..rank - 2];
    // Which matrix of `a` and of `b` each result matrix reads (broadcasting batch dims).
    let matrices = |t: &Tensor| {
        let mut which = Vec::new();
        let own = &t.shape[..t.rank() - 2];
        for_each_offset(batch, &broadcast_strides(own, batch), |i| which.push(i));
        which
    };
    let (a_mats, b_mats) = (matrices(a), matrices(b));
    let mut out = vec![0.0; shape.iter().product()];
    for (batch_index, (&am, &bm)) in a_mats.iter().zip(&b_mats).enumerate() {
        let a_mat = &a.data[am * m * k..(am + 1) * m * k];
        let b_mat = &b.data[bm * k * n..(bm + 1) * k * n];
        let out_mat = &mut out[batch_index * m * n..(batch_index + 1) * m * n];
        for j0 in (0..n).step_by(MATMUL_TILE) {
            let j1 = (j0 + MATMUL_TILE).min(n);
            // i-k-j order: the innermost loop runs along contiguous rows of b and out.
            for i in 0..m {
                let out_row = &mut out_mat[i * n + j0..i * n + j1];
                for p in 0..k {
                    let x = a_mat[i * k + p];
                    let b_row = &b_mat[p * n + j0..p * n + j1];
                    for (o, &y) in out_row.iter_mut().zip(b_row) {
                        *o += x * y;
                    }
                }
            }
        }
    }
    out
}

/// Keys per block of the online softmax: the interpreter runs the same recurrence as
/// the fused kernels, so a bug in the recurrence shows up here first.
const ATTENTION_BLOCK: usize = 64;

/// Fused attention by FlashAttention's online softmax: for each query row, stream key
/// blocks keeping the running max `m`, the running sum `l` and the unnormalised output
/// `acc`; a new block rescales both by `exp(m_old - m_new)`. No `Sq × Sk` buffer exists
/// (only an additive bias operand, when present, is already one).
fn attention(a: &Attention, args: &[&Tensor], dims: &Dims) -> Vec<f64> {
    let (q, k, v) = (args[0], args[1], args[2]);
    let (b, h, sq, dk) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3]);
    let (hkv, sk, dv) = (k.shape[1], k.shape[2], v.shape[3]);
    let groups = a.groups.max(1) as usize;
    let bias = a.bias.then(|| expand(args[3], &[b, h, sq, sk]));
    let segments = a.segments.then(|| args[3 + a.bias as usize]);
    // A block list: how many times each key block is listed for the query's block.
    let listed = a.listed.then(|| {
        let list = args[args.len() - 1];
        let [bq, bk] = a.block.unwrap_or([1, 1]).map(|n| n as usize);
        let slots = list.shape[3];
        let nkb = sk.div_ceil(bk);
        move |bi: usize, hi: usize, qi: usize, ki: usize| -> usize {
            let row = ((bi * h + hi) * list.shape[2] + qi / bq) * slots;
            let kb = (ki / bk) as f64;
            list.data[row..row + slots]
                .iter()
                .filter(|&&e| e == kb && (e as usize) < nkb)
                .count()
        }
    });
    let mut out = vec![0.0; b * h * sq * dv];
    let mut acc = vec![0.0; dv];
    let mut scores = [0.0; ATTENTION_BLOCK];
    for bi in 0..b {
        for hi in 0..h {
            let kv = bi * hkv + hi / groups;
            for qi in 0..sq {
                let row = (bi * h + hi) * sq + qi;
                let q_row = &q.data[row * dk..(row + 1) * dk];
                let (mut m, mut l) = (f64::NEG_INFINITY, 0.0);
                acc.fill(0.0);
                for k0 in (0..sk).step_by(ATTENTION_BLOCK) {
                    let k1 = (k0 + ATTENTION_BLOCK).min(sk);
                    let mut block_max = f64::NEG_INFINITY;
                    for ki in k0..k1 {
                        let times = listed.as_ref().map_or(1, |f| f(bi, hi, qi, ki));
                        let other_document = segments
                            .is_some_and(|seg| seg.data[bi * sk + qi] != seg.data[bi * sk + ki]);
                        let masked = times == 0
                            || other_document
                            || a.mask.as_ref().is_some_and(|e| {
                                !e.holds(bi as i64, hi as i64, qi as i64, ki as i64, dims)
                            });
                        let s = if masked {
                            f64::NEG_INFINITY
                        } else {
                            let k_row = &k.data[(kv * sk + ki) * dk..(kv * sk + ki + 1) * dk];
                            let dot: f64 = q_row.iter().zip(k_row).map(|(x, y)| x * y).sum();
                            let mut s = dot * a.scale;
                            if let Some(c) = a.softcap {
                                s = c * (s / c).tanh();
                            }
                            if let Some(bias) = &bias {
                                s += bias[row * sk + ki];
                            }
                            if times > 1 {
                                s += (times as f64).ln();
                            }
                            s
                        };
                        scores[ki - k0] = s;
                        block_max = nan_max(block_max, s);
                    }
                    let m_new = nan_max(m, block_max);
                    if m_new == f64::NEG_INFINITY {
                        continue; // every key so far is masked
                    }
                    let rescale = (m - m_new).exp();
                    l *= rescale;
                    acc.iter_mut().for_each(|x| *x *= rescale);
                    for ki in k0..k1 {
                        let p = (scores[ki - k0] - m_new).exp();
                        l += p;
                        let v_row = &v.data[(kv * sk + ki) * dv..(kv * sk + ki + 1) * dv];
                        acc.iter_mut().zip(v_row).for_each(|(x, &y)| *x += p * y);
                    }
                    m = m_new;
                }
                // A fully masked row has l = 0 and acc = 0: 0 / 0 is NaN, as in softmax.
                let out_row = &mut out[row * dv..(row + 1) * dv];
                out_row.iter_mut().zip(&acc).for_each(|(o, &x)| *o = x / l);
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------
// Data movement.

/// Result axis `i` is input axis `perm[i]`: walk the result in row-major order, reading
/// the input with its strides permuted.
fn transpose(a: &Tensor, perm: &[usize], shape: &[usize]) -> Vec<f64> {
    let own = a.strides();
    let permuted: Vec<usize> = perm.iter().map(|&p| own[p]).collect();
    let mut out = Vec::with_capacity(a.len());
    for_each_offset(shape, &permuted, |src| out.push(a.data[src]));
    out
}

/// Operands joined along `axis`: for each outer index, each operand's block in turn.
fn concat(args: &[&Tensor], axis: usize) -> Vec<f64> {
    let (outer, _, inner) = split_at_axis(&args[0].shape, axis);
    let mut out = Vec::new();
    for o in 0..outer {
        for t in args {
            let block = t.shape[axis] * inner;
            out.extend_from_slice(&t.data[o * block..(o + 1) * block]);
        }
    }
    out
}

/// Elements `start..end` along `axis`.
fn slice(a: &Tensor, axis: usize, start: usize, end: usize) -> Result<Vec<f64>, String> {
    let (outer, n, inner) = split_at_axis(&a.shape, axis);
    if start > end || end > n {
        return Err(format!(
            "slice {start}..{end} is out of range for axis {axis} of size {n}"
        ));
    }
    let mut out = Vec::with_capacity(outer * (end - start) * inner);
    for o in 0..outer {
        out.extend_from_slice(&a.data[(o * n + start) * inner..(o * n + end) * inner]);
    }
    Ok(out)
}

/// `out[o, j, r] = data[o, indices[j], r]` around `axis`, `j` running over all of
/// `indices` (so the result is `data[..axis] ++ indices ++ data[axis+1..]`).
fn gather(data: &Tensor, indices: &Tensor, axis: usize) -> Result<Vec<f64>, String> {
    let (outer, n, inner) = split_at_axis(&data.shape, axis);
    let rows = checked_indices(indices, n, |v, j| {
        format!(
            "index {v} at position {j} of the indices is out of range for axis {axis} of size {n}"
        )
    })?;
    let mut out = Vec::with_capacity(outer * rows.len() * inner);
    for o in 0..outer {
        for &i in &rows {
            out.extend_from_slice(&data.data[(o * n + i) * inner..(o * n + i + 1) * inner]);
        }
    }
    Ok(out)
}

/// `out = data; out[o, indices[j], r] += updates[o, j, r]`; repeated indices add up.
fn scatter_add(
    data: &Tensor,
    indices: &Tensor,
    updates: &Tensor,
    axis: usize,
) -> Result<Vec<f64>, String> {
    let (outer, n, inner) = split_at_axis(&data.shape, axis);
    let rows = checked_indices(indices, n, |v, j| {
        format!(
            "index {v} at position {j} of the indices is out of range for axis {axis} of size {n}"
        )
    })?;
    let m = rows.len();
    let mut out = data.data.clone();
    for o in 0..outer {
        for (j, &i) in rows.iter().enumerate() {
            for r in 0..inner {
                out[(o * n + i) * inner + r] += updates.data[(o * m + j) * inner + r];
            }
        }
    }
    Ok(out)
}

/// `out[t, :] = table[ids[t], :]` for every id `t`.
fn embedding(table: &Tensor, ids: &Tensor) -> Result<Vec<f64>, String> {
    let (vocab, d) = (table.shape[0], table.shape[1]);
    let rows = checked_indices(ids, vocab, |v, j| {
        format!("token id {v} at position {j} is out of range for a table of {vocab} rows")
    })?;
    let mut out = Vec::with_capacity(rows.len() * d);
    for &row in &rows {
        out.extend_from_slice(&table.data[row * d..(row + 1) * d]);
    }
    Ok(out)
}

/// Every index of `indices` as a position below `bound`; the first that is not becomes
/// the error `message(value, position)`.
fn checked_indices(
    indices: &Tensor,
    bound: usize,
    message: impl Fn(f64, usize) -> String,
) -> Result<Vec<usize>, String> {
    indices
        .data
        .iter()
        .enumerate()
        .map(|(j, &v)| check_index(v, bound).ok_or_else(|| message(v, j)))
        .collect()
}

// ---------------------------------------------------------------------------------
// Positions and selection.

/// Rotary embedding over the last axis with rotate-half pairing: for position `p` (the
/// index along the second-to-last axis) and `i < d/2`, with `θ_i = theta^(-2i/d)`,
/// `out[i] = x[i]·cos(pθ_i) - x[i+d/2]·sin(pθ_i)` and
/// `out[i+d/2] = x[i+d/2]·cos(pθ_i) + x[i]·sin(pθ_i)`.
fn rope(x: &Tensor, theta: f64, scaling: &crate::RopeScaling) -> Vec<f64> {
    let rank = x.rank();
    let (seq, d) = (x.shape[rank - 2], x.shape[rank - 1]);
    let half = d / 2;
    let freqs = scaling.inv_freqs(theta, d);
    let m = scaling.attention_factor();
    let mut out = vec![0.0; x.len()];
    for row in 0..x.len().checked_div(d).unwrap_or(0) {
        let p = (row % seq) as f64;
        let xs = &x.data[row * d..(row + 1) * d];
        for i in 0..half {
            let (sin, cos) = (p * freqs[i]).sin_cos();
            let (sin, cos) = (sin * m, cos * m);
            let (lo, hi) = (xs[i], xs[i + half]);
            out[row * d + i] = lo * cos - hi * sin;
            out[row * d + i + half] = hi * cos + lo * sin;
        }
    }
    out
}

/// Order for top-k: larger first, NaN above everything; equal values compare equal so
/// the stable sort keeps the lower index first.
fn descending(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        (false, false) => b.partial_cmp(&a).unwrap_or(Ordering::Equal),
    }
}

/// The `k` largest of each row (last axis), descending, ties to the lower index.
fn topk(x: &Tensor, k: usize, output: TopKOutput) -> Vec<f64> {
    let n = x.shape[x.rank() - 1];
    let mut out = Vec::new();
    for row in 0..x.len().checked_div(n).unwrap_or(0) {
        let values = &x.data[row * n..(row + 1) * n];
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&i, &j| descending(values[i], values[j])); // stable
        for &i in order.iter().take(k) {
            out.push(match output {
                TopKOutput::Values => values[i],
                TopKOutput::Indices => i as f64,
            });
        }
    }
    out
}
