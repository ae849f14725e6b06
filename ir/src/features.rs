//! Performer's FAVOR+ random features (Choromanski et al., 2021): the matrix `ω` of
//! `φ(x) = exp(ω·x − |x|²/2) / √m`, drawn once from a seed so that a compiled model
//! and the interpreter see the same features.

use crate::{BinaryOp, GraphBuilder, NodeId, Op, ReduceKind, Result, Rng, UnaryOp};

/// `φ(x) = exp(ω·x̃ − |x̃|²/2) / √m` over the last axis of `x [.., D]`, with `x̃ =
/// x·√scale` and `omega [m, D]` (a `random_features` node), as plain ops: `φ(q)·φ(k)`
/// is then an unbiased estimate of `exp(scale·q·k)`.
pub fn favor_features(
    b: &mut GraphBuilder,
    x: NodeId,
    omega: NodeId,
    scale: f64,
) -> Result<NodeId> {
    let dtype = b.ty(x).dtype;
    let rank = b.ty(x).rank();
    let m = b.dims().resolve_dim(&b.ty(omega).shape.0[0]).unwrap_or(1);
    let s = b.constant(scale.sqrt(), dtype)?;
    let xs = b.op(Op::Binary(BinaryOp::Mul), &[x, s])?;
    let wt = b.op(Op::Transpose { perm: vec![1, 0] }, &[omega])?;
    let proj = b.op(Op::MatMul, &[xs, wt])?;
    let sq = b.op(Op::Binary(BinaryOp::Mul), &[xs, xs])?;
    let sum = Op::Reduce {
        kind: ReduceKind::Sum,
        axes: vec![rank - 1],
        keep_dims: true,
    };
    let sq = b.op(sum, &[sq])?;
    let half = b.constant(0.5, dtype)?;
    let sq = b.op(Op::Binary(BinaryOp::Mul), &[sq, half])?;
    let e = b.op(Op::Binary(BinaryOp::Sub), &[proj, sq])?;
    let e = b.op(Op::Unary(UnaryOp::Exp), &[e])?;
    let norm = b.constant(1.0 / (m as f64).sqrt(), dtype)?;
    b.op(Op::Binary(BinaryOp::Mul), &[e, norm])
}

/// `m × d` positive orthogonal random features, row-major: blocks of `d` rows are the
/// Gram–Schmidt orthonormalisation of a Gaussian `d × d` block (the last block cut to
/// the rows left), and each row is scaled to the norm of an independent Gaussian
/// vector in `d` dimensions, so every row is marginally `N(0, I_d)` while rows of one
/// block are exactly orthogonal (the variance reduction of FAVOR+).
pub fn orthogonal_features(m: usize, d: usize, seed: u64) -> Vec<f64> {
    let mut rng = Rng::new(seed ^ 0x0f0f_a7e5_f00d_5eed);
    let mut out = Vec::with_capacity(m * d);
    while out.len() < m * d {
        let rows = (m - out.len() / d).min(d);
        let mut block: Vec<Vec<f64>> = Vec::with_capacity(rows);
        while block.len() < rows {
            let mut g: Vec<f64> = (0..d).map(|_| rng.normal()).collect();
            for b in &block {
                let dot: f64 = g.iter().zip(b).map(|(x, y)| x * y).sum();
                g.iter_mut().zip(b).for_each(|(x, y)| *x -= dot * y);
            }
            let norm = g.iter().map(|x| x * x).sum::<f64>().sqrt();
            // A (measure-zero) dependent draw is redrawn.
            if norm > 1e-6 {
                block.push(g.into_iter().map(|x| x / norm).collect());
            }
        }
        for row in block {
            let scale = (0..d).map(|_| rng.normal().powi(2)).sum::<f64>().sqrt();
            out.extend(row.into_iter().map(|x| x * scale));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_of_a_block_are_orthogonal_and_seeded() {
        let (m, d) = (12, 8);
        let w = orthogonal_features(m, d, 3);
        assert_eq!(w, orthogonal_features(m, d, 3));
        assert_ne!(w, orthogonal_features(m, d, 4));
        let row = |i: usize| &w[i * d..(i + 1) * d];
        for i in 0..d {
            for j in 0..i {
                let dot: f64 = row(i).iter().zip(row(j)).map(|(a, b)| a * b).sum();
                assert!(dot.abs() < 1e-9, "rows {i} and {j}: {dot}");
            }
        }
        // The second block (rows 8..12) is orthogonal within itself too.
        let dot: f64 = row(8).iter().zip(row(9)).map(|(a, b)| a * b).sum();
        assert!(dot.abs() < 1e-9);
    }
}
