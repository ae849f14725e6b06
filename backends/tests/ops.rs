//! Every op the CPU backend lowers, on tiny graphs at odd sizes (with broadcasting),
//! compiled and compared with the reference interpreter.

mod common;

use attnc_ir::{
    BinaryOp, CmpOp, DType, Dim, Dims, MaskExpr, Op, ReduceKind, Shape, TensorType, UnaryOp,
};
use common::{check, check_with, graph, graph_with_dims, shape, tensor};

use DType::{Bool, BF16, F16, F32, I32, I64};

#[test]
fn constants_broadcast_and_stand_alone() {
    check(&graph(|b| {
        let x = b.input("x", shape(&[3, 5]), F32)?;
        let c = b.constant(-1.5, F32)?;
        let inf = b.constant(f64::NEG_INFINITY, F32)?;
        let i = b.constant(7.0, I64)?;
        let t = b.constant(1.0, Bool)?;
        Ok(vec![b.op(Op::Binary(BinaryOp::Mul), &[x, c])?, inf, i, t])
    }));
}

#[test]
fn iota_along_each_axis() {
    for (axis, dtype) in [(0, I64), (1, I32), (2, I64)] {
        let ty = TensorType::new(shape(&[3, 5, 7]), dtype);
        check(&graph(|b| {
            Ok(vec![b.add(Op::Iota { axis }, &[], Some(ty))?])
        }));
    }
}

#[test]
fn every_unary_op_on_floats() {
    for u in UnaryOp::ALL {
        for (dtype, sizes) in [(F32, &[3u64, 5][..]), (F16, &[7]), (BF16, &[1, 5])] {
            check(&graph(|b| {
                let x = b.input("x", shape(sizes), dtype)?;
                Ok(vec![b.op(Op::Unary(u), &[x])?])
            }));
        }
    }
}

#[test]
fn unary_ops_on_integers() {
    for u in UnaryOp::ALL.into_iter().filter(|u| u.allows_int()) {
        for dtype in [I32, I64] {
            let g = graph(|b| {
                let x = b.input("x", shape(&[7]), dtype)?;
                Ok(vec![b.op(Op::Unary(u), &[x])?])
            });
            let data = [-3.0, -1.0, 0.0, 1.0, 2.0, 50.0, -7.0];
            check_with(&g, &[("x".to_string(), tensor(dtype, &[7], &data))].into());
        }
    }
}

/// Shape pairs that exercise numpy broadcasting: size-1 dims, missing leading dims,
/// scalars.
const BROADCASTS: [(&[u64], &[u64]); 5] = [
    (&[3, 5], &[3, 5]),
    (&[2, 3, 5], &[3, 1]),
    (&[1, 5], &[3, 1]),
    (&[], &[7]),
    (&[50], &[1]),
];

#[test]
fn every_binary_op_on_floats_with_broadcasting() {
    for op in BinaryOp::ALL {
        for (sa, sb) in BROADCASTS {
            check(&graph(|b| {
                let x = b.input("x", shape(sa), F32)?;
                let y = b.input("y", shape(sb), F32)?;
                Ok(vec![b.op(Op::Binary(op), &[x, y])?])
            }));
        }
    }
}

#[test]
fn binary_ops_on_half_floats() {
    for dtype in [F16, BF16] {
        for op in [BinaryOp::Add, BinaryOp::Mul, BinaryOp::Max] {
            check(&graph(|b| {
                let x = b.input("x", shape(&[3, 5]), dtype)?;
                let y = b.input("y", shape(&[5]), dtype)?;
                Ok(vec![b.op(Op::Binary(op), &[x, y])?])
            }));
        }
    }
}

