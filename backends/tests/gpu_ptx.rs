//! GPU code generation without a GPU: small graphs of every op family, every tiny
//! example model and full-size Llama 3 8B compile to PTX for sm_80 and sm_90; the
//! PTX has an `.entry` per kernel and no `.extern .func` (it loads without
//! libdevice); the launch plan is consistent ([`check_plan`]); and when `ptxas` is
//! found (`$ATTNC_PTXAS`, `PATH`, or the `nvidia-cuda-nvcc-cu12` wheel) it accepts
//! the PTX for each architecture. Without `ptxas` the assembler checks are skipped
//! with a note.

use attnc_backends::gpu::{
    check_plan, compile_gpu_with, ptxas, BufferRole, GpuOptions, GpuProgram, KernelReport,
};
use attnc_backends::{compile_gpu, emit_gpu_mlir, Arch};
use attnc_ir::{
    Attention, BinaryOp, CmpOp, DType, Decay, Dims, Graph, GraphBuilder, LinearAttention,
    LinearForm, MaskExpr, MoeChoice, MoeDispatch, MoeShared, NodeId, Op, ReduceKind, Shape,
    TopKOutput, UnaryOp,
};
use std::path::Path;

const ARCHS: [Arch; 2] = [Arch::Sm80, Arch::Sm90];

fn shape(sizes: &[u64]) -> Shape {
    Shape::new(sizes.iter().copied())
}

/// A graph whose outputs (`out0`, ...) are what `build` returns.
fn graph(build: impl FnOnce(&mut GraphBuilder) -> attnc_ir::Result<Vec<NodeId>>) -> Graph {
    graph_with_dims(Dims::new(), build)
}

fn graph_with_dims(
    dims: Dims,
    build: impl FnOnce(&mut GraphBuilder) -> attnc_ir::Result<Vec<NodeId>>,
) -> Graph {
    let mut b = GraphBuilder::new("gpu", dims);
    let outputs = build(&mut b).unwrap_or_else(|e| panic!("building the graph: {e}"));
    for (i, id) in outputs.into_iter().enumerate() {
        b.output(format!("out{i}"), id).unwrap();
    }
    b.finish()
        .unwrap_or_else(|e| panic!("verifying the graph: {e}"))
}

/// The structural checks of a compiled program.
fn check_program(what: &str, p: &GpuProgram) {
    check_plan(p).unwrap_or_else(|e| panic!("{what}: inconsistent plan: {e}"));
    assert!(
        !p.ptx.contains(".extern .func"),
        "{what}: the PTX calls an undefined function"
    );
    let entries = p.ptx.matches(".entry ").count();
    assert_eq!(entries, p.kernels.len(), "{what}: one .entry per kernel");
    for k in &p.kernels {
        assert!(
            p.ptx.contains(&format!(".entry {}(", k.name)),
            "{what}: no .entry for {}",
            k.name
        );
        assert!(
            k.block.iter().product::<u32>() <= 1024,
            "{what}: {} block",
            k.name
        );
        assert!(
            k.shared_bytes <= p.arch.max_shared_bytes(),
            "{what}: {} shared memory",
            k.name
        );
    }
    for l in &p.launches {
        assert!(l.grid.iter().all(|&g| g > 0), "{what}: empty grid");
        assert!(
            l.grid[1] <= 65535 && l.grid[2] <= 65535,
            "{what}: grid {:?}",
            l.grid
        );
    }
    // Every output has its buffer.
    let outputs = p
        .buffers
        .iter()
        .filter(|b| matches!(b.role, BufferRole::Output(_)))
        .count();
    assert!(outputs > 0, "{what}: no output buffer");
}

/// Whether to print the note that `ptxas` is missing (once).
fn note_missing_ptxas() {
    static NOTE: std::sync::Once = std::sync::Once::new();
    NOTE.call_once(|| {
        eprintln!(
            "note: no ptxas found (ATTNC_PTXAS, PATH, pip nvidia-cuda-nvcc-cu12): PTX assembly checks skipped"
        )
    });
}

