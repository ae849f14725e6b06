//! `arch = "vit"`: the Vision Transformer spec, its patch embedding and its errors.

use attnc_ir::interp::{eval_nodes, Precision};
use attnc_ir::spec::{lower, parse_spec, Format, SpecSource};
use attnc_ir::{IrError, Op};

const VIT: &str = include_str!("../../examples/vit-b16.toml");

fn parse(sets: &[&str], tiny: bool) -> Result<attnc_ir::spec::Spec, IrError> {
    let source = SpecSource {
        sets: sets.iter().map(|s| s.to_string()).collect(),
        tiny,
    };
    parse_spec(VIT, Format::Toml, &source)
}

#[test]
fn vit_b16_lowers_at_full_size() {
    let spec = parse(&[], false).unwrap();
    assert_eq!(spec.dims["seq"], 197);
    let g = lower(&spec).unwrap();
    let (name, out) = &g.outputs()[0];
    assert_eq!(name, "logits");
    assert_eq!(g.sizes(*out), vec![1, 1000]);
    let params: u64 = (g.params().iter())
        .map(|(_, id)| g.sizes(*id).iter().map(|&n| n as u64).product::<u64>())
        .sum();
    assert_eq!(params, 86_567_656, "ViT-B/16 has 86.6M parameters");
    let pixels = g
        .inputs()
        .into_iter()
        .find(|(n, _)| *n == "pixels")
        .unwrap();
    assert_eq!(g.sizes(pixels.1), vec![1, 3, 224, 224]);
    // The axial variant: no class token, 14 × 14 patches, rows of 14.
    let spec = parse(&["vision.class_token=false", "attention.kind=axial"], false).unwrap();
    assert_eq!(spec.dims["seq"], 196);
    assert_eq!(spec.attention.axial_rows, Some(14));
    lower(&spec).unwrap();
    // Tiny: 4 × 4 patches of 4 × 4 pixels, 10 classes.
    let tiny = parse(&[], true).unwrap();
    assert_eq!(tiny.dims["seq"], 17);
    let g = lower(&tiny).unwrap();
    assert_eq!(g.sizes(g.outputs()[0].1), vec![1, 10]);
}

/// The flattened patches are `patch[b, gy·G + gx, c·P² + i·P + j] = pixels[b, c, gy·P
/// + i, gx·P + j]`: the order of the reference's convolution weights.
#[test]
fn patches_are_flattened_in_channel_row_column_order() {
    let spec = parse(&["layers=1"], true).unwrap();
    let g = lower(&spec).unwrap();
    let (c, img, p) = (3usize, 16usize, 4usize);
    let grid = img / p;
    let mut bindings = attnc_ir::random_bindings(&g, 1);
    let pixels: Vec<f64> = (0..c * img * img).map(|i| i as f64).collect();
    bindings.insert(
        "pixels".into(),
        attnc_ir::Tensor::new(attnc_ir::DType::F32, vec![1, c, img, img], pixels),
    );
    let values = eval_nodes(&g, &bindings, Precision::F64).unwrap();
    // The reshape that yields [1, patches, patch_dim].
    let flat = (g.node_ids())
        .find(|&id| {
            matches!(g.node(id).op, Op::Reshape { .. }) && g.sizes(id) == vec![1, 16, c * p * p]
        })
        .unwrap();
    let t = &values[flat.index()];
    for gy in 0..grid {
        for gx in 0..grid {
            for ch in 0..c {
                for i in 0..p {
                    for j in 0..p {
                        let got = t.data[(gy * grid + gx) * c * p * p + ch * p * p + i * p + j];
                        let want = (ch * img * img + (gy * p + i) * img + gx * p + j) as f64;
                        assert_eq!(got, want);
                    }
                }
            }
        }
    }
}

