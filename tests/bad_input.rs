//! Bad input of every kind given to the `attnc` binary: each must end in one clear
//! `error:` line naming the file (and line/column or layer where there is one) and
//! exit code 1 — never a panic, an abort, a crash in compiled code or a hang.
//!
//! Every test here uses `--tiny` specs or small hand-written `.air` graphs, so each
//! runs in well under two seconds.

mod common;

use common::{attnc, fails_with, path_str, stderr, succeeds, temp_file};
use std::path::PathBuf;

fn gpt2() -> String {
    std::fs::read_to_string("examples/gpt2.toml").unwrap()
}

/// `examples/gpt2.toml` with `from` replaced by `to` (which must occur).
fn gpt2_with(from: &str, to: &str) -> String {
    let text = std::fs::read_to_string("examples/gpt2.toml").unwrap();
    assert!(text.contains(from), "gpt2.toml has no `{from}`");
    text.replace(from, to)
}

fn llama_with(from: &str, to: &str) -> String {
    let text = std::fs::read_to_string("examples/llama3-8b.toml").unwrap();
    assert!(text.contains(from), "llama3-8b.toml has no `{from}`");
    text.replace(from, to)
}

/// A small `.air` graph: `graph t`, `dims n = 4, m = 3`, then `body`.
fn air(name: &str, body: &str) -> PathBuf {
    temp_file(name, &format!("graph t\ndims n = 4, m = 3\n{body}\n"))
}

// ---------------------------------------------------------------------------------
// Specs: wrong types and values, with file:line:column
// ---------------------------------------------------------------------------------

#[test]
fn wrong_field_types_name_file_line_and_column() {
    for (i, bad) in [
        "\"big\"",
        "-5",
        "5.5",
        "1e30",
        "9223372036854775808",
        "18446744073709551616",
        "true",
        "[]",
    ]
    .iter()
    .enumerate()
    {
        let p = temp_file(
            &format!("type{i}.toml"),
            &gpt2_with("vocab = 50257", &format!("vocab = {bad}")),
        );
        // `vocab` is on line 4 of gpt2.toml, its value at column 9.
        fails_with(
            &["compile", path_str(&p), "--tiny"],
            &[&format!("type{i}.toml:4:9:")],
        );
    }
    let p = temp_file(
        "arch.toml",
        &gpt2_with("arch = \"decoder\"", "arch = \"encdec\""),
    );
    fails_with(
        &["compile", path_str(&p)],
        &["arch.toml:3:", "did you mean `encoder`?"],
    );
    let p = temp_file(
        "bool.toml",
        &gpt2_with("qkv_bias = true", "qkv_bias = \"yes\""),
    );
    fails_with(&["compile", path_str(&p)], &["bool.toml:", "boolean"]);
    let p = temp_file("ffnkind.toml", &gpt2_with("\"gelu_tanh\"", "\"swish\""));
    fails_with(&["compile", path_str(&p)], &["ffnkind.toml:", "swish"]);
}

#[test]
fn missing_required_fields_are_named() {
    for (field, from, to) in [
        ("`name`", "name = \"gpt2\"\n", ""),
        ("`vocab`", "vocab = 50257\n", ""),
        ("`dims.seq`", "seq = 1024\n", ""),
        ("`ffn.kind`", "kind = \"gelu_tanh\"\n", ""),
        ("`ffn.hidden`", "hidden = 3072\n", ""),
        ("max_positions", "max_positions = 1024\n", ""),
    ] {
        let p = temp_file("missing.toml", &gpt2_with(from, to));
        fails_with(&["compile", path_str(&p)], &["missing.toml", field]);
    }
}

#[test]
fn bad_values_name_the_field_and_layer() {
    let cases: &[(&str, &[&str])] = &[
        ("heads=0", &["layers.0", "attention.heads"]),
        ("head_dim=0", &["layers.0", "attention.head_dim"]),
        ("kv_heads=0", &["layers.0", "attention.kv_heads"]),
        ("kv_heads=24", &["layers.0", "kv_heads"]),
        ("seq=0", &["`seq` must be at least 1"]),
        ("vocab=0", &["`vocab` must be at least 1"]),
        ("layers=5000", &["layers"]),
        ("norm_eps=0", &["norm_eps"]),
        ("norm_eps=-1", &["norm_eps"]),
        ("score_modifier=softcap:0", &["layers.0", "softcap"]),
        ("score_modifier=softcap:-inf", &["layers.0", "softcap"]),
        ("score_modifier=tanh", &["layers.0", "score_modifier"]),
        ("dtype=i32", &["dtype"]),
        ("dtype=f64", &["dtype"]),
        ("dtype=", &["dtype"]),
        ("kind=moe", &["layers.0", "moe"]),
        ("seq=2048", &["max_positions"]),
    ];
    for (set, needles) in cases {
        let mut all = vec!["examples/gpt2.toml"];
        all.extend(needles.iter());
        fails_with(&["compile", "examples/gpt2.toml", "--set", set], &all);
    }
}

