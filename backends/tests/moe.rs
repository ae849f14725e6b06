//! `moe_dispatch` compiled and compared with the interpreter: gated (SwiGLU) and
//! plain experts with every activation, tokens choosing (k = 1, 2) and experts
//! choosing, gates with dropped tokens, empty and hot experts and never-zero
//! (shared) columns, sizes that are not multiples of the kernel's tiles, half
//! precision, and a gate that breaks its bound (a run-time error).

mod common;

use attnc_backends::{BackendError, CompiledModel};
use attnc_ir::{
    DType, Graph, GraphBuilder, MoeChoice, MoeDispatch, MoeShared, Op, Tensor, UnaryOp,
};
use common::{check_with, shape, Bindings};

/// `[T, D, E, H]`.
type Sizes = [u64; 4];

/// One `moe_dispatch` per entry of `ms`, each its own output, over shared inputs
/// `x`, `gate` and weights.
fn moe_graph(ms: &[MoeDispatch], [t, d, e, h]: Sizes, dtype: DType) -> Graph {
    moe_graph_with_shared(ms, [t, d, e, h], 0, dtype)
}

/// [`moe_graph`] with shared experts of hidden size `hs` (their weights and
/// `shared_gate` bound for the variants that have them).
fn moe_graph_with_shared(ms: &[MoeDispatch], [t, d, e, h]: Sizes, hs: u64, dtype: DType) -> Graph {
    let mut g = GraphBuilder::new("moe", attnc_ir::Dims::new());
    let mut build = || -> attnc_ir::Result<()> {
        let x = g.input("x", shape(&[t, d]), dtype)?;
        let gate = g.input("gate", shape(&[t, e]), dtype)?;
        let wg = g.param("w_gate", shape(&[e, d, h]), dtype)?;
        let wu = g.param("w_up", shape(&[e, d, h]), dtype)?;
        let wd = g.param("w_down", shape(&[e, h, d]), dtype)?;
        let shared = if hs > 0 {
            Some([
                g.param("ws_gate", shape(&[d, hs]), dtype)?,
                g.param("ws_up", shape(&[d, hs]), dtype)?,
                g.param("ws_down", shape(&[hs, d]), dtype)?,
                g.input("shared_gate", shape(&[t, 1]), dtype)?,
            ])
        } else {
            None
        };
        for (i, m) in ms.iter().enumerate() {
            g.set_layer(Some(format!("variant{i}")));
            let mut ops = if m.gated {
                vec![x, gate, wg, wu, wd]
            } else {
                vec![x, gate, wu, wd]
            };
            if let Some([sg, su, sd, gs]) = shared {
                match m.shared {
                    MoeShared::None => {}
                    MoeShared::Always | MoeShared::Gated => {
                        if m.gated {
                            ops.push(sg);
                        }
                        ops.extend([su, sd]);
                        if m.shared == MoeShared::Gated {
                            ops.push(gs);
                        }
                    }
                }
            }
            let o = g.op(Op::MoeDispatch(*m), &ops)?;
            g.output(format!("out{i}"), o)?;
        }
        Ok(())
    };
    build().unwrap_or_else(|e| panic!("building the graph: {e}"));
    g.finish()
        .unwrap_or_else(|e| panic!("verifying the graph: {e}"))
}

/// A small deterministic generator (xorshift), for gates.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn weight(&mut self) -> f64 {
        0.1 + (self.next() % 1000) as f64 / 1000.0
    }
}

/// Random inputs, with `gate` replaced by `gate` (row-major `[T, E]`) and every
/// value representable in `dtype`.
fn bindings(g: &Graph, gate: Vec<f64>, dtype: DType) -> Bindings {
    let mut bind = attnc_ir::random_bindings(g, 5);
    let t = bind["gate"].shape.clone();
    bind.insert("gate".into(), Tensor::new(dtype, t, gate));
    for t in bind.values_mut() {
        attnc_ir::interp::round_to_dtype(t);
    }
    bind
}

/// A gate where each token picks `k` distinct random experts (rows listed in
/// `dropped` pick none).
fn token_gate(rng: &mut Rng, [t, _, e, _]: Sizes, k: usize, dropped: &[usize]) -> Vec<f64> {
    let (t, e) = (t as usize, e as usize);
    let mut gate = vec![0.0; t * e];
    for r in 0..t {
        if dropped.contains(&r) {
            continue;
        }
        let mut picked = 0;
        while picked < k.min(e) {
            let c = rng.below(e);
            if gate[r * e + c] == 0.0 {
                gate[r * e + c] = rng.weight();
                picked += 1;
            }
        }
    }
    gate
}

