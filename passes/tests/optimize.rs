//! The whole optimizer on the shipped examples (shrunk with `--tiny`): the fused forms
//! appear, and the optimized graph computes what the original does.

use attnc_ir::interp::{eval, Precision};
use attnc_ir::spec::{load_spec, lower, SpecSource};
use attnc_ir::{random_bindings, Graph};
use attnc_passes::{optimize, Options, Target};
use std::path::Path;

fn example(name: &str, tiny: bool, sets: &[&str]) -> Graph {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(format!("{name}.toml"));
    let source = SpecSource {
        sets: sets.iter().map(|s| s.to_string()).collect(),
        tiny,
    };
    lower(&load_spec(&path, &source).unwrap()).unwrap()
}

/// Optimizes `g` for `target`, checks it against the original in the interpreter and
/// returns the optimized graph's op names per layer.
fn check(g: &Graph, target: &str) -> attnc_passes::Optimized {
    let opt = optimize(g, &Options::new(Target::named(target).unwrap())).unwrap();
    let bindings = random_bindings(g, 11);
    let want = eval(g, &bindings, Precision::F64).unwrap();
    let got = eval(&opt.graph, &bindings, Precision::F64).unwrap();
    for (w, o) in want.iter().zip(&got) {
        let err = w.max_abs_diff(o);
        assert!(err < 1e-9, "{}: optimized differs by {err}", g.name);
    }
    opt
}

fn attention_layers(opt: &attnc_passes::Optimized) -> Vec<&attnc_passes::LayerReport> {
    opt.report
        .layers
        .iter()
        .filter(|l| l.name.ends_with(".attn"))
        .collect()
}

/// At their published sizes the sparse-attention examples run block-sparse in every
/// layer (two layers of each, so both kinds of the Sparse Transformer's pattern),
/// skipping most blocks; shrunk so the interpreter can check them, they stay equal.
#[test]
fn sparse_examples_are_block_sparse_in_every_layer() {
    let cases: [(&str, &[&str], f64); 6] = [
        ("longformer", &[], 0.2),
        ("bigbird", &[], 0.2),
        ("sparse-transformer", &[], 0.2),
        ("streaming-llm", &[], 0.3),
        ("mistral-7b", &[], 0.45),
        ("llama3-8b", &[], 0.55),
    ];
    for (name, sets, max_density) in cases {
        let mut sets = sets.to_vec();
        sets.push("layers=2");
        let g = example(name, false, &sets);
        let opt = optimize(&g, &Options::new(Target::cpu())).unwrap();
        for l in attention_layers(&opt) {
            assert!(
                l.after.contains(&"block_sparse_attention".to_string()),
                "{name} {}: {:?}",
                l.name,
                l.after
            );
            let d = l.block_density.unwrap();
            assert!(d < max_density, "{name} {}: density {d}", l.name);
            assert!(l.flops_saved.unwrap() > 0);
        }
    }
    let shrunk: [(&str, &[&str]); 2] = [
        ("longformer", &["seq=256", "half_window=16"]),
        ("bigbird", &["seq=512", "block=16"]),
    ];
    for (name, sets) in shrunk {
        let g = example(name, true, sets);
        let opt = check(&g, "cpu");
        for l in attention_layers(&opt) {
            assert!(
                l.after.contains(&"block_sparse_attention".to_string()),
                "{name} {}: {:?}",
                l.name,
                l.after
            );
        }
    }
}

#[test]
fn every_example_fuses_its_attention_and_stays_equal() {
    for name in ["gpt2", "llama3-8b", "mistral-7b", "deepseek-v2-lite"] {
        let g = example(name, true, &[]);
        let opt = check(&g, "cpu");
        let layers = attention_layers(&opt);
        assert!(!layers.is_empty());
        for l in layers {
            assert!(
                l.after
                    .iter()
                    .any(|o| o == "attention" || o == "block_sparse_attention"),
                "{name} {}: {:?}",
                l.name,
                l.after
            );
            assert!(
                !l.after.contains(&"softmax".to_string()),
                "{name} {}: {:?}",
                l.name,
                l.after
            );
            assert!(
                l.rules.contains(&"attention-fuse".to_string()),
                "{name}: {:?}",
                l.rules
            );
        }
        eprintln!("{name}: {:?}", opt.report.fired);
    }
}

/// A mask that skips almost nothing keeps the dense kernel's tiles: the block-sparse
/// form is offered only at the dense block size, so it is never slower than dense.
#[test]
fn nearly_dense_masks_keep_the_dense_tiles() {
    for (mask, sparse) in [("k <= q + 900", false), ("k <= q + 800", true)] {
        let g = example(
            "gpt2",
            false,
            &["layers=1", &format!("attention.mask={mask}")],
        );
        let opt = optimize(&g, &Options::new(Target::cpu())).unwrap();
        let attn = attention_layers(&opt)[0];
        if sparse {
            assert_eq!(attn.block, Some([64, 64]), "{mask}: {:?}", attn.after);
            assert!(attn.block_density.unwrap() > 0.9);
        } else {
            assert!(
                attn.after.contains(&"attention".to_string()),
                "{mask}: {:?}",
                attn.after
            );
        }
    }
}

/// The linear, recurrent and hybrid examples: at their published sequence lengths
/// every linear mixer becomes `linear_attention` (causal ones chunkwise or
/// recurrent), the softmax layers of the hybrids fused attention; shrunk, the
/// optimized graph computes what the quadratic form does.
#[test]
fn linear_examples_become_linear_attention() {
    let linear: [(&str, bool); 7] = [
        ("linear-transformer", true),
        ("performer", true),
        ("retnet", true),
        ("gla", true),
        ("mamba2", true),
        ("jamba", true),
        ("minimax-01", true),
    ];
    for (name, causal) in linear {
        let g = example(name, false, &["layers=8"]);
        let opt = optimize(&g, &Options::new(Target::cpu())).unwrap();
        let mut linear_layers = 0;
        for l in attention_layers(&opt) {
            let is_linear = l.after.contains(&"linear_attention".to_string());
            let is_softmax = l
                .after
                .iter()
                .any(|o| o == "attention" || o == "block_sparse_attention");
            assert!(is_linear || is_softmax, "{name} {}: {:?}", l.name, l.after);
            linear_layers += is_linear as usize;
        }
        assert!(linear_layers >= 7, "{name}: {linear_layers} linear layers");
        let forms: Vec<String> = opt
            .graph
            .node_ids()
            .filter_map(|id| match &opt.graph.node(id).op {
                attnc_ir::Op::LinearAttention(l) => Some(format!("{:?}", l.form)),
                _ => None,
            })
            .collect();
        assert!(
            forms.iter().all(|f| causal != f.starts_with("Parallel")),
            "{name}: {forms:?}"
        );
        let g = example(name, true, &[]);
        check(&g, "cpu");
    }
    // Non-causal: Linformer stays softmax attention over k projected keys; axial
    // attention is fused attention over each axis.
    for name in ["linformer", "axial-transformer"] {
        let g = example(name, false, &["layers=2"]);
        let opt = optimize(&g, &Options::new(Target::cpu())).unwrap();
        for l in attention_layers(&opt) {
            assert!(
                l.after.contains(&"attention".to_string())
                    && !l.after.contains(&"softmax".to_string()),
                "{name} {}: {:?}",
                l.name,
                l.after
            );
        }
        let g = example(name, true, &[]);
        check(&g, "cpu");
    }
}
