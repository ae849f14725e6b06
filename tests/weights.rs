//! `run --weights`, `--tokens`, `--input` and `--out`: checkpoints named as attnc
//! names its params, and every way a checkpoint or an input can be wrong.

mod common;

use attnc::ir::spec::SpecSource;
use common::{attnc, fails_with, path_str, stderr, succeeds, temp_dir};
use std::path::{Path, PathBuf};

const SPEC: &str = "examples/gpt2.toml";

/// The params `run --seed 0` would draw, written as a checkpoint, with `edit`
/// applied to the (name, shape, data) list first.
fn checkpoint(name: &str, edit: impl FnOnce(&mut Vec<(String, Vec<usize>, Vec<f64>)>)) -> PathBuf {
    let source = SpecSource {
        sets: vec!["seq=8".into()],
        tiny: true,
    };
    let graph = attnc::load(Path::new(SPEC), &source).unwrap();
    let bindings = attnc::ir::random_bindings(&graph, 0);
    let mut tensors: Vec<(String, Vec<usize>, Vec<f64>)> = graph
        .params()
        .iter()
        .map(|(n, _)| {
            let t = &bindings[*n];
            (n.to_string(), t.shape.clone(), t.data.clone())
        })
        .collect();
    edit(&mut tensors);
    let path = temp_dir(&format!("weights-{name}")).join(name);
    let refs: Vec<(String, Vec<usize>, &[f64])> = tensors
        .iter()
        .map(|(n, s, d)| (n.clone(), s.clone(), &d[..]))
        .collect();
    attnc::safetensors::write(&path, &refs, false).unwrap();
    path
}

