//! The fused `attention` op on tiny graphs at odd sizes — MHA, GQA, MQA, masks,
//! softcap, broadcast biases, half floats — compiled and compared with the reference
//! interpreter. No case masks a whole row (NaN in both).

mod common;

use attnc_ir::{Attention, DType, Dims, Graph, MaskExpr, Op};
use common::{check, graph_with_dims, shape};

use DType::{BF16, F16, F32};

/// Sizes of one attention: batch, query heads, KV heads, query / key lengths, head
/// dims of q·k and of v.
#[derive(Clone, Copy)]
struct Sizes {
    b: u64,
    h: u64,
    hkv: u64,
    sq: u64,
    sk: u64,
    dk: u64,
    dv: u64,
}

const SMALL: Sizes = Sizes {
    b: 2,
    h: 3,
    hkv: 3,
    sq: 5,
    sk: 7,
    dk: 3,
    dv: 3,
};

/// `attention(q, k, v [, bias])` with `groups = h / hkv`, bias of `bias` sizes if given.
fn attention(
    dims: Dims,
    s: Sizes,
    dtype: DType,
    mut attn: Attention,
    bias: Option<&[u64]>,
) -> Graph {
    attn.groups = s.h / s.hkv;
    attn.bias = bias.is_some();
    graph_with_dims(dims, |b| {
        let q = b.input("q", shape(&[s.b, s.h, s.sq, s.dk]), dtype)?;
        let k = b.input("k", shape(&[s.b, s.hkv, s.sk, s.dk]), dtype)?;
        let v = b.input("v", shape(&[s.b, s.hkv, s.sk, s.dv]), dtype)?;
        let mut operands = vec![q, k, v];
        if let Some(sizes) = bias {
            operands.push(b.input("bias", shape(sizes), dtype)?);
        }
        Ok(vec![b.op(Op::Attention(attn), &operands)?])
    })
}

fn masked(scale: f64, mask: &str) -> Attention {
    Attention {
        mask: Some(MaskExpr::parse(mask).unwrap()),
        ..Attention::new(scale)
    }
}

#[test]
fn multi_head_attention() {
    check(&attention(
        Dims::new(),
        SMALL,
        F32,
        Attention::new(0.6),
        None,
    ));
}

#[test]
fn grouped_query_attention() {
    let s = Sizes {
        h: 4,
        hkv: 2,
        ..SMALL
    };
    check(&attention(Dims::new(), s, F32, Attention::new(0.6), None));
}

#[test]
fn multi_query_attention() {
    let s = Sizes {
        h: 4,
        hkv: 1,
        ..SMALL
    };
    check(&attention(Dims::new(), s, F32, Attention::new(0.6), None));
}

#[test]
fn different_lengths_and_head_dims() {
    // Sq > Sk and Sq < Sk, Dk != Dv, a single query, a single key.
    for (sq, sk, dk, dv) in [(7, 5, 4, 2), (5, 7, 2, 6), (1, 9, 5, 3), (4, 1, 3, 3)] {
        let s = Sizes {
            sq,
            sk,
            dk,
            dv,
            h: 4,
            hkv: 2,
            ..SMALL
        };
        check(&attention(Dims::new(), s, F32, Attention::new(0.5), None));
    }
}

#[test]
fn causal_mask() {
    // Sq <= Sk, so every query row keeps key 0.
    for hkv in [3, 1] {
        let s = Sizes { hkv, ..SMALL };
        check(&attention(Dims::new(), s, F32, masked(0.6, "k <= q"), None));
    }
}

#[test]
fn sliding_window_mask_with_a_bound_dim() {
    let mut dims = Dims::new();
    dims.bind("window", 3);
    let s = Sizes {
        h: 4,
        hkv: 2,
        ..SMALL
    };
    let a = masked(0.6, "k <= q && q - k < window");
    check(&attention(dims, s, F32, a, None));
}

#[test]
fn mask_over_heads_and_batch() {
    // h is the query head (0..4), not the KV head: heads 1 and 3 see only keys < 2,
    // the second batch additionally drops the last key.
    let s = Sizes {
        h: 4,
        hkv: 2,
        ..SMALL
    };
    let a = masked(0.6, "(h % 2 == 0 || k < 2) && (b == 0 || k != 6)");
    check(&attention(Dims::new(), s, F32, a, None));
}