#[test]
fn every_binary_op_on_integers() {
    for op in BinaryOp::ALL {
        for dtype in [I32, I64] {
            let g = graph(|b| {
                let x = b.input("x", shape(&[2, 5]), dtype)?;
                let y = b.input("y", shape(&[5]), dtype)?;
                Ok(vec![b.op(Op::Binary(op), &[x, y])?])
            });
            let x = [-7.0, 7.0, 3.0, -3.0, 0.0, 9.0, -9.0, 1.0, 2.0, 5.0];
            let y = [2.0, -2.0, 3.0, 1.0, 4.0];
            let bindings = [
                ("x".to_string(), tensor(dtype, &[2, 5], &x)),
                ("y".to_string(), tensor(dtype, &[5], &y)),
            ];
            check_with(&g, &bindings.into());
        }
    }
}

#[test]
fn every_comparison_with_broadcasting() {
    for op in CmpOp::ALL {
        for dtype in [F32, I64] {
            check(&graph(|b| {
                let x = b.input("x", shape(&[3, 5]), dtype)?;
                let y = b.input("y", shape(&[3, 1]), dtype)?;
                Ok(vec![b.op(Op::Compare(op), &[x, y])?])
            }));
        }
    }
    // Equal values must compare equal.
    check(&graph(|b| {
        let x = b.input("x", shape(&[7]), F32)?;
        Ok(vec![
            b.op(Op::Compare(CmpOp::Eq), &[x, x])?,
            b.op(Op::Compare(CmpOp::Le), &[x, x])?,
        ])
    }));
}

#[test]
fn select_broadcasts_all_three_operands() {
    check(&graph(|b| {
        let c = b.input("c", shape(&[3, 1]), Bool)?;
        let x = b.input("x", shape(&[2, 3, 5]), F32)?;
        let y = b.constant(f64::NEG_INFINITY, F32)?;
        let i = b.input("i", shape(&[5]), I32)?;
        let j = b.input("j", shape(&[3, 5]), I32)?;
        Ok(vec![
            b.op(Op::Select, &[c, x, y])?,
            b.op(Op::Select, &[c, i, j])?,
        ])
    }));
}

#[test]
fn casts_between_every_pair_of_dtypes() {
    // Values with fractions, negatives and a large one, so truncation and saturation
    // show; bools and ints are what random bindings give.
    let data = [-2.75, -0.5, 0.0, 0.25, 1.5, 3.0, 70000.0];
    for from in DType::ALL {
        for to in DType::ALL {
            let g = graph(|b| {
                let x = b.input("x", shape(&[7]), from)?;
                Ok(vec![b.op(Op::Cast { to }, &[x])?])
            });
            let mut x = tensor(from, &[7], &data);
            attnc_ir::interp::round_to_dtype(&mut x);
            check_with(&g, &[("x".to_string(), x)].into());
        }
    }
}

#[test]
fn reductions_over_axes_with_and_without_kept_dims() {
    let axes_cases: [&[usize]; 5] = [&[0], &[1], &[2], &[0, 2], &[0, 1, 2]];
    for kind in ReduceKind::ALL {
        for axes in axes_cases {
            for keep_dims in [false, true] {
                for dtype in [F32, F16] {
                    check(&graph(|b| {
                        let x = b.input("x", shape(&[2, 3, 5]), dtype)?;
                        let op = Op::Reduce {
                            kind,
                            axes: axes.to_vec(),
                            keep_dims,
                        };
                        Ok(vec![b.op(op, &[x])?])
                    }));
                }
            }
        }
    }
}

#[test]
fn softmax_along_every_axis() {
    for axis in 0..3 {
        for dtype in [F32, BF16] {
            check(&graph(|b| {
                let x = b.input("x", shape(&[3, 5, 7]), dtype)?;
                Ok(vec![b.op(Op::Softmax { axis }, &[x])?])
            }));
        }
    }
    check(&graph(|b| {
        let x = b.input("x", shape(&[2, 50]), F32)?;
        Ok(vec![b.op(Op::Softmax { axis: 1 }, &[x])?])
    }));
}

