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
    let leaf = (cmp, int_expr(), int_expr())
        .prop_map(|(op, l, r)| MaskExpr::Bin(op, Box::new(l), Box::new(r)));
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
