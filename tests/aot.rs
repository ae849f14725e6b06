//! `attnc compile --emit obj`: a C program includes the generated header, links the
//! object with LLVM's OpenMP runtime, calls `attnc_forward` on inputs written by this
//! test, and its outputs match the reference interpreter.

mod common;

use attnc_ir::spec::SpecSource;
use attnc_ir::{interp, DType, Graph};
use common::{attnc, stderr, temp_dir};
use std::fmt::Write;
use std::path::Path;
use std::process::Command;

fn c_type(d: DType) -> &'static str {
    match d {
        DType::F32 => "float",
        DType::F16 | DType::BF16 => "uint16_t",
        DType::I32 => "int32_t",
        DType::I64 => "int64_t",
        DType::Bool => "uint8_t",
    }
}

/// A driver that reads every input from `argv[1]` (in argument order), calls the typed
/// entry point (so the prototype is type-checked against these casts), and writes the
/// outputs and status flags to `argv[2]`.
fn driver(graph: &Graph, checks: usize) -> String {
    let mut casts = Vec::new();
    let sources = graph.inputs().into_iter().chain(graph.params());
    for (i, (_, id)) in sources.enumerate() {
        casts.push(format!(
            "(const {} *)args[{i}]",
            c_type(graph.node(id).ty.dtype)
        ));
    }
    let first = casts.len();
    for (i, (_, id)) in graph.outputs().iter().enumerate() {
        casts.push(format!(
            "({} *)args[{}]",
            c_type(graph.node(*id).ty.dtype),
            first + i
        ));
    }
    let first = casts.len();
    for i in 0..checks {
        casts.push(format!("(uint8_t *)args[{}]", first + i));
    }
    let mut c = String::from(
        "#include <stdio.h>\n#include <stdlib.h>\n#include \"model.h\"\n\nint main(int argc, char **argv) {\n",
    );
    c += "  if (argc != 3) return 2;\n  FILE *in = fopen(argv[1], \"rb\");\n  if (!in) return 3;\n";
    c += "  void *args[ATTNC_NUM_ARGS];\n  for (int i = 0; i < ATTNC_NUM_ARGS; i++) {\n";
    c += "    args[i] = calloc(1, attnc_argument_bytes[i] + 1);\n";
    c += "    if (i < ATTNC_NUM_INPUTS && fread(args[i], 1, attnc_argument_bytes[i], in) != attnc_argument_bytes[i]) return 4;\n  }\n  fclose(in);\n";
    c += "  attnc_set_num_threads(2);\n";
    let _ = writeln!(c, "  attnc_forward({});", casts.join(", "));
    c += "  FILE *out = fopen(argv[2], \"wb\");\n  if (!out) return 5;\n";
    c += "  for (int i = ATTNC_NUM_INPUTS; i < ATTNC_NUM_ARGS; i++) fwrite(args[i], 1, attnc_argument_bytes[i], out);\n";
    c += "  fclose(out);\n  return 0;\n}\n";
    c
}

fn compile_and_call(spec: &str) {
    let dir = temp_dir(&format!("aot-{}", spec.replace(['/', '.'], "_")));
    let object = dir.join("model.o");
    let o = attnc(&[
        "compile",
        spec,
        "--tiny",
        "--emit",
        "obj",
        "-o",
        object.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let header = std::fs::read_to_string(dir.join("model.h")).expect("the header is written");
    assert!(header.contains("void attnc_forward("), "{header}");

    let source = SpecSource {
        sets: Vec::new(),
        tiny: true,
    };
    let graph = attnc::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join(spec), &source).unwrap();
    let checks = header.matches("/* status flag").count();
    std::fs::write(dir.join("main.c"), driver(&graph, checks)).unwrap();
    let exe = dir.join("driver");
    let cc = Command::new("cc")
        .args([
            "-std=c11", "-O1", "-Wall", "-Werror", "main.c", "model.o", "-o",
        ])
        .arg(&exe)
        .args([
            "-L/usr/lib/llvm-22/lib",
            "-Wl,-rpath,/usr/lib/llvm-22/lib",
            "-lomp",
            "-lm",
        ])
        .current_dir(&dir)
        .output()
        .expect("a C compiler (cc) runs");
    assert!(
        cc.status.success(),
        "cc: {}",
        String::from_utf8_lossy(&cc.stderr)
    );

    let bindings = attnc_ir::random_bindings(&graph, 3);
    let mut input = Vec::new();
    for (name, _) in graph.inputs().into_iter().chain(graph.params()) {
        input.extend(attnc_backends::tensor_to_bytes(&bindings[name]));
    }
    std::fs::write(dir.join("inputs.bin"), input).unwrap();
    let run = Command::new(&exe)
        .args(["inputs.bin", "outputs.bin"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(run.status.success(), "driver: {run:?}");
    let bytes = std::fs::read(dir.join("outputs.bin")).unwrap();

    let want = interp::eval(&graph, &bindings, interp::Precision::F64).unwrap();
    let mut at = 0;
    for ((name, id), w) in graph.outputs().iter().zip(&want) {
        let dtype = graph.node(*id).ty.dtype;
        let n = w.len() * dtype.size_bytes() as usize;
        let got = attnc_backends::tensor_from_bytes(dtype, w.shape.clone(), &bytes[at..at + n])
            .expect("whole elements");
        at += n;
        let err = got.max_abs_diff(w);
        assert!(err < 1e-4, "{spec}: output `{name}`: max abs error {err}");
    }
    assert_eq!(
        bytes[at..].iter().filter(|&&f| f != 0).count(),
        0,
        "a status flag is set"
    );
}

#[test]
fn a_c_program_links_and_calls_the_compiled_model() {
    compile_and_call("examples/llama3-8b.toml");
}

#[test]
fn gpt2_as_an_object() {
    compile_and_call("examples/gpt2.toml");
}
