//! The reference interpreter against values worked out by hand.
//!
//! Every expected value is written as a literal with the arithmetic that gives it, so a
//! failure points at either the interpreter or the comment, never at shared code.

use attnc_ir::interp::{eval, eval_nodes, Precision};
use attnc_ir::{
    random_bindings, BinaryOp, CmpOp, DType, Dims, Graph, GraphBuilder, IrError, MaskExpr, NodeId,
    Op, ReduceKind, Shape, Tensor, TensorType, TopKOutput, UnaryOp,
};
use std::collections::HashMap;

const F32: DType = DType::F32;

fn shape(dims: &[u64]) -> Shape {
    Shape::new(dims.iter().copied())
}

fn tensor(dtype: DType, shape: &[usize], data: &[f64]) -> Tensor {
    Tensor::new(dtype, shape.to_vec(), data.to_vec())
}

fn bindings(list: Vec<(&str, Tensor)>) -> HashMap<String, Tensor> {
    list.into_iter().map(|(n, t)| (n.to_string(), t)).collect()
}

/// A builder with no symbolic dims.
fn builder() -> GraphBuilder {
    GraphBuilder::new("test", Dims::new())
}

/// Finish `b` with `outs` as its outputs and evaluate it in f64.
fn run(mut b: GraphBuilder, outs: &[NodeId], binds: Vec<(&str, Tensor)>) -> Vec<Tensor> {
    for (i, &o) in outs.iter().enumerate() {
        b.output(format!("out{i}"), o).unwrap();
    }
    let g = b.finish().unwrap();
    eval(&g, &bindings(binds), Precision::F64).unwrap()
}

fn assert_close(got: &Tensor, want_shape: &[usize], want: &[f64], tol: f64) {
    assert_eq!(got.shape, want_shape, "shape");
    assert_eq!(got.data.len(), want.len(), "length");
    for (i, (&g, &w)) in got.data.iter().zip(want).enumerate() {
        let same = g == w || (g.is_nan() && w.is_nan()) || (g - w).abs() <= tol;
        assert!(same, "element {i}: got {g}, want {w} (all: {:?})", got.data);
    }
}

fn assert_exact(got: &Tensor, want_shape: &[usize], want: &[f64]) {
    assert_close(got, want_shape, want, 0.0);
}