/// Assemble with `ptxas -v`; a rejection fails the test. Returns the per-kernel
/// report when `ptxas` exists.
fn assemble(what: &str, p: &GpuProgram) -> Option<Vec<KernelReport>> {
    match ptxas(&p.ptx, p.arch, true) {
        None => {
            note_missing_ptxas();
            None
        }
        Some(Err(e)) => panic!("{what}: ptxas rejects the PTX for {}: {e}", p.arch.name()),
        Some(Ok(r)) => {
            assert_eq!(r.kernels.len(), p.kernels.len(), "{what}: ptxas kernels");
            Some(r.kernels)
        }
    }
}

/// Compile for every architecture, check, assemble; returns the sm_90 program.
fn compile(what: &str, g: &Graph) -> GpuProgram {
    let mut last = None;
    for arch in ARCHS {
        let p = compile_gpu(g, arch)
            .unwrap_or_else(|e| panic!("{what}: compiling for {}: {e}", arch.name()));
        check_program(what, &p);
        assemble(what, &p);
        last = Some(p);
    }
    last.unwrap()
}

fn unary_ops(dtype: DType) -> Graph {
    graph(|b| {
        let x = b.input("x", shape(&[3, 37]), dtype)?;
        UnaryOp::ALL
            .iter()
            .map(|&u| b.op(Op::Unary(u), &[x]))
            .collect()
    })
}

#[test]
fn elementwise_ops_fuse_into_kernels() {
    compile("unary f32", &unary_ops(DType::F32));
    compile("unary bf16", &unary_ops(DType::BF16));
    let g = graph(|b| {
        let x = b.input("x", shape(&[2, 3, 5]), DType::F32)?;
        let y = b.input("y", shape(&[3, 1]), DType::F32)?;
        let mut outs = Vec::new();
        for op in BinaryOp::ALL {
            outs.push(b.op(Op::Binary(op), &[x, y])?);
        }
        let c = b.op(Op::Compare(CmpOp::Lt), &[x, y])?;
        let two = b.constant(2.0, DType::F32)?;
        let s = b.op(Op::Select, &[c, x, two])?;
        outs.push(s);
        let t = b.op(
            Op::Transpose {
                perm: vec![2, 0, 1],
            },
            &[s],
        )?;
        let sl = b.op(
            Op::Slice {
                axis: 0,
                start: 1u64.into(),
                end: 4u64.into(),
            },
            &[t],
        )?;
        let r = b.op(
            Op::Reshape {
                shape: shape(&[3, 6]),
            },
            &[sl],
        )?;
        let e = b.op(Op::Unary(UnaryOp::Exp), &[r])?;
        outs.push(e);
        let cat = b.op(Op::Concat { axis: 1 }, &[x, x, x])?;
        outs.push(cat);
        let bc = b.op(
            Op::Broadcast {
                shape: shape(&[4, 3, 2]),
            },
            &[y],
        )?;
        outs.push(bc);
        let half = b.op(Op::Cast { to: DType::F16 }, &[x])?;
        let back = b.op(Op::Unary(UnaryOp::Tanh), &[half])?;
        outs.push(back);
        let ints = b.op(Op::Cast { to: DType::I64 }, &[x])?;
        let i32s = b.op(Op::Cast { to: DType::I32 }, &[ints])?;
        let bools = b.op(Op::Cast { to: DType::Bool }, &[i32s])?;
        outs.push(bools);
        let f = b.op(Op::Cast { to: DType::F32 }, &[bools])?;
        outs.push(f);
        Ok(outs)
    });
    compile("binary and layout", &g);
    let g = graph(|b| {
        let x = b.input("x", shape(&[4, 6]), DType::I64)?;
        let y = b.input("y", shape(&[6]), DType::I64)?;
        let mut outs = Vec::new();
        for op in [
            BinaryOp::Add,
            BinaryOp::Sub,
            BinaryOp::Mul,
            BinaryOp::Div,
            BinaryOp::Max,
            BinaryOp::Min,
        ] {
            outs.push(b.op(Op::Binary(op), &[x, y])?);
        }
        for u in [UnaryOp::Neg, UnaryOp::Abs, UnaryOp::Relu] {
            outs.push(b.op(Op::Unary(u), &[x])?);
        }
        let i = b.add(
            Op::Iota { axis: 1 },
            &[],
            Some(attnc_ir::TensorType::new(shape(&[4, 6]), DType::I32)),
        )?;
        outs.push(i);
        let m = b.add(
            Op::Mask {
                expr: MaskExpr::parse("k <= q && q - k < 3").unwrap(),
            },
            &[],
            Some(attnc_ir::TensorType::new(shape(&[2, 4, 6]), DType::Bool)),
        )?;
        outs.push(m);
        let mi = b.op(Op::Cast { to: DType::I64 }, &[m])?;
        let ge = b.op(Op::Compare(CmpOp::Ge), &[mi, x])?;
        outs.push(ge);
        Ok(outs)
    });
    compile("integers, iota and masks", &g);
}