/// A gate where each expert picks `k` distinct random tokens.
fn expert_gate(rng: &mut Rng, [t, _, e, _]: Sizes, k: usize) -> Vec<f64> {
    let (t, e) = (t as usize, e as usize);
    let mut gate = vec![0.0; t * e];
    for c in 0..e {
        let mut picked = 0;
        while picked < k.min(t) {
            let r = rng.below(t);
            if gate[r * e + c] == 0.0 {
                gate[r * e + c] = rng.weight();
                picked += 1;
            }
        }
    }
    gate
}

fn moe(activation: UnaryOp, gated: bool, choice: MoeChoice, k: u64) -> MoeDispatch {
    MoeDispatch {
        activation,
        gated,
        choice,
        k,
        shared: MoeShared::None,
    }
}

fn token(k: u64) -> Vec<MoeDispatch> {
    vec![
        moe(UnaryOp::Silu, true, MoeChoice::Token, k),
        moe(UnaryOp::Gelu, false, MoeChoice::Token, k),
        moe(UnaryOp::GeluTanh, true, MoeChoice::Token, k),
        moe(UnaryOp::Relu, false, MoeChoice::Token, k),
    ]
}

fn check_gate(ms: &[MoeDispatch], sizes: Sizes, gate: Vec<f64>) {
    let g = moe_graph(ms, sizes, DType::F32);
    check_with(&g, &bindings(&g, gate, DType::F32));
}

#[test]
fn top2_every_activation_ragged_sizes() {
    // T, D, H not multiples of the tiles; rows 3 and 20 dropped.
    let sizes = [37, 24, 5, 40];
    let gate = token_gate(&mut Rng(1), sizes, 2, &[3, 20]);
    check_gate(&token(2), sizes, gate);
}

#[test]
fn top1_switch_with_dropped_tokens_and_an_empty_expert() {
    // Switch: one expert per token, every fourth token dropped (over capacity);
    // expert 2 chosen by no token.
    let sizes = [45, 32, 4, 48];
    let mut rng = Rng(2);
    let (t, e) = (45, 4);
    let mut gate = vec![0.0; t * e];
    for r in (0..t).filter(|r| r % 4 != 1) {
        let c = [0, 1, 3][rng.below(3)];
        gate[r * e + c] = rng.weight();
    }
    let ms = [
        moe(UnaryOp::Silu, true, MoeChoice::Token, 1),
        moe(UnaryOp::Relu, false, MoeChoice::Token, 1),
    ];
    check_gate(&ms, sizes, gate);
}

#[test]
fn expert_choice() {
    // Each expert takes 7 of 30 tokens: some tokens are chosen several times, some
    // never. A bound larger than the tokens (k = 40) keeps every pair.
    let sizes = [30, 20, 6, 36];
    let gate = expert_gate(&mut Rng(3), sizes, 7);
    let ms = [
        moe(UnaryOp::Silu, true, MoeChoice::Expert, 7),
        moe(UnaryOp::GeluTanh, false, MoeChoice::Expert, 7),
        moe(UnaryOp::Gelu, true, MoeChoice::Expert, 40),
    ];
    check_gate(&ms, sizes, gate);
}

#[test]
fn hot_expert_spans_several_row_blocks() {
    // Every token's first choice is expert 0 (1100 rows: three row blocks of the
    // kernel's at most 512), the second random; expert 3's column is never zero (a
    // shared expert in the gate); k = 3 with three non-zeros per row.
    let sizes = [1100, 16, 5, 24];
    let (t, e) = (1100, 5);
    let mut rng = Rng(4);
    let mut gate = vec![0.0; t * e];
    for r in 0..t {
        gate[r * e] = rng.weight();
        gate[r * e + 3] = rng.weight();
        gate[r * e + [1, 2, 4][rng.below(3)]] = rng.weight();
    }
    let ms = [
        moe(UnaryOp::Silu, true, MoeChoice::Token, 3),
        moe(UnaryOp::Gelu, false, MoeChoice::Token, 4),
    ];
    check_gate(&ms, sizes, gate);
}

#[test]
fn deep_projections_accumulate_over_depth_panels() {
    // D and H past the kernel's depth panel (256), ragged: partial sums over
    // several panels before the epilogue.
    let sizes = [19, 300, 3, 520];
    let gate = token_gate(&mut Rng(5), sizes, 2, &[7]);
    let ms = [
        moe(UnaryOp::Silu, true, MoeChoice::Token, 2),
        moe(UnaryOp::Relu, false, MoeChoice::Token, 2),
    ];
    check_gate(&ms, sizes, gate);
}

