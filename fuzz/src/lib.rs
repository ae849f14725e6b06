//! The bodies of attnc's fuzz targets. Each takes arbitrary bytes and must return
//! without panicking, whatever they hold; where a result can be checked against
//! something independent it is, and a disagreement panics (libFuzzer reports it as a
//! crash). The libFuzzer binaries (`fuzz/libfuzzer`) call these; the tests run them
//! over the committed seed corpus (`fuzz/corpus/TARGET`) and on mutations of it.
//!
//! - [`spec`]: spec text (TOML, JSON or a Hugging Face config) → parse → lower →
//!   verify, also `--tiny`; FLOP and byte counts; print → parse of the IR.
//! - [`ir_text`]: IR text → parse → verify → print → parse again, equal.
//! - [`mask`]: mask expression → parse → analysis; the block layout's claims (empty,
//!   full) hold at every element.
//! - [`pipeline`]: a random well-typed graph ([`attnc_ir::gen`]) → optimize under
//!   small e-graph limits → the result verifies, prints, parses, and computes what
//!   the original does.

use attnc_ir::gen::{random_graph, ByteChoices, Choices};
use attnc_ir::spec::{lower, parse_spec, Format, SpecSource};
use attnc_ir::{interp, BlockLayout, Dims, Graph, MaskExpr};
use std::time::Duration;

/// Bytes to text as an editor would read them (invalid UTF-8 is replaced).
fn text(data: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(data)
}

/// The printed form of `graph` parses back to the same graph.
fn round_trips(graph: &Graph) {
    let printed = attnc_ir::print(graph);
    let parsed = attnc_ir::parse(&printed)
        .unwrap_or_else(|e| panic!("printed IR does not parse: {e}\n{printed}"));
    assert_eq!(
        attnc_ir::print(&parsed),
        printed,
        "printing the parsed IR changes it"
    );
}

/// Spec text: parsed (JSON when it starts with `{`, TOML otherwise), lowered, and
/// lowered again at `--tiny` size.
pub fn spec(data: &[u8]) {
    let text = text(data);
    let json = text.trim_start().starts_with('{');
    let format = if json { Format::Json } else { Format::Toml };
    if json && attnc_ir::spec::hf::is_hf_config(&text) {
        if let Ok(imported) = attnc_ir::spec::hf::import_hf(&text, "fuzz") {
            if let Ok(graph) = lower(&imported.spec) {
                check_lowered(&graph);
            }
        }
        return;
    }
    for tiny in [false, true] {
        let source = SpecSource {
            sets: Vec::new(),
            tiny,
        };
        let Ok(spec) = parse_spec(&text, format, &source) else {
            return;
        };
        if let Ok(graph) = lower(&spec) {
            check_lowered(&graph);
        }
    }
}

fn check_lowered(graph: &Graph) {
    attnc_ir::verify(graph).unwrap_or_else(|e| panic!("lowering made an invalid graph: {e}"));
    // Counting FLOPs and bytes of absurd sizes must saturate, not overflow.
    let _ = attnc_ir::layer_stats(graph);
    // Printing and parsing is linear in the graph; skip the giant ones.
    if graph.len() <= 20_000 {
        round_trips(graph);
    }
}

/// IR text: what parses verifies, prints, and parses back the same.
pub fn ir_text(data: &[u8]) {
    let text = text(data);
    let Ok(graph) = attnc_ir::parse(&text) else {
        return;
    };
    attnc_ir::verify(&graph)
        .unwrap_or_else(|e| panic!("the parser accepted an invalid graph: {e}"));
    let _ = attnc_ir::layer_stats(&graph);
    round_trips(&graph);
}

