//! Shape and dtype inference: one function, one arm per op, used by the builder, the
//! text parser and the verifier alike.

use crate::{DType, Dim, Dims, Op, Shape, TensorType, TopKOutput, UnaryOp};

/// Result type of `op` applied to operands of types `args`, or why it is ill-typed.
/// Source ops (no operands) take `declared` as their type after checking it. The
/// result's size is checked too, so no later stage meets an unrepresentable tensor.
pub fn infer(
    op: &Op,
    args: &[&TensorType],
    declared: Option<&TensorType>,
    dims: &Dims,
) -> Result<TensorType, String> {
    let ty = infer_unchecked(op, args, declared, dims)?;
    dims.resolve(&ty.shape)?;
    Ok(ty)
}

fn infer_unchecked(
    op: &Op,
    args: &[&TensorType],
    declared: Option<&TensorType>,
    dims: &Dims,
) -> Result<TensorType, String> {
    if let Some(n) = op.arity() {
        if args.len() != n {
            return Err(format!(
                "`{}` takes {n} operand{}, got {}",
                op.name(),
                if n == 1 { "" } else { "s" },
                args.len()
            ));
        }
    }
    let sizes = |t: &TensorType| dims.resolve(&t.shape);
    let describe = |t: &TensorType| format!("{} {}", dims.describe(&t.shape), t.dtype);
    match op {
        Op::Input { .. } | Op::Param { .. } => {
            let ty = declared.ok_or("a source op needs a declared type")?;
            dims.resolve(&ty.shape)?;
            Ok(ty.clone())
        }
        Op::Const { value } => {
            let ty = declared.ok_or("`const` needs a declared type")?;
            if ty.rank() != 0 {
                return Err(format!(
                    "`const` is a scalar (type `[]`), declared {}",
                    ty.shape
                ));
            }
            check_const(*value, ty.dtype)?;
            Ok(ty.clone())
        }
        Op::Iota { axis } => {
            let ty = declared.ok_or("`iota` needs a declared type")?;
            dims.resolve(&ty.shape)?;
            check_axis(*axis, ty.rank())?;
            if !ty.dtype.is_int() {
                return Err(format!("`iota` yields integers, declared {}", ty.dtype));
            }
            Ok(ty.clone())
        }
        Op::Mask { expr } => {
            let ty = declared.ok_or("`mask` needs a declared type")?;
            dims.resolve(&ty.shape)?;
            if ty.dtype != DType::Bool {
                return Err(format!("`mask` yields bool, declared {}", ty.dtype));
            }
            if !(1..=4).contains(&ty.rank()) {
                return Err(format!(
                    "a mask has 1 to 4 dims (b, h, q, k), declared {}",
                    ty.shape
                ));
            }
            for d in expr.dim_names() {
                if dims.get(&d).is_none() {
                    return Err(format!(
                        "mask `{expr}` refers to `{d}`, which is neither b, h, q, k nor a bound dimension"
                    ));
                }
            }
            Ok(ty.clone())
        }
        Op::Unary(u) => {
            let a = args[0];
            if !(a.dtype.is_float() || u.allows_int() && a.dtype.is_int()) {
                return Err(format!(
                    "`{}` needs a float tensor, got {}",
                    u.name(),
                    describe(a)
                ));
            }
            Ok(a.clone())
        }
        Op::Binary(_) | Op::Compare(_) => {
            let (a, b) = (args[0], args[1]);
            if a.dtype != b.dtype {
                return Err(format!(
                    "operands have different dtypes: {} and {}",
                    describe(a),
                    describe(b)
                ));
            }
            if a.dtype == DType::Bool {
                return Err(format!("`{}` is not defined on bool", op.name()));
            }
            let shape = broadcast_shapes(&[&a.shape, &b.shape], dims)?;
            let dtype = if matches!(op, Op::Compare(_)) {
                DType::Bool
            } else {
                a.dtype
            };
            Ok(TensorType::new(shape, dtype))
        }
        Op::Select => {
            let (c, a, b) = (args[0], args[1], args[2]);
            if c.dtype != DType::Bool {
                return Err(format!(
                    "`select` condition must be bool, got {}",
                    describe(c)
                ));
            }
            if a.dtype != b.dtype {
                return Err(format!(
                    "`select` branches have different dtypes: {} and {}",
                    describe(a),
                    describe(b)
                ));
            }
            let shape = broadcast_shapes(&[&c.shape, &a.shape, &b.shape], dims)?;
            Ok(TensorType::new(shape, a.dtype))
        }
        Op::Cast { to } => Ok(TensorType::new(args[0].shape.clone(), *to)),
        Op::Reduce {
            axes, keep_dims, ..
        } => {
            let a = args[0];
            float_only(op, a, &describe)?;
            let mut seen = vec![false; a.rank()];
            for &ax in axes {
                check_axis(ax, a.rank())?;
                if std::mem::replace(&mut seen[ax], true) {
                    return Err(format!("axis {ax} is reduced twice"));
                }
            }
            if axes.is_empty() {
                return Err("a reduction needs at least one axis".into());
            }
            let shape = a
                .shape
                .0
                .iter()
                .enumerate()
                .filter_map(|(i, d)| match (seen[i], keep_dims) {
                    (false, _) => Some(d.clone()),
                    (true, true) => Some(Dim::Const(1)),
                    (true, false) => None,
                })
                .collect();
            Ok(TensorType::new(Shape(shape), a.dtype))
        }
        Op::Softmax { axis } => {
            float_only(op, args[0], &describe)?;
            check_axis(*axis, args[0].rank())?;
            Ok(args[0].clone())
        }
        Op::LayerNorm { eps } | Op::RmsNorm { eps } => {
            if !(*eps > 0.0 && eps.is_finite()) {
                return Err(format!("`{}` needs a positive eps, got {eps}", op.name()));
            }
            let x = args[0];
            float_only(op, x, &describe)?;
            if x.rank() == 0 {
                return Err(format!("`{}` needs at least one axis", op.name()));
            }
            let d = sizes(x)?[x.rank() - 1];
            for p in &args[1..] {
                if p.dtype != x.dtype || sizes(p)? != [d] {
                    return Err(format!(
                        "`{}` scale/shift must be [{d}] {}, got {}",
                        op.name(),
                        x.dtype,
                        describe(p)
                    ));
                }
            }
            Ok(x.clone())
        }
        Op::Attention(attn) => infer_attention(attn, args, dims, &describe),
        Op::Routing(r) => {
            let (x, v, mu) = (args[0], args[1], args[2]);
            let (xs, vs, ms) = (sizes(x)?, sizes(v)?, sizes(mu)?);
            if !x.dtype.is_float() || v.dtype != x.dtype || mu.dtype != x.dtype {
                return Err(format!(
                    "`routing_attention` needs qk, v and centroids of one float dtype, got {}, {}, {}",
                    describe(x),
                    describe(v),
                    describe(mu)
                ));
            }
            if xs.len() != 4 || vs.len() != 4 || xs[..3] != vs[..3] {
                return Err(format!(
                    "`routing_attention` takes qk [B, H, N, D] and v [B, H, N, Dv], got {} and {}",
                    describe(x),
                    describe(v)
                ));
            }
            if ms != [xs[1], r.clusters, xs[3]] || r.clusters == 0 {
                return Err(format!(
                    "`routing_attention` centroids must be [{}, {}, {}] (heads, clusters, head dim), got {}",
                    xs[1],
                    r.clusters,
                    xs[3],
                    describe(mu)
                ));
            }
            if r.window == 0 || r.window > xs[2] || !r.scale.is_finite() {
                return Err(format!(
                    "`routing_attention` needs a window of 1 to {} positions and a finite scale, got {}",
                    xs[2], r.window
                ));
            }
            let mut shape = x.shape.clone();
            shape.0[3] = v.shape.0[3].clone();
            Ok(TensorType::new(shape, x.dtype))
        }
        Op::Lsh(l) => {
            let (x, v, rot) = (args[0], args[1], args[2]);
            let (xs, vs, rs) = (sizes(x)?, sizes(v)?, sizes(rot)?);
            if !x.dtype.is_float() || v.dtype != x.dtype || rot.dtype != x.dtype {
                return Err(format!(
                    "`lsh_attention` needs qk, v and rotations of one float dtype, got {}, {}, {}",
                    describe(x),
                    describe(v),
                    describe(rot)
                ));
            }
            if xs.len() != 4 || vs.len() != 4 || xs[..3] != vs[..3] {
                return Err(format!(
                    "`lsh_attention` takes qk [B, H, N, D] and v [B, H, N, Dv], got {} and {}",
                    describe(x),
                    describe(v)
                ));
            }
            if l.buckets < 2 || l.buckets % 2 != 0 || l.n_hashes == 0 {
                return Err(format!(
                    "`lsh_attention` needs an even number of buckets (>= 2) and at least one hash round, got {} buckets, {} rounds",
                    l.buckets, l.n_hashes
                ));
            }
            if rs != [l.n_hashes, xs[3], l.buckets / 2] {
                return Err(format!(
                    "`lsh_attention` rotations must be [{}, {}, {}] (rounds, head dim, buckets / 2), got {}",
                    l.n_hashes,
                    xs[3],
                    l.buckets / 2,
                    describe(rot)
                ));
            }
            if l.chunk == 0 || xs[2] % l.chunk != 0 || !l.scale.is_finite() {
                return Err(format!(
                    "`lsh_attention` needs a chunk size dividing the sequence ({}) and a finite scale, got chunk {}",
                    xs[2], l.chunk
                ));
            }
            let mut shape = x.shape.clone();
            shape.0[3] = v.shape.0[3].clone();
            Ok(TensorType::new(shape, x.dtype))
        }
        Op::Moba(m) => {
            let attn = crate::Attention {
                groups: m.groups,
                ..crate::Attention::new(m.scale)
            };
            let ty = infer_attention(&attn, args, dims, &describe)?;
            let (q, k) = (dims.resolve(&args[0].shape)?, dims.resolve(&args[1].shape)?);
            if q[2] != k[2] {
                return Err(format!(
                    "`moba_attention` is self-attention: q and k need one length, got {} and {}",
                    describe(args[0]),
                    describe(args[1])
                ));
            }
            if m.block == 0 || q[2] % m.block != 0 {
                return Err(format!(
                    "`moba_attention` needs a block size dividing the sequence ({}), got {}",
                    q[2], m.block
                ));
            }
            Ok(ty)
        }
        Op::MatMul => {
            let (a, b) = (args[0], args[1]);
            if a.dtype != b.dtype || a.dtype == DType::Bool {
                return Err(format!(
                    "`matmul` operands must share a numeric dtype: {} and {}",
                    describe(a),
                    describe(b)
                ));
            }
            if a.rank() < 2 || b.rank() < 2 {
                return Err(format!(
                    "`matmul` needs operands of rank >= 2, got {} and {}",
                    describe(a),
                    describe(b)
                ));
            }
            let (sa, sb) = (sizes(a)?, sizes(b)?);
            let (ra, rb) = (a.rank(), b.rank());
            if sa[ra - 1] != sb[rb - 2] {
                return Err(format!(
                    "`matmul` contracts {} with {}: inner dims {} and {} differ",
                    describe(a),
                    describe(b),
                    sa[ra - 1],
                    sb[rb - 2]
                ));
            }
            let batch_a = Shape(a.shape.0[..ra - 2].to_vec());
            let batch_b = Shape(b.shape.0[..rb - 2].to_vec());
            let mut shape = broadcast_shapes(&[&batch_a, &batch_b], dims)
                .map_err(|e| format!("`matmul` batch dims: {e}"))?;
            shape.0.push(a.shape.0[ra - 2].clone());
            shape.0.push(b.shape.0[rb - 1].clone());
            Ok(TensorType::new(shape, a.dtype))
        }
        Op::Reshape { shape } => {
            let a = args[0];
            let from: u64 = sizes(a)?.iter().product();
            let to: u64 = dims.resolve(shape)?.iter().product();
            if from != to {
                return Err(format!(
                    "cannot reshape {} ({from} elements) to {} ({to} elements)",
                    describe(a),
                    dims.describe(shape)
                ));
            }
            Ok(TensorType::new(shape.clone(), a.dtype))
        }
        Op::Transpose { perm } => {
            let a = args[0];
            let mut seen = vec![false; a.rank()];
            if perm.len() != a.rank()
                || perm
                    .iter()
                    .any(|&p| p >= a.rank() || std::mem::replace(&mut seen[p], true))
            {
                return Err(format!(
                    "{perm:?} is not a permutation of the {} axes of {}",
                    a.rank(),
                    describe(a)
                ));
            }
            let shape = perm.iter().map(|&p| a.shape.0[p].clone()).collect();
            Ok(TensorType::new(Shape(shape), a.dtype))
        }
        Op::Broadcast { shape } => {
            let a = args[0];
            let to = dims.resolve(shape)?;
            let from = sizes(a)?;
            let ok = from.len() <= to.len()
                && from
                    .iter()
                    .rev()
                    .zip(to.iter().rev())
                    .all(|(&f, &t)| f == t || f == 1);
            if !ok {
                return Err(format!(
                    "cannot broadcast {} to {}",
                    describe(a),
                    dims.describe(shape)
                ));
            }
            Ok(TensorType::new(shape.clone(), a.dtype))
        }
        Op::Concat { axis } => {
            let Some(first) = args.first() else {
                return Err("`concat` needs at least one operand".into());
            };
            check_axis(*axis, first.rank())?;
            let s0 = sizes(first)?;
            let mut total = 0u64;
            for a in args {
                let s = sizes(a)?;
                let same_elsewhere = s.len() == s0.len()
                    && s.iter()
                        .zip(&s0)
                        .enumerate()
                        .all(|(i, (x, y))| i == *axis || x == y);
                if !same_elsewhere || a.dtype != first.dtype {
                    return Err(format!(
                        "`concat` along axis {axis}: {} does not match {}",
                        describe(a),
                        describe(first)
                    ));
                }
                total += s[*axis];
            }
            let mut shape = first.shape.clone();
            shape.0[*axis] = Dim::Const(total);
            Ok(TensorType::new(shape, first.dtype))
        }
        Op::Slice { axis, start, end } => {
            let a = args[0];
            check_axis(*axis, a.rank())?;
            let n = sizes(a)?[*axis];
            let (s, e) = (dims.resolve_dim(start)?, dims.resolve_dim(end)?);
            if s >= e || e > n {
                return Err(format!(
                    "slice {start}..{end} (= {s}..{e}) is out of range for axis {axis} of {}",
                    describe(a)
                ));
            }
            let mut shape = a.shape.clone();
            shape.0[*axis] = if s == 0 {
                end.clone()
            } else {
                Dim::Const(e - s)
            };
            Ok(TensorType::new(shape, a.dtype))
        }
        Op::Gather { axis } => {
            let (data, idx) = (args[0], args[1]);
            check_axis(*axis, data.rank())?;
            int_indices(idx, &describe)?;
            let mut shape = data.shape.0[..*axis].to_vec();
            shape.extend(idx.shape.0.iter().cloned());
            shape.extend(data.shape.0[axis + 1..].iter().cloned());
            Ok(TensorType::new(Shape(shape), data.dtype))
        }
        Op::ScatterAdd { axis } => {
            let (data, idx, upd) = (args[0], args[1], args[2]);
            check_axis(*axis, data.rank())?;
            int_indices(idx, &describe)?;
            if idx.rank() != 1 {
                return Err(format!(
                    "`scatter_add` indices must be 1-D, got {}",
                    describe(idx)
                ));
            }
            let mut want = sizes(data)?;
            want[*axis] = sizes(idx)?[0];
            if sizes(upd)? != want || upd.dtype != data.dtype {
                return Err(format!(
                    "`scatter_add` updates must be {} {}, got {}",
                    Shape::new(want),
                    data.dtype,
                    describe(upd)
                ));
            }
            Ok(data.clone())
        }
        Op::Embedding => {
            let (table, ids) = (args[0], args[1]);
            if table.rank() != 2 {
                return Err(format!(
                    "`embedding` table must be [vocab, d], got {}",
                    describe(table)
                ));
            }
            int_indices(ids, &describe)?;
            let mut shape = ids.shape.clone();
            shape.0.push(table.shape.0[1].clone());
            Ok(TensorType::new(shape, table.dtype))
        }
        Op::Rope { theta, scaling } => {
            if !(*theta > 0.0 && theta.is_finite()) {
                return Err(format!("`rope` needs a positive theta, got {theta}"));
            }
            scaling
                .check()
                .map_err(|e| format!("`rope` scaling {}: {e}", scaling.name()))?;
            let x = args[0];
            float_only(op, x, &describe)?;
            if x.rank() < 2 || sizes(x)?[x.rank() - 1] % 2 != 0 {
                return Err(format!(
                    "`rope` needs [.., seq, d] with d even, got {}",
                    describe(x)
                ));
            }
            Ok(x.clone())
        }
        Op::TopK { k, output } => {
            let x = args[0];
            if x.rank() == 0 || x.dtype == DType::Bool {
                return Err(format!(
                    "`topk` needs a numeric tensor, got {}",
                    describe(x)
                ));
            }
            let n = sizes(x)?[x.rank() - 1];
            if *k == 0 || *k > n {
                return Err(format!(
                    "top-{k} of {} is out of range (last dim is {n})",
                    describe(x)
                ));
            }
            let mut shape = x.shape.clone();
            *shape.0.last_mut().unwrap() = Dim::Const(*k);
            let dtype = match output {
                TopKOutput::Values => x.dtype,
                TopKOutput::Indices => DType::I64,
            };
            Ok(TensorType::new(shape, dtype))
        }
        Op::CumSum { axis } => {
            let x = args[0];
            check_axis(*axis, x.rank())?;
            if x.dtype == DType::Bool {
                return Err("`cumsum` is not defined on bool".into());
            }
            Ok(x.clone())
        }
        Op::Scan { axis } => {
            let (x, a) = (args[0], args[1]);
            check_axis(*axis, x.rank())?;
            if !x.dtype.is_float() || a.dtype != x.dtype || sizes(x)? != sizes(a)? {
                return Err(format!(
                    "`linear_scan` takes x and decay of one float type and shape, got {} and {}",
                    describe(x),
                    describe(a)
                ));
            }
            Ok(x.clone())
        }
        Op::RandomFeatures { .. } => {
            let ty = declared.ok_or("`random_features` needs a declared type")?;
            let s = dims.resolve(&ty.shape)?;
            if !ty.dtype.is_float() || s.len() != 2 || s.contains(&0) {
                return Err(format!(
                    "`random_features` is a float matrix [features, dim], declared {}",
                    describe(ty)
                ));
            }
            Ok(ty.clone())
        }
        Op::LinearAttention(l) => infer_linear(l, args, dims, &describe),
        Op::MoeDispatch(m) => infer_moe(m, args, dims, &describe),
    }
}