#[test]
fn fully_masked_softmax_row_is_nan_as_in_the_interpreter() {
    check(&graph(|b| {
        let x = b.input("x", shape(&[3, 5]), F32)?;
        let c = b.input("c", shape(&[3, 1]), Bool)?;
        let inf = b.constant(f64::NEG_INFINITY, F32)?;
        let masked = b.op(Op::Select, &[c, x, inf])?;
        Ok(vec![b.op(Op::Softmax { axis: 1 }, &[masked])?])
    }));
}

#[test]
fn layer_norm_and_rms_norm() {
    for (sizes, d) in [(&[3u64, 50][..], 50u64), (&[2, 3, 7], 7), (&[1, 5], 5)] {
        for dtype in [F32, F16] {
            check(&graph(|b| {
                let x = b.input("x", shape(sizes), dtype)?;
                let g = b.param("gamma", shape(&[d]), dtype)?;
                let be = b.param("beta", shape(&[d]), dtype)?;
                Ok(vec![
                    b.op(Op::LayerNorm { eps: 1e-5 }, &[x, g, be])?,
                    b.op(Op::RmsNorm { eps: 1e-6 }, &[x, g])?,
                ])
            }));
        }
    }
}

#[test]
fn matmul_plain_batched_and_broadcast() {
    let cases: [(&[u64], &[u64]); 6] = [
        (&[3, 5], &[5, 7]),
        (&[1, 1], &[1, 50]),
        (&[2, 3, 5], &[5, 7]),
        (&[3, 5], &[2, 5, 7]),
        (&[2, 1, 3, 5], &[4, 5, 7]),
        (&[2, 3, 5], &[2, 5, 1]),
    ];
    for (sa, sb) in cases {
        for dtype in [F32, BF16, I32] {
            check(&graph(|b| {
                let x = b.input("a", shape(sa), dtype)?;
                let y = b.param("b", shape(sb), dtype)?;
                Ok(vec![b.op(Op::MatMul, &[x, y])?])
            }));
        }
    }
}

/// Sizes that are not multiples of the GEMM's register tile (8×32) or blocks (K by
/// 256, M by 256, N by 4096) — where generated code breaks — and operands that are
/// views (a slice along the last axis) rather than fresh buffers.
#[test]
fn matmul_odd_sizes_and_views() {
    let cases: [(&[u64], &[u64]); 6] = [
        (&[50, 783], &[783, 37]),
        (&[257, 300], &[300, 33]),
        (&[4097, 3], &[3, 5]),
        (&[9, 16], &[16, 4097]),
        (&[2, 7, 513], &[513, 31]),
        (&[1, 1], &[1, 1]),
    ];
    for (sa, sb) in cases {
        check(&graph(|b| {
            let x = b.input("a", shape(sa), F32)?;
            let y = b.param("b", shape(sb), F32)?;
            Ok(vec![b.op(Op::MatMul, &[x, y])?])
        }));
    }
    // The right half of a wider tensor: a view with a row stride of 2·K.
    check(&graph(|b| {
        let x = b.input("a", shape(&[33, 2, 40]), F32)?;
        let x = b.op(
            Op::Reshape {
                shape: shape(&[33, 80]),
            },
            &[x],
        )?;
        let half = b.op(
            Op::Slice {
                axis: 1,
                start: attnc_ir::Dim::Const(40),
                end: attnc_ir::Dim::Const(80),
            },
            &[x],
        )?;
        let y = b.param("b", shape(&[40, 47]), F32)?;
        Ok(vec![b.op(Op::MatMul, &[half, y])?])
    }));
}

