//! Property tests of mask expressions: printing then parsing gives the same tree, and
//! both evaluate the same everywhere.

use attnc_ir::{Coord, Dims, MaskBinOp, MaskExpr};
use proptest::prelude::*;

fn int_expr() -> impl Strategy<Value = MaskExpr> {
    let leaf = prop_oneof![
        (0i64..20).prop_map(MaskExpr::Int),
        prop_oneof![
            Just(Coord::B),
            Just(Coord::H),
            Just(Coord::Q),
            Just(Coord::K)
        ]
        .prop_map(MaskExpr::Coord),
        Just(MaskExpr::Dim("window".into())),
    ];
    leaf.prop_recursive(4, 16, 2, |inner| {
        prop_oneof![
            inner.clone().prop_map(|e| MaskExpr::Neg(Box::new(e))),
            (
                prop_oneof![
                    Just(MaskBinOp::Add),
                    Just(MaskBinOp::Sub),
                    Just(MaskBinOp::Mul),
                    Just(MaskBinOp::Div),
                    Just(MaskBinOp::Rem)
                ],
                inner.clone(),
                inner
            )
                .prop_map(|(op, l, r)| MaskExpr::Bin(op, Box::new(l), Box::new(r))),
        ]
    })
}

fn bool_expr() -> impl Strategy<Value = MaskExpr> {
    let cmp = prop_oneof![
        Just(MaskBinOp::Lt),
        Just(MaskBinOp::Le),
        Just(MaskBinOp::Gt),
        Just(MaskBinOp::Ge),
        Just(MaskBinOp::Eq),
        Just(MaskBinOp::Ne)
    ];
    let compare = (cmp, int_expr(), int_expr())
        .prop_map(|(op, l, r)| MaskExpr::Bin(op, Box::new(l), Box::new(r)));
    let random =
        (int_expr(), int_expr(), 0i64..4, 1i64..8, 0i64..50).prop_map(|(qb, kb, r, n, seed)| {
            MaskExpr::RandomBlocks(Box::new([
                qb,
                kb,
                MaskExpr::Int(r),
                MaskExpr::Int(n),
                MaskExpr::Int(seed),
            ]))
        });
    let leaf = prop_oneof![4 => compare, 1 => random];
    leaf.prop_recursive(3, 12, 2, |inner| {
        prop_oneof![
            inner.clone().prop_map(|e| MaskExpr::Not(Box::new(e))),
            (
                prop_oneof![Just(MaskBinOp::And), Just(MaskBinOp::Or)],
                inner.clone(),
                inner
            )
                .prop_map(|(op, l, r)| MaskExpr::Bin(op, Box::new(l), Box::new(r))),
        ]
    })
}

proptest! {
    #[test]
    fn print_parse_round_trip(e in bool_expr()) {
        let text = e.to_string();
        let back = MaskExpr::parse(&text).map_err(|err| TestCaseError::fail(format!("{text}: {err}")))?;
        prop_assert_eq!(&back, &e, "{}", text);
        let mut dims = Dims::new();
        dims.bind("window", 3);
        for at in [[0, 0, 0, 0], [1, 2, 5, 3], [0, 1, 7, 7], [1, 0, 2, 9]] {
            prop_assert_eq!(back.eval(at, &dims), e.eval(at, &dims));
        }
    }
}

/// Every element of the box `bounds` (inclusive ranges of b, h, q, k): does the mask
/// hold at any, and at all?
fn any_all(m: &MaskExpr, bounds: [(i64, i64); 4], dims: &Dims) -> (bool, bool) {
    let (mut any, mut all) = (false, true);
    for b in bounds[0].0..=bounds[0].1 {
        for h in bounds[1].0..=bounds[1].1 {
            for q in bounds[2].0..=bounds[2].1 {
                for k in bounds[3].0..=bounds[3].1 {
                    let v = m.holds(b, h, q, k, dims);
                    any |= v;
                    all &= v;
                }
            }
        }
    }
    (any, all)
}

/// A block of the score matrix: query block `qb` of `bq` rows and key block `kb` of
/// `bk` keys, clipped to `n` (sizes need not be multiples of the blocks).
fn block(n: i64, bq: i64, bk: i64, qb: i64, kb: i64) -> Option<[(i64, i64); 4]> {
    let (q0, k0) = (qb * bq, kb * bk);
    if q0 >= n || k0 >= n {
        return None;
    }
    Some([
        (0, 1),
        (0, 2),
        (q0, (q0 + bq).min(n) - 1),
        (k0, (k0 + bk).min(n) - 1),
    ])
}