fn run(extra: &[&str]) -> Vec<String> {
    let mut args = vec!["run", SPEC, "--tiny", "--set", "seq=8"];
    args.extend(extra);
    args.iter().map(|s| s.to_string()).collect()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn native_checkpoint_reproduces_the_seeded_run() {
    let ckpt = checkpoint("native.safetensors", |_| {});
    let dir = temp_dir("weights-native");
    let (a, b) = (dir.join("a.npy"), dir.join("b.npy"));
    // The same tokens both times: the seeded ones are not what --tokens gives.
    let tokens = "1,2,3,4,5,6,7,8";
    succeeds(&strs(&run(&["--tokens", tokens, "--out", path_str(&a)])));
    succeeds(&strs(&run(&[
        "--tokens",
        tokens,
        "--weights",
        path_str(&ckpt),
        "--out",
        path_str(&b),
        "--check",
    ])));
    let (a, b) = (attnc::npy::read(&a).unwrap(), attnc::npy::read(&b).unwrap());
    assert_eq!(a.shape, vec![1, 8, 97]);
    assert_eq!(a.data, b.data);
    // A safetensors --out holds every output by name.
    let st = dir.join("out.safetensors");
    succeeds(&strs(&run(&["--tokens", tokens, "--out", path_str(&st)])));
    let c = attnc::safetensors::Checkpoint::open(&st).unwrap();
    assert_eq!(c.read("logits").unwrap().len(), 8 * 97);
}

#[test]
fn tokens_set_batch_and_seq() {
    let file = temp_dir("weights-ids").join("ids.txt");
    std::fs::write(&file, "1 2 3 4\n5 6 7 8\n").unwrap();
    let o = attnc(&["run", SPEC, "--tiny", "--tokens", path_str(&file), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["outputs"][0]["shape"], serde_json::json!([2, 4, 97]));
}

#[test]
fn bad_checkpoints_name_the_tensor() {
    let missing = checkpoint("missing.safetensors", |t| {
        t.retain(|(n, _, _)| n != "layers.1.attn.wq")
    });
    fails_with(
        &strs(&run(&["--weights", path_str(&missing)])),
        &["missing tensor `layers.1.attn.wq`"],
    );
    let shaped = checkpoint("shaped.safetensors", |t| {
        let w = t
            .iter_mut()
            .find(|(n, _, _)| n == "layers.0.ffn.w_up")
            .unwrap();
        w.1 = vec![w.1[1], w.1[0]];
    });
    fails_with(
        &strs(&run(&["--weights", path_str(&shaped)])),
        &["tensor `layers.0.ffn.w_up` has shape"],
    );
    let extra = checkpoint("extra.safetensors", |t| {
        t.push(("layers.9.attn.wq".into(), vec![2], vec![0.0, 1.0]))
    });
    fails_with(
        &strs(&run(&["--weights", path_str(&extra)])),
        &["tensor `layers.9.attn.wq` is not used by the model"],
    );
    let junk = temp_dir("weights").join("junk.safetensors");
    std::fs::write(&junk, b"\xff\xff\xff\xff\xff\xff\xff\x7fnot a header").unwrap();
    fails_with(
        &strs(&run(&["--weights", path_str(&junk)])),
        &["junk.safetensors: not a safetensors file"],
    );
    let foreign = checkpoint("foreign.safetensors", |t| {
        for (n, _, _) in t.iter_mut() {
            *n = format!("encoder.block.{n}");
        }
    });
    fails_with(
        &strs(&run(&["--weights", path_str(&foreign)])),
        &["neither attnc's param names nor a Hugging Face family"],
    );
}

#[test]
fn sharded_index_binds_across_files() {
    let full = checkpoint("full.safetensors", |_| {});
    let dir = temp_dir("weights-sharded");
    let c = attnc::safetensors::Checkpoint::open(&full).unwrap();
    let names: Vec<String> = c.tensors.keys().cloned().collect();
    let (first, second) = names.split_at(names.len() / 2);
    let mut map = serde_json::Map::new();
    for (file, part) in [("a.safetensors", first), ("b.safetensors", second)] {
        let data: Vec<(String, Vec<usize>, Vec<f64>)> = part
            .iter()
            .map(|n| (n.clone(), c.tensors[n].shape.clone(), c.read(n).unwrap()))
            .collect();
        let refs: Vec<(String, Vec<usize>, &[f64])> = data
            .iter()
            .map(|(n, s, d)| (n.clone(), s.clone(), &d[..]))
            .collect();
        attnc::safetensors::write(&dir.join(file), &refs, false).unwrap();
        for n in part {
            map.insert(n.clone(), file.into());
        }
    }
    let index = dir.join("model.safetensors.index.json");
    std::fs::write(
        &index,
        serde_json::json!({"metadata": {}, "weight_map": map}).to_string(),
    )
    .unwrap();
    succeeds(&strs(&run(&["--weights", path_str(&index), "--check"])));
    // An index that points a tensor at the wrong shard is an error naming it.
    let wrong = first[0].clone();
    map.insert(wrong.clone(), "b.safetensors".into());
    std::fs::write(&index, serde_json::json!({"weight_map": map}).to_string()).unwrap();
    fails_with(
        &strs(&run(&["--weights", path_str(&index)])),
        &[&format!("the index places `{wrong}` in this shard")],
    );
}

#[test]
fn bad_inputs_are_errors() {
    fails_with(
        &strs(&run(&["--tokens", "1,2,x"])),
        &["`x` is not a token id"],
    );
    fails_with(
        &strs(&run(&["--tokens", "1,2,99999,4,5,6,7,8"])),
        &["id 99999 at position 2 is outside the vocabulary"],
    );
    let dir = temp_dir("weights-inputs");
    let ragged = dir.join("ragged.txt");
    std::fs::write(&ragged, "1 2 3\n4 5\n").unwrap();
    fails_with(
        &strs(&run(&["--tokens", path_str(&ragged)])),
        &["ragged.txt:2: 2 ids, but the first row has 3"],
    );
    fails_with(
        &strs(&run(&["--input", "pixels=nothing.npy"])),
        &["nothing.npy: cannot read"],
    );
    let npy = dir.join("x.npy");
    attnc::npy::write(&npy, &[1, 8], &[0.0; 8], false).unwrap();
    fails_with(
        &strs(&run(&["--input", &format!("pixels={}", path_str(&npy))])),
        &["the model has no input `pixels`"],
    );
    fails_with(
        &strs(&run(&["--tokens", "1,2,3,4,5,6,7,8", "--out", "x.csv"])),
        &["--out writes .npy or .safetensors"],
    );
}