#[test]
fn gathers_embeddings_rope_and_features() {
    let g = graph(|b| {
        let table = b.param("table", shape(&[50, 8]), DType::BF16)?;
        let ids = b.input("ids", shape(&[2, 7]), DType::I64)?;
        let e = b.op(Op::Embedding, &[table, ids])?;
        let data = b.input("data", shape(&[3, 10, 4]), DType::F32)?;
        let idx = b.input("idx", shape(&[5]), DType::I32)?;
        let g1 = b.op(Op::Gather { axis: 1 }, &[data, idx])?;
        let x = b.input("x", shape(&[1, 2, 9, 16]), DType::F32)?;
        let t = b.op(
            Op::Transpose {
                perm: vec![0, 2, 1, 3],
            },
            &[x],
        )?;
        let r = b.op(
            Op::Rope {
                theta: 10000.0,
                scaling: Default::default(),
            },
            &[t],
        )?;
        let f = b.add(
            Op::RandomFeatures { seed: 3 },
            &[],
            Some(attnc_ir::TensorType::new(shape(&[12, 16]), DType::F32)),
        )?;
        let ft = b.op(Op::Transpose { perm: vec![1, 0] }, &[f])?;
        let proj = b.op(Op::MatMul, &[r, ft])?;
        Ok(vec![e, g1, r, proj])
    });
    compile("gather, embedding, rope, features", &g);
}

#[test]
fn row_ops_and_reductions() {
    let g = graph(|b| {
        let x = b.input("x", shape(&[3, 5, 40]), DType::F32)?;
        let long = b.input("long", shape(&[2, 5000]), DType::F16)?;
        let gamma = b.param("gamma", shape(&[40]), DType::F32)?;
        let beta = b.param("beta", shape(&[40]), DType::F32)?;
        let mut outs = vec![
            b.op(Op::Softmax { axis: 2 }, &[x])?,
            b.op(Op::Softmax { axis: 1 }, &[x])?,
            b.op(Op::Softmax { axis: 1 }, &[long])?,
            b.op(Op::LayerNorm { eps: 1e-5 }, &[x, gamma, beta])?,
            b.op(Op::RmsNorm { eps: 1e-6 }, &[x, gamma])?,
        ];
        for kind in ReduceKind::ALL {
            for (axes, keep) in [(vec![2], false), (vec![1], true), (vec![0, 2], false)] {
                outs.push(b.op(
                    Op::Reduce {
                        kind,
                        axes,
                        keep_dims: keep,
                    },
                    &[x],
                )?);
            }
            outs.push(b.op(
                Op::Reduce {
                    kind,
                    axes: vec![1],
                    keep_dims: false,
                },
                &[long],
            )?);
        }
        Ok(outs)
    });
    compile("rows", &g);
}

#[test]
fn matmuls_of_every_float_type_and_integers() {
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let g = graph(|b| {
            let a = b.input("a", shape(&[2, 1, 130, 70]), dtype)?;
            let w = b.param("w", shape(&[3, 70, 129]), dtype)?;
            let small = b.input("s", shape(&[5, 7]), dtype)?;
            let sw = b.param("sw", shape(&[7, 3]), dtype)?;
            Ok(vec![
                b.op(Op::MatMul, &[a, w])?,
                b.op(Op::MatMul, &[small, sw])?,
            ])
        });
        let p = compile(&format!("matmul {dtype}"), &g);
        assert!(p.kernels.iter().any(|k| k.op == "matmul"));
    }
    let g = graph(|b| {
        let a = b.input("a", shape(&[4, 3]), DType::I64)?;
        let w = b.input("w", shape(&[3, 5]), DType::I64)?;
        Ok(vec![b.op(Op::MatMul, &[a, w])?])
    });
    compile("integer matmul", &g);
}