/// The message of an `IrError::Eval`, failing on any other result.
fn eval_error(g: &Graph, binds: Vec<(&str, Tensor)>) -> (usize, String, String) {
    match eval(g, &bindings(binds), Precision::F64) {
        Err(IrError::Eval {
            node, op, message, ..
        }) => (node, op, message),
        other => panic!("expected an evaluation error, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------
// Softmax and attention.

#[test]
fn softmax_of_one_two_three() {
    let mut b = builder();
    let x = b.input("x", shape(&[3]), F32).unwrap();
    let s = b.op(Op::Softmax { axis: 0 }, &[x]).unwrap();
    let out = run(b, &[s], vec![("x", tensor(F32, &[3], &[1.0, 2.0, 3.0]))]);
    // e^(x-3) = [e^-2, e^-1, 1] = [0.1353352832, 0.3678794412, 1], sum 1.5032147244
    assert_close(
        &out[0],
        &[3],
        &[0.09003057317038046, 0.24472847105479764, 0.6652409557748218],
        1e-15,
    );
}

#[test]
fn softmax_along_first_axis() {
    let mut b = builder();
    let x = b.input("x", shape(&[2, 2]), F32).unwrap();
    let s = b.op(Op::Softmax { axis: 0 }, &[x]).unwrap();
    // Columns [0, ln 3] and [5, 5]: e^0 / (e^0 + e^ln3) = 1/4; equal entries give 1/2.
    let ln3 = 3f64.ln();
    let out = run(
        b,
        &[s],
        vec![("x", tensor(F32, &[2, 2], &[0.0, 5.0, ln3, 5.0]))],
    );
    assert_close(&out[0], &[2, 2], &[0.25, 0.5, 0.75, 0.5], 1e-15);
}

#[test]
fn attention_two_by_two() {
    // softmax(Q Kᵀ / √d) V with Q = K = I, V = [[1, 2], [3, 4]], d = 2.
    let mut b = builder();
    let q = b.input("q", shape(&[2, 2]), F32).unwrap();
    let k = b.input("k", shape(&[2, 2]), F32).unwrap();
    let v = b.input("v", shape(&[2, 2]), F32).unwrap();
    let kt = b.op(Op::Transpose { perm: vec![1, 0] }, &[k]).unwrap();
    let scores = b.op(Op::MatMul, &[q, kt]).unwrap();
    let scale = b.constant(1.0 / 2f64.sqrt(), F32).unwrap();
    let scaled = b.op(Op::Binary(BinaryOp::Mul), &[scores, scale]).unwrap();
    let p = b.op(Op::Softmax { axis: 1 }, &[scaled]).unwrap();
    let o = b.op(Op::MatMul, &[p, v]).unwrap();
    let eye = tensor(F32, &[2, 2], &[1.0, 0.0, 0.0, 1.0]);
    let out = run(
        b,
        &[p, o],
        vec![
            ("q", eye.clone()),
            ("k", eye),
            ("v", tensor(F32, &[2, 2], &[1.0, 2.0, 3.0, 4.0])),
        ],
    );
    // Scores I/√2: row 0 is [0.70710678, 0]; softmax = [σ(0.70710678), 1 - σ(..)]
    //   = [0.6697615493, 0.3302384507]; row 1 is the mirror image.
    let (hi, lo) = (0.6697615493266569, 0.3302384506733431);
    assert_close(&out[0], &[2, 2], &[hi, lo, lo, hi], 1e-15);
    // Row 0: 0.66976·[1, 2] + 0.33024·[3, 4] = [1.6604769013, 2.6604769013]
    // Row 1: 0.33024·[1, 2] + 0.66976·[3, 4] = [2.3395230987, 3.3395230987]
    assert_close(
        &out[1],
        &[2, 2],
        &[
            1.6604769013466862,
            2.6604769013466862,
            2.3395230986533138,
            3.3395230986533138,
        ],
        1e-14,
    );
}

#[test]
fn select_with_minus_infinity_mask_then_softmax() {
    let mut b = builder();
    let scores = b.input("s", shape(&[3, 3]), F32).unwrap();
    let causal = b
        .add(
            Op::Mask {
                expr: MaskExpr::parse("k <= q").unwrap(),
            },
            &[],
            Some(TensorType::new(shape(&[3, 3]), DType::Bool)),
        )
        .unwrap();
    let ninf = b.constant(f64::NEG_INFINITY, F32).unwrap();
    let masked = b.op(Op::Select, &[causal, scores, ninf]).unwrap();
    let p = b.op(Op::Softmax { axis: 1 }, &[masked]).unwrap();
    let out = run(b, &[masked, p], vec![("s", Tensor::zeros(F32, vec![3, 3]))]);
    let ni = f64::NEG_INFINITY;
    assert_exact(
        &out[0],
        &[3, 3],
        &[0.0, ni, ni, 0.0, 0.0, ni, 0.0, 0.0, 0.0],
    );
    // Row q attends to q + 1 equal scores: 1/(q+1) each, e^-inf = 0 elsewhere.
    let third = 1.0 / 3.0;
    assert_close(
        &out[1],
        &[3, 3],
        &[1.0, 0.0, 0.0, 0.5, 0.5, 0.0, third, third, third],
        1e-15,
    );
}

#[test]
fn softmax_of_fully_masked_row_is_nan() {
    // Documented choice: the textbook exp(x - max) / sum with max = -inf gives
    // exp(-inf - -inf) = exp(NaN) = NaN.
    let mut b = builder();
    let x = b.input("x", shape(&[2, 2]), F32).unwrap();
    let s = b.op(Op::Softmax { axis: 1 }, &[x]).unwrap();
    let ni = f64::NEG_INFINITY;
    let out = run(
        b,
        &[s],
        vec![("x", tensor(F32, &[2, 2], &[ni, ni, 0.0, ni]))],
    );
    assert_exact(&out[0], &[2, 2], &[f64::NAN, f64::NAN, 1.0, 0.0]);
}

// ---------------------------------------------------------------------------------
// Normalisations.

#[test]
fn rms_norm() {
    let mut b = builder();
    let x = b.input("x", shape(&[2, 4]), F32).unwrap();
    let g = b.param("g", shape(&[4]), F32).unwrap();
    let y = b.op(Op::RmsNorm { eps: 7.0 }, &[x, g]).unwrap();
    let out = run(
        b,
        &[y],
        vec![
            (
                "x",
                tensor(F32, &[2, 4], &[3.0, -3.0, 3.0, -3.0, 1.0, 2.0, 3.0, 4.0]),
            ),
            ("g", tensor(F32, &[4], &[1.0, 2.0, 3.0, 4.0])),
        ],
    );
    // Row 0: mean(x²) = 9, sqrt(9 + 7) = 4: x/4 = [0.75, -0.75, 0.75, -0.75], ·g.
    // Row 1: mean(x²) = (1+4+9+16)/4 = 7.5, sqrt(14.5) = 3.8078865529: x/3.8079·g =
    //   [0.2626128657, 1.0504514628, 2.3635157913, 4.2018058512].
    let r = 14.5f64.sqrt();
    assert_close(
        &out[0],
        &[2, 4],
        &[0.75, -1.5, 2.25, -3.0, 1.0 / r, 4.0 / r, 9.0 / r, 16.0 / r],
        1e-15,
    );
    assert_close(
        &out[0],
        &[2, 4],
        &[
            0.75,
            -1.5,
            2.25,
            -3.0,
            0.2626128657,
            1.0504514628,
            2.3635157913,
            4.2018058512,
        ],
        1e-9,
    );
}

#[test]
fn layer_norm() {
    let mut b = builder();
    let x = b.input("x", shape(&[4]), F32).unwrap();
    let g = b.param("g", shape(&[4]), F32).unwrap();
    let beta = b.param("beta", shape(&[4]), F32).unwrap();
    let y = b.op(Op::LayerNorm { eps: 2.75 }, &[x, g, beta]).unwrap();
    let out = run(
        b,
        &[y],
        vec![
            ("x", tensor(F32, &[4], &[1.0, 2.0, 3.0, 4.0])),
            ("g", tensor(F32, &[4], &[1.0, 2.0, 3.0, 4.0])),
            ("beta", tensor(F32, &[4], &[1.0, 1.0, 1.0, 1.0])),
        ],
    );
    // mean 2.5, x - mean = [-1.5, -0.5, 0.5, 1.5], biased var = (2.25+0.25+0.25+2.25)/4
    // = 1.25, sqrt(1.25 + 2.75) = 2: normalised [-0.75, -0.25, 0.25, 0.75],
    // ·g = [-0.75, -0.5, 0.75, 3], +1 = [0.25, 0.5, 1.75, 4].
    assert_exact(&out[0], &[4], &[0.25, 0.5, 1.75, 4.0]);
}

// ---------------------------------------------------------------------------------
// RoPE.

/// Scaled RoPE against the published formulas written out here, element by element:
/// Llama 3.1's band-wise rescaling and YaRN's ramp with its magnitude factor.
#[test]
fn rope_scalings_follow_the_published_formulas() {
    use attnc_ir::RopeScaling;
    let (seq, d, theta) = (6usize, 8usize, 10000.0f64);
    let plain = |i: usize| theta.powf(-2.0 * i as f64 / d as f64);
    // llama3 with original 16, low 1, high 4: wavelengths under 4 kept, over 16 / 8.
    let llama3 = |i: usize| {
        let f = plain(i);
        let w = 2.0 * std::f64::consts::PI / f;
        if w < 4.0 {
            f
        } else if w > 16.0 {
            f / 8.0
        } else {
            let s = (16.0 / w - 1.0) / 3.0;
            (1.0 - s) * f / 8.0 + s * f
        }
    };
    // yarn with factor 4, original 16, betas 32 / 1: the correction range in dims.
    let dim =
        |r: f64| d as f64 * (16.0 / (r * 2.0 * std::f64::consts::PI)).ln() / (2.0 * theta.ln());
    let (lo, hi) = (
        dim(32.0).floor().max(0.0),
        dim(1.0).ceil().min(d as f64 - 1.0),
    );
    let hi = if lo == hi { hi + 0.001 } else { hi };
    let yarn = |i: usize| {
        let ramp = ((i as f64 - lo) / (hi - lo)).clamp(0.0, 1.0);
        plain(i) / 4.0 * ramp + plain(i) * (1.0 - ramp)
    };
    // (scaling, inverse frequency of pair i, cos/sin magnitude)
    type Case<'a> = (RopeScaling, &'a dyn Fn(usize) -> f64, f64);
    let cases: [Case; 3] = [
        (
            RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_positions: 16,
            },
            &llama3,
            1.0,
        ),
        (
            RopeScaling::Yarn {
                factor: 4.0,
                original_max_positions: 16,
                beta_fast: 32.0,
                beta_slow: 1.0,
                attention_factor: 1.25,
            },
            &yarn,
            1.25,
        ),
        (
            RopeScaling::Linear { factor: 2.0 },
            &|i| plain(i) / 2.0,
            1.0,
        ),
    ];
    let data: Vec<f64> = (0..seq * d).map(|k| ((k * 7) % 11) as f64 - 5.0).collect();
    for (scaling, freq, m) in cases {
        let mut b = builder();
        let x = b.input("x", shape(&[seq as u64, d as u64]), F32).unwrap();
        let y = b.op(Op::Rope { theta, scaling }, &[x]).unwrap();
        let out = run(b, &[y], vec![("x", tensor(F32, &[seq, d], &data))]);
        let mut want = vec![0.0; seq * d];
        for p in 0..seq {
            for i in 0..d / 2 {
                let a = p as f64 * freq(i);
                let (lo, hi) = (data[p * d + i], data[p * d + i + d / 2]);
                want[p * d + i] = m * (lo * a.cos() - hi * a.sin());
                want[p * d + i + d / 2] = m * (hi * a.cos() + lo * a.sin());
            }
        }
        assert_close(&out[0], &[seq, d], &want, 1e-12);
    }
}

#[test]
fn rope_positions_zero_and_one() {
    let mut b = builder();
    let x = b.input("x", shape(&[2, 4]), F32).unwrap();
    let y = b
        .op(
            Op::Rope {
                theta: 10000.0,
                scaling: Default::default(),
            },
            &[x],
        )
        .unwrap();
    let out = run(
        b,
        &[y],
        vec![(
            "x",
            tensor(F32, &[2, 4], &[1.0, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0, 4.0]),
        )],
    );
    // d = 4: θ_0 = 10000^0 = 1, θ_1 = 10000^(-2/4) = 0.01; pairs (x0, x2) and (x1, x3).
    // Position 0: every angle is 0, the row is unchanged.
    // Position 1: out0 = 1·cos 1 - 3·sin 1 = 0.5403023059 - 2.5244129544 = -1.9841106486
    //             out1 = 2·cos .01 - 4·sin .01 = 1.9999000017 - 0.0399993333 = 1.9599006675
    //             out2 = 3·cos 1 + 1·sin 1 = 1.6209069176 + 0.8414709848 = 2.4623779024
    //             out3 = 4·cos .01 + 2·sin .01 = 3.9998000033 + 0.0199996667 = 4.0197996683
    assert_close(
        &out[0],
        &[2, 4],
        &[
            1.0,
            2.0,
            3.0,
            4.0,
            -1.9841106485555495,
            1.959900667496664,
            2.4623779024123156,
            4.019799668334994,
        ],
        1e-14,
    );
}

#[test]
fn rope_position_is_the_second_to_last_axis() {
    // [2 heads, 2 positions, 2]: both heads see positions 0 and 1 (θ_0 = 1 for d = 2).
    let mut b = builder();
    let x = b.input("x", shape(&[2, 2, 2]), F32).unwrap();
    let y = b
        .op(
            Op::Rope {
                theta: 10000.0,
                scaling: Default::default(),
            },
            &[x],
        )
        .unwrap();
    let row = [1.0, 0.0];
    let data: Vec<f64> = row.iter().cycle().take(8).copied().collect();
    let out = run(b, &[y], vec![("x", tensor(F32, &[2, 2, 2], &data))]);
    // (1, 0) rotated by angle p: (cos p, sin p).
    let (s1, c1) = 1f64.sin_cos();
    assert_close(
        &out[0],
        &[2, 2, 2],
        &[1.0, 0.0, c1, s1, 1.0, 0.0, c1, s1],
        1e-15,
    );
}

// ---------------------------------------------------------------------------------
// MatMul.

#[test]
fn matmul_batch_broadcasting() {
    // a [2, 1, 1, 2] holds rows a_0 = [1, 2], a_1 = [3, 4]; b [1, 3, 2, 1] holds columns
    // b_0 = [1, 0], b_1 = [0, 1], b_2 = [1, 1]. Batch dims [2, 1] and [1, 3] broadcast
    // to [2, 3] and out[i, j] = a_i · b_j.
    let mut b = builder();
    let a = b.input("a", shape(&[2, 1, 1, 2]), F32).unwrap();
    let w = b.input("b", shape(&[1, 3, 2, 1]), F32).unwrap();
    let y = b.op(Op::MatMul, &[a, w]).unwrap();
    let out = run(
        b,
        &[y],
        vec![
            ("a", tensor(F32, &[2, 1, 1, 2], &[1.0, 2.0, 3.0, 4.0])),
            (
                "b",
                tensor(F32, &[1, 3, 2, 1], &[1.0, 0.0, 0.0, 1.0, 1.0, 1.0]),
            ),
        ],
    );
    // [1·1+2·0, 1·0+2·1, 1+2; 3·1+4·0, 3·0+4·1, 3+4]
    assert_exact(&out[0], &[2, 3, 1, 1], &[1.0, 2.0, 3.0, 3.0, 4.0, 7.0]);
}

#[test]
fn matmul_batched_against_shared_matrix() {
    // a [2, 2, 3] times b [3, 2] (no batch dims: shared by both matrices of a).
    let mut b = builder();
    let a = b.input("a", shape(&[2, 2, 3]), F32).unwrap();
    let w = b.input("b", shape(&[3, 2]), F32).unwrap();
    let y = b.op(Op::MatMul, &[a, w]).unwrap();
    let a_data = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, -1.0, 0.0, 1.0, 0.0, 0.0, 2.0];
    let out = run(
        b,
        &[y],
        vec![
            ("a", tensor(F32, &[2, 2, 3], &a_data)),
            ("b", tensor(F32, &[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])),
        ],
    );
    // b = [[1, 2], [3, 4], [5, 6]]
    // [1 2 3]·b = [1+6+15, 2+8+18] = [22, 28];   [4 5 6]·b = [4+15+30, 8+20+36] = [49, 64]
    // [-1 0 1]·b = [-1+5, -2+6] = [4, 4];         [0 0 2]·b = [10, 12]
    assert_exact(
        &out[0],
        &[2, 2, 2],
        &[22.0, 28.0, 49.0, 64.0, 4.0, 4.0, 10.0, 12.0],
    );
}