/// Matmuls of transposes (the last two axes swapped), which the GEMM kernel packs
/// from the untransposed operand: either side or both, sizes off the register tile
/// and past a K and an M block, broadcast batch dims, half types; a transpose that
/// something else reads too is materialized for it as well.
#[test]
fn matmul_of_transposed_operands() {
    // (A as stored, B as stored, transpose A, transpose B).
    let cases: [(&[u64], &[u64], bool, bool); 6] = [
        (&[20, 9], &[20, 37], true, false),
        (&[9, 20], &[37, 20], false, true),
        (&[20, 9], &[37, 20], true, true),
        (&[2, 300, 257], &[300, 33], true, false),
        (&[3, 2, 17, 70], &[2, 33, 70], false, true),
        (&[1, 1], &[1, 1], true, true),
    ];
    let swap = |rank: usize| {
        let mut perm: Vec<usize> = (0..rank).collect();
        perm.swap(rank - 2, rank - 1);
        Op::Transpose { perm }
    };
    for (sa, sb, ta, tb) in cases {
        for dtype in [F32, BF16] {
            check(&graph(|b| {
                let mut x = b.input("a", shape(sa), dtype)?;
                let mut y = b.param("b", shape(sb), dtype)?;
                if ta {
                    x = b.op(swap(sa.len()), &[x])?;
                }
                if tb {
                    y = b.op(swap(sb.len()), &[y])?;
                }
                Ok(vec![b.op(Op::MatMul, &[x, y])?])
            }));
        }
    }
    check(&graph(|b| {
        let x = b.input("a", shape(&[2, 12, 5]), F32)?;
        let xt = b.op(swap(3), &[x])?;
        let gram = b.op(Op::MatMul, &[xt, x])?;
        let outer = b.op(Op::MatMul, &[x, xt])?;
        let doubled = b.op(Op::Binary(attnc_ir::BinaryOp::Add), &[xt, xt])?;
        Ok(vec![gram, outer, doubled])
    }));
    // Read by matmuls only: the kernels take `a` as it is, no transpose is written.
    let g = graph(|b| {
        let x = b.input("a", shape(&[2, 12, 5]), F32)?;
        let xt = b.op(swap(3), &[x])?;
        let gram = b.op(Op::MatMul, &[xt, x])?;
        let outer = b.op(Op::MatMul, &[x, xt])?;
        Ok(vec![gram, outer])
    });
    check(&g);
    let text = attnc_backends::emit_mlir(&g).unwrap();
    assert!(text.contains("gemm.2x12x5t.2x12x5"), "{text}");
    assert!(text.contains("gemm.2x12x5.2x12x5t"), "{text}");
    assert_eq!(text.matches("linalg.generic").count(), 0, "{text}");
}

/// Slices that stay views (read in place by elementwise ops, a concat, a matmul)
/// next to slices that are copied (an output, read by a reshape, by a cast or by a
/// one-operand concat, read by a later layer).
#[test]
fn slices_read_in_place_and_copied() {
    let slice = |b: &mut attnc_ir::GraphBuilder, x, axis, start: u64, end: u64| {
        b.op(
            Op::Slice {
                axis,
                start: attnc_ir::Dim::Const(start),
                end: attnc_ir::Dim::Const(end),
            },
            &[x],
        )
    };
    check(&graph(|b| {
        let x = b.input("x", shape(&[2, 6, 10]), F32)?;
        let w = b.param("w", shape(&[5, 3]), F32)?;
        let cols = slice(b, x, 2, 2, 7)?;
        let col = slice(b, x, 2, 9, 10)?;
        let ratio = b.op(Op::Binary(attnc_ir::BinaryOp::Div), &[cols, col])?;
        let rows = slice(b, x, 1, 1, 4)?;
        let stacked = b.op(Op::Concat { axis: 1 }, &[rows, rows, x])?;
        let left = slice(b, x, 2, 0, 5)?;
        let product = b.op(Op::MatMul, &[left, w])?;
        let out = slice(b, x, 1, 3, 6)?;
        let flat = slice(b, x, 2, 1, 3)?;
        let flat = b.op(
            Op::Reshape {
                shape: shape(&[24]),
            },
            &[flat],
        )?;
        let same = slice(b, x, 0, 1, 2)?;
        let same = b.op(Op::Cast { to: F32 }, &[same])?;
        let one = slice(b, x, 1, 0, 2)?;
        let one = b.op(Op::Concat { axis: 1 }, &[one])?;
        b.set_layer(Some("later".into()));
        let later = b.op(Op::Unary(attnc_ir::UnaryOp::Exp), &[cols])?;
        Ok(vec![ratio, stacked, product, out, flat, same, one, later])
    }));
}

