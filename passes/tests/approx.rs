//! Approximations, in the interpreter: FAVOR+ converges to softmax attention as its
//! features grow, a window covering the sequence changes nothing, a shorter one
//! changes the result, and what cannot be converted is an error naming the layer.

use attnc_ir::interp::{eval, Precision};
use attnc_ir::{random_bindings, Attention, DType, Dim, Graph, GraphBuilder, MaskExpr, Op, Shape};
use attnc_passes::approx::{approximate, attention_alone, Approximation};

fn attention(mask: Option<&str>, groups: u64) -> Graph {
    let (n, d) = (32, 8);
    let shape = |h: u64, w: u64| {
        Shape(vec![
            Dim::Const(1),
            Dim::Const(h),
            Dim::Const(n),
            Dim::Const(w),
        ])
    };
    let mut b = GraphBuilder::new("a", attnc_ir::Dims::new());
    b.set_layer(Some("layers.0.attn".into()));
    let q = b.input("q", shape(2 * groups, d), DType::F32).unwrap();
    let k = b.input("k", shape(2, d), DType::F32).unwrap();
    let v = b.input("v", shape(2, 5), DType::F32).unwrap();
    let a = Attention {
        mask: mask.map(|m| MaskExpr::parse(m).unwrap()),
        groups,
        ..Attention::new(1.0 / (d as f64).sqrt())
    };
    let o = b.op(Op::Attention(a), &[q, k, v]).unwrap();
    b.output("o", o).unwrap();
    b.finish().unwrap()
}

/// Max abs error of `approx` on `g`, queries and keys drawn with std `qk_std`.
fn error(g: &Graph, approx: &Approximation, qk_std: f64) -> f64 {
    let (c, layers) = approximate(g, approx).unwrap();
    assert_eq!(layers, ["layers.0.attn"]);
    let mut bind = random_bindings(g, 3);
    for name in ["q", "k"] {
        if let Some(t) = bind.get_mut(name) {
            t.data.iter_mut().for_each(|x| *x *= qk_std);
        }
    }
    let want = eval(g, &bind, Precision::F64).unwrap();
    let got = eval(&c, &bind, Precision::F64).unwrap();
    want[0].max_abs_diff(&got[0])
}

/// Mean |approximate − exact| of `approx` on `g`, queries and keys of std 0.5.
fn mean_error(g: &Graph, approx: &Approximation) -> f64 {
    let (c, _) = approximate(g, approx).unwrap();
    let mut bind = random_bindings(g, 3);
    for name in ["q", "k"] {
        bind.get_mut(name)
            .unwrap()
            .data
            .iter_mut()
            .for_each(|x| *x *= 0.5);
    }
    let want = eval(g, &bind, Precision::F64).unwrap();
    let got = eval(&c, &bind, Precision::F64).unwrap();
    let d = &want[0].data;
    d.iter()
        .zip(&got[0].data)
        .map(|(a, b)| (a - b).abs())
        .sum::<f64>()
        / d.len() as f64
}

#[test]
fn favor_plus_converges_to_softmax_attention() {
    for (mask, groups) in [(None, 1), (Some("k <= q"), 1), (Some("k <= q"), 2)] {
        let g = attention(mask, groups);
        let errs: Vec<f64> = [16, 256, 4096]
            .iter()
            .map(|&m| {
                error(
                    &g,
                    &Approximation::Performer {
                        features: m,
                        seed: 1,
                    },
                    0.5,
                )
            })
            .collect();
        assert!(
            errs[2] < errs[0] / 4.0 && errs[2] < 0.1,
            "{mask:?} groups {groups}: {errs:?}"
        );
    }
}

#[test]
fn windows_approximate_and_cover() {
    let g = attention(Some("k <= q"), 1);
    let full = Approximation::Window {
        window: 32,
        sinks: 0,
    };
    assert!(error(&g, &full, 1.0) < 1e-12);
    let short = Approximation::Window {
        window: 4,
        sinks: 2,
    };
    assert!(error(&g, &short, 1.0) > 1e-3);
    let bidirectional = attention(None, 1);
    assert!(error(&bidirectional, &full, 1.0) < 1e-12);
    assert!(error(&bidirectional, &short, 1.0) > 1e-3);
}

#[test]
fn conversions_parse_and_refuse_clearly() {
    assert_eq!(
        Approximation::parse("performer:256").unwrap(),
        Approximation::Performer {
            features: 256,
            seed: 0
        }
    );
    assert_eq!(
        Approximation::parse("window:4096,sinks:4").unwrap(),
        Approximation::Window {
            window: 4096,
            sinks: 4
        }
    );
    for bad in [
        "performer",
        "performer:0",
        "window:4,seed:2",
        "linear:3",
        "window:x",
        "window:4,window:5",
    ] {
        assert!(Approximation::parse(bad).is_err(), "{bad}");
    }
    let g = attention(Some("q - k < 4"), 1);
    let e = approximate(
        &g,
        &Approximation::Performer {
            features: 8,
            seed: 0,
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("layers.0.attn"), "{e}");
    let (alone, layer) = attention_alone(&g).unwrap();
    assert_eq!(layer, "layers.0.attn");
    assert_eq!(alone.inputs().len(), 3);
}

/// Scatterbrain is exact on its band and FAVOR+ elsewhere: more accurate than FAVOR+
/// alone with the same features, causal or not, and exact where the band holds
/// every key (the first `window` queries of a causal attention).
#[test]
fn scatterbrain_corrects_favor_plus_on_its_band() {
    let g = attention(Some("k <= q"), 1);
    let (c, _) = approximate(
        &g,
        &Approximation::Scatterbrain {
            features: 4,
            seed: 0,
            window: 8,
        },
    )
    .unwrap();
    let bind = random_bindings(&g, 3);
    let (want, got) = (
        eval(&g, &bind, Precision::F64).unwrap(),
        eval(&c, &bind, Precision::F64).unwrap(),
    );
    // Rows 0..8 of each head see only keys inside the band.
    for h in 0..2 {
        for r in 0..8 {
            for x in 0..5 {
                let at = (h * 32 + r) * 5 + x;
                let e = (want[0].data[at] - got[0].data[at]).abs();
                assert!(e < 1e-9, "head {h} row {r}: {e}");
            }
        }
    }
    for mask in [Some("k <= q"), None] {
        let g = attention(mask, 2);
        let performer = Approximation::Performer {
            features: 64,
            seed: 1,
        };
        let scatter = Approximation::Scatterbrain {
            features: 64,
            seed: 1,
            window: 8,
        };
        // The band is exact, so the error over all outputs falls (the largest one
        // may sit outside the band, where both use the same features).
        let (p, s) = (mean_error(&g, &performer), mean_error(&g, &scatter));
        assert!(s < 0.9 * p, "{mask:?}: scatterbrain {s}, performer {p}");
    }
    assert!(Approximation::parse("scatterbrain:64,window:16").is_ok());
    assert!(Approximation::parse("scatterbrain:64").is_err());
    let bad = Approximation::Scatterbrain {
        features: 4,
        seed: 0,
        window: 5,
    };
    assert!(approximate(&g, &bad)
        .unwrap_err()
        .to_string()
        .contains("divide"));
}