fn attention_graph(
    dims: Dims,
    [bs, h, hkv, sq, sk, dk, dv]: [u64; 7],
    dtype: DType,
    mut a: Attention,
    bias: Option<&[u64]>,
    segments: bool,
) -> Graph {
    a.groups = h / hkv;
    a.bias = bias.is_some();
    a.segments = segments;
    graph_with_dims(dims, |b| {
        let q = b.input("q", shape(&[bs, h, sq, dk]), dtype)?;
        let k = b.input("k", shape(&[bs, hkv, sk, dk]), dtype)?;
        let v = b.input("v", shape(&[bs, hkv, sk, dv]), dtype)?;
        let mut ops = vec![q, k, v];
        if let Some(s) = bias {
            ops.push(b.input("bias", shape(s), dtype)?);
        }
        if segments {
            ops.push(b.input("segments", shape(&[bs, sq]), DType::I64)?);
        }
        Ok(vec![b.op(Op::Attention(a), &ops)?])
    })
}

fn masked(scale: f64, mask: &str) -> Attention {
    Attention {
        mask: Some(MaskExpr::parse(mask).unwrap()),
        ..Attention::new(scale)
    }
}

/// Registers and spills of the kernels of `op`, per architecture.
fn report_kernel(what: &str, g: &Graph, op: &str) {
    report_kernel_with(what, g, op, &GpuOptions::default());
}

fn report_kernel_with(what: &str, g: &Graph, op: &str, options: &GpuOptions) {
    for arch in ARCHS {
        let p = compile_gpu_with(g, arch, options).unwrap_or_else(|e| panic!("{what}: {e}"));
        check_program(what, &p);
        let Some(reports) = assemble(what, &p) else {
            return;
        };
        for k in p.kernels.iter().filter(|k| k.op == op) {
            let r = reports.iter().find(|r| r.name == k.name).unwrap();
            eprintln!(
                "{what} [{}] {}: {} registers, {} B spilled, {} B dynamic shared memory",
                arch.name(),
                k.name,
                r.registers,
                r.spill_bytes(),
                k.shared_bytes
            );
        }
    }
}

#[test]
fn attention_variants() {
    let s = [2, 4, 2, 50, 70, 16, 24];
    compile(
        "plain",
        &attention_graph(
            Dims::new(),
            s,
            DType::F32,
            Attention::new(0.25),
            None,
            false,
        ),
    );
    compile(
        "causal",
        &attention_graph(
            Dims::new(),
            s,
            DType::F32,
            masked(0.25, "k <= q"),
            None,
            false,
        ),
    );
    let mut dims = Dims::new();
    dims.bind("window", 9);
    compile(
        "sliding window",
        &attention_graph(
            dims,
            s,
            DType::F32,
            masked(0.25, "k <= q && q - k < window"),
            None,
            false,
        ),
    );
    let capped = Attention {
        softcap: Some(30.0),
        ..masked(0.5, "h == 0 || k <= q + b")
    };
    compile(
        "softcap, bias, per-head mask",
        &attention_graph(Dims::new(), s, DType::F32, capped, Some(&[4, 1, 70]), false),
    );
    let sq = [1, 2, 1, 40, 40, 8, 8];
    compile(
        "documents",
        &attention_graph(
            Dims::new(),
            sq,
            DType::F32,
            masked(0.3, "k <= q"),
            None,
            true,
        ),
    );
    for dtype in [DType::F16, DType::BF16] {
        compile(
            &format!("attention {dtype}"),
            &attention_graph(Dims::new(), s, dtype, masked(0.25, "k <= q"), None, false),
        );
    }
    let bigbird = masked(0.25, "random_blocks(q / 16, k / 16, 2, 4, 7) || k < 16");
    compile(
        "random blocks",
        &attention_graph(
            Dims::new(),
            [1, 2, 2, 64, 64, 16, 16],
            DType::F32,
            bigbird,
            None,
            false,
        ),
    );
}

