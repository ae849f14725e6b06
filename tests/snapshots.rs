//! One snapshot per pass per example model. Review changes with `cargo insta review`.
//!
//! The frontend's output (`--emit ir`) is recorded at full size: it is what users
//! read, and every later pass is a diff against it. Each optimizer pass (rule family)
//! is recorded alone, as `--emit opt-ir --rules FAMILY` prints it (SSA text, the
//! rules that fired, the estimated cost on the cpu target), at full width with two
//! layers: every layer makes the same decision, so two show it. The `sparse` family
//! works on fused attention, so its snapshot is `--rules fusion,sparse`.

use attnc::{Emit, OptimizeOptions};
use attnc_ir::spec::SpecSource;
use std::path::Path;

fn load(example: &str, sets: &[&str]) -> attnc_ir::Graph {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(format!("{example}.toml"));
    let source = SpecSource {
        sets: sets.iter().map(|s| s.to_string()).collect(),
        tiny: false,
    };
    attnc::load(&path, &source).unwrap()
}

fn ir_of(example: &str) -> String {
    attnc::compile(&load(example, &[]), Emit::Ir, &OptimizeOptions::default()).unwrap()
}

fn pass(example: &str, family: &str) -> String {
    pass_at(example, family, &["layers=2"])
}

fn pass_at(example: &str, family: &str, sets: &[&str]) -> String {
    let rules = match family {
        "sparse" => "fusion,sparse",
        f => f,
    };
    let options = OptimizeOptions {
        rules: attnc::rules(rules).unwrap(),
        ..OptimizeOptions::default()
    };
    attnc::compile(&load(example, sets), Emit::OptIr, &options).unwrap()
}

#[test]
fn gpt2_ir() {
    insta::assert_snapshot!(ir_of("gpt2"));
}

#[test]
fn llama3_8b_ir() {
    insta::assert_snapshot!(ir_of("llama3-8b"));
}

#[test]
fn mistral_7b_ir() {
    insta::assert_snapshot!(ir_of("mistral-7b"));
}

#[test]
fn deepseek_v2_lite_ir() {
    insta::assert_snapshot!(ir_of("deepseek-v2-lite"));
}

#[test]
fn gpt2_algebra() {
    insta::assert_snapshot!(pass("gpt2", "algebra"));
}

#[test]
fn gpt2_fusion() {
    insta::assert_snapshot!(pass("gpt2", "fusion"));
}

#[test]
fn llama3_8b_algebra() {
    insta::assert_snapshot!(pass("llama3-8b", "algebra"));
}

#[test]
fn llama3_8b_fusion() {
    insta::assert_snapshot!(pass("llama3-8b", "fusion"));
}

#[test]
fn mistral_7b_algebra() {
    insta::assert_snapshot!(pass("mistral-7b", "algebra"));
}

#[test]
fn mistral_7b_fusion() {
    insta::assert_snapshot!(pass("mistral-7b", "fusion"));
}

#[test]
fn deepseek_v2_lite_algebra() {
    insta::assert_snapshot!(pass("deepseek-v2-lite", "algebra"));
}

#[test]
fn deepseek_v2_lite_fusion() {
    insta::assert_snapshot!(pass("deepseek-v2-lite", "fusion"));
}

#[test]
fn gpt2_sparse() {
    insta::assert_snapshot!(pass("gpt2", "sparse"));
}

#[test]
fn llama3_8b_sparse() {
    insta::assert_snapshot!(pass("llama3-8b", "sparse"));
}

#[test]
fn mistral_7b_sparse() {
    insta::assert_snapshot!(pass("mistral-7b", "sparse"));
}

/// Its first layer dense, the second a mixture: both kinds of FFN.
#[test]
fn deepseek_v2_lite_moe() {
    insta::assert_snapshot!(pass("deepseek-v2-lite", "moe"));
}