/// A mask expression: the analysis of a parsed mask is checked element by element on
/// a small attention (sizes and dims drawn from the bytes after the text's end, `\0`).
pub fn mask(data: &[u8]) {
    let (expr_bytes, rest) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let text = text(expr_bytes);
    let Ok(expr) = MaskExpr::parse(&text) else {
        return;
    };
    // What prints parses back to the same expression.
    let printed = expr.to_string();
    let again = MaskExpr::parse(&printed)
        .unwrap_or_else(|e| panic!("`{printed}` (printed from `{text}`) does not parse: {e}"));
    assert_eq!(again, expr, "`{text}` printed as `{printed}`");
    let _ = expr.kind();

    let mut c = ByteChoices::new(rest);
    let mut dims = Dims::new();
    for name in expr.dim_names() {
        dims.bind(name, c.choose(40) as u64);
    }
    let sizes = [
        1 + c.choose(2) as usize,
        1 + c.choose(2) as usize,
        1 + c.choose(40) as usize,
        1 + c.choose(40) as usize,
    ];
    let block = [
        [4, 8, 16][c.choose(3) as usize],
        [4, 8, 16][c.choose(3) as usize],
    ];
    let Ok(layout) = BlockLayout::of(Some(&expr), &dims, sizes, block) else {
        return;
    };
    // Sound analysis: a block left out holds no kept element; a full block holds
    // only kept elements.
    let [b_n, h_n, sq, sk] = sizes;
    for b in 0..b_n {
        for h in 0..h_n {
            let g = layout.group(b, h);
            for qb in 0..layout.q_blocks {
                let listed: Vec<(usize, bool)> = layout.row(g, qb).collect();
                for kb in 0..layout.k_blocks {
                    let entry = listed.iter().find(|(k, _)| *k == kb);
                    for q in qb * block[0]..((qb + 1) * block[0]).min(sq) {
                        for k in kb * block[1]..((kb + 1) * block[1]).min(sk) {
                            let kept = expr.holds(b as i64, h as i64, q as i64, k as i64, &dims);
                            match entry {
                                None => assert!(
                                    !kept,
                                    "`{text}`: block ({qb}, {kb}) left out but ({b}, {h}, {q}, {k}) is kept"
                                ),
                                Some((_, false)) => assert!(
                                    kept,
                                    "`{text}`: block ({qb}, {kb}) full but ({b}, {h}, {q}, {k}) is masked"
                                ),
                                Some((_, true)) => {}
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A random well-typed graph, optimized with e-graph limits small enough for a
/// fuzzer's pace (the best program found so far is what comes out): it must verify,
/// round-trip through text, and compute what the original does in the interpreter.
pub fn pipeline(data: &[u8]) {
    let mut c = ByteChoices::new(data);
    let graph = random_graph(&mut c).unwrap_or_else(|e| panic!("the generator failed: {e}"));
    let target = match c.choose(2) {
        0 => attnc_passes::Target::cpu(),
        _ => attnc_passes::Target::named("h200").expect("the h200 target"),
    };
    let mut options = attnc_passes::Options::new(target);
    options.node_limit = [200, 2_000, 20_000][c.choose(3) as usize];
    options.iter_limit = 1 + c.choose(8) as usize;
    options.time_limit = Duration::from_secs(2);
    let optimized = attnc_passes::optimize(&graph, &options)
        .unwrap_or_else(|e| panic!("optimize failed: {e}\n{}", attnc_ir::print(&graph)));
    attnc_ir::verify(&optimized.graph).unwrap_or_else(|e| panic!("optimized graph invalid: {e}"));
    round_trips(&optimized.graph);
    let bindings = attnc_ir::random_bindings(&graph, c.choose(4) as u64);
    let want = interp::eval(&graph, &bindings, interp::Precision::F64).expect("original evaluates");
    let got = interp::eval(&optimized.graph, &bindings, interp::Precision::F64)
        .expect("optimized graph evaluates");
    for (w, g) in want.iter().zip(&got) {
        let scale = w
            .data
            .iter()
            .filter(|v| v.is_finite())
            .fold(1.0f64, |m, v| m.max(v.abs()));
        let e = w.max_abs_diff(g);
        assert!(
            e <= 1e-9 * scale,
            "optimized graph differs by {e:e} (rules {:?})\n{}",
            optimized.report.fired,
            attnc_ir::print(&graph)
        );
    }
}
