//! The rule set as a whole, on graphs nobody wrote: random plain graphs (and random
//! variants of the shipped example specs) are saturated with every rule, the cheapest
//! program is extracted for the CPU and the H200, and it must compute what the
//! original computes, in the f64 interpreter, on seeded random inputs.

use attnc_ir::gen::{random_graph, ByteChoices, Choices};
use attnc_ir::interp::{eval, Precision};
use attnc_ir::spec::{load_spec, lower, SpecSource};
use attnc_ir::{random_bindings, Graph, Rng};
use attnc_passes::{optimize, Options, Target};
use proptest::prelude::*;
use std::path::PathBuf;

/// Optimizes `graph` for both cost models and compares the outputs; returns the
/// number of rule applications (so a test can tell the rules did something).
fn check_equivalent(graph: &Graph, seed: u64) -> Result<usize, TestCaseError> {
    let bindings = random_bindings(graph, seed);
    let want = eval(graph, &bindings, Precision::F64).expect("the original evaluates");
    let mut fired = 0;
    for target in [Target::cpu(), Target::named("h200").expect("h200")] {
        let mut options = Options::new(target);
        options.time_limit = std::time::Duration::from_secs(20);
        let opt = optimize(graph, &options).expect("optimizes");
        fired += opt.report.fired.iter().map(|(_, n)| n).sum::<usize>();
        let got =
            eval(&opt.graph, &bindings, Precision::F64).expect("the optimized graph evaluates");
        for (((name, _), w), g) in graph.outputs().iter().zip(&want).zip(&got) {
            let scale = w
                .data
                .iter()
                .filter(|v| v.is_finite())
                .fold(1.0f64, |m, v| m.max(v.abs()));
            let e = w.max_abs_diff(g);
            prop_assert!(
                e <= 1e-9 * scale,
                "{}: output `{name}` differs by {e:e} (scale {scale}) after {:?}\n{}",
                target_name(&options),
                opt.report.fired,
                attnc_ir::print(graph)
            );
        }
    }
    Ok(fired)
}

fn target_name(o: &Options) -> &str {
    &o.target.name
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Op soup: attention written out, projections, scalars, layouts, norms, MLPs.
    #[test]
    fn random_graphs_keep_their_values(bytes in prop::collection::vec(any::<u8>(), 0..160), seed in 0u64..4) {
        let graph = random_graph(&mut ByteChoices::new(&bytes)).expect("generated graphs build");
        check_equivalent(&graph, seed)?;
    }
}

/// The shipped examples, each file's path.
fn examples() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("examples/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    paths.sort();
    paths
}

/// Changes a spec variant may get; those that do not apply to a model are errors
/// of the spec, and the case is skipped.
const VARIATIONS: &[&str] = &[
    "seq=8",
    "seq=16",
    "seq=24",
    "batch=2",
    "layers=1",
    "attention.mask=\"k <= q && q - k < 4\"",
    "attention.mask=\"q - k < 5 && k - q < 5\"",
    "attention.mask=\"k <= q\"",
    "attention.kv_heads=1",
    "norm_placement=\"post\"",
    "ffn.kind=\"relu\"",
    "ffn.kind=\"swiglu\"",
];

/// A random variant of a random example: `--tiny` and up to three `--set`s.
fn spec_variant(c: &mut impl Choices, paths: &[PathBuf]) -> Option<(String, Graph)> {
    let path = &paths[c.choose(paths.len() as u32) as usize];
    let sets: Vec<String> = (0..c.choose(4))
        .map(|_| VARIATIONS[c.choose(VARIATIONS.len() as u32) as usize].to_string())
        .collect();
    let source = SpecSource {
        sets: sets.clone(),
        tiny: true,
    };
    let spec = load_spec(path, &source).ok()?;
    let graph = lower(&spec).ok()?;
    Some((format!("{} {sets:?}", path.display()), graph))
}

#[test]
fn random_variants_of_the_examples_keep_their_values() {
    let paths = examples();
    let mut rng = Rng::new(2026);
    let (mut checked, mut fired) = (0, 0);
    for case in 0..48 {
        let Some((name, graph)) = spec_variant(&mut rng, &paths) else {
            continue;
        };
        // Keep the interpreter's work small: the tiny models are, mostly.
        if graph.len() > 4000 {
            continue;
        }
        fired +=
            check_equivalent(&graph, case).unwrap_or_else(|e| panic!("case {case}, {name}: {e}"));
        checked += 1;
    }
    assert!(checked >= 24, "only {checked} variants built");
    assert!(fired > 0, "no rule fired on any variant");
}

#[test]
fn generated_graphs_give_the_rules_work() {
    // The generator is only useful if the rules find something in its graphs.
    let mut fired = 0;
    for seed in 0..24 {
        let graph = random_graph(&mut Rng::new(seed)).expect("builds");
        fired += check_equivalent(&graph, seed).expect("equivalent");
    }
    assert!(fired >= 24, "rules fired {fired} times on 24 graphs");
}
