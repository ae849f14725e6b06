//! `block_sparse_attention` compiled and compared with the interpreter: every block
//! size the kernel tiles, sizes that are not multiples of a block, the sparse masks of
//! the shipped examples (sliding windows, global tokens, strided and fixed patterns,
//! sinks, BigBird's random blocks), layouts per head and per batch row, GQA, a bias.
//! Every query row keeps at least one key (a fully masked row is NaN in both).

mod common;

use attnc_ir::{Attention, DType, Dims, MaskExpr, Op};
use common::{check, graph_with_dims, shape};

const BLOCKS: [[u64; 2]; 6] = [[16, 16], [32, 32], [64, 32], [64, 64], [128, 64], [48, 16]];

fn graph(
    dims: &Dims,
    mask: &str,
    block: [u64; 2],
    [b, h, hkv, s, d]: [u64; 5],
    bias: bool,
) -> attnc_ir::Graph {
    let attn = Attention {
        mask: Some(MaskExpr::parse(mask).unwrap()),
        groups: h / hkv,
        bias,
        block: Some(block),
        ..Attention::new(0.3)
    };
    graph_with_dims(dims.clone(), |g| {
        let q = g.input("q", shape(&[b, h, s, d]), DType::F32)?;
        let k = g.input("k", shape(&[b, hkv, s, d]), DType::F32)?;
        let v = g.input("v", shape(&[b, hkv, s, d + 4]), DType::F32)?;
        let mut operands = vec![q, k, v];
        if bias {
            operands.push(g.input("bias", shape(&[h, 1, s]), DType::F32)?);
        }
        Ok(vec![g.op(Op::Attention(attn), &operands)?])
    })
}

fn dims() -> Dims {
    let mut d = Dims::new();
    for (name, v) in [
        ("window", 40),
        ("half", 20),
        ("stride", 24),
        ("sinks", 3),
        ("block", 16),
    ] {
        d.bind(name, v);
    }
    d.bind("seq", 150);
    d
}

const MASKS: [&str; 8] = [
    "k <= q",
    "k <= q && q - k < window",
    "(q - k <= half && k - q <= half) || q == 0 || k == 0",
    "k <= q && (q - k < stride || (q - k) % stride == 0)",
    "k <= q && (k / stride == q / stride || k % stride >= stride - 4)",
    "k <= q && (k < sinks || q - k < window)",
    "(q / block - k / block <= 1 && k / block - q / block <= 1) || q < block || k < block || random_blocks(q / block, k / block, 2, (seq + block - 1) / block, 5)",
    "k == 0 || (k <= q && q - k < window) || k % 17 == 3",
];

#[test]
fn every_block_size_on_every_sparse_mask() {
    let d = dims();
    for mask in MASKS {
        for block in BLOCKS {
            check(&graph(&d, mask, block, [1, 2, 1, 150, 8], false));
        }
    }
}

#[test]
fn layouts_per_head_and_per_batch_row() {
    let d = dims();
    let masks = [
        "k <= q && (h % 2 == 0 || q - k < window)",
        "k <= q && (b == 0 || k % 3 == 0 || k == q)",
    ];
    for mask in masks {
        for block in [[32, 32], [64, 64]] {
            check(&graph(&d, mask, block, [2, 4, 2, 130, 8], true));
        }
    }
}

#[test]
fn a_single_block_and_more_blocks_than_keys() {
    let d = dims();
    check(&graph(&d, "k <= q", [128, 64], [1, 1, 1, 20, 4], false));
    check(&graph(&d, "k <= q", [16, 16], [1, 1, 1, 1, 4], false));
}

/// A block list given as data: listed `[lq, lk]` blocks larger than the kernel's
/// tiles, `-1` and out-of-range slots (ignored), a repeated block (counted twice),
/// with and without a causal mask inside the listed blocks.
#[test]
fn a_block_list_given_as_data() {
    use common::{check_with, tensor};
    let (b, h, s, d) = (1u64, 2u64, 100u64, 8u64);
    for (mask, [lq, lk]) in [
        (Some("k <= q"), [32u64, 32u64]),
        (None, [16, 48]),
        (Some("k <= q"), [64, 16]),
    ] {
        let rows = s.div_ceil(lq) as usize;
        let key_blocks = s.div_ceil(lk) as i64;
        let slots = 3usize;
        let attn = Attention {
            mask: mask.map(|m| MaskExpr::parse(m).unwrap()),
            block: Some([lq, lk]),
            listed: true,
            ..Attention::new(0.4)
        };
        let g = graph_with_dims(Dims::new(), |g| {
            let q = g.input("q", shape(&[b, h, s, d]), DType::F32)?;
            let k = g.input("k", shape(&[b, h, s, d]), DType::F32)?;
            let v = g.input("v", shape(&[b, h, s, d]), DType::F32)?;
            let list = g.input(
                "list",
                shape(&[b, h, rows as u64, slots as u64]),
                DType::I64,
            )?;
            Ok(vec![g.op(Op::Attention(attn), &[q, k, v, list])?])
        });
        let mut bindings = attnc_ir::random_bindings(&g, 3);
        // Row r lists its own block (so no row is empty under the causal mask), a
        // pseudo-random one (sometimes out of range) and either -1 or a repeat.
        let mut data = Vec::new();
        for hi in 0..h as i64 {
            for r in 0..rows as i64 {
                let own = (r * lq as i64 / lk as i64).min(key_blocks - 1);
                let other = (r * 7 + hi * 3) % (key_blocks + 2) - 1;
                let third = if r % 2 == 0 { -1 } else { own };
                data.extend([own as f64, other as f64, third as f64]);
            }
        }
        bindings.insert(
            "list".into(),
            tensor(DType::I64, &[b as usize, h as usize, rows, slots], &data),
        );
        check_with(&g, &bindings);
    }
}