#[test]
fn reshapes_including_to_and_from_scalars() {
    let cases: [(&[u64], &[u64]); 6] = [
        (&[2, 3, 5], &[6, 5]),
        (&[2, 3, 5], &[30]),
        (&[30], &[5, 1, 6]),
        (&[1, 1], &[]),
        (&[], &[1, 1]),
        (&[3, 5], &[3, 5]),
    ];
    for (from, to) in cases {
        check(&graph(|b| {
            let x = b.input("x", shape(from), F32)?;
            let r = b.op(Op::Reshape { shape: shape(to) }, &[x])?;
            // Also feed a reshape into another op, not only into an output.
            let c = b.constant(2.0, F32)?;
            Ok(vec![r, b.op(Op::Binary(BinaryOp::Mul), &[r, c])?])
        }));
    }
}

#[test]
fn transposes() {
    for (sizes, perm) in [
        (&[2u64, 3, 5][..], &[2usize, 0, 1][..]),
        (&[3, 5], &[1, 0]),
        (&[2, 3, 5, 7], &[0, 2, 1, 3]),
        (&[7], &[0]),
    ] {
        check(&graph(|b| {
            let x = b.input("x", shape(sizes), I64)?;
            let y = b.input("y", shape(sizes), F32)?;
            let t = |b: &mut attnc_ir::GraphBuilder, v| {
                b.op(
                    Op::Transpose {
                        perm: perm.to_vec(),
                    },
                    &[v],
                )
            };
            Ok(vec![t(b, x)?, t(b, y)?])
        }));
    }
}

#[test]
fn broadcasts() {
    for (from, to) in [
        (&[3u64, 1][..], &[2u64, 3, 5][..]),
        (&[], &[3]),
        (&[5], &[3, 5]),
        (&[1], &[1]),
    ] {
        check(&graph(|b| {
            let x = b.input("x", shape(from), F32)?;
            let m = b.input("m", shape(from), Bool)?;
            Ok(vec![
                b.op(Op::Broadcast { shape: shape(to) }, &[x])?,
                b.op(Op::Broadcast { shape: shape(to) }, &[m])?,
            ])
        }));
    }
}

#[test]
fn concat_along_each_axis() {
    check(&graph(|b| {
        let x = b.input("x", shape(&[2, 3]), F32)?;
        let y = b.input("y", shape(&[2, 5]), F32)?;
        let z = b.input("z", shape(&[2, 1]), F32)?;
        let w = b.input("w", shape(&[3, 3]), F32)?;
        Ok(vec![
            b.op(Op::Concat { axis: 1 }, &[x, y, z])?,
            b.op(Op::Concat { axis: 0 }, &[x, w])?,
            b.op(Op::Concat { axis: 0 }, &[x])?,
            b.op(Op::Concat { axis: 1 }, &[x, x])?,
        ])
    }));
}

#[test]
fn slices_with_constant_and_symbolic_bounds() {
    let mut dims = Dims::new();
    dims.bind("half", 3);
    check(&graph_with_dims(dims, |b| {
        let x = b.input("x", shape(&[3, 7, 5]), F32)?;
        let s = |axis, start: u64, end: u64| Op::Slice {
            axis,
            start: Dim::Const(start),
            end: Dim::Const(end),
        };
        let sym = Op::Slice {
            axis: 1,
            start: Dim::sym("half"),
            end: Dim::Const(7),
        };
        let middle = b.op(s(1, 2, 5), &[x])?;
        Ok(vec![
            middle,
            b.op(s(0, 0, 1), &[x])?,
            b.op(s(2, 4, 5), &[x])?,
            b.op(sym, &[x])?,
            // A slice consumed by another op.
            b.op(Op::Unary(UnaryOp::Exp), &[middle])?,
        ])
    }));
}