#[test]
fn deepseek_v2_lite_sparse() {
    insta::assert_snapshot!(pass("deepseek-v2-lite", "sparse"));
}

#[test]
fn longformer_ir() {
    insta::assert_snapshot!(ir_of("longformer"));
}

#[test]
fn longformer_algebra() {
    insta::assert_snapshot!(pass("longformer", "algebra"));
}

#[test]
fn longformer_fusion() {
    insta::assert_snapshot!(pass("longformer", "fusion"));
}

#[test]
fn longformer_sparse() {
    insta::assert_snapshot!(pass("longformer", "sparse"));
}

#[test]
fn bigbird_ir() {
    insta::assert_snapshot!(ir_of("bigbird"));
}

#[test]
fn bigbird_algebra() {
    insta::assert_snapshot!(pass("bigbird", "algebra"));
}

#[test]
fn bigbird_fusion() {
    insta::assert_snapshot!(pass("bigbird", "fusion"));
}

#[test]
fn bigbird_sparse() {
    insta::assert_snapshot!(pass("bigbird", "sparse"));
}

#[test]
fn sparse_transformer_ir() {
    insta::assert_snapshot!(ir_of("sparse-transformer"));
}

#[test]
fn sparse_transformer_algebra() {
    insta::assert_snapshot!(pass("sparse-transformer", "algebra"));
}

#[test]
fn sparse_transformer_fusion() {
    insta::assert_snapshot!(pass("sparse-transformer", "fusion"));
}

#[test]
fn sparse_transformer_sparse() {
    insta::assert_snapshot!(pass("sparse-transformer", "sparse"));
}

#[test]
fn streaming_llm_ir() {
    insta::assert_snapshot!(ir_of("streaming-llm"));
}

#[test]
fn streaming_llm_algebra() {
    insta::assert_snapshot!(pass("streaming-llm", "algebra"));
}

#[test]
fn streaming_llm_fusion() {
    insta::assert_snapshot!(pass("streaming-llm", "fusion"));
}

#[test]
fn streaming_llm_sparse() {
    insta::assert_snapshot!(pass("streaming-llm", "sparse"));
}

#[test]
fn moba_ir() {
    insta::assert_snapshot!(ir_of("moba"));
}

#[test]
fn moba_algebra() {
    insta::assert_snapshot!(pass("moba", "algebra"));
}

#[test]
fn moba_fusion() {
    insta::assert_snapshot!(pass("moba", "fusion"));
}

#[test]
fn moba_sparse() {
    insta::assert_snapshot!(pass("moba", "sparse"));
}

#[test]
fn reformer_ir() {
    insta::assert_snapshot!(ir_of("reformer"));
}

#[test]
fn reformer_algebra() {
    insta::assert_snapshot!(pass("reformer", "algebra"));
}

#[test]
fn reformer_fusion() {
    insta::assert_snapshot!(pass("reformer", "fusion"));
}

#[test]
fn reformer_sparse() {
    insta::assert_snapshot!(pass("reformer", "sparse"));
}

#[test]
fn routing_transformer_ir() {
    insta::assert_snapshot!(ir_of("routing-transformer"));
}

#[test]
fn routing_transformer_algebra() {
    insta::assert_snapshot!(pass("routing-transformer", "algebra"));
}

#[test]
fn routing_transformer_fusion() {
    insta::assert_snapshot!(pass("routing-transformer", "fusion"));
}

#[test]
fn routing_transformer_sparse() {
    insta::assert_snapshot!(pass("routing-transformer", "sparse"));
}

