//! `linear_attention` compiled and compared with the interpreter: every form
//! (parallel causal and not, chunkwise, the recurrent kernel) with every decay and
//! with and without the normalizer, at sizes whose Dk and Dv are and are not
//! multiples of the kernels' vector width; `linear_scan` on its own; a
//! `random_features` matrix feeding a matmul.

mod common;

use attnc_ir::{
    DType, Decay, Dims, Graph, GraphBuilder, LinearAttention, LinearForm, Op, TensorType,
};
use common::{check, check_with, graph, shape};

/// `[B, H, N, Dk, Dv]`.
type Sizes = [u64; 5];

/// Every variant of `ls` over one set of inputs, each in its own layer (a function
/// of its own) and named after it: one compilation for all (the kernels of equal
/// shapes are written once). Queries and keys are positive where the normalizer
/// divides by their scores (`qp`, `kp`), log decays negative.
fn linear_graph(ls: &[LinearAttention], [b, h, n, dk, dv]: Sizes, dtype: DType) -> Graph {
    let mut g = GraphBuilder::new("linear", Dims::new());
    let mut build = || -> attnc_ir::Result<()> {
        let q = g.input("q", shape(&[b, h, n, dk]), dtype)?;
        let k = g.input("k", shape(&[b, h, n, dk]), dtype)?;
        let qp = g.input("qp", shape(&[b, h, n, dk]), dtype)?;
        let kp = g.input("kp", shape(&[b, h, n, dk]), dtype)?;
        let v = g.input("v", shape(&[b, h, n, dv]), dtype)?;
        let head = g.input("ld_head", shape(&[h]), dtype)?;
        let step = g.input("ld_step", shape(&[b, h, n]), dtype)?;
        let gate = g.input("ld_gate", shape(&[b, h, n, dk]), dtype)?;
        for (i, l) in ls.iter().enumerate() {
            let name = format!(
                "{i}.{:?}.causal={}.decay={}.normalize={}",
                l.form,
                l.causal,
                l.decay.name(),
                l.normalize
            );
            g.set_layer(Some(format!("variant{i}")));
            let mut ops = if l.normalize {
                vec![qp, kp, v]
            } else {
                vec![q, k, v]
            };
            ops.extend(match l.decay {
                Decay::None => None,
                Decay::Head => Some(head),
                Decay::Step => Some(step),
                Decay::Gate => Some(gate),
            });
            let o = g.op(Op::LinearAttention(*l), &ops)?;
            g.output(name, o)?;
        }
        Ok(())
    };
    build().unwrap_or_else(|e| panic!("building the graph: {e}"));
    g.finish()
        .unwrap_or_else(|e| panic!("verifying the graph: {e}"))
}

/// Compiled against interpreted.
fn check_linear(ls: &[LinearAttention], sizes: Sizes, dtype: DType) {
    let g = linear_graph(ls, sizes, dtype);
    let mut bind = attnc_ir::random_bindings(&g, 11);
    for (name, t) in bind.iter_mut() {
        match name.as_str() {
            "qp" | "kp" => t.data.iter_mut().for_each(|x| *x = x.abs() + 0.1),
            n if n.starts_with("ld_") => t.data.iter_mut().for_each(|x| *x = -0.3 * x.abs()),
            _ => {}
        }
        // Representable in the dtype, so both sides see the same inputs.
        attnc_ir::interp::round_to_dtype(t);
    }
    check_with(&g, &bind);
}

const DECAYS: [Decay; 4] = [Decay::None, Decay::Head, Decay::Step, Decay::Gate];

/// Every valid combination of `form` with a decay and normalizer: a decay needs
/// causal, non-causal has only the parallel form.
fn variants(form: LinearForm) -> Vec<LinearAttention> {
    let mut out = Vec::new();
    for decay in DECAYS {
        for normalize in [false, true] {
            for causal in [true, false] {
                if causal || (form == LinearForm::Parallel && decay == Decay::None) {
                    out.push(LinearAttention {
                        causal,
                        decay,
                        normalize,
                        form,
                    });
                }
            }
        }
    }
    out
}