#[test]
fn block_sparse_attention_layouts_and_lists() {
    let s = [1, 8, 2, 300, 300, 64, 64];
    for (mask, block) in [
        ("k <= q", [64, 64]),
        ("k <= q && q - k < 100", [32, 64]),
        ("h % 2 == 0 || k <= q", [128, 32]),
    ] {
        let a = Attention {
            block: Some(block),
            ..masked(0.125, mask)
        };
        compile(
            &format!("block sparse {mask} {block:?}"),
            &attention_graph(Dims::new(), s, DType::BF16, a, None, false),
        );
    }
    // MoBA: its expansion computes a block list and attends over it.
    let g = graph(|b| {
        let q = b.input("q", shape(&[1, 4, 256, 32]), DType::F32)?;
        let k = b.input("k", shape(&[1, 2, 256, 32]), DType::F32)?;
        let v = b.input("v", shape(&[1, 2, 256, 32]), DType::F32)?;
        let m = attnc_ir::Moba {
            scale: 0.2,
            groups: 2,
            block: 64,
            top_k: 2,
        };
        Ok(vec![b.op(Op::Moba(m), &[q, k, v])?])
    });
    let p = compile("moba", &g);
    assert!(p.kernels.iter().any(|k| k.op == "block_sparse_attention"));
}

#[test]
fn attention_register_use() {
    let llama_like = [1, 8, 2, 256, 256, 128, 128];
    let a = Attention {
        block: Some([64, 64]),
        ..masked(0.088, "k <= q")
    };
    report_kernel(
        "attention d=128 bf16",
        &attention_graph(Dims::new(), llama_like, DType::BF16, a, None, false),
        "block_sparse_attention",
    );
    let g = graph(|b| {
        let a = b.input("a", shape(&[512, 512]), DType::F32)?;
        let w = b.param("w", shape(&[512, 512]), DType::F32)?;
        Ok(vec![b.op(Op::MatMul, &[a, w])?])
    });
    report_kernel("matmul 512 f32", &g, "matmul");
}

#[test]
fn tensor_core_matmuls_behind_their_switch() {
    let tc = GpuOptions { tensor_cores: true };
    for dtype in [DType::BF16, DType::F16] {
        let g = graph(|b| {
            let a = b.input("a", shape(&[2, 300, 512]), dtype)?;
            let w = b.param("w", shape(&[512, 200]), dtype)?;
            Ok(vec![b.op(Op::MatMul, &[a, w])?])
        });
        report_kernel_with(
            &format!("tensor-core matmul {dtype}"),
            &g,
            "matmul_mma",
            &tc,
        );
        let p = compile_gpu_with(&g, Arch::Sm80, &tc).unwrap();
        assert!(
            p.ptx.contains("mma.sync.aligned.m16n8k16.row.col.f32"),
            "no mma.sync"
        );
        // Off by default.
        let p = compile_gpu(&g, Arch::Sm80).unwrap();
        assert!(!p.ptx.contains("mma.sync"));
    }
}

#[test]
fn selection_scans_and_scatter() {
    let g = graph(|b| {
        let x = b.input("x", shape(&[6, 9]), DType::F32)?;
        let xi = b.input("xi", shape(&[6, 9]), DType::I32)?;
        let a = b.input("a", shape(&[6, 9]), DType::F32)?;
        let idx = b.input("idx", shape(&[4]), DType::I64)?;
        let upd = b.input("upd", shape(&[4, 9]), DType::F32)?;
        Ok(vec![
            b.op(
                Op::TopK {
                    k: 3,
                    output: TopKOutput::Values,
                },
                &[x],
            )?,
            b.op(
                Op::TopK {
                    k: 3,
                    output: TopKOutput::Indices,
                },
                &[xi],
            )?,
            b.op(Op::CumSum { axis: 0 }, &[x])?,
            b.op(Op::CumSum { axis: 1 }, &[xi])?,
            b.op(Op::Scan { axis: 1 }, &[x, a])?,
            b.op(Op::ScatterAdd { axis: 0 }, &[x, idx, upd])?,
        ])
    });
    compile("selection", &g);
}