#[test]
fn gathers_along_each_axis() {
    for (data, idx, axis, dtype) in [
        (&[7u64, 5][..], &[3u64][..], 0, I64),
        (&[3, 7, 5], &[2, 4], 1, I32),
        (&[3, 7, 5], &[], 2, I64),
        (&[3, 5], &[1, 50], 1, I32),
    ] {
        check(&graph(|b| {
            let d = b.param("data", shape(data), F32)?;
            let i = b.input("idx", shape(idx), dtype)?;
            Ok(vec![b.op(Op::Gather { axis }, &[d, i])?])
        }));
    }
}

#[test]
fn embedding_lookup() {
    for (ids, dtype) in [(&[3u64, 5][..], I64), (&[7], I32), (&[], I64)] {
        check(&graph(|b| {
            let table = b.param("table", shape(&[50, 7]), F32)?;
            let i = b.input("ids", shape(ids), dtype)?;
            Ok(vec![b.op(Op::Embedding, &[table, i])?])
        }));
    }
}

#[test]
fn rope_rotates_half_pairs_by_position() {
    for (sizes, theta, dtype) in [
        (&[2u64, 5, 8][..], 10000.0, F32),
        (&[7, 4], 10000.0, F32),
        (&[1, 2, 50, 6], 500000.0, F32),
        (&[3, 8], 10.0, F16),
    ] {
        check(&graph(|b| {
            let x = b.input("x", shape(sizes), dtype)?;
            Ok(vec![b.op(
                Op::Rope {
                    theta,
                    scaling: Default::default(),
                },
                &[x],
            )?])
        }));
    }
}

/// Every RoPE scaling (one frequency table shared with the interpreter).
#[test]
fn rope_scalings_agree_with_the_interpreter() {
    use attnc_ir::RopeScaling;
    for scaling in [
        RopeScaling::Linear { factor: 4.0 },
        RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_positions: 16,
        },
        RopeScaling::Yarn {
            factor: 40.0,
            original_max_positions: 16,
            beta_fast: 32.0,
            beta_slow: 1.0,
            attention_factor: 1.3,
        },
    ] {
        check(&graph(|b| {
            let x = b.input("x", shape(&[2, 12, 16]), F32)?;
            Ok(vec![b.op(
                Op::Rope {
                    theta: 500000.0,
                    scaling,
                },
                &[x],
            )?])
        }));
    }
}

#[test]
fn masks_over_trailing_coordinates() {
    let mut dims = Dims::new();
    dims.bind("window", 3);
    dims.bind("sinks", 1);
    let cases: [(&str, &[u64]); 7] = [
        ("k <= q", &[5, 5]),
        ("k <= q && q - k < window", &[1, 2, 7, 7]),
        ("k < sinks || (k <= q && q - k < window)", &[3, 7, 7]),
        ("k % 2 == 0", &[7]),
        ("h == 1 || b != 0", &[2, 3, 1, 1]),
        ("!(q / (k - k) == 0) || -q * 3 > -k", &[5, 3]),
        ("(q + 1) % (k + 2) != 0", &[3, 5]),
    ];
    for (text, sizes) in cases {
        let expr = MaskExpr::parse(text).unwrap();
        let ty = TensorType::new(Shape::new(sizes.iter().copied()), Bool);
        check(&graph_with_dims(dims.clone(), |b| {
            Ok(vec![b.add(Op::Mask { expr }, &[], Some(ty))?])
        }));
    }
}