#[test]
fn matmul_wider_than_one_tile() {
    // [1, 2] × [2, 300]: column j is [j, 1], so out[j] = 1·j + 2·1 = j + 2 — checks
    // that column tiles cover every column exactly once.
    let mut b = builder();
    let a = b.input("a", shape(&[1, 2]), F32).unwrap();
    let w = b.input("b", shape(&[2, 300]), F32).unwrap();
    let y = b.op(Op::MatMul, &[a, w]).unwrap();
    let mut w_data: Vec<f64> = (0..300).map(|j| j as f64).collect();
    w_data.extend(std::iter::repeat_n(1.0, 300));
    let out = run(
        b,
        &[y],
        vec![
            ("a", tensor(F32, &[1, 2], &[1.0, 2.0])),
            ("b", tensor(F32, &[2, 300], &w_data)),
        ],
    );
    let want: Vec<f64> = (0..300).map(|j| j as f64 + 2.0).collect();
    assert_exact(&out[0], &[1, 300], &want);
}

// ---------------------------------------------------------------------------------
// Reductions.

#[test]
fn reductions_with_and_without_keep_dims() {
    let mut b = builder();
    let x = b.input("x", shape(&[2, 3]), F32).unwrap();
    let reduce = |b: &mut GraphBuilder, kind, axes: &[usize], keep_dims| {
        b.op(
            Op::Reduce {
                kind,
                axes: axes.to_vec(),
                keep_dims,
            },
            &[x],
        )
        .unwrap()
    };
    let sum1 = reduce(&mut b, ReduceKind::Sum, &[1], false);
    let sum1k = reduce(&mut b, ReduceKind::Sum, &[1], true);
    let max0 = reduce(&mut b, ReduceKind::Max, &[0], false);
    let mean_all = reduce(&mut b, ReduceKind::Mean, &[0, 1], false);
    let mean_all_k = reduce(&mut b, ReduceKind::Mean, &[0, 1], true);
    let mean0k = reduce(&mut b, ReduceKind::Mean, &[0], true);
    let x_data = [1.0, 2.0, 3.0, 4.0, 5.0, -6.0];
    let out = run(
        b,
        &[sum1, sum1k, max0, mean_all, mean_all_k, mean0k],
        vec![("x", tensor(F32, &[2, 3], &x_data))],
    );
    // x = [[1, 2, 3], [4, 5, -6]]
    assert_exact(&out[0], &[2], &[6.0, 3.0]); // 1+2+3, 4+5-6
    assert_exact(&out[1], &[2, 1], &[6.0, 3.0]);
    assert_exact(&out[2], &[3], &[4.0, 5.0, 3.0]); // columnwise max
    assert_exact(&out[3], &[], &[1.5]); // 9 / 6
    assert_exact(&out[4], &[1, 1], &[1.5]);
    assert_exact(&out[5], &[1, 3], &[2.5, 3.5, -1.5]); // (1+4)/2, (2+5)/2, (3-6)/2
}