#[test]
fn heads_not_dividing_d_model_and_odd_rope_head_dim_are_errors() {
    let p = temp_file("nohd.toml", &gpt2_with("head_dim = 64\n", ""));
    fails_with(
        &["compile", path_str(&p), "--set", "heads=5"],
        &["nohd.toml", "layers.0", "not divisible", "head_dim"],
    );
    let p = temp_file("rope7.toml", &llama_with("head_dim = 128", "head_dim = 7"));
    fails_with(
        &["compile", path_str(&p), "--tiny"],
        &["rope7.toml", "layers.0", "RoPE", "head_dim"],
    );
}

#[test]
fn pattern_and_override_errors_name_the_kind_and_layer() {
    let p = temp_file(
        "pattern.toml",
        &format!("pattern = [\"local\", \"global\"]\n{}", gpt2()),
    );
    fails_with(
        &["compile", path_str(&p)],
        &["pattern.toml", "`local`", "[kinds.local]"],
    );
    let text = format!("{}\n[[override]]\nlayers = [0, 12]\n", gpt2());
    let p = temp_file("override.toml", &text);
    fails_with(
        &["compile", path_str(&p)],
        &["override.toml", "layer 12", "12 layers"],
    );
    let text = format!(
        "{}\n[[override]]\nlayers = [1]\nattention = {{ heads = 0 }}\n",
        gpt2()
    );
    let p = temp_file("override0.toml", &text);
    fails_with(
        &["compile", path_str(&p)],
        &["override0.toml", "layers.1", "attention.heads"],
    );
}

#[test]
fn bad_masks_name_the_layer_and_column() {
    let cases: &[(&str, &[&str])] = &[
        ("k <= q & q < 4", &["layers.0", "column 8", "&&"]),
        ("k <= q &&", &["layers.0", "column"]),
        ("k + q", &["layers.0", "condition"]),
        (
            "k <= q && q - k < window",
            &["layers.0", "`window`", "[dims]"],
        ),
        ("k ≤ q", &["layers.0", "unexpected character"]),
        ("9223372036854775808 > k", &["layers.0", "too large"]),
        ("", &["layers.0", "mask"]),
    ];
    for (mask, needles) in cases {
        let mut all = vec!["examples/gpt2.toml"];
        all.extend(needles.iter());
        fails_with(
            &[
                "compile",
                "examples/gpt2.toml",
                "--tiny",
                "--set",
                &format!("mask={mask}"),
            ],
            &all,
        );
    }
    // Deep nesting is bounded by the parser.
    let deep = format!("{}k <= q{}", "(".repeat(500), ")".repeat(500));
    fails_with(
        &[
            "compile",
            "examples/gpt2.toml",
            "--tiny",
            "--set",
            &format!("mask={deep}"),
        ],
        &["layers.0", "deeper"],
    );
}

#[test]
fn odd_but_valid_masks_compile() {
    for mask in [
        "q / (k - k) == 0 || k <= q",
        "q % 0 == 0 && k <= q",
        "(0 - 9223372036854775807 - 1) / (0 - 1) == 0 || k <= q",
        "k * 9223372036854775807 * 9223372036854775807 <= q * 3",
        "h == 0 || k <= q",
        "b == 0 && k <= q",
        "none",
    ] {
        succeeds(&[
            "compile",
            "examples/gpt2.toml",
            "--tiny",
            "--set",
            &format!("mask={mask}"),
        ]);
    }
}

// ---------------------------------------------------------------------------------
// `--set`
// ---------------------------------------------------------------------------------

#[test]
fn set_edge_cases_are_clear_errors() {
    let cases: &[(&str, &[&str])] = &[
        ("", &["expected KEY=VALUE"]),
        ("seq", &["expected KEY=VALUE"]),
        ("=3", &["empty key"]),
        ("foo=1", &["unknown key `foo`"]),
        ("hedas=2", &["did you mean `heads`?"]),
        ("layers=-1", &["layers=-1", "u64"]),
        ("layers=1.5", &["layers=1.5"]),
        ("layers=1e30", &["layers=1e30"]),
        ("layers=18446744073709551616", &["layers="]),
        ("attention=3", &["attention=3"]),
        ("pattern=\"global\"", &["pattern"]),
        ("mask=false", &["mask=false"]),
        ("override.5.layers=[1]", &["override.5.layers"]),
        ("name.x=1", &["`x` is inside a value"]),
    ];
    for (set, needles) in cases {
        let mut all = vec!["examples/gpt2.toml"];
        all.extend(needles.iter());
        fails_with(
            &["compile", "examples/gpt2.toml", "--tiny", "--set", set],
            &all,
        );
    }
    // Adding a new dimension is allowed.
    succeeds(&[
        "compile",
        "examples/gpt2.toml",
        "--tiny",
        "--set",
        "dims.window=4",
    ]);
}