#[test]
fn linear_attention_forms() {
    let (bs, h, n, dk, dv) = (2, 3, 40, 16, 20);
    let mut forms = Vec::new();
    for decay in [Decay::None, Decay::Step, Decay::Gate] {
        forms.push(LinearAttention {
            causal: true,
            decay,
            normalize: false,
            form: LinearForm::Recurrent,
        });
    }
    forms.push(LinearAttention {
        causal: true,
        decay: Decay::Head,
        normalize: true,
        form: LinearForm::Chunkwise { chunk: 8 },
    });
    forms.push(LinearAttention {
        causal: false,
        decay: Decay::None,
        normalize: true,
        form: LinearForm::Parallel,
    });
    let g = graph(|b| {
        let q = b.input("q", shape(&[bs, h, n, dk]), DType::F32)?;
        let k = b.input("k", shape(&[bs, h, n, dk]), DType::F32)?;
        let v = b.input("v", shape(&[bs, h, n, dv]), DType::F32)?;
        let head = b.input("ld_head", shape(&[h]), DType::F32)?;
        let step = b.input("ld_step", shape(&[bs, h, n]), DType::F32)?;
        let gate = b.input("ld_gate", shape(&[bs, h, n, dk]), DType::F32)?;
        forms
            .iter()
            .map(|l| {
                let mut ops = vec![q, k, v];
                ops.extend(match l.decay {
                    Decay::None => None,
                    Decay::Head => Some(head),
                    Decay::Step => Some(step),
                    Decay::Gate => Some(gate),
                });
                b.op(Op::LinearAttention(*l), &ops)
            })
            .collect()
    });
    let p = compile("linear attention", &g);
    assert!(p.kernels.iter().any(|k| k.op == "linear_attention"));
}

#[test]
fn moe_dispatch_variants() {
    let (t, d, e, h, hs) = (37, 24, 6, 40, 16);
    let variants = [
        MoeDispatch {
            activation: UnaryOp::Silu,
            gated: true,
            choice: MoeChoice::Token,
            k: 2,
            shared: MoeShared::None,
        },
        MoeDispatch {
            activation: UnaryOp::Gelu,
            gated: false,
            choice: MoeChoice::Expert,
            k: 5,
            shared: MoeShared::None,
        },
        MoeDispatch {
            activation: UnaryOp::Silu,
            gated: true,
            choice: MoeChoice::Token,
            k: 1,
            shared: MoeShared::Gated,
        },
        MoeDispatch {
            activation: UnaryOp::Relu,
            gated: false,
            choice: MoeChoice::Token,
            k: 2,
            shared: MoeShared::Always,
        },
    ];
    for dtype in [DType::F32, DType::BF16] {
        let g = graph(|b| {
            let x = b.input("x", shape(&[t, d]), dtype)?;
            let gate = b.input("gate", shape(&[t, e]), dtype)?;
            let wg = b.param("w_gate", shape(&[e, d, h]), dtype)?;
            let wu = b.param("w_up", shape(&[e, d, h]), dtype)?;
            let wd = b.param("w_down", shape(&[e, h, d]), dtype)?;
            let sg = b.param("ws_gate", shape(&[d, hs]), dtype)?;
            let su = b.param("ws_up", shape(&[d, hs]), dtype)?;
            let sd = b.param("ws_down", shape(&[hs, d]), dtype)?;
            let gs = b.input("shared_gate", shape(&[t, 1]), dtype)?;
            variants
                .iter()
                .map(|m| {
                    let mut ops = if m.gated {
                        vec![x, gate, wg, wu, wd]
                    } else {
                        vec![x, gate, wu, wd]
                    };
                    if m.shared != MoeShared::None {
                        if m.gated {
                            ops.push(sg);
                        }
                        ops.extend([su, sd]);
                        if m.shared == MoeShared::Gated {
                            ops.push(gs);
                        }
                    }
                    b.op(Op::MoeDispatch(*m), &ops)
                })
                .collect()
        });
        let p = compile(&format!("moe {dtype}"), &g);
        for op in ["moe_route", "moe_up", "moe_down", "moe_combine"] {
            assert!(p.kernels.iter().any(|k| k.op == op), "{op}");
        }
    }
}

