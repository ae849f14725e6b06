//! Translation validation (`attnc compile --verify`): the optimized graph, and the
//! compiled code, compute what the original does layer by layer, and a rule that
//! changes a model's values is caught, with the first diverging layer named.

mod common;

use attnc::passes::{self, Attn, Options, Target, TypeAnalysis};
use attnc::VerifyOptions;
use attnc_ir::spec::SpecSource;
use common::{fails_with, stderr, succeeds, temp_file};
use egg::{Pattern, Rewrite};
use std::path::Path;

/// A command line clap refuses: exit code 2 and the flag named.
fn usage_error(args: &[&str], flag: &str) {
    let o = common::attnc(args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    assert!(
        err.contains(flag) && !err.contains("panicked"),
        "{args:?}: {err}"
    );
}

fn tiny(model: &str) -> attnc_ir::Graph {
    let source = SpecSource {
        sets: Vec::new(),
        tiny: true,
    };
    attnc::load(Path::new(model), &source).expect("the example loads")
}

fn options(compiled: bool) -> VerifyOptions {
    VerifyOptions {
        seed: 3,
        tol: None,
        compiled,
        threads: Some(1),
    }
}

/// A rule no one should write: it drops GPT-2's activation, `gelu_tanh(x) == x`. Both
/// sides have the same type, so the e-graph accepts it, and only values show it wrong.
fn broken_rule() -> passes::rules::Rule {
    let lhs: Pattern<Attn> = "(unary gelu_tanh ?x)".parse().unwrap();
    let rhs: Pattern<Attn> = "?x".parse().unwrap();
    let rewrite: Rewrite<Attn, TypeAnalysis> = Rewrite::new("broken-drop-gelu", lhs, rhs).unwrap();
    passes::rules::Rule {
        name: "broken-drop-gelu",
        family: passes::rules::Family::Algebra,
        identity: "gelu_tanh(x) == x (false)",
        rewrite,
    }
}

#[test]
fn the_shipped_rules_verify_on_gpt2_with_compiled_code() {
    let graph = tiny("examples/gpt2.toml");
    let optimized = passes::optimize(&graph, &Options::new(Target::cpu())).unwrap();
    assert!(!optimized.report.fired.is_empty(), "rules fire on GPT-2");
    let report = attnc::verify(&graph, &optimized, &options(true)).unwrap();
    assert!(report.passed(), "{:?}", report.divergence);
    assert!(
        report.layers.len() >= 4,
        "{} layers checked",
        report.layers.len()
    );
    assert!(
        report.compiled_max_abs_err.is_some(),
        "the compiled code is compared"
    );
    assert!(report.layers.iter().all(|l| l.values > 0));
}

#[test]
fn a_broken_rule_is_caught_at_the_first_layer_it_changes() {
    let graph = tiny("examples/gpt2.toml");
    let mut rules = passes::rules::all_rules();
    rules.push(broken_rule());
    let optimized =
        passes::optimize_with_rules(&graph, &Options::new(Target::cpu()), &rules).unwrap();
    let gelus = |g: &attnc_ir::Graph| attnc_ir::print(g).matches("gelu_tanh").count();
    assert!(gelus(&graph) > 0);
    assert_eq!(gelus(&optimized.graph), 0, "the broken rule fires");
    let report = attnc::verify(&graph, &optimized, &options(false)).unwrap();
    assert!(!report.passed());
    let divergence = report.divergence.expect("the broken rule is caught");
    assert_eq!(divergence.stage, "optimized");
    // The first layer with an activation is the first block's feed-forward network.
    assert_eq!(divergence.layer, "layers.0.ffn", "{divergence:?}");
    assert!(divergence.max_abs_err > divergence.bound);
}

#[test]
fn a_broken_rule_is_caught_on_every_seed() {
    let graph = tiny("examples/gpt2.toml");
    let mut rules = passes::rules::all_rules();
    rules.push(broken_rule());
    let optimized =
        passes::optimize_with_rules(&graph, &Options::new(Target::cpu()), &rules).unwrap();
    for seed in 0..4 {
        let report = attnc::verify(
            &graph,
            &optimized,
            &VerifyOptions {
                seed,
                ..options(false)
            },
        )
        .unwrap();
        assert!(
            report.divergence.is_some(),
            "seed {seed} misses the broken rule"
        );
    }
}

#[test]
fn verify_passes_on_every_example() {
    let mut checked = 0;
    for entry in std::fs::read_dir("examples").unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let graph = tiny(path.to_str().unwrap());
        let optimized = passes::optimize(&graph, &Options::new(Target::cpu())).unwrap();
        let report = attnc::verify(&graph, &optimized, &options(false)).unwrap();
        assert!(
            report.passed(),
            "{}: {:?}",
            path.display(),
            report.divergence
        );
        checked += 1;
    }
    assert!(checked >= 20);
}

#[test]
fn compile_verify_from_the_command_line() {
    let o = common::attnc(&[
        "compile",
        "examples/gpt2.toml",
        "--verify",
        "--emit",
        "opt-ir",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("verify:") && err.contains("max_abs_err"),
        "{err}"
    );
    assert!(
        common::stdout(&o).contains("attention"),
        "the optimized IR is printed"
    );
    // Seed and tolerance are --verify's own flags.
    succeeds(&[
        "compile",
        "examples/llama3-8b.toml",
        "--verify",
        "--seed",
        "7",
        "--tol",
        "1e-6",
    ]);
    usage_error(
        &["compile", "examples/gpt2.toml", "--seed", "7"],
        "--verify",
    );
    fails_with(
        &["compile", "examples/gpt2.toml", "--verify", "--tol=-1"],
        &["tol"],
    );
}

#[test]
fn compile_verify_of_ir_text() {
    let ir = succeeds(&["compile", "examples/mamba2.toml", "--tiny", "--emit", "ir"]);
    let file = temp_file("verify-mamba2.air", &ir);
    let o = common::attnc(&["compile", file.to_str().unwrap(), "--verify"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("verify:"));
}

#[test]
fn e_graph_limits_keep_the_results_correct() {
    // Tiny node and time limits stop saturation early; what comes out is the best
    // program found so far, and it still computes what the original does.
    for limit in [["--node-limit", "50"], ["--time-limit", "0"]] {
        let mut args = vec!["run", "examples/gpt2.toml", "--tiny", "--check", "--json"];
        args.extend(limit);
        let out = succeeds(&args);
        let r: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert!(r["max_abs_err"].as_f64().unwrap() < 1e-4, "{limit:?}: {r}");
    }
    let out = succeeds(&[
        "inspect",
        "examples/gpt2.toml",
        "--tiny",
        "--json",
        "--node-limit",
        "50",
    ]);
    assert!(out.contains("limit"), "inspect reports the stop: {out}");
    usage_error(
        &["compile", "examples/gpt2.toml", "--node-limit", "0"],
        "--node-limit",
    );
    fails_with(
        &["compile", "examples/gpt2.toml", "--time-limit=-1"],
        &["--time-limit"],
    );
    fails_with(
        &["compile", "examples/gpt2.toml", "--time-limit", "1e300"],
        &["--time-limit"],
    );
}