/// Dk and Dv not multiples of 16: the GEMM kernel's edges, the recurrent kernel's
/// masked tail.
const RAGGED: Sizes = [2, 3, 64, 20, 24];

#[test]
fn parallel_form() {
    check_linear(&variants(LinearForm::Parallel), RAGGED, DType::F32);
}

#[test]
fn chunkwise_form() {
    check_linear(
        &variants(LinearForm::Chunkwise { chunk: 16 }),
        RAGGED,
        DType::F32,
    );
}

#[test]
fn recurrent_form() {
    check_linear(&variants(LinearForm::Recurrent), RAGGED, DType::F32);
}

/// Dk and Dv multiples of 16, chunks of 32, one of each family.
#[test]
fn multiples_of_the_vector_width() {
    let l = |causal, decay, normalize, form| LinearAttention {
        causal,
        decay,
        normalize,
        form,
    };
    let chunk = LinearForm::Chunkwise { chunk: 32 };
    let ls = [
        l(false, Decay::None, true, LinearForm::Parallel),
        l(true, Decay::Head, true, chunk),
        l(true, Decay::Gate, false, chunk),
        l(true, Decay::Step, false, LinearForm::Recurrent),
        l(true, Decay::None, true, LinearForm::Recurrent),
    ];
    check_linear(&ls, [2, 3, 64, 16, 16], DType::F32);
}

fn recurrent(decay: Decay) -> LinearAttention {
    LinearAttention {
        causal: true,
        decay,
        normalize: false,
        form: LinearForm::Recurrent,
    }
}

/// The recurrent kernel on half types (widened to f32 around it), with a state of
/// more rows than one pass over time holds, with narrow last tiles, with enough
/// heads that a task takes every tile of its head, over several chunks of time.
#[test]
fn recurrent_kernel_half_types_and_long_rows() {
    for dtype in [DType::F16, DType::BF16] {
        check_linear(
            &[recurrent(Decay::None), recurrent(Decay::Gate)],
            [1, 2, 24, 20, 17],
            dtype,
        );
    }
    let decays = [Decay::None, Decay::Step, Decay::Gate].map(recurrent);
    check_linear(&decays, [1, 1, 40, 64, 48], DType::F32);
    check_linear(&decays, [1, 2, 32, 40, 35], DType::F32);
    // Narrow last tiles (1 to 4 columns), run column by column.
    check_linear(&decays, [1, 2, 40, 32, 18], DType::F32);
    check_linear(&decays, [2, 1, 70, 64, 67], DType::F32);
    check_linear(&decays, [1, 9, 70, 16, 4], DType::F32);
    check_linear(&decays, [2, 4, 70, 20, 24], DType::F32);
    check_linear(&decays, [1, 2, 16, 70, 5], DType::F32);
}

#[test]
fn linear_scan_along_each_axis() {
    for axis in 0..3 {
        for dtype in [DType::F32, DType::F16] {
            let g = graph(|g| {
                let x = g.input("x", shape(&[5, 6, 7]), dtype)?;
                let a = g.input("a", shape(&[5, 6, 7]), dtype)?;
                Ok(vec![g.op(Op::Scan { axis }, &[x, a])?])
            });
            check(&g);
        }
    }
}

#[test]
fn random_features_feed_a_matmul() {
    for dtype in [DType::F32, DType::BF16] {
        let g = graph(|g| {
            let x = g.input("x", shape(&[2, 9, 16]), dtype)?;
            let w = g.add(
                Op::RandomFeatures { seed: 3 },
                &[],
                Some(TensorType::new(shape(&[40, 16]), dtype)),
            )?;
            let wt = g.op(Op::Transpose { perm: vec![1, 0] }, &[w])?;
            Ok(vec![g.op(Op::MatMul, &[x, wt])?, w])
        });
        check(&g);
    }
}