/// The linear, recurrent, hybrid, axial, mixture-of-experts and diffusion examples:
/// the frontend's form and every pass, and the families that are theirs alone
/// (`linear`, `moe`). Hybrids show one whole period of their layer pattern (8
/// layers), so every layer kind appears; Switch two layers (dense, sparse).
macro_rules! example_snapshots {
    ($($module:ident => $example:literal, $layers:literal, [$($family:ident),*];)*) => {$(
        mod $module {
            use super::*;
            const SETS: &[&str] = &[concat!("layers=", $layers)];

            #[test]
            fn ir() {
                let g = load($example, SETS);
                let text = attnc::compile(&g, Emit::Ir, &OptimizeOptions::default()).unwrap();
                insta::assert_snapshot!(text);
            }

            #[test]
            fn algebra() {
                insta::assert_snapshot!(pass_at($example, "algebra", SETS));
            }

            #[test]
            fn fusion() {
                insta::assert_snapshot!(pass_at($example, "fusion", SETS));
            }

            #[test]
            fn sparse() {
                insta::assert_snapshot!(pass_at($example, "sparse", SETS));
            }

            $(
                #[test]
                fn $family() {
                    insta::assert_snapshot!(pass_at($example, stringify!($family), SETS));
                }
            )*
        }
    )*};
}

example_snapshots! {
    linear_transformer => "linear-transformer", 2, [linear];
    performer => "performer", 2, [linear];
    linformer => "linformer", 2, [linear];
    retnet => "retnet", 2, [linear];
    gla => "gla", 2, [linear];
    mamba2 => "mamba2", 2, [linear];
    jamba => "jamba", 8, [linear, moe];
    minimax_01 => "minimax-01", 8, [linear, moe];
    samba => "samba", 2, [linear];
    axial_transformer => "axial-transformer", 2, [linear];
    mixtral_8x7b => "mixtral-8x7b", 2, [moe];
    switch_transformer => "switch-transformer", 2, [moe];
    qwen2_moe => "qwen2-moe", 2, [moe];
    llada_8b => "llada-8b", 2, [];
    block_diffusion => "block-diffusion", 2, [];
    vit_b16 => "vit-b16", 2, [];
}

/// The GPU launch plan of every example (`--target gpu`, sm_90): kernel signatures,
/// buffers, launches and run-time checks, not the PTX (the PTX tests assemble that).
/// Two layers at full size (one period of a hybrid's pattern), optimized with the
/// H200's cost model as `compile --target gpu` does.
macro_rules! gpu_snapshots {
    ($($test:ident => $example:literal, $layers:literal;)*) => {
        mod gpu_plan {
            use super::*;
            $(
                #[test]
                fn $test() {
                    let g = load($example, &[concat!("layers=", $layers)]);
                    let options = OptimizeOptions {
                        target: attnc::target("gpu").unwrap(),
                        ..OptimizeOptions::default()
                    };
                    insta::assert_snapshot!(attnc::gpu_plan(&g, &options).unwrap());
                }
            )*
        }
    };
}

gpu_snapshots! {
    axial_transformer => "axial-transformer", 2;
    bigbird => "bigbird", 2;
    block_diffusion => "block-diffusion", 2;
    deepseek_v2_lite => "deepseek-v2-lite", 2;
    gla => "gla", 2;
    gpt2 => "gpt2", 2;
    jamba => "jamba", 8;
    linear_transformer => "linear-transformer", 2;
    linformer => "linformer", 2;
    llada_8b => "llada-8b", 2;
    llama3_8b => "llama3-8b", 2;
    longformer => "longformer", 2;
    mamba2 => "mamba2", 2;
    minimax_01 => "minimax-01", 8;
    mistral_7b => "mistral-7b", 2;
    mixtral_8x7b => "mixtral-8x7b", 2;
    moba => "moba", 2;
    performer => "performer", 2;
    qwen2_moe => "qwen2-moe", 2;
    reformer => "reformer", 2;
    retnet => "retnet", 2;
    routing_transformer => "routing-transformer", 2;
    samba => "samba", 2;
    sparse_transformer => "sparse-transformer", 2;
    streaming_llm => "streaming-llm", 2;
    switch_transformer => "switch-transformer", 2;
    vit_b16 => "vit-b16", 2;
}