#[test]
fn set_and_tiny_on_ir_text_are_rejected() {
    let p = air("plain.air", "%0 = input \"x\" : [n, m] f32\noutput o = %0");
    fails_with(
        &["compile", path_str(&p), "--set", "seq=4"],
        &["plain.air", "--set"],
    );
    fails_with(
        &["compile", path_str(&p), "--tiny"],
        &["plain.air", "--tiny"],
    );
}

// ---------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------

#[test]
fn unreadable_empty_and_garbage_files() {
    fails_with(
        &["compile", "/nonexistent/dir/x.toml"],
        &["/nonexistent/dir/x.toml", "cannot read"],
    );
    fails_with(&["compile", "nofile.air"], &["nofile.air", "cannot read"]);
    let dir = std::env::temp_dir().join(format!("attnc-bad-input-dir-{}.toml", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    fails_with(
        &["compile", dir.to_str().unwrap()],
        &["cannot read", "directory"],
    );
    let p = temp_file("empty.toml", "");
    fails_with(&["compile", path_str(&p)], &["empty.toml:1:1:", "`name`"]);
    let p = temp_file("empty.json", "");
    fails_with(&["compile", path_str(&p)], &["empty.json:1:1:"]);
    let p = temp_file("empty.air", "");
    fails_with(&["compile", path_str(&p)], &["empty.air:1:1:", "graph"]);
    let garbage: Vec<u8> = (0..2000u32)
        .map(|i| (i * 7919 % 251) as u8 | 0x80)
        .collect();
    for name in ["garbage.toml", "garbage.json", "garbage.air"] {
        let p = temp_file(name, "");
        std::fs::write(&p, &garbage).unwrap();
        fails_with(&["compile", path_str(&p)], &[name, "UTF-8"]);
    }
    // A byte-order mark is skipped, so what follows it decides.
    let p = temp_file(
        "bom.air",
        "\u{feff}graph t\n%0 = input \"x\" : [2] f32\noutput y = %0\n",
    );
    succeeds(&["compile", path_str(&p)]);
    let p = temp_file("bom-bad.air", "\u{feff}graf t\n");
    fails_with(&["compile", path_str(&p)], &["bom-bad.air:1:1:"]);
}

#[test]
fn deeply_nested_spec_values_are_errors() {
    let deep = format!("name = {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
    let p = temp_file("deep.toml", &deep);
    fails_with(&["compile", path_str(&p)], &["deep.toml:1:"]);
    let deep = format!(
        "{{\"name\": {}{}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let p = temp_file("deep.json", &deep);
    fails_with(&["compile", path_str(&p)], &["deep.json:1:"]);
}

#[test]
fn unwritable_output_is_an_error() {
    for out in ["/nonexistent/dir/out.air", "/proc/version"] {
        fails_with(
            &["compile", "examples/gpt2.toml", "--tiny", "-o", out],
            &[out, "cannot write"],
        );
    }
    let dir = std::env::temp_dir();
    fails_with(
        &[
            "compile",
            "examples/gpt2.toml",
            "--tiny",
            "-o",
            dir.to_str().unwrap(),
        ],
        &["cannot write"],
    );
}

#[test]
fn json_specs_name_line_and_column() {
    let p = temp_file("bad.json", "{\"name\": \"x\",\n \"vocab\": 97.0}");
    fails_with(&["compile", path_str(&p)], &["bad.json:2:"]);
    let spec = r#"{"name": "j", "vocab": 5, "d_model": 8, "layers": 1, "dims": {"batch": 1, "seq": 4}, "attention": {"heads": 2}, "ffn": {"kind": "relu", "hidden": 8}}"#;
    let p = temp_file("ok.json", spec);
    succeeds(&["run", path_str(&p), "--check"]);
    let p = temp_file("trail.json", &format!("{spec} xyz"));
    fails_with(&["compile", path_str(&p)], &["trail.json:1:", "trailing"]);
    let p = temp_file("nan.json", "{\"name\": \"x\", \"norm_eps\": NaN}");
    fails_with(&["compile", path_str(&p)], &["nan.json:1:"]);
    let p = temp_file("dup.json", "{\"name\": \"x\", \"name\": \"y\"}");
    fails_with(&["compile", path_str(&p)], &["dup.json:1:", "duplicate"]);
}

// ---------------------------------------------------------------------------------
// IR text
// ---------------------------------------------------------------------------------

#[test]
fn malformed_ir_names_line_and_column() {
    let cases: &[(&str, &str, &[&str])] = &[
        ("trunc.air", "%0 = input \"x\" : [n, m", &[":3:23:", "`]`"]),
        (
            "trunc2.air",
            "%0 = input \"x\" : [n, m] f32\n%1 = add %0,",
            &[":4:13:"],
        ),
        (
            "unknown.air",
            "%0 = input \"x\" : [n, m] f32\n%1 = frobnicate %0 : [n, m] f32",
            &[":4:6:", "unknown op `frobnicate`"],
        ),
        (
            "arity.air",
            "%0 = input \"x\" : [n, m] f32\n%1 = add %0 : [n, m] f32",
            &[":4:6:", "2 operands"],
        ),
        (
            "arity3.air",
            "%0 = input \"x\" : [n, m] f32\n%1 = neg %0, %0, %0 : [n, m] f32",
            &[":4:6:", "1 operand"],
        ),
        (
            "ubd.air",
            "%1 = add %0, %0 : [n, m] f32\n%0 = input \"x\" : [n, m] f32",
            &[":3:10:", "`%0` is not defined"],
        ),
        (
            "huge.air",
            "%0 = input \"x\" : [18446744073709551615, 18446744073709551615] f32",
            &[":3:6:", "2^48"],
        ),
        (
            "declared.air",
            "%0 = input \"x\" : [n, m] f32\n%1 = neg %0 : [n, m] f16",
            &[":4:15:", "declared type"],
        ),
        (
            "dtypes.air",
            "%0 = input \"x\" : [n, m] f32\n%1 = input \"y\" : [n, m] i64\n%2 = add %0, %1 : [n, m] f32",
            &[":5:6:", "different dtypes"],
        ),
        (
            "axis.air",
            "%0 = input \"x\" : [n, m] f32\n%1 = softmax %0 {axis = 5} : [n, m] f32",
            &[":4:6:", "axis 5"],
        ),
        (
            "perm.air",
            "%0 = input \"x\" : [n, m] f32\n%1 = transpose %0 {perm = [0, 0]} : [n, m] f32",
            &[":4:6:", "permutation"],
        ),
        (
            "reshape.air",
            "%0 = input \"x\" : [n, m] f32\n%1 = reshape %0 {shape = [5, 3]} : [5, 3] f32",
            &[":4:6:", "reshape"],
        ),
        (
            "slice.air",
            "%0 = input \"x\" : [n, m] f32\n%1 = slice %0 {axis = 0, start = 3, end = 1} : [0, m] f32",
            &[":4:6:", "out of range"],
        ),
        (
            "booladd.air",
            "%0 = input \"x\" : [n] bool\n%1 = add %0, %0 : [n] bool",
            &[":4:6:", "bool"],
        ),
        (
            "maskdim.air",
            "%0 = mask \"k <= q + w\" : [n, n] bool",
            &[":3:6:", "`w`"],
        ),
        (
            "maskrank.air",
            "%0 = mask \"k <= q\" : [2, 2, 2, n, n] bool",
            &[":3:6:", "1 to 4 dims"],
        ),
        (
            "embf.air",
            "%0 = input \"t\" : [n] f32\n%1 = param \"w\" : [m, n] f32\n%2 = embedding %1, %0 : [n, n] f32",
            &[":5:6:", "i32 or i64"],
        ),
        (
            "dupout.air",
            "%0 = input \"x\" : [n] f32\noutput o = %0\noutput o = %0",
            &[":5:8:", "already defined"],
        ),
        (
            "dupsrc.air",
            "%0 = input \"x\" : [n] f32\n%1 = param \"x\" : [n] f32",
            &[":4:6:", "already defined"],
        ),
        (
            "late.air",
            "%0 = input \"x\" : [n] f32\ndims z = 3",
            &[":4:1:", "dims"],
        ),
        (
            "bigattr.air",
            "%0 = input \"x\" : [n, m] f32\n%1 = softmax %0 {axis = 99999999999999999999999} : [n, m] f32",
            &[":4:25:", "too large"],
        ),
    ];
    air_fails_with(cases);
}

#[test]
fn successful_checked_run_reports_a_plausible_error() {
    let p = air(
        "ok.air",
        "%0 = input \"x\" : [n, m] f32\n%1 = param \"w\" : [m, n] f32\n%2 = matmul %0, %1 : [n, n] f32\n%3 = exp %2 : [n, n] f32\n%4 = softmax %3 {axis = 1} : [n, n] f32\noutput o = %4",
    );
    let out = succeeds(&["run", path_str(&p), "--check", "--json"]);
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    let err = r["max_abs_err"].as_f64().expect("max_abs_err is a number");
    // f32 code against the f64 interpreter: small, but not exactly zero.
    assert!(err.is_finite() && err > 0.0 && err < 1e-4, "{r}");
    assert_eq!(r["outputs"][0]["shape"], serde_json::json!([4, 4]));
}

#[test]
fn integer_bool_and_half_graphs_run_checked() {
    for (name, body) in [
        (
            "imatmul.air",
            "%0 = input \"x\" : [n, m] i64\n%1 = input \"y\" : [m, n] i64\n%2 = matmul %0, %1 : [n, n] i64\noutput o = %2",
        ),
        (
            "boolin.air",
            "%0 = input \"x\" : [n, m] bool\n%1 = input \"y\" : [n, m] f32\n%2 = const 0.0 : [] f32\n%3 = select %0, %1, %2 : [n, m] f32\noutput o = %3",
        ),
        (
            "f16.air",
            "%0 = input \"x\" : [n, m] f16\n%1 = param \"w\" : [m, n] f16\n%2 = matmul %0, %1 : [n, n] f16\noutput o = %2",
        ),
    ] {
        let p = air(name, body);
        succeeds(&["run", path_str(&p), "--check"]);
    }
}

// ---------------------------------------------------------------------------------
// Currently broken: each of these documents a bug (see the review report).
// ---------------------------------------------------------------------------------

/// Backend errors (run-time checks) must name the file too.
#[test]
fn runtime_check_failures_name_the_file() {
    let p = air(
        "idiv.air",
        "%0 = input \"x\" : [n] i64\n%1 = input \"y\" : [n] i64\nlayer blk\n%2 = div %0, %1 : [n] i64\noutput o = %2",
    );
    fails_with(
        &["run", path_str(&p)],
        &["idiv.air", "blk", "division by zero"],
    );
}

/// `--tiny` must not turn an invalid spec into a valid one: the full-size spec is
/// checked (layer by layer) before it is shrunk.
#[test]
fn tiny_does_not_hide_spec_errors() {
    let p = temp_file(
        "kvgt.toml",
        &gpt2_with("heads = 12\n", "heads = 12\nkv_heads = 24\n"),
    );
    fails_with(&["compile", path_str(&p)], &["kvgt.toml", "kv_heads"]);
    fails_with(
        &["compile", path_str(&p), "--tiny"],
        &["kvgt.toml", "kv_heads"],
    );
    let p = temp_file(
        "kv0.toml",
        &gpt2_with("heads = 12\n", "heads = 12\nkv_heads = 0\n"),
    );
    fails_with(
        &["compile", path_str(&p), "--tiny"],
        &["kv0.toml", "kv_heads"],
    );
    let p = temp_file(
        "rope127.toml",
        &llama_with("head_dim = 128", "head_dim = 127"),
    );
    fails_with(&["compile", path_str(&p)], &["rope127.toml", "RoPE"]);
    fails_with(
        &["compile", path_str(&p), "--tiny"],
        &["rope127.toml", "RoPE"],
    );
}

/// A long flat chain (`k <= q && k <= q && ...`) nests only one level but builds a
/// tree as deep as it is long: recursion over it overflows the stack.
#[test]
fn long_flat_mask_chain_is_an_error_not_a_stack_overflow() {
    let chain = format!("k <= q{}", " && k <= q".repeat(100_000));
    let p = temp_file(
        "chain.toml",
        &gpt2_with("mask = \"k <= q\"", &format!("mask = \"{chain}\"")),
    );
    fails_with(
        &["compile", path_str(&p), "--tiny"],
        &["chain.toml", "layers.0", "mask"],
    );
    let p = air(
        "chain.air",
        &format!("%0 = mask \"{chain}\" : [n, n] bool\noutput o = %0"),
    );
    fails_with(&["compile", path_str(&p)], &["chain.air:3:"]);
}

/// FLOP and byte counts of huge (but representable) graphs overflow `u64`.
#[test]
fn inspect_of_huge_graphs_does_not_panic() {
    let p = temp_file(
        "bigmm.air",
        "graph t\ndims a = 16777216\n%0 = input \"x\" : [a, a] f32\n%1 = matmul %0, %0 : [a, a] f32\noutput o = %1\n",
    );
    for json in [false, true] {
        let mut args = vec!["inspect", path_str(&p)];
        if json {
            args.push("--json");
        }
        let o = attnc(&args);
        let err = stderr(&o);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(matches!(o.status.code(), Some(0 | 1)), "{args:?}: {err}");
    }
    let o = attnc(&[
        "inspect",
        "examples/gpt2.toml",
        "--set",
        "seq=65536",
        "--set",
        "max_positions=65536",
        "--set",
        "vocab=16777216",
        "--set",
        "d_model=16777216",
    ]);
    let err = stderr(&o);
    assert!(!err.contains("panicked"), "{err}");
    assert!(matches!(o.status.code(), Some(0 | 1)), "{err}");
}

/// `run` of a graph whose tensors cannot be allocated must be an error before any
/// allocation — today random inputs abort (`memory allocation failed`) and compiled
/// code with huge temporaries dies of SIGSEGV.
#[test]
fn run_of_graphs_too_large_for_memory_is_an_error() {
    let p = temp_file(
        "bigtmp.air",
        "graph t\n%0 = input \"x\" : [1, 1] f32\nlayer blk\n%1 = broadcast %0 {shape = [300000, 300000]} : [300000, 300000] f32\n%2 = exp %1 : [300000, 300000] f32\n%3 = reduce_sum %2 {axes = [0, 1], keep_dims = false} : [] f32\noutput o = %3\n",
    );
    fails_with(&["run", path_str(&p)], &["bigtmp.air"]);
    let p = temp_file(
        "bigin.air",
        "graph t\n%0 = input \"x\" : [300000, 300000] f32\n%1 = neg %0 : [300000, 300000] f32\noutput o = %1\n",
    );
    fails_with(&["run", path_str(&p)], &["bigin.air"]);
}

/// A mask that masks every key of a row gives softmax(-inf, ..., -inf) = NaN on both
/// sides, and `max_abs_diff` counts NaN == NaN as 0: the check passes with
/// `max_abs_err 0.000e0` on an all-NaN output.
#[test]
fn checked_run_with_nan_outputs_fails() {
    let p = air(
        "allmasked.air",
        "%0 = input \"x\" : [n, n] f32\n%1 = mask \"k < 0\" : [n, n] bool\n%2 = const -inf : [] f32\n%3 = select %1, %0, %2 : [n, n] f32\n%4 = softmax %3 {axis = 1} : [n, n] f32\noutput o = %4",
    );
    let err = fails_with(&["run", path_str(&p), "--check"], &[]).to_lowercase();
    assert!(
        err.contains("nan") || err.contains("finite"),
        "the error should say the output is not finite: {err}"
    );
}

/// Non-finite or non-positive float fields are accepted today and give NaN models.
#[test]
fn non_finite_float_fields_are_errors() {
    for (from, to, field) in [
        ("rope_theta = 500000.0", "rope_theta = nan", "rope_theta"),
        ("rope_theta = 500000.0", "rope_theta = inf", "rope_theta"),
        ("rope_theta = 500000.0", "rope_theta = 0.0", "rope_theta"),
        ("rope_theta = 500000.0", "rope_theta = -5.0", "rope_theta"),
        ("head_dim = 128", "head_dim = 128\nscale = nan", "scale"),
        ("head_dim = 128", "head_dim = 128\nscale = inf", "scale"),
    ] {
        let p = temp_file("float.toml", &llama_with(from, to));
        fails_with(&["compile", path_str(&p), "--tiny"], &["float.toml", field]);
    }
}

#[test]
fn nan_tolerance_is_rejected() {
    let p = air("tol.air", "%0 = input \"x\" : [n] f32\noutput o = %0");
    fails_with(&["run", path_str(&p), "--check", "--tol", "nan"], &["tol"]);
}

/// `[dims]` may not silently redefine the sizes the spec names itself.
#[test]
fn dims_cannot_redefine_spec_sizes() {
    fails_with(
        &[
            "compile",
            "examples/gpt2.toml",
            "--tiny",
            "--set",
            "dims.vocab=3",
        ],
        &["examples/gpt2.toml", "vocab"],
    );
    let err = fails_with(
        &[
            "compile",
            "examples/gpt2.toml",
            "--tiny",
            "--set",
            "dims.d_model=5",
        ],
        &["examples/gpt2.toml", "d_model"],
    );
    assert!(
        !err.contains("reshape"),
        "the error should name the conflicting fields, not a reshape: {err}"
    );
}

/// A constant must fit its dtype: `1e300` is `inf` in f32 (and the check then fails
/// with `max_abs_err inf`), `1.5` is no i64.
#[test]
fn constants_that_do_not_fit_their_dtype_are_parse_errors() {
    let p = air("cbig.air", "%0 = const 1e300 : [] f32\noutput o = %0");
    fails_with(&["compile", path_str(&p)], &["cbig.air:3:"]);
    let p = air("cfrac.air", "%0 = const 1.5 : [] i64\noutput o = %0");
    fails_with(&["compile", path_str(&p)], &["cfrac.air:3:"]);
}

/// The linear mixers' fields: a field of another kind, a mask a mixer cannot take,
/// sizes that do not fit, and bad conversions each name the layer and the field.
#[test]
fn linear_mixer_errors_name_the_layer_and_field() {
    let lt = "examples/linear-transformer.toml";
    let cases: &[(&str, &[&str], &[&str])] = &[
        (
            lt,
            &["attention.feature_map=\"cosine\""],
            &["layers.0", "feature_map", "cosine"],
        ),
        (
            lt,
            &["attention.features=64"],
            &["layers.0", "features", "performer"],
        ),
        (
            lt,
            &["attention.mask=\"q - k < 4\""],
            &["layers.0", "`k <= q` or none"],
        ),
        (
            lt,
            &["attention.state_size=16"],
            &["layers.0", "state_size", "mamba2"],
        ),
        (
            lt,
            &["attention.kind=\"nonesuch\""],
            &["layers.0", "nonesuch", "retnet"],
        ),
        (
            "examples/linformer.toml",
            &["attention.mask=\"k <= q\""],
            &["layers.0", "Linformer", "causal"],
        ),
        (
            "examples/linformer.toml",
            &["attention.linformer_k=0"],
            &["layers.0", "linformer_k"],
        ),
        (
            "examples/retnet.toml",
            &["attention.mask=\"none\""],
            &["layers.0", "RetNet", "causal"],
        ),
        (
            "examples/mamba2.toml",
            &["attention.heads=40"],
            &["layers.0", "Mamba2", "expand"],
        ),
        (
            "examples/axial-transformer.toml",
            &["attention.axial_rows=7"],
            &["layers.0", "axial_rows"],
        ),
        (
            "examples/mamba2.toml",
            &["ffn.kind=\"swiglu\""],
            &["layers.0", "ffn.hidden"],
        ),
    ];
    compile_fails_with(cases);
}

/// Mixture-of-experts fields: sizes that do not fit, a router's fields on another
/// router, MoE fields on a dense FFN, expert biases — each names the layer and field.
#[test]
fn moe_errors_name_the_layer_and_field() {
    let mx = "examples/mixtral-8x7b.toml";
    let sw = "examples/switch-transformer.toml";
    let cases: &[(&str, &[&str], &[&str])] = &[
        (mx, &["ffn.top_k=9"], &["layers.0", "top_k", "8 experts"]),
        (mx, &["ffn.experts=0"], &["layers.0", "ffn.experts"]),
        (
            mx,
            &["ffn.router=\"hash\""],
            &["layers.0", "ffn.router", "hash"],
        ),
        (mx, &["ffn.bias=true"], &["layers.0", "ffn.bias"]),
        (
            mx,
            &["ffn.capacity_factor=1.5"],
            &["layers.0", "capacity_factor", "switch"],
        ),
        (
            sw,
            &["kinds.sparse.ffn.top_k=2"],
            &["layers.1", "switch", "top-1"],
        ),
        (
            sw,
            &["kinds.sparse.ffn.capacity_factor=0"],
            &["layers.1", "capacity_factor"],
        ),
        (sw, &["ffn.top_k=2"], &["layers.0", "ffn.top_k", "moe"]),
        (
            "examples/deepseek-v2-lite.toml",
            &["ffn.expert_kind=\"moe\""],
            &["layers.1", "expert_kind"],
        ),
    ];
    compile_fails_with(cases);
}

/// `attnc compile NAME` of the `.air` graph `body` fails naming the file and every
/// needle, per case.
fn air_fails_with(cases: &[(&str, &str, &[&str])]) {
    for (name, body, needles) in cases {
        let p = air(name, body);
        let mut all = vec![*name];
        all.extend(needles.iter());
        fails_with(&["compile", path_str(&p)], &all);
    }
}

/// `attnc compile SPEC --set ..` fails naming the spec and every needle, per case.
fn compile_fails_with(cases: &[(&str, &[&str], &[&str])]) {
    for (spec, sets, needles) in cases {
        let mut args = vec!["compile", spec];
        for s in *sets {
            args.extend(["--set", s]);
        }
        let mut all = vec![*spec];
        all.extend(needles.iter());
        fails_with(&args, &all);
    }
}

// ---------------------------------------------------------------------------------
// Resource limits: absurd sizes, deep nesting, enormous inputs
// ---------------------------------------------------------------------------------

/// Dims of 0, negative, 2^63 and 2^64, in a spec file, through `--set` and in IR
/// text: each refused with the field (or position) named, never wrapped or truncated.
#[test]
fn absurd_dims_are_errors() {
    for (value, needles) in [
        ("-1", &[":5:11:", "-1"][..]),
        ("9223372036854775808", &[":5:11:", "too large"]),
        ("18446744073709551616", &[":5:11:", "too large"]),
        ("0", &["`d_model` must be at least 1"]),
    ] {
        let p = temp_file(
            "dims.toml",
            &gpt2_with("d_model = 768", &format!("d_model = {value}")),
        );
        let mut all = vec!["dims.toml"];
        all.extend(needles);
        fails_with(&["compile", path_str(&p), "--tiny"], &all);
        let set = format!("d_model={value}");
        fails_with(
            &["compile", "examples/gpt2.toml", "--set", &set],
            &["d_model"],
        );
    }
    fails_with(
        &[
            "compile",
            "examples/gpt2.toml",
            "--set",
            "d_model=9223372036854775808",
        ],
        &["larger than the supported maximum"],
    );
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "neg.air",
            "%0 = input \"x\" : [-1, m] f32\noutput o = %0",
            &[":3:19:", "non-negative"],
        ),
        (
            "negdim.air",
            "dims a = -3\n%0 = input \"x\" : [a] f32\noutput o = %0",
            &[":3:10:", "non-negative"],
        ),
        (
            "pow63.air",
            "%0 = input \"x\" : [9223372036854775808, m] f32\noutput o = %0",
            &[":3:6:", "2^48"],
        ),
        (
            "pow64.air",
            "%0 = input \"x\" : [18446744073709551616] f32\noutput o = %0",
            &[":3:19:"],
        ),
        (
            // 2^24 elements past the 2^48-element cap, which is what keeps every byte
            // count (at most 8 x 2^48) far inside u64.
            "bytes.air",
            "%0 = input \"x\" : [16777216, 16777217] i64\noutput o = %0",
            &[":3:6:", "2^48"],
        ),
    ];
    air_fails_with(cases);
    // Zero-sized tensors are legal and run.
    let p = air(
        "empty.air",
        "%0 = input \"x\" : [0, m] f32\n%1 = neg %0 : [0, m] f32\noutput o = %1",
    );
    succeeds(&["run", path_str(&p), "--check"]);
}

/// Nesting deeper than the mask parser's limit, through every prefix form, is an
/// error at the mask's position (the parser recurses; it must not overflow the stack).
#[test]
fn deeply_nested_mask_expressions_are_errors() {
    for (open, close) in [("(", ")"), ("!", ""), ("-", "")] {
        let expr = format!("{}k <= q{}", open.repeat(100_000), close.repeat(100_000));
        let p = air(
            "nest.air",
            &format!("%0 = mask \"{expr}\" : [n, n] bool\noutput o = %0"),
        );
        fails_with(
            &["compile", path_str(&p)],
            &["nest.air:3:", "nests deeper than 256"],
        );
    }
    let nested = format!("{}k <= q{}", "(".repeat(300), ")".repeat(300));
    let p = temp_file(
        "nest.toml",
        &gpt2_with("mask = \"k <= q\"", &format!("mask = \"{nested}\"")),
    );
    fails_with(
        &["compile", path_str(&p), "--tiny"],
        &["nest.toml", "layers.0", "deeper"],
    );
    let p = air("nestlist.air", &format!("%0 = input \"x\" : [n, m] f32\n%1 = transpose %0 {{perm = {}{}}} : [m, n] f32\noutput o = %1", "[".repeat(100_000), "]".repeat(100_000)));
    fails_with(&["compile", path_str(&p)], &["nestlist.air:4:"]);
}

/// A source that never ends (`/dev/zero`) or is larger than any model source is
/// refused after a bounded read, for specs, IR text and target descriptions alike.
#[test]
fn endless_inputs_are_errors_not_aborts() {
    let dir = std::env::temp_dir().join(format!("attnc-endless-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["zero.air", "zero.toml", "zero.json"] {
        let link = dir.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        fails_with(
            &["compile", path_str(&link)],
            &[name, "larger than the 256 MiB"],
        );
    }
    let target = dir.join("zero.toml");
    fails_with(
        &[
            "compile",
            "examples/gpt2.toml",
            "--tiny",
            "--target",
            path_str(&target),
        ],
        &["zero.toml", "larger than"],
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
