//! One snapshot per pass per example model. Review changes with `cargo insta review`.
//!
//! The frontend's output (`--emit ir`) is recorded at full size: it is what users
//! read, and every later pass is a diff against it.

use attnc_ir::spec::SpecSource;
use std::path::Path;

fn ir_of(example: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(example);
    let graph = attnc::load(&path, &SpecSource::default()).unwrap();
    attnc::compile(&graph, attnc::Emit::Ir).unwrap()
}

#[test]
fn gpt2_ir() {
    insta::assert_snapshot!(ir_of("gpt2.toml"));
}

#[test]
fn llama3_8b_ir() {
    insta::assert_snapshot!(ir_of("llama3-8b.toml"));
}