/// The embedding of the lowered graph, evaluated in the interpreter on a random image,
/// equals the reference computation written out: the stride-`P` convolution
/// `Σ_{c,i,j} W[c·P² + i·P + j, o] · pixels[c, gy·P + i, gx·P + j] + bias[o]` per patch,
/// the class token in front, and the learned positions.
#[test]
fn patch_embedding_is_the_strided_convolution() {
    let spec = parse(&["layers=1"], true).unwrap();
    let g = lower(&spec).unwrap();
    let (c, img, p, d) = (3usize, 16usize, 4usize, spec.d_model as usize);
    let (grid, seq) = (img / p, 17usize);
    let bindings = attnc_ir::random_bindings(&g, 7);
    let values = eval_nodes(&g, &bindings, Precision::F64).unwrap();
    let pos_param = (g.params().into_iter())
        .find(|(n, _)| *n == "embed.positions")
        .unwrap()
        .1;
    // The sum that adds the positions is the embedding's output.
    let embedded = (g.node_ids())
        .find(|&id| g.operands(id).contains(&pos_param))
        .unwrap();
    assert_eq!(g.sizes(embedded), vec![1, seq, d]);
    let got = &values[embedded.index()].data;
    let t = |name: &str| &bindings[name].data;
    let (pixels, w, bias) = (t("pixels"), t("embed.patch.weight"), t("embed.patch.bias"));
    let (cls, pos) = (t("embed.class_token"), t("embed.positions"));
    let mut checked = 0;
    for o in 0..d {
        let want = cls[o] + pos[o];
        assert!((got[o] - want).abs() < 1e-9, "class token, {o}");
        for gy in 0..grid {
            for gx in 0..grid {
                let tok = 1 + gy * grid + gx;
                let mut want = bias[o] + pos[tok * d + o];
                for ch in 0..c {
                    for i in 0..p {
                        for j in 0..p {
                            let px = pixels[ch * img * img + (gy * p + i) * img + gx * p + j];
                            want += w[(ch * p * p + i * p + j) * d + o] * px;
                        }
                    }
                }
                let v = got[tok * d + o];
                assert!((v - want).abs() < 1e-9, "token {tok}, {o}: {v} vs {want}");
                checked += 1;
            }
        }
    }
    assert_eq!(checked, d * grid * grid);
}

/// `pool = "mean"` averages the patch tokens only, leaving out the class token.
#[test]
fn mean_pooling_leaves_out_the_class_token() {
    for (sets, tokens) in [
        (&["layers=1", "vision.pool=\"mean\""][..], 16),
        (&["layers=1", "vision.class_token=false"][..], 16),
    ] {
        let spec = parse(sets, true).unwrap();
        let g = lower(&spec).unwrap();
        let reduce = (g.node_ids())
            .find(|&id| matches!(g.node(id).op, Op::Reduce { .. }))
            .unwrap();
        let input = g.operands(reduce)[0];
        assert_eq!(
            g.sizes(input),
            vec![1, tokens, spec.d_model as usize],
            "{sets:?}"
        );
        let values = eval_nodes(&g, &attnc_ir::random_bindings(&g, 3), Precision::F64).unwrap();
        let (x, m) = (&values[input.index()].data, &values[reduce.index()].data);
        let d = spec.d_model as usize;
        for o in 0..d {
            let want = (0..tokens).map(|t| x[t * d + o]).sum::<f64>() / tokens as f64;
            assert!((m[o] - want).abs() < 1e-12);
        }
    }
}

#[test]
fn learned_positions_default_to_the_sequence() {
    let spec = parse(&["position=\"learned\""], false).unwrap();
    assert_eq!(spec.max_positions, Some(197));
    let tiny = parse(&["position=\"learned\""], true).unwrap();
    assert_eq!(tiny.max_positions, Some(17));
    lower(&tiny).unwrap();
}

#[test]
fn bad_vision_specs_name_the_field() {
    let cases: &[(&[&str], &str)] = &[
        (&["vision.image_size=225"], "vision.image_size"),
        (&["dims.seq=196"], "dims.seq"),
        (
            &["vision.pool=\"cls\"", "vision.class_token=false"],
            "vision.pool",
        ),
        (&["vision.patch_size=0"], "vision.patch_size"),
        (&["position=\"rope\""], "learned positions"),
        (&["vision=null"], "[vision]"),
        (&["arch=\"decoder\"", "vocab=10"], "arch = \"vit\""),
        (&["vision.stride=2"], "stride"),
        (&["max_positions=100"], "max_positions"),
        (&["tie_embeddings=true"], "tie_embeddings"),
        (
            &["vision.image_size=4294967296", "vision.patch_size=1"],
            "vision.image_size",
        ),
        (
            &["vision.num_channels=4294967296", "vision.patch_size=4"],
            "vision.num_channels",
        ),
    ];
    for (sets, needle) in cases {
        let e = parse(sets, false).expect_err(needle).to_string();
        assert!(e.contains(needle), "{sets:?}: {e}");
    }
    // A decoder still needs its vocabulary.
    let gpt2 = include_str!("../../examples/gpt2.toml").replace("vocab = 50257", "");
    let e = parse_spec(&gpt2, Format::Toml, &SpecSource::default()).unwrap_err();
    assert!(e.to_string().contains("`vocab` must be at least 1"), "{e}");
}