/// `moe_dispatch(x, gate, [w_gate,] w_up, w_down)`: see [`crate::MoeDispatch`].
fn infer_moe(
    m: &crate::MoeDispatch,
    args: &[&TensorType],
    dims: &Dims,
    describe: &dyn Fn(&TensorType) -> String,
) -> Result<TensorType, String> {
    let (x, gate) = (args[0], args[1]);
    let routed = 3 + m.gated as usize;
    let (weights, shared) = args[2..].split_at(routed - 1);
    let all: Vec<String> = args.iter().map(|t| describe(t)).collect();
    if !x.dtype.is_float() || args.iter().any(|t| t.dtype != x.dtype) {
        return Err(format!(
            "`moe_dispatch` needs operands of one float dtype, got {}",
            all.join(", ")
        ));
    }
    let (xs, gs) = (dims.resolve(&x.shape)?, dims.resolve(&gate.shape)?);
    let ws: Vec<Vec<u64>> = weights
        .iter()
        .map(|w| dims.resolve(&w.shape))
        .collect::<Result<_, _>>()?;
    let names = if m.gated {
        "w_gate [E, D, H], w_up [E, D, H], w_down [E, H, D]"
    } else {
        "w_up [E, D, H], w_down [E, H, D]"
    };
    let fits =
        xs.len() == 2 && gs.len() == 2 && gs[0] == xs[0] && ws.iter().all(|w| w.len() == 3) && {
            let (e, d) = (gs[1], xs[1]);
            let (up, down) = (&ws[ws.len() - 2], &ws[ws.len() - 1]);
            let h = up[2];
            up[..2] == [e, d] && *down == [e, h, d] && (!m.gated || ws[0] == *up)
        };
    if !fits {
        return Err(format!(
            "`moe_dispatch` takes x [T, D], gate [T, E], {names}; got {}",
            all.join(", ")
        ));
    }
    if m.shared != crate::MoeShared::None {
        let ss: Vec<Vec<u64>> = shared
            .iter()
            .map(|w| dims.resolve(&w.shape))
            .collect::<Result<_, _>>()?;
        let n = 2 + m.gated as usize;
        let (d, t) = (xs[1], xs[0]);
        let (up, down) = (&ss[n - 2], &ss[n - 1]);
        let fits = up.len() == 2
            && up[0] == d
            && *down == [up[1], d]
            && (!m.gated || ss[0] == *up)
            && (m.shared != crate::MoeShared::Gated || ss[n] == [t, 1]);
        if !fits {
            let gate = if m.shared == crate::MoeShared::Gated {
                ", shared_gate [T, 1]"
            } else {
                ""
            };
            let w = if m.gated { "ws_gate [D, Hs], " } else { "" };
            return Err(format!(
                "`moe_dispatch` shared experts take {w}ws_up [D, Hs], ws_down [Hs, D]{gate}; got {}",
                all.join(", ")
            ));
        }
    }
    if m.k == 0 {
        return Err("`moe_dispatch` needs k of at least 1".into());
    }
    if !matches!(
        m.activation,
        UnaryOp::Silu | UnaryOp::Gelu | UnaryOp::GeluTanh | UnaryOp::Relu
    ) {
        return Err(format!(
            "`moe_dispatch` experts use silu, gelu, gelu_tanh or relu, not {}",
            m.activation.name()
        ));
    }
    Ok(x.clone())
}