#[test]
fn softcap() {
    // A large scale so the cap bites (|s| well past c).
    for hkv in [3, 1] {
        let a = Attention {
            softcap: Some(0.75),
            ..Attention::new(3.0)
        };
        let s = Sizes { hkv, ..SMALL };
        check(&attention(Dims::new(), s, F32, a, None));
    }
}

#[test]
fn biases_that_broadcast() {
    // [Sq, Sk], [H, 1, Sk] (ALiBi-like), [B, 1, Sq, 1], a scalar-like [1], the full
    // [B, H, Sq, Sk].
    let s = Sizes {
        h: 4,
        hkv: 2,
        ..SMALL
    };
    let biases: [&[u64]; 5] = [&[5, 7], &[4, 1, 7], &[2, 1, 5, 1], &[1], &[2, 4, 5, 7]];
    for bias in biases {
        check(&attention(
            Dims::new(),
            s,
            F32,
            Attention::new(0.6),
            Some(bias),
        ));
    }
}

#[test]
fn everything_at_once() {
    let mut dims = Dims::new();
    dims.bind("window", 4);
    let s = Sizes {
        b: 1,
        h: 6,
        hkv: 2,
        sq: 6,
        sk: 6,
        dk: 5,
        dv: 2,
    };
    let a = Attention {
        softcap: Some(2.0),
        ..masked(1.5, "k <= q && q - k < window")
    };
    check(&attention(dims, s, F32, a, Some(&[6, 1, 6])));
}

#[test]
fn half_floats() {
    for dtype in [F16, BF16] {
        let s = Sizes {
            h: 4,
            hkv: 2,
            ..SMALL
        };
        let a = Attention {
            softcap: Some(5.0),
            ..masked(0.6, "k <= q + 1")
        };
        check(&attention(Dims::new(), s, dtype, a, Some(&[5, 7])));
    }
}

#[test]
fn grouped_kv_heads_are_read_in_place() {
    // GQA reads K and V at their own KV head inside the kernel: no broadcast or copy
    // of them is materialised at H heads, and no score matrix either.
    let s = Sizes {
        h: 4,
        hkv: 2,
        ..SMALL
    };
    let text =
        attnc_backends::emit_mlir(&attention(Dims::new(), s, F32, Attention::new(0.6), None))
            .unwrap();
    assert!(text.contains("@attnc.attention."), "{text}");
    assert!(!text.contains("2x4x7x3xf32"), "{text}");
    assert!(!text.contains("2x4x5x7xf32"), "{text}");
}

/// Sizes spanning several query and key blocks of the kernel (64 × 64), none a
/// multiple of a block or of the vector width: full, causal (blocks above the
/// diagonal skipped, the diagonal ones masked per element), sliding window, a
/// strided pattern, with GQA, a bias and a softcap.
#[test]
fn many_blocks_with_ragged_edges() {
    let s = Sizes {
        b: 1,
        h: 4,
        hkv: 2,
        sq: 150,
        sk: 150,
        dk: 20,
        dv: 36,
    };
    let mut dims = Dims::new();
    dims.bind("window", 70);
    for mask in [
        None,
        Some("k <= q"),
        Some("k <= q && q - k < window"),
        Some("k % 3 == 0 || k <= q"),
    ] {
        let a = match mask {
            Some(m) => masked(0.3, m),
            None => Attention::new(0.3),
        };
        check(&attention(dims.clone(), s, F32, a.clone(), None));
        let capped = Attention {
            softcap: Some(4.0),
            ..a
        };
        check(&attention(
            dims.clone(),
            s,
            F32,
            capped,
            Some(&[1, 150, 150]),
        ));
    }
    // More keys than queries, and the other way round.
    for (sq, sk) in [(70, 200), (200, 65)] {
        let s = Sizes { sq, sk, ..s };
        check(&attention(dims.clone(), s, F32, Attention::new(0.3), None));
    }
}