#[test]
fn reduce_middle_axis_of_rank_three() {
    let mut b = builder();
    let x = b.input("x", shape(&[2, 2, 2]), F32).unwrap();
    let s = b
        .op(
            Op::Reduce {
                kind: ReduceKind::Sum,
                axes: vec![1],
                keep_dims: false,
            },
            &[x],
        )
        .unwrap();
    let data: Vec<f64> = (0..8).map(f64::from).collect();
    let out = run(b, &[s], vec![("x", tensor(F32, &[2, 2, 2], &data))]);
    // x[i, :, j]: [0, 2] [1, 3] [4, 6] [5, 7] → sums 2, 4, 10, 12
    assert_exact(&out[0], &[2, 2], &[2.0, 4.0, 10.0, 12.0]);
}

// ---------------------------------------------------------------------------------
// Data movement.

#[test]
fn transpose_reshape_broadcast() {
    let mut b = builder();
    let x = b.input("x", shape(&[2, 3]), F32).unwrap();
    let t = b.op(Op::Transpose { perm: vec![1, 0] }, &[x]).unwrap();
    let r = b
        .op(
            Op::Reshape {
                shape: shape(&[3, 2]),
            },
            &[x],
        )
        .unwrap();
    let v = b.input("v", shape(&[3]), F32).unwrap();
    let bv = b
        .op(
            Op::Broadcast {
                shape: shape(&[2, 3]),
            },
            &[v],
        )
        .unwrap();
    let c = b.input("c", shape(&[2, 1]), F32).unwrap();
    let bc = b
        .op(
            Op::Broadcast {
                shape: shape(&[2, 3]),
            },
            &[c],
        )
        .unwrap();
    let out = run(
        b,
        &[t, r, bv, bc],
        vec![
            ("x", tensor(F32, &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])),
            ("v", tensor(F32, &[3], &[7.0, 8.0, 9.0])),
            ("c", tensor(F32, &[2, 1], &[-1.0, -2.0])),
        ],
    );
    // [[1, 2, 3], [4, 5, 6]]ᵀ = [[1, 4], [2, 5], [3, 6]]
    assert_exact(&out[0], &[3, 2], &[1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    // reshape keeps row-major order: [[1, 2], [3, 4], [5, 6]]
    assert_exact(&out[1], &[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    assert_exact(&out[2], &[2, 3], &[7.0, 8.0, 9.0, 7.0, 8.0, 9.0]);
    assert_exact(&out[3], &[2, 3], &[-1.0, -1.0, -1.0, -2.0, -2.0, -2.0]);
}

#[test]
fn transpose_rank_three() {
    // out dim i = in dim perm[i]: perm [2, 0, 1] maps x [2, 3, 4] to [4, 2, 3] with
    // out[c, a, b] = x[a, b, c] = 12a + 4b + c.
    let mut b = builder();
    let x = b.input("x", shape(&[2, 3, 4]), F32).unwrap();
    let t = b
        .op(
            Op::Transpose {
                perm: vec![2, 0, 1],
            },
            &[x],
        )
        .unwrap();
    let data: Vec<f64> = (0..24).map(f64::from).collect();
    let out = run(b, &[t], vec![("x", tensor(F32, &[2, 3, 4], &data))]);
    let mut want = Vec::new();
    for c in 0..4 {
        for a in 0..2 {
            for bb in 0..3 {
                want.push((12 * a + 4 * bb + c) as f64);
            }
        }
    }
    assert_exact(&out[0], &[4, 2, 3], &want);
    // Spot check: out[1, 0, 2] = x[0, 2, 1] = 9
    assert_eq!(out[0].data[6 + 2], 9.0);
}

#[test]
fn concat_and_slice() {
    let mut dims = Dims::new();
    dims.bind("s", 3);
    let mut b = GraphBuilder::new("test", dims);
    let x = b.input("x", shape(&[2, 1]), F32).unwrap();
    let y = b.input("y", shape(&[2, 2]), F32).unwrap();
    let c1 = b.op(Op::Concat { axis: 1 }, &[x, y]).unwrap();
    let c0 = b.op(Op::Concat { axis: 0 }, &[y, y]).unwrap();
    let sl = b
        .op(
            Op::Slice {
                axis: 1,
                start: 1u64.into(),
                end: "s".into(),
            },
            &[c1],
        )
        .unwrap();
    let sl0 = b
        .op(
            Op::Slice {
                axis: 0,
                start: 1u64.into(),
                end: 3u64.into(),
            },
            &[c0],
        )
        .unwrap();
    let out = run(
        b,
        &[c1, c0, sl, sl0],
        vec![
            ("x", tensor(F32, &[2, 1], &[1.0, 2.0])),
            ("y", tensor(F32, &[2, 2], &[3.0, 4.0, 5.0, 6.0])),
        ],
    );
    // [[1], [2]] ++ [[3, 4], [5, 6]] along axis 1 = [[1, 3, 4], [2, 5, 6]]
    assert_exact(&out[0], &[2, 3], &[1.0, 3.0, 4.0, 2.0, 5.0, 6.0]);
    // y ++ y along axis 0 = [[3, 4], [5, 6], [3, 4], [5, 6]]
    assert_exact(&out[1], &[4, 2], &[3.0, 4.0, 5.0, 6.0, 3.0, 4.0, 5.0, 6.0]);
    // columns 1..s (= 1..3) of [[1, 3, 4], [2, 5, 6]]
    assert_exact(&out[2], &[2, 2], &[3.0, 4.0, 5.0, 6.0]);
    // rows 1..3 of the stacked y
    assert_exact(&out[3], &[2, 2], &[5.0, 6.0, 3.0, 4.0]);
}

#[test]
fn gather_embedding_scatter_add() {
    let mut b = builder();
    let data = b.input("data", shape(&[2, 3]), F32).unwrap();
    let idx = b.input("idx", shape(&[2]), DType::I64).unwrap();
    let idx2 = b.input("idx2", shape(&[2, 2]), DType::I32).unwrap();
    let g1 = b.op(Op::Gather { axis: 1 }, &[data, idx]).unwrap();
    let g0 = b.op(Op::Gather { axis: 0 }, &[data, idx2]).unwrap();
    let table = b.param("table", shape(&[3, 2]), F32).unwrap();
    let emb = b.op(Op::Embedding, &[table, idx2]).unwrap();
    let sidx = b.input("sidx", shape(&[3]), DType::I64).unwrap();
    let upd = b.input("upd", shape(&[2, 3]), F32).unwrap();
    let sc = b
        .op(Op::ScatterAdd { axis: 1 }, &[data, sidx, upd])
        .unwrap();
    let out = run(
        b,
        &[g1, g0, emb, sc],
        vec![
            (
                "data",
                tensor(F32, &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
            ),
            ("idx", tensor(DType::I64, &[2], &[2.0, 0.0])),
            ("idx2", tensor(DType::I32, &[2, 2], &[1.0, 0.0, 1.0, 1.0])),
            (
                "table",
                tensor(F32, &[3, 2], &[10.0, 11.0, 20.0, 21.0, 30.0, 31.0]),
            ),
            ("sidx", tensor(DType::I64, &[3], &[0.0, 2.0, 0.0])),
            (
                "upd",
                tensor(F32, &[2, 3], &[100.0, 200.0, 300.0, 400.0, 500.0, 600.0]),
            ),
        ],
    );
    // data = [[1, 2, 3], [4, 5, 6]]; columns [2, 0] = [[3, 1], [6, 4]]
    assert_exact(&out[0], &[2, 2], &[3.0, 1.0, 6.0, 4.0]);
    // rows [[1, 0], [1, 1]]: shape [2, 2] ++ [3]
    assert_exact(
        &out[1],
        &[2, 2, 3],
        &[4.0, 5.0, 6.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 4.0, 5.0, 6.0],
    );
    // table rows 1, 0, 1, 1
    assert_exact(
        &out[2],
        &[2, 2, 2],
        &[20.0, 21.0, 10.0, 11.0, 20.0, 21.0, 20.0, 21.0],
    );
    // Column indices [0, 2, 0]: column 0 gets updates 0 and 2, column 2 gets update 1.
    // Row 0: [1 + 100 + 300, 2, 3 + 200] = [401, 2, 203]
    // Row 1: [4 + 400 + 600, 5, 6 + 500] = [1004, 5, 506]
    assert_exact(&out[3], &[2, 3], &[401.0, 2.0, 203.0, 1004.0, 5.0, 506.0]);
}

#[test]
fn topk_with_ties_goes_to_lower_index() {
    let mut b = builder();
    let x = b.input("x", shape(&[2, 4]), F32).unwrap();
    let topk = |b: &mut GraphBuilder, k, output| b.op(Op::TopK { k, output }, &[x]).unwrap();
    let v2 = topk(&mut b, 2, TopKOutput::Values);
    let i2 = topk(&mut b, 2, TopKOutput::Indices);
    let v3 = topk(&mut b, 3, TopKOutput::Values);
    let i3 = topk(&mut b, 3, TopKOutput::Indices);
    let out = run(
        b,
        &[v2, i2, v3, i3],
        vec![(
            "x",
            tensor(F32, &[2, 4], &[3.0, 1.0, 3.0, 2.0, -1.0, -1.0, -1.0, 5.0]),
        )],
    );
    // Row 0 [3, 1, 3, 2]: the two 3s come first, index 0 before index 2, then 2 (index 3).
    // Row 1 [-1, -1, -1, 5]: 5 (index 3), then the -1s in index order.
    assert_exact(&out[0], &[2, 2], &[3.0, 3.0, 5.0, -1.0]);
    assert_exact(&out[1], &[2, 2], &[0.0, 2.0, 3.0, 0.0]);
    assert_eq!(out[1].dtype, DType::I64);
    assert_exact(&out[2], &[2, 3], &[3.0, 3.0, 2.0, 5.0, -1.0, -1.0]);
    assert_exact(&out[3], &[2, 3], &[0.0, 2.0, 3.0, 3.0, 0.0, 1.0]);
}

#[test]
fn cumsum_along_each_axis() {
    let mut b = builder();
    let x = b.input("x", shape(&[2, 3]), F32).unwrap();
    let c1 = b.op(Op::CumSum { axis: 1 }, &[x]).unwrap();
    let c0 = b.op(Op::CumSum { axis: 0 }, &[x]).unwrap();
    let out = run(
        b,
        &[c1, c0],
        vec![("x", tensor(F32, &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]))],
    );
    // rows: [1, 1+2, 1+2+3] and [4, 4+5, 4+5+6]
    assert_exact(&out[0], &[2, 3], &[1.0, 3.0, 6.0, 4.0, 9.0, 15.0]);
    // columns: row 0 unchanged, row 1 = [1+4, 2+5, 3+6]
    assert_exact(&out[1], &[2, 3], &[1.0, 2.0, 3.0, 5.0, 7.0, 9.0]);
}

#[test]
fn iota_along_each_axis() {
    let mut b = builder();
    let ty = TensorType::new(shape(&[2, 3]), DType::I64);
    let i0 = b.add(Op::Iota { axis: 0 }, &[], Some(ty.clone())).unwrap();
    let i1 = b.add(Op::Iota { axis: 1 }, &[], Some(ty)).unwrap();
    let out = run(b, &[i0, i1], vec![]);
    assert_exact(&out[0], &[2, 3], &[0.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
    assert_exact(&out[1], &[2, 3], &[0.0, 1.0, 2.0, 0.0, 1.0, 2.0]);
}

// ---------------------------------------------------------------------------------
// Masks.

fn mask_graph(expr: &str, dims: Dims, sizes: &[u64]) -> Tensor {
    let mut b = GraphBuilder::new("mask", dims);
    let m = b
        .add(
            Op::Mask {
                expr: MaskExpr::parse(expr).unwrap(),
            },
            &[],
            Some(TensorType::new(shape(sizes), DType::Bool)),
        )
        .unwrap();
    run(b, &[m], vec![]).remove(0)
}

#[test]
fn causal_mask_three_by_three() {
    let m = mask_graph("k <= q", Dims::new(), &[3, 3]);
    assert_eq!(m.dtype, DType::Bool);
    // row q keeps columns k = 0..=q
    assert_exact(&m, &[3, 3], &[1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0]);
}

#[test]
fn sliding_window_mask() {
    let mut dims = Dims::new();
    dims.bind("window", 2);
    let m = mask_graph("k <= q && q - k < window", dims, &[4, 4]);
    // row q keeps k in (q - 2, q]: {0}, {0, 1}, {1, 2}, {2, 3}
    #[rustfmt::skip]
    let want = [
        1.0, 0.0, 0.0, 0.0,
        1.0, 1.0, 0.0, 0.0,
        0.0, 1.0, 1.0, 0.0,
        0.0, 0.0, 1.0, 1.0,
    ];
    assert_exact(&m, &[4, 4], &want);
}

#[test]
fn mask_coordinates_are_trailing_indices() {
    // [b=2, h=2, q=1, k=2]: the mask holds where k == h + b (b counts from axis 0).
    let m = mask_graph("k == h + b", Dims::new(), &[2, 2, 1, 2]);
    // (b, h) = (0,0): k=0 | (0,1): k=1 | (1,0): k=1 | (1,1): k=2, out of range → none
    assert_exact(&m, &[2, 2, 1, 2], &[1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0]);
    // Rank 1: the single axis is k and q = 0.
    let m1 = mask_graph("k <= q + 1", Dims::new(), &[3]);
    assert_exact(&m1, &[3], &[1.0, 1.0, 0.0]);
}

// ---------------------------------------------------------------------------------
// Elementwise ops.

#[test]
fn unary_ops() {
    let ops = [
        UnaryOp::Gelu,
        UnaryOp::GeluTanh,
        UnaryOp::Silu,
        UnaryOp::Sigmoid,
        UnaryOp::Elu,
        UnaryOp::Relu,
        UnaryOp::Rsqrt,
        UnaryOp::Neg,
        UnaryOp::Abs,
    ];
    let mut b = builder();
    let x = b.input("x", shape(&[3]), F32).unwrap();
    let nodes: Vec<NodeId> = ops
        .iter()
        .map(|&u| b.op(Op::Unary(u), &[x]).unwrap())
        .collect();
    let out = run(b, &nodes, vec![("x", tensor(F32, &[3], &[1.0, -1.0, 4.0]))]);
    // x·Φ(x): Φ(1) = 0.8413447461, Φ(-1) = 0.1586552539, 4·Φ(4) = 4·0.9999683288
    assert_close(
        &out[0],
        &[3],
        &[0.8413447460685429, -0.15865525393145707, 3.9998733150326675],
        1e-15,
    );
    // x = 1: 0.5·(1 + tanh(√(2/π)·(1 + 0.044715))) = 0.5·(1 + tanh(0.8335619689))
    // = 0.8411919906; x = -1 is odd-symmetric: -1 + 0.8411919906 = -0.1588080094;
    // x = 4: 0.5·4·(1 + tanh(√(2/π)·(4 + 0.044715·64))) = 3.9999297541
    assert_close(
        &out[1],
        &[3],
        &[0.8411919906082768, -0.15880800939172324, 3.9999297540518075],
        1e-15,
    );
    // σ(1) = 1/(1 + e^-1) = 0.7310585786, silu = x·σ(x); σ(-1) = 0.2689414214
    assert_close(
        &out[2],
        &[3],
        &[
            0.7310585786300049,
            -0.2689414213699951,
            4.0 / (1.0 + (-4f64).exp()),
        ],
        1e-15,
    );
    assert_close(
        &out[3],
        &[3],
        &[
            0.7310585786300049,
            0.2689414213699951,
            1.0 / (1.0 + (-4f64).exp()),
        ],
        1e-15,
    );
    // elu(-1) = e^-1 - 1 = -0.6321205588
    assert_close(&out[4], &[3], &[1.0, -0.6321205588285577, 4.0], 1e-15);
    assert_exact(&out[5], &[3], &[1.0, 0.0, 4.0]);
    // rsqrt(4) = 1/2; rsqrt(-1) = NaN
    assert_exact(&out[6], &[3], &[1.0, f64::NAN, 0.5]);
    assert_exact(&out[7], &[3], &[-1.0, 1.0, -4.0]);
    assert_exact(&out[8], &[3], &[1.0, 1.0, 4.0]);
}

#[test]
fn binary_ops_broadcast() {
    let mut b = builder();
    let x = b.input("x", shape(&[2, 1]), F32).unwrap();
    let y = b.input("y", shape(&[3]), F32).unwrap();
    let bin = |b: &mut GraphBuilder, op| b.op(Op::Binary(op), &[x, y]).unwrap();
    let add = bin(&mut b, BinaryOp::Add);
    let sub = bin(&mut b, BinaryOp::Sub);
    let div = bin(&mut b, BinaryOp::Div);
    let pow = bin(&mut b, BinaryOp::Pow);
    let max = bin(&mut b, BinaryOp::Max);
    let min = bin(&mut b, BinaryOp::Min);
    let lt = b.op(Op::Compare(CmpOp::Lt), &[x, y]).unwrap();
    let out = run(
        b,
        &[add, sub, div, pow, max, min, lt],
        vec![
            ("x", tensor(F32, &[2, 1], &[2.0, 4.0])),
            ("y", tensor(F32, &[3], &[1.0, 3.0, f64::NAN])),
        ],
    );
    // x broadcasts along columns, y along rows: out[i, j] = x[i] op y[j].
    let nan = f64::NAN;
    assert_exact(&out[0], &[2, 3], &[3.0, 5.0, nan, 5.0, 7.0, nan]);
    assert_exact(&out[1], &[2, 3], &[1.0, -1.0, nan, 3.0, 1.0, nan]);
    assert_exact(
        &out[2],
        &[2, 3],
        &[2.0, 2.0 / 3.0, nan, 4.0, 4.0 / 3.0, nan],
    );
    assert_exact(&out[3], &[2, 3], &[2.0, 8.0, nan, 4.0, 64.0, nan]); // 2^1, 2^3, 4^1, 4^3
                                                                      // max and min propagate NaN (numpy's maximum/minimum)
    assert_exact(&out[4], &[2, 3], &[2.0, 3.0, nan, 4.0, 4.0, nan]);
    assert_exact(&out[5], &[2, 3], &[1.0, 2.0, nan, 1.0, 3.0, nan]);
    // 2 < 1, 2 < 3, 2 < NaN; 4 < 1, 4 < 3, 4 < NaN
    assert_exact(&out[6], &[2, 3], &[0.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
    assert_eq!(out[6].dtype, DType::Bool);
}

#[test]
fn integer_division_truncates_toward_zero() {
    let mut b = builder();
    let x = b.input("x", shape(&[4]), DType::I32).unwrap();
    let y = b.input("y", shape(&[4]), DType::I32).unwrap();
    let d = b.op(Op::Binary(BinaryOp::Div), &[x, y]).unwrap();
    let out = run(
        b,
        &[d],
        vec![
            ("x", tensor(DType::I32, &[4], &[-7.0, 7.0, -7.0, 6.0])),
            ("y", tensor(DType::I32, &[4], &[2.0, -2.0, -2.0, 3.0])),
        ],
    );
    // -3.5 → -3, -3.5 → -3, 3.5 → 3, 2 → 2
    assert_exact(&out[0], &[4], &[-3.0, -3.0, 3.0, 2.0]);
    assert_eq!(out[0].dtype, DType::I32);
}

#[test]
fn cast_rounds_to_the_target_dtype() {
    let mut b = builder();
    let x = b.input("x", shape(&[5]), F32).unwrap();
    let casts: Vec<NodeId> = [DType::F16, DType::BF16, DType::I32, DType::I64, DType::Bool]
        .into_iter()
        .map(|to| b.op(Op::Cast { to }, &[x]).unwrap())
        .collect();
    let x_data = [1.0 / 3.0, -2.7, 0.0, 70000.0, 65519.0];
    let out = run(b, &casts, vec![("x", tensor(F32, &[5], &x_data))]);
    // f16: 1/3 → 0x3555 = 1365/4096 = 0.333251953125; -2.7 → -2.69921875 (1/512 steps);
    //      70000 > 65520 overflows to inf; 65519 rounds down to the largest f16, 65504.
    assert_exact(
        &out[0],
        &[5],
        &[0.333251953125, -2.69921875, 0.0, f64::INFINITY, 65504.0],
    );
    assert_eq!(out[0].dtype, DType::F16);
    // bf16 keeps 8 significant bits: 1/3 → 171/512 = 0.333984375; -2.7 → -2.703125
    // (1/64 steps); 70000 → 137·512 = 70144; 65519 → 128·512 = 65536.
    assert_exact(
        &out[1],
        &[5],
        &[0.333984375, -2.703125, 0.0, 70144.0, 65536.0],
    );
    // To integers: truncate toward zero.
    assert_exact(&out[2], &[5], &[0.0, -2.0, 0.0, 70000.0, 65519.0]);
    assert_exact(&out[3], &[5], &[0.0, -2.0, 0.0, 70000.0, 65519.0]);
    // To bool: != 0.
    assert_exact(&out[4], &[5], &[1.0, 1.0, 0.0, 1.0, 1.0]);
}

// ---------------------------------------------------------------------------------
// Precision.

#[test]
fn f32_precision_rounds_every_result_f64_keeps_it() {
    let mut b = builder();
    let one = b.constant(1.0, F32).unwrap();
    let three = b.constant(3.0, F32).unwrap();
    let third = b.op(Op::Binary(BinaryOp::Div), &[one, three]).unwrap();
    let x = b.input("x", shape(&[1]), F32).unwrap();
    let h = b.constant(1.0 / 3.0, DType::F16).unwrap();
    b.output("third", third).unwrap();
    b.output("x", x).unwrap();
    b.output("h", h).unwrap();
    let g = b.finish().unwrap();
    let binds = bindings(vec![("x", tensor(F32, &[1], &[0.1]))]);
    let exact = eval(&g, &binds, Precision::F64).unwrap();
    let rounded = eval(&g, &binds, Precision::F32).unwrap();
    assert_eq!(exact[0].data, [1.0 / 3.0]);
    // 1/3 in f32 is 0x3EAAAAAB = 11184811 / 2^25 = 0.3333333432674408
    assert_eq!(rounded[0].data, [0.3333333432674408]);
    assert_eq!(rounded[0].data, [(1.0f32 / 3.0f32) as f64]);
    assert!((exact[0].data[0] - rounded[0].data[0]).abs() > 1e-9);
    // Bound f32 values are rounded as well: 0.1 → 0.100000001490116.
    assert_eq!(exact[1].data, [0.1]);
    assert_eq!(rounded[1].data, [0.1f32 as f64]);
    // f16 results are rounded whatever the precision: 1/3 → 0.333251953125.
    assert_eq!(exact[2].data, [0.333251953125]);
    assert_eq!(rounded[2].data, [0.333251953125]);
}

// ---------------------------------------------------------------------------------
// Errors.

#[test]
fn missing_binding_is_an_error() {
    let mut b = builder();
    let t = b.input("tokens", shape(&[2]), DType::I64).unwrap();
    let n = b.op(Op::Unary(UnaryOp::Neg), &[t]).unwrap();
    b.output("n", n).unwrap();
    let g = b.finish().unwrap();
    let (node, op, message) = eval_error(&g, vec![]);
    assert_eq!((node, op.as_str()), (0, "input"));
    assert_eq!(message, "no value bound for input `tokens`");
}

#[test]
fn binding_of_wrong_shape_or_dtype_is_an_error() {
    let mut b = builder();
    let w = b.param("w", shape(&[2, 3]), F32).unwrap();
    b.output("w", w).unwrap();
    let g = b.finish().unwrap();
    let (_, op, message) = eval_error(&g, vec![("w", Tensor::zeros(F32, vec![3, 2]))]);
    assert_eq!(op, "param");
    assert_eq!(
        message,
        "param `w` expects a [2, 3] f32 tensor, got [3, 2] f32"
    );
    let (_, _, message) = eval_error(&g, vec![("w", Tensor::zeros(DType::F16, vec![2, 3]))]);
    assert_eq!(
        message,
        "param `w` expects a [2, 3] f32 tensor, got [2, 3] f16"
    );
    // A tensor whose data does not match its own shape (the fields are public).
    let bad = Tensor {
        dtype: F32,
        shape: vec![2, 3],
        data: vec![0.0; 5],
    };
    let (_, _, message) = eval_error(&g, vec![("w", bad)]);
    assert!(message.contains("5 elements instead of 6"), "{message}");
}

#[test]
fn out_of_range_indices_are_errors() {
    let mut b = builder();
    b.set_layer(Some("embed".into()));
    let table = b.param("table", shape(&[3, 2]), F32).unwrap();
    let ids = b.input("ids", shape(&[2]), DType::I64).unwrap();
    let emb = b.op(Op::Embedding, &[table, ids]).unwrap();
    let gat = b.op(Op::Gather { axis: 1 }, &[table, ids]).unwrap();
    let upd = b.input("upd", shape(&[3, 2]), F32).unwrap();
    let sc = b
        .op(Op::ScatterAdd { axis: 1 }, &[table, ids, upd])
        .unwrap();
    b.output("emb", emb).unwrap();
    b.output("gat", gat).unwrap();
    b.output("sc", sc).unwrap();
    let g = b.finish().unwrap();
    let ids_value = |a: f64, c: f64| tensor(DType::I64, &[2], &[a, c]);
    let binds = |ids: Tensor| {
        vec![
            ("table", Tensor::zeros(F32, vec![3, 2])),
            ("ids", ids),
            ("upd", Tensor::zeros(F32, vec![3, 2])),
        ]
    };

    // Embedding is evaluated first: id 3 is past the 3 rows.
    let err = eval(&g, &bindings(binds(ids_value(1.0, 3.0))), Precision::F64).unwrap_err();
    let IrError::Eval {
        layer,
        node,
        op,
        message,
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(layer.as_deref(), Some("embed"));
    assert_eq!((*node, op.as_str()), (emb.index(), "embedding"));
    assert_eq!(
        message,
        "token id 3 at position 1 is out of range for a table of 3 rows"
    );
    assert!(err
        .to_string()
        .starts_with("layer `embed`: %2 = embedding: "));

    // A negative id fails too (no negative indexing).
    let (_, op, message) = eval_error(&g, binds(ids_value(-1.0, 0.0)));
    assert_eq!(op, "embedding");
    assert!(message.contains("token id -1 at position 0"), "{message}");

    // Id 2 is a fine row of the table but past axis 1 (size 2) of gather and scatter_add.
    let (node, op, message) = eval_error(&g, binds(ids_value(0.0, 2.0)));
    assert_eq!((node, op.as_str()), (gat.index(), "gather"));
    assert_eq!(
        message,
        "index 2 at position 1 of the indices is out of range for axis 1 of size 2"
    );
    // scatter_add on its own, so gather does not fail first.
    let mut b2 = builder();
    let t2 = b2.param("table", shape(&[3, 2]), F32).unwrap();
    let i2 = b2.input("ids", shape(&[2]), DType::I64).unwrap();
    let u2 = b2.input("upd", shape(&[3, 2]), F32).unwrap();
    let s2 = b2.op(Op::ScatterAdd { axis: 1 }, &[t2, i2, u2]).unwrap();
    b2.output("sc", s2).unwrap();
    let g2 = b2.finish().unwrap();
    let (_, op, message) = eval_error(&g2, binds(ids_value(5.0, 0.0)));
    assert_eq!(op, "scatter_add");
    assert_eq!(
        message,
        "index 5 at position 0 of the indices is out of range for axis 1 of size 2"
    );
}

#[test]
fn integer_division_by_zero_is_an_error() {
    let mut b = builder();
    let x = b.input("x", shape(&[2]), DType::I64).unwrap();
    let zero = b.constant(0.0, DType::I64).unwrap();
    let d = b.op(Op::Binary(BinaryOp::Div), &[x, zero]).unwrap();
    b.output("d", d).unwrap();
    let g = b.finish().unwrap();
    let (_, op, message) = eval_error(&g, vec![("x", tensor(DType::I64, &[2], &[1.0, 2.0]))]);
    assert_eq!(op, "div");
    assert_eq!(message, "integer division by zero (1 / 0)");
}

// ---------------------------------------------------------------------------------
// eval versus eval_nodes, and random bindings.

#[test]
fn eval_nodes_gives_every_node_and_agrees_with_eval() {
    let mut b = builder();
    let x = b.input("x", shape(&[2]), F32).unwrap();
    let unused = b.input("unused", shape(&[2]), F32).unwrap();
    let e = b.op(Op::Unary(UnaryOp::Exp), &[x]).unwrap();
    let s = b.op(Op::Binary(BinaryOp::Add), &[e, x]).unwrap();
    let _dead = b.op(Op::Unary(UnaryOp::Neg), &[unused]).unwrap();
    b.output("s", s).unwrap();
    b.output("e", e).unwrap();
    b.output("s_again", s).unwrap();
    let g = b.finish().unwrap();
    let x_value = tensor(F32, &[2], &[0.0, 1.0]);

    // eval only needs what the outputs need, and may name one node twice.
    let out = eval(&g, &bindings(vec![("x", x_value.clone())]), Precision::F64).unwrap();
    let e_value = [1.0, std::f64::consts::E];
    assert_exact(&out[0], &[2], &[1.0, 1.0 + std::f64::consts::E]);
    assert_exact(&out[1], &[2], &e_value);
    assert_eq!(out[2], out[0]);

    // eval_nodes evaluates everything, so the unused input must be bound too.
    let partial = bindings(vec![("x", x_value.clone())]);
    assert!(matches!(
        eval_nodes(&g, &partial, Precision::F64),
        Err(IrError::Eval { node: 1, .. })
    ));
    let full = bindings(vec![
        ("x", x_value),
        ("unused", tensor(F32, &[2], &[5.0, 6.0])),
    ]);
    let nodes = eval_nodes(&g, &full, Precision::F64).unwrap();
    assert_eq!(nodes.len(), g.len());
    assert_eq!(nodes[e.index()], out[1]);
    assert_eq!(nodes[s.index()], out[0]);
    assert_exact(&nodes[4], &[2], &[-5.0, -6.0]);
}

#[test]
fn outputs_have_the_node_shape_and_dtype() {
    let mut dims = Dims::new();
    dims.bind("seq", 3);
    dims.bind("d", 2);
    let mut b = GraphBuilder::new("t", dims);
    let x = b.input("x", Shape::new(["seq", "d"]), DType::BF16).unwrap();
    let y = b.op(Op::Unary(UnaryOp::Exp), &[x]).unwrap();
    b.output("y", y).unwrap();
    let g = b.finish().unwrap();
    let out = eval(&g, &random_bindings(&g, 7), Precision::F64).unwrap();
    assert_eq!(out[0].shape, [3, 2]);
    assert_eq!(out[0].dtype, DType::BF16);
    // bf16 results are rounded: every value survives a second rounding unchanged.
    for &v in &out[0].data {
        assert_eq!(half::bf16::from_f64(v).to_f64(), v);
    }
}

/// A small model-shaped graph: embedding, a norm, a projection and a softmax.
fn small_model() -> Graph {
    let mut dims = Dims::new();
    dims.bind("seq", 4);
    dims.bind("vocab", 10);
    dims.bind("d", 8);
    let mut b = GraphBuilder::new("small", dims);
    let tokens = b.input("tokens", Shape::new(["seq"]), DType::I64).unwrap();
    let table = b.param("wte", Shape::new(["vocab", "d"]), F32).unwrap();
    let gamma = b.param("ln.g", Shape::new(["d"]), F32).unwrap();
    let x = b.op(Op::Embedding, &[table, tokens]).unwrap();
    let x = b.op(Op::RmsNorm { eps: 1e-5 }, &[x, gamma]).unwrap();
    let w = b.param("proj", Shape::new(["d", "vocab"]), F32).unwrap();
    let logits = b.op(Op::MatMul, &[x, w]).unwrap();
    let p = b.op(Op::Softmax { axis: 1 }, &[logits]).unwrap();
    b.output("probs", p).unwrap();
    b.finish().unwrap()
}

#[test]
fn random_bindings_are_deterministic() {
    let g = small_model();
    let a = random_bindings(&g, 42);
    let again = random_bindings(&g, 42);
    let other = random_bindings(&g, 43);
    assert_eq!(a, again);
    for name in ["tokens", "wte", "ln.g", "proj"] {
        assert_ne!(
            a[name], other[name],
            "`{name}` did not change with the seed"
        );
    }
    // Token ids are drawn below the table size, so the model evaluates.
    assert!(a["tokens"].data.iter().all(|&t| (0.0..10.0).contains(&t)));
    let p = eval(&g, &a, Precision::F64).unwrap();
    assert_eq!(p, eval(&g, &again, Precision::F64).unwrap());
    for row in p[0].data.chunks(10) {
        assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }
    // f32 evaluation stays close to the oracle.
    let p32 = eval(&g, &a, Precision::F32).unwrap();
    assert!(p[0].max_abs_diff(&p32[0]) < 1e-5);
}

// ---------------------------------------------------------------------------------
// Mixture of experts.

/// Two tokens, two experts of one hidden unit (relu, not gated), D = 1:
/// `FFN_e(x) = relu(x·u_e)·w_e`. Token 0 goes to expert 1 with gate 0.5, token 1 to
/// both; a zero gate skips its expert.
#[test]
fn moe_dispatch_by_hand() {
    let mut b = builder();
    let x = b.input("x", shape(&[2, 1]), F32).unwrap();
    let gate = b.input("gate", shape(&[2, 2]), F32).unwrap();
    let up = b.param("up", shape(&[2, 1, 1]), F32).unwrap();
    let down = b.param("down", shape(&[2, 1, 1]), F32).unwrap();
    let m = |k| attnc_ir::MoeDispatch {
        activation: UnaryOp::Relu,
        gated: false,
        choice: attnc_ir::MoeChoice::Token,
        k,
        shared: attnc_ir::MoeShared::None,
    };
    let y = b.op(Op::MoeDispatch(m(2)), &[x, gate, up, down]).unwrap();
    let binds = || {
        vec![
            ("x", tensor(F32, &[2, 1], &[2.0, -1.0])),
            ("gate", tensor(F32, &[2, 2], &[0.0, 0.5, 0.25, 0.75])),
            ("up", tensor(F32, &[2, 1, 1], &[1.0, 3.0])),
            ("down", tensor(F32, &[2, 1, 1], &[10.0, -1.0])),
        ]
    };
    let out = run(b, &[y], binds());
    // Token 0: 0.5 · relu(2·3)·(−1) = −3. Token 1: 0.25 · relu(−1)·10 + 0.75 ·
    // relu(−3)·(−1) = 0.
    assert_exact(&out[0], &[2, 1], &[-3.0, 0.0]);
    // Token 1 selects two experts: more than k = 1 is an error, not a wrong number.
    let mut b = builder();
    let x = b.input("x", shape(&[2, 1]), F32).unwrap();
    let gate = b.input("gate", shape(&[2, 2]), F32).unwrap();
    let up = b.param("up", shape(&[2, 1, 1]), F32).unwrap();
    let down = b.param("down", shape(&[2, 1, 1]), F32).unwrap();
    let y = b.op(Op::MoeDispatch(m(1)), &[x, gate, up, down]).unwrap();
    b.output("y", y).unwrap();
    let g = b.finish().unwrap();
    let (_, op, message) = eval_error(&g, binds());
    assert_eq!(op, "moe_dispatch");
    assert!(
        message.contains("row 1") && message.contains("more than 1"),
        "{message}"
    );
}