/// `linear_attention(q, k, v [, log_decay])`: see [`crate::LinearAttention`].
fn infer_linear(
    l: &crate::LinearAttention,
    args: &[&TensorType],
    dims: &Dims,
    describe: &dyn Fn(&TensorType) -> String,
) -> Result<TensorType, String> {
    use crate::{Decay, LinearForm};
    let (q, k, v) = (args[0], args[1], args[2]);
    let (qs, ks, vs) = (
        dims.resolve(&q.shape)?,
        dims.resolve(&k.shape)?,
        dims.resolve(&v.shape)?,
    );
    if !q.dtype.is_float() || k.dtype != q.dtype || v.dtype != q.dtype {
        return Err(format!(
            "`linear_attention` needs q, k and v of one float dtype, got {}, {}, {}",
            describe(q),
            describe(k),
            describe(v)
        ));
    }
    if qs.len() != 4 || qs != ks || vs.len() != 4 || vs[..3] != qs[..3] {
        return Err(format!(
            "`linear_attention` takes q, k [B, H, N, Dk] and v [B, H, N, Dv], got {}, {} and {}",
            describe(q),
            describe(k),
            describe(v)
        ));
    }
    if l.decay != Decay::None {
        if !l.causal {
            return Err("`linear_attention` with a decay must be causal".into());
        }
        let want: Vec<u64> = match l.decay {
            Decay::Head => vec![qs[1]],
            Decay::Step => qs[..3].to_vec(),
            _ => qs.clone(),
        };
        let d = args[3];
        if d.dtype != q.dtype || dims.resolve(&d.shape)? != want {
            return Err(format!(
                "`linear_attention` with decay `{}` takes log_decay {want:?} {}, got {}",
                l.decay.name(),
                q.dtype,
                describe(d)
            ));
        }
    }
    match l.form {
        LinearForm::Parallel => {}
        _ if !l.causal => {
            return Err("non-causal `linear_attention` has only the parallel form".into())
        }
        LinearForm::Chunkwise { chunk } if chunk == 0 || qs[2] % chunk != 0 => {
            return Err(format!(
                "`linear_attention` chunk {chunk} must divide the sequence ({})",
                qs[2]
            ))
        }
        _ => {}
    }
    Ok(TensorType::new(
        Shape(vec![
            q.shape.0[0].clone(),
            q.shape.0[1].clone(),
            q.shape.0[2].clone(),
            v.shape.0[3].clone(),
        ]),
        q.dtype,
    ))
}