#[test]
fn outputs_that_are_inputs_or_repeated() {
    check(&graph(|b| {
        let x = b.input("x", shape(&[3, 5]), F16)?;
        let m = b.input("m", shape(&[7]), Bool)?;
        // A param nothing reads is still an argument, and still bound.
        b.param("unused", shape(&[2]), F32)?;
        let e = b.op(Op::Unary(UnaryOp::Neg), &[x])?;
        Ok(vec![x, m, e, e, x])
    }));
}

#[test]
fn empty_tensors() {
    check(&graph(|b| {
        let x = b.input("x", shape(&[0, 5]), F32)?;
        let y = b.input("y", shape(&[3, 5]), F32)?;
        let s = b.op(Op::Unary(UnaryOp::Exp), &[x])?;
        let c = b.op(Op::Concat { axis: 0 }, &[x, y])?;
        let r = b.op(
            Op::Reduce {
                kind: ReduceKind::Sum,
                axes: vec![0],
                keep_dims: false,
            },
            &[x],
        )?;
        Ok(vec![s, c, r])
    }));
}

fn topk_op(k: u64, output: attnc_ir::TopKOutput) -> Op {
    Op::TopK { k, output }
}

#[test]
fn topk_values_and_indices_at_odd_sizes() {
    use attnc_ir::TopKOutput::{Indices, Values};
    for (sizes, dtype) in [
        (&[3u64, 7][..], F32),
        (&[2, 33], F32),
        (&[2, 3, 7], BF16),
        (&[33], BF16),
        (&[4, 7], F16),
        // Random integers are 0 or 1: rows full of ties.
        (&[5, 33], I32),
        (&[3, 7], I64),
    ] {
        for k in [1, 2, 5] {
            check(&graph(|b| {
                let x = b.input("x", shape(sizes), dtype)?;
                Ok(vec![
                    b.op(topk_op(k, Values), &[x])?,
                    b.op(topk_op(k, Indices), &[x])?,
                ])
            }));
        }
    }
}

#[test]
fn topk_ties_go_to_the_lower_index_and_nan_ranks_first() {
    use attnc_ir::TopKOutput::{Indices, Values};
    let nan = f64::NAN;
    let inf = f64::INFINITY;
    let rows: [f64; 28] = [
        // Repeated values, equal zeros of either sign.
        1.0, 3.0, 3.0, -0.0, 0.0, 3.0, 1.0, //
        // NaNs above +inf, -inf last.
        -inf, 2.0, nan, inf, nan, -1.0, 2.0, //
        // All equal.
        5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, //
        // Descending already, then ascending.
        9.0, 8.0, 7.0, -7.0, -8.0, -9.0, 0.5,
    ];
    for dtype in [F32, BF16] {
        for k in [1, 2, 5, 7] {
            let g = graph(|b| {
                let x = b.input("x", shape(&[4, 7]), dtype)?;
                Ok(vec![
                    b.op(topk_op(k, Values), &[x])?,
                    b.op(topk_op(k, Indices), &[x])?,
                ])
            });
            check_with(
                &g,
                &[("x".to_string(), tensor(dtype, &[4, 7], &rows))].into(),
            );
        }
    }
    // The picks of the first row, spelled out.
    let g = graph(|b| {
        let x = b.input("x", shape(&[7]), F32)?;
        Ok(vec![b.op(topk_op(7, Indices), &[x])?])
    });
    let model = attnc_backends::CompiledModel::new(&g).unwrap();
    let x = tensor(F32, &[7], &rows[..7]);
    let got = model.run(&[("x".to_string(), x)].into()).unwrap();
    assert_eq!(got[0].data, [1.0, 2.0, 5.0, 0.0, 6.0, 3.0, 4.0]);
}