/// MoBA compiled (its block list computed by the graph, then the block-sparse kernel
/// over it) against the interpreter's direct loops: MHA and GQA, several `top_k`.
#[test]
fn moba_block_top_k_attention() {
    for (h, hk, top_k, block, s) in [(2, 2, 2, 16, 96), (4, 2, 1, 32, 128), (2, 1, 3, 16, 64)] {
        let g = graph_with_dims(Dims::new(), |g| {
            let q = g.input("q", shape(&[1, h, s, 8]), DType::F32)?;
            let k = g.input("k", shape(&[1, hk, s, 8]), DType::F32)?;
            let v = g.input("v", shape(&[1, hk, s, 12]), DType::F32)?;
            let m = attnc_ir::Moba {
                scale: 0.5,
                groups: h / hk,
                block,
                top_k,
            };
            Ok(vec![g.op(Op::Moba(m), &[q, k, v])?])
        });
        check(&g);
    }
}

/// Reformer's LSH attention compiled (hashing, sort, chunked attention, unsort, the
/// rounds mixed) against the interpreter's direct loops.
#[test]
fn reformer_lsh_attention() {
    for (rounds, buckets, chunk, causal) in [
        (2u64, 4u64, 16u64, true),
        (1, 8, 8, false),
        (3, 2, 32, true),
    ] {
        let g = graph_with_dims(Dims::new(), |g| {
            let x = g.input("qk", shape(&[1, 2, 64, 8]), DType::F32)?;
            let v = g.input("v", shape(&[1, 2, 64, 4]), DType::F32)?;
            let r = g.input("rot", shape(&[rounds, 8, buckets / 2]), DType::F32)?;
            let l = attnc_ir::Lsh {
                scale: 0.35,
                n_hashes: rounds,
                buckets,
                chunk,
                causal,
            };
            Ok(vec![g.op(Op::Lsh(l), &[x, v, r])?])
        });
        check(&g);
    }
}

/// Routing attention compiled (cluster selection, gathers, cluster-batched
/// attention, scatter-add and the mean) against the interpreter's direct loops.
#[test]
fn routing_transformer_attention() {
    for (clusters, window, causal) in [(4u64, 16u64, true), (3, 40, false)] {
        let g = graph_with_dims(Dims::new(), |g| {
            let x = g.input("qk", shape(&[1, 2, 64, 8]), DType::F32)?;
            let v = g.input("v", shape(&[1, 2, 64, 4]), DType::F32)?;
            let mu = g.input("mu", shape(&[2, clusters, 8]), DType::F32)?;
            let r = attnc_ir::Routing {
                scale: 0.35,
                clusters,
                window,
                causal,
            };
            Ok(vec![g.op(Op::Routing(r), &[x, v, mu])?])
        });
        check(&g);
    }
}

/// Document masking: keys count only in the query's document (segment ids given as
/// data), dense and over a block list, with a causal mask on top.
#[test]
fn document_masks_from_segment_ids() {
    use common::{check_with, tensor};
    let (h, s) = (2u64, 90u64);
    // Documents of 20, 7, 41 and 22 tokens in batch row 0; 45 and 45 in row 1.
    let mut seg = Vec::new();
    for lens in [[20usize, 7, 41, 22].as_slice(), [45, 45].as_slice()] {
        for (d, &n) in lens.iter().enumerate() {
            seg.extend(std::iter::repeat_n(d as f64, n));
        }
    }
    for listed in [false, true] {
        let block = [32u64, 32u64];
        let attn = Attention {
            mask: Some(MaskExpr::parse("k <= q").unwrap()),
            segments: true,
            block: listed.then_some(block),
            listed,
            ..Attention::new(0.4)
        };
        let rows = s.div_ceil(32);
        let g = graph_with_dims(Dims::new(), |g| {
            let q = g.input("q", shape(&[2, h, s, 8]), DType::F32)?;
            let k = g.input("k", shape(&[2, h, s, 8]), DType::F32)?;
            let v = g.input("v", shape(&[2, h, s, 8]), DType::F32)?;
            let sg = g.input("segments", shape(&[2, s]), DType::I64)?;
            let mut ops = vec![q, k, v, sg];
            if listed {
                ops.push(g.input("list", shape(&[2, h, rows, rows]), DType::I64)?);
            }
            Ok(vec![g.op(Op::Attention(attn), &ops)?])
        });
        let mut bindings = attnc_ir::random_bindings(&g, 3);
        bindings.insert(
            "segments".into(),
            tensor(DType::I64, &[2, s as usize], &seg),
        );
        if listed {
            // Every causal key block listed once, the others -1.
            let mut list = Vec::new();
            for _ in 0..2 * h {
                for r in 0..rows {
                    for j in 0..rows {
                        list.push(if j > r { -1.0 } else { j as f64 });
                    }
                }
            }
            bindings.insert(
                "list".into(),
                tensor(
                    DType::I64,
                    &[2, h as usize, rows as usize, rows as usize],
                    &list,
                ),
            );
        }
        check_with(&g, &bindings);
    }
}