/// A constant must be representable in its dtype: integers integral and in range,
/// bools 0 or 1, floats within the format's range (infinities are allowed: `-inf` is
/// how masks are written, and NaN is a value like any other).
fn check_const(value: f64, dtype: DType) -> Result<(), String> {
    let fits = match dtype {
        DType::Bool => value == 0.0 || value == 1.0,
        DType::I32 => value.fract() == 0.0 && (i32::MIN as f64..=i32::MAX as f64).contains(&value),
        // Integers past 2^53 are not exact in f64, the interpreter's storage.
        DType::I64 => value.fract() == 0.0 && value.abs() <= 2f64.powi(53),
        DType::F32 => !value.is_finite() || value.abs() <= f32::MAX as f64,
        DType::F16 => !value.is_finite() || value.abs() <= half::f16::MAX.to_f64(),
        DType::BF16 => !value.is_finite() || value.abs() <= half::bf16::MAX.to_f64(),
    };
    if !fits {
        return Err(format!("the constant {value} does not fit {dtype}"));
    }
    Ok(())
}

/// `q [B, H, Sq, Dk]`, `k [B, H/g, Sk, Dk]`, `v [B, H/g, Sk, Dv]` (+ a bias that
/// broadcasts to `[B, H, Sq, Sk]`) → `[B, H, Sq, Dv]`.
fn infer_attention(
    attn: &crate::Attention,
    args: &[&TensorType],
    dims: &Dims,
    describe: &dyn Fn(&TensorType) -> String,
) -> Result<TensorType, String> {
    let (q, k, v) = (args[0], args[1], args[2]);
    let all = || {
        let names: Vec<String> = args.iter().map(|t| describe(t)).collect();
        names.join(", ")
    };
    if !q.dtype.is_float() || k.dtype != q.dtype || v.dtype != q.dtype {
        return Err(format!(
            "`attention` needs q, k and v of one float dtype, got {}",
            all()
        ));
    }
    if q.rank() != 4 || k.rank() != 4 || v.rank() != 4 {
        return Err(format!(
            "`attention` takes q, k, v as [batch, heads, seq, head_dim], got {}",
            all()
        ));
    }
    if !attn.scale.is_finite() {
        return Err(format!(
            "`attention` needs a finite scale, got {}",
            attn.scale
        ));
    }
    if let Some(c) = attn.softcap {
        if !(c > 0.0 && c.is_finite()) {
            return Err(format!("`attention` needs a positive softcap, got {c}"));
        }
    }
    let (sq, sk, sv) = (
        dims.resolve(&q.shape)?,
        dims.resolve(&k.shape)?,
        dims.resolve(&v.shape)?,
    );
    let g = attn.groups;
    if g == 0 || sq[1] % g != 0 || sk[1] != sq[1] / g || sv[1] != sk[1] {
        return Err(format!(
            "`attention` with groups = {g} needs {} query heads over {} KV heads, got {}",
            sq[1],
            sq[1].checked_div(g).unwrap_or(0),
            all()
        ));
    }
    if sk[0] != sq[0] || sv[0] != sq[0] || sk[3] != sq[3] || sv[2] != sk[2] {
        return Err(format!(
            "`attention` needs q, k, v to agree on batch, k to match q's head_dim and v \
             k's sequence, got {}",
            all()
        ));
    }
    if let Some(expr) = &attn.mask {
        for d in expr.dim_names() {
            if dims.get(&d).is_none() {
                return Err(format!(
                    "mask `{expr}` refers to `{d}`, which is neither b, h, q, k nor a bound dimension"
                ));
            }
        }
    }
    let out = Shape(vec![
        q.shape.0[0].clone(),
        q.shape.0[1].clone(),
        q.shape.0[2].clone(),
        v.shape.0[3].clone(),
    ]);
    if let Some([bq, bk]) = attn.block {
        if bq == 0 || bk == 0 {
            return Err(format!(
                "`block_sparse_attention` needs positive block sizes, got {bq}x{bk}"
            ));
        }
    }
    if attn.segments {
        let seg = args[3 + attn.bias as usize];
        let ss = dims.resolve(&seg.shape)?;
        if seg.dtype != crate::DType::I64 || ss != [sq[0], sk[2]] || sq[2] != sk[2] {
            return Err(format!(
                "document masking needs self-attention and segment ids i64 [{}, {}] (batch, keys), got {}",
                sq[0],
                sk[2],
                describe(seg)
            ));
        }
    }
    if attn.listed {
        let Some([bq, _]) = attn.block else {
            return Err("a block list needs a block size (`block_q`, `block_k`)".into());
        };
        let list = args[args.len() - 1];
        let ls = dims.resolve(&list.shape)?;
        let want_rows = sq[2].div_ceil(bq);
        if list.dtype != crate::DType::I64
            || ls.len() != 4
            || ls[0] != sq[0]
            || ls[1] != sq[1]
            || ls[2] != want_rows
        {
            return Err(format!(
                "the block list of `block_sparse_attention` must be i64 [{}, {}, {want_rows}, S] (batch, query heads, query blocks, slots), got {}",
                sq[0],
                sq[1],
                describe(list)
            ));
        }
    }
    if attn.bias {
        let bias = args[3];
        if bias.dtype != q.dtype {
            return Err(format!(
                "the `attention` bias must have q's dtype, got {}",
                describe(bias)
            ));
        }
        let scores = Shape(vec![
            q.shape.0[0].clone(),
            q.shape.0[1].clone(),
            q.shape.0[2].clone(),
            k.shape.0[2].clone(),
        ]);
        let joint = broadcast_shapes(&[&scores, &bias.shape], dims)?;
        if dims.resolve(&joint)? != dims.resolve(&scores)? {
            return Err(format!(
                "the `attention` bias {} does not broadcast to the scores {}",
                describe(bias),
                dims.describe(&scores)
            ));
        }
    }
    Ok(TensorType::new(out, q.dtype))
}