#[test]
fn an_all_zero_gate_gives_zeros() {
    let sizes = [9, 20, 3, 16];
    check_gate(&token(1)[..1], sizes, vec![0.0; 27]);
}

#[test]
fn half_precision() {
    let sizes = [21, 24, 4, 40];
    for dtype in [DType::F16, DType::BF16] {
        let ms = [
            moe(UnaryOp::Silu, true, MoeChoice::Token, 2),
            moe(UnaryOp::Gelu, false, MoeChoice::Token, 2),
        ];
        let g = moe_graph(&ms, sizes, dtype);
        let gate = token_gate(&mut Rng(6), sizes, 2, &[0]);
        check_with(&g, &bindings(&g, gate, dtype));
    }
}

#[test]
fn shared_experts() {
    let sizes = [23, 24, 4, 40];
    let shared = |m: MoeDispatch, s: MoeShared| MoeDispatch { shared: s, ..m };
    let ms = [
        shared(
            moe(UnaryOp::Silu, true, MoeChoice::Token, 2),
            MoeShared::Always,
        ),
        shared(
            moe(UnaryOp::Silu, true, MoeChoice::Token, 2),
            MoeShared::Gated,
        ),
        shared(
            moe(UnaryOp::Gelu, false, MoeChoice::Token, 2),
            MoeShared::Gated,
        ),
    ];
    let g = moe_graph_with_shared(&ms, sizes, 56, DType::F32);
    let gate = token_gate(&mut Rng(7), sizes, 2, &[4]);
    check_with(&g, &bindings(&g, gate, DType::F32));
}

#[test]
fn a_gate_over_its_bound_is_a_runtime_error() {
    let sizes = [10, 16, 4, 24];
    let ms = [moe(UnaryOp::Silu, true, MoeChoice::Token, 1)];
    let g = moe_graph(&ms, sizes, DType::F32);
    let model = CompiledModel::new(&g).unwrap();
    let mut rng = Rng(8);
    let mut gate = token_gate(&mut rng, sizes, 1, &[]);
    let good = bindings(&g, gate.clone(), DType::F32);
    // Row 6 selects two experts; and then every row all four.
    let chosen = gate[6 * 4..7 * 4].iter().position(|&v| v != 0.0).unwrap();
    gate[6 * 4 + (chosen + 1) % 4] = 0.5;
    for bad in [gate, vec![0.3; 40]] {
        let e = model.run(&bindings(&g, bad, DType::F32)).unwrap_err();
        assert!(matches!(e, BackendError::Runtime { .. }), "{e}");
        assert_eq!(
            e.to_string(),
            "layer `variant0`: %5 = moe_dispatch: a gate row has more non-zeros than the k experts a token may choose"
        );
    }
    // The model is still fine afterwards.
    check_with(&g, &good);

    // Experts choosing: expert 1 takes 3 tokens with k = 2.
    let ms = [moe(UnaryOp::Relu, false, MoeChoice::Expert, 2)];
    let g = moe_graph(&ms, sizes, DType::F32);
    let mut gate = expert_gate(&mut rng, sizes, 2);
    let free = (0..10).find(|r| gate[r * 4 + 1] == 0.0).unwrap();
    gate[free * 4 + 1] = 0.25;
    let e = CompiledModel::new(&g)
        .unwrap()
        .run(&bindings(&g, gate, DType::F32))
        .unwrap_err();
    assert!(
        e.to_string()
            .ends_with("a gate column has more non-zeros than the k tokens an expert may choose"),
        "{e}"
    );
}

/// The unfused baseline of the speed example (`ATTNC_MOE_SCHEDULE=unfused`, read at
/// compile time — process-wide, so not run with the other tests): `cargo test -p
/// attnc-backends --test moe -- --ignored`.
#[test]
#[ignore]
fn unfused_schedule_matches_the_interpreter() {
    std::env::set_var("ATTNC_MOE_SCHEDULE", "unfused");
    let sizes = [300, 24, 5, 40];
    let mut gate = token_gate(&mut Rng(9), sizes, 2, &[3]);
    for r in 0..300 {
        gate[r * 5] = 0.7;
    }
    gate[3 * 5] = 0.0;
    let ms = [
        moe(UnaryOp::Silu, true, MoeChoice::Token, 3),
        moe(UnaryOp::Gelu, false, MoeChoice::Token, 3),
    ];
    check_gate(&ms, sizes, gate.clone());
    let sizes = [19, 300, 3, 520];
    let gate = token_gate(&mut Rng(5), sizes, 2, &[7]);
    check_gate(&ms[..1], sizes, gate);
    std::env::remove_var("ATTNC_MOE_SCHEDULE");
}