#[test]
fn outputs_that_are_inputs_aliases_or_named_twice_are_copied() {
    let mut b = GraphBuilder::new("outs", Dims::new());
    let x = b.input("x", shape(&[4, 5]), DType::F32).unwrap();
    let w = b.param("w", shape(&[5, 5]), DType::F32).unwrap();
    let y = b.op(Op::MatMul, &[x, w]).unwrap();
    let r = b
        .op(
            Op::Reshape {
                shape: shape(&[20]),
            },
            &[y],
        )
        .unwrap();
    b.output("x", x).unwrap();
    b.output("y", y).unwrap();
    b.output("y_again", y).unwrap();
    b.output("flat", r).unwrap();
    let g = b.finish().unwrap();
    let p = compile("outputs", &g);
    let names: Vec<String> = p
        .buffers
        .iter()
        .filter_map(|b| match &b.role {
            BufferRole::Output(n) => Some(n.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(names.len(), 4, "{names:?}");
    for n in ["x", "y", "y_again", "flat"] {
        assert!(names.iter().any(|m| m == n), "{n}");
    }
    // The matmul writes `y` in place; the other three are copies.
    let copies = p
        .launches
        .iter()
        .filter(|l| p.kernels[l.kernel].op == "copy")
        .count();
    assert_eq!(copies, 3);
    assert_eq!(p.launches.len(), 4);
}

#[test]
fn the_gpu_module_verifies_before_lowering() {
    let g = unary_ops(DType::F32);
    let text = emit_gpu_mlir(&g, Arch::Sm90).unwrap();
    assert!(text.contains("gpu.module @attnc_kernels"), "{text}");
    assert!(text.contains("gpu.func @elementwise_0"), "{text}");
    assert!(
        !text.contains("math."),
        "no math dialect (libdevice): {text}"
    );
}

/// A spec lowered and optimized for the H200, as the CLI does.
fn optimized_spec(path: &Path, tiny: bool) -> Graph {
    let source = attnc_ir::spec::SpecSource {
        sets: Vec::new(),
        tiny,
    };
    let spec = attnc_ir::spec::load_spec(path, &source).unwrap();
    let graph = attnc_ir::spec::lower(&spec).unwrap();
    let target = attnc_passes::Target::named("h200").unwrap();
    attnc_passes::optimize(&graph, &attnc_passes::Options::new(target))
        .unwrap()
        .graph
}

fn examples() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

#[test]
fn full_size_llama3_8b() {
    let t = std::time::Instant::now();
    let g = optimized_spec(&examples().join("llama3-8b.toml"), false);
    for arch in ARCHS {
        let p = compile_gpu(&g, arch).unwrap_or_else(|e| panic!("llama3-8b: {e}"));
        check_program("llama3-8b", &p);
        // Identical layers share their kernels.
        assert!(p.kernels.len() <= 20, "{} kernels", p.kernels.len());
        assert!(p.launches.len() >= 32 * 8);
        let temp: u64 = p
            .buffers
            .iter()
            .filter(|b| b.role == BufferRole::Temp)
            .map(|b| b.bytes())
            .sum();
        // Temporaries are reused from layer to layer: a few layers' worth.
        assert!(temp < 8 << 30, "{} GiB of temporaries", temp >> 30);
        if let Some(reports) = assemble("llama3-8b", &p) {
            for r in &reports {
                eprintln!(
                    "llama3-8b [{}] {}: {} registers, {} B spilled",
                    arch.name(),
                    r.name,
                    r.registers,
                    r.spill_bytes()
                );
            }
        }
    }
    eprintln!("llama3-8b: {:.1} s", t.elapsed().as_secs_f64());
}

#[test]
fn every_tiny_example() {
    let mut paths: Vec<_> = std::fs::read_dir(examples())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    for path in paths {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let g = optimized_spec(&path, true);
        let p = compile_gpu(&g, Arch::Sm90).unwrap_or_else(|e| panic!("{name}: {e}"));
        check_program(&name, &p);
        assemble(&name, &p);
    }
}