fn check_axis(axis: usize, rank: usize) -> Result<(), String> {
    if axis >= rank {
        return Err(format!("axis {axis} is out of range for rank {rank}"));
    }
    Ok(())
}

fn float_only(
    op: &Op,
    t: &TensorType,
    describe: &dyn Fn(&TensorType) -> String,
) -> Result<(), String> {
    if !t.dtype.is_float() {
        return Err(format!(
            "`{}` needs a float tensor, got {}",
            op.name(),
            describe(t)
        ));
    }
    Ok(())
}

fn int_indices(t: &TensorType, describe: &dyn Fn(&TensorType) -> String) -> Result<(), String> {
    if !t.dtype.is_int() {
        return Err(format!("indices must be i32 or i64, got {}", describe(t)));
    }
    Ok(())
}

/// numpy broadcasting of several shapes; a result dim keeps the first non-1 operand's
/// spelling so names survive (`[b, s, 1] + [1, 1, d] -> [b, s, d]`).
pub fn broadcast_shapes(shapes: &[&Shape], dims: &Dims) -> Result<Shape, String> {
    let rank = shapes.iter().map(|s| s.rank()).max().unwrap_or(0);
    let mut out: Vec<(Dim, u64)> = vec![(Dim::Const(1), 1); rank];
    for s in shapes {
        let sizes = dims.resolve(s)?;
        let offset = rank - s.rank();
        for (i, (d, n)) in s.0.iter().zip(sizes).enumerate() {
            let slot = &mut out[offset + i];
            if n == slot.1 {
                // Same size: prefer a name over a number (`batch` over `1`).
                if matches!(slot.0, Dim::Const(_)) && matches!(d, Dim::Sym(_)) {
                    slot.0 = d.clone();
                }
                continue;
            }
            if n == 1 {
                continue;
            }
            if slot.1 != 1 {
                let all: Vec<String> = shapes.iter().map(|s| dims.describe(s)).collect();
                return Err(format!("shapes {} do not broadcast", all.join(" and ")));
            }
            *slot = (d.clone(), n);
        }
    }
    Ok(Shape(out.into_iter().map(|(d, _)| d).collect()))
}