#[test]
fn cumsum_along_each_axis() {
    for axis in 0..3 {
        for dtype in [F32, BF16, I32, I64] {
            check(&graph(|b| {
                let x = b.input("x", shape(&[3, 5, 7]), dtype)?;
                Ok(vec![b.op(Op::CumSum { axis }, &[x])?])
            }));
        }
    }
    // A long axis (bf16 sums kept in f32 until the end), a 1-D tensor, a cumsum
    // feeding another op, and an empty one.
    check(&graph(|b| {
        let x = b.input("x", shape(&[2, 300]), BF16)?;
        let y = b.input("y", shape(&[33]), F32)?;
        let e = b.input("e", shape(&[0, 5]), F32)?;
        let c = b.op(Op::CumSum { axis: 0 }, &[y])?;
        Ok(vec![
            b.op(Op::CumSum { axis: 1 }, &[x])?,
            c,
            b.op(Op::Unary(UnaryOp::Exp), &[c])?,
            b.op(Op::CumSum { axis: 1 }, &[e])?,
        ])
    }));
    // Integer sums wrap as the interpreter's do.
    let g = graph(|b| {
        let x = b.input("x", shape(&[5]), I32)?;
        Ok(vec![b.op(Op::CumSum { axis: 0 }, &[x])?])
    });
    let big = i32::MAX as f64;
    let x = tensor(I32, &[5], &[big, 1.0, -3.0, big, 7.0]);
    check_with(&g, &[("x".to_string(), x)].into());
}

#[test]
fn scatter_add_with_repeated_indices_along_each_axis() {
    for (data, m, axis, idx_dtype, dtype) in [
        (&[7u64, 5][..], 9u64, 0usize, I64, F32),
        (&[3, 7, 5], 4, 1, I32, F32),
        (&[3, 5, 7], 11, 2, I64, BF16),
        (&[5, 3], 2, 0, I32, I32),
        (&[7], 6, 0, I64, F16),
        (&[3, 5], 0, 1, I64, F32),
    ] {
        let mut upd = data.to_vec();
        upd[axis] = m;
        check(&graph(|b| {
            let d = b.input("data", shape(data), dtype)?;
            let i = b.input("idx", shape(&[m]), idx_dtype)?;
            let u = b.input("upd", shape(&upd), dtype)?;
            Ok(vec![b.op(Op::ScatterAdd { axis }, &[d, i, u])?])
        }));
    }
    // Every update to the same two rows, in a given order.
    let g = graph(|b| {
        let d = b.input("data", shape(&[4, 3]), F32)?;
        let i = b.input("idx", shape(&[5]), I64)?;
        let u = b.input("upd", shape(&[5, 3]), F32)?;
        Ok(vec![b.op(Op::ScatterAdd { axis: 0 }, &[d, i, u])?])
    });
    let mut bindings = attnc_ir::random_bindings(&g, 11);
    bindings.insert("idx".into(), tensor(I64, &[5], &[3.0, 0.0, 3.0, 3.0, 0.0]));
    check_with(&g, &bindings);
}

#[test]
fn scatter_add_out_of_range_index_is_a_runtime_error() {
    let g = graph(|b| {
        let d = b.input("data", shape(&[3, 4]), F32)?;
        b.set_layer(Some("scatter".into()));
        let i = b.input("idx", shape(&[3]), I32)?;
        let u = b.input("upd", shape(&[3, 3]), F32)?;
        Ok(vec![b.op(Op::ScatterAdd { axis: 1 }, &[d, i, u])?])
    });
    let model = attnc_backends::CompiledModel::new(&g).unwrap();
    let mut bindings = attnc_ir::random_bindings(&g, 3);
    for bad in [4.0, -1.0, 1e6, -1e6] {
        bindings.insert("idx".into(), tensor(I32, &[3], &[0.0, bad, 3.0]));
        let e = model.run(&bindings).unwrap_err();
        assert!(
            matches!(e, attnc_backends::BackendError::Runtime { .. }),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "layer `scatter`: %3 = scatter_add: an index is out of range"
        );
        assert!(attnc_ir::interp::eval(&g, &bindings, attnc_ir::interp::Precision::F64).is_err());
    }
    bindings.insert("idx".into(), tensor(I32, &[3], &[0.0, 3.0, 3.0]));
    check_with(&g, &bindings);
}