/// The masks of sparse attention, with their parameters: causal, sliding window,
/// global tokens, strided and fixed patterns (Sparse Transformer), dilated window,
/// attention sinks, prefix-LM, block-causal.
fn named_mask() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("k <= q".to_string()),
        (1i64..40).prop_map(|w| format!("k <= q && q - k < {w}")),
        (1i64..8).prop_map(|g| format!("q < {g} || k < {g} || (k <= q && q - k < 5)")),
        (2i64..9).prop_map(|s| format!("k <= q && ((q - k) % {s} == 0 || q - k < {s})")),
        (2i64..9).prop_map(|s| format!("k <= q && (k / {s} == q / {s} || k % {s} == {s} - 1)")),
        (1i64..30, 2i64..4)
            .prop_map(|(w, d)| format!("k <= q && q - k < {w} && (q - k) % {d} == 0")),
        (1i64..6, 1i64..30).prop_map(|(s, w)| format!("k < {s} || (k <= q && q - k < {w})")),
        (1i64..30).prop_map(|p| format!("k < {p} || k <= q")),
        (2i64..20).prop_map(|s| format!("k / {s} <= q / {s}")),
        Just("h % 2 == 0 || k <= q".to_string()),
        // BigBird: window and global blocks, seeded random blocks.
        (2i64..8, 1i64..4, 0i64..100).prop_map(|(s, r, seed)| format!(
            "(q / {s} - k / {s} <= 1 && k / {s} - q / {s} <= 1) || q < {s} || k < {s} || random_blocks(q / {s}, k / {s}, {r}, 70 / {s} + 1, {seed})"
        )),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The block classification agrees with evaluating the dense mask: an `Empty` block
    /// has no element that holds, a `Full` one no element that does not, for the
    /// sparse-attention masks at random parameters, sizes and block sizes.
    #[test]
    fn coverage_agrees_with_the_dense_mask(
        text in named_mask(),
        n in 1i64..70,
        bq in 1i64..20,
        bk in 1i64..20,
    ) {
        let m = MaskExpr::parse(&text).unwrap();
        let dims = Dims::new();
        let mut skipped = 0;
        for qb in 0..n.div_euclid(bq) + 1 {
            for kb in 0..n.div_euclid(bk) + 1 {
                let Some(bounds) = block(n, bq, bk, qb, kb) else { continue };
                let (any, all) = any_all(&m, bounds, &dims);
                match m.coverage(bounds, &dims) {
                    attnc_ir::Coverage::Empty => {
                        prop_assert!(!any, "{} {:?}: empty, but holds somewhere", text, bounds);
                        skipped += 1;
                    }
                    attnc_ir::Coverage::Full => prop_assert!(all, "{} {:?}: full, but not everywhere", text, bounds),
                    attnc_ir::Coverage::Partial => {}
                }
            }
        }
        // Causal skips every block strictly above the diagonal.
        if text == "k <= q" {
            let above = (0..n.div_euclid(bq) + 1)
                .flat_map(|qb| (0..n.div_euclid(bk) + 1).map(move |kb| (qb, kb)))
                .filter(|&(qb, kb)| block(n, bq, bk, qb, kb).is_some_and(|b| b[3].0 > b[2].1))
                .count();
            prop_assert_eq!(skipped, above);
        }
    }

    /// The block layout lists exactly the blocks where the mask may hold: a block left
    /// out holds nowhere, a block listed as full holds everywhere, and every block
    /// where the mask holds somewhere is listed — per head and batch row when the mask
    /// reads them.
    #[test]
    fn block_layout_agrees_with_the_dense_mask(
        text in named_mask(),
        n in 1i64..70,
        bq in 1usize..20,
        bk in 1usize..20,
    ) {
        let m = MaskExpr::parse(&text).unwrap();
        let dims = Dims::new();
        let (batch, heads) = (2usize, 3usize);
        let l = attnc_ir::BlockLayout::of(Some(&m), &dims, [batch, heads, n as usize, n as usize], [bq, bk]).unwrap();
        for b in 0..batch {
            for h in 0..heads {
                let g = l.group(b, h);
                for qb in 0..l.q_blocks {
                    let listed: Vec<(usize, bool)> = l.row(g, qb).collect();
                    for kb in 0..l.k_blocks {
                        let Some(mut bounds) = block(n, bq as i64, bk as i64, qb as i64, kb as i64) else { continue };
                        bounds[0] = (b as i64, b as i64);
                        bounds[1] = (h as i64, h as i64);
                        let (any, all) = any_all(&m, bounds, &dims);
                        match listed.iter().find(|e| e.0 == kb) {
                            None => prop_assert!(!any, "{} {:?}: left out, but holds", text, bounds),
                            Some((_, false)) => prop_assert!(all, "{} {:?}: full, but fails", text, bounds),
                            Some((_, true)) => {}
                        }
                    }
                }
            }
        }
    }

    /// `random_blocks` draws exactly `min(r, n)` distinct key blocks per query block.
    #[test]
    fn random_blocks_draws_exactly_r_blocks(r in 0i64..12, n in 1i64..40, seed in 0i64..1000) {
        for qb in 0..n {
            let drawn = (0..n).filter(|&kb| attnc_ir::random_blocks(qb, kb, r, n, seed)).count();
            prop_assert_eq!(drawn as i64, r.min(n));
        }
        prop_assert!(!attnc_ir::random_blocks(n, 0, r, n, seed));
        prop_assert!(!attnc_ir::random_blocks(-1, 0, r, n, seed));
    }

    /// Sound for any expression at all (random trees of every operator).
    #[test]
    fn coverage_is_sound_for_random_expressions(
        e in bool_expr(),
        q0 in 0i64..12,
        k0 in 0i64..12,
        bq in 1i64..6,
        bk in 1i64..6,
    ) {
        let mut dims = Dims::new();
        dims.bind("window", 3);
        let bounds = [(0, 1), (0, 2), (q0, q0 + bq - 1), (k0, k0 + bk - 1)];
        let (any, all) = any_all(&e, bounds, &dims);
        match e.coverage(bounds, &dims) {
            attnc_ir::Coverage::Empty => prop_assert!(!any, "{}: empty, but holds", e),
            attnc_ir::Coverage::Full => prop_assert!(all, "{}: full, but fails", e),
            attnc_ir::Coverage::Partial => {}
        }
    }
}
