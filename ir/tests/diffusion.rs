//! `[diffusion]`: the masked-diffusion sampler's settings, their errors, `--tiny`.

use attnc_ir::spec::{lower, parse_spec, Diffusion, Format, Remasking, SpecSource};
use attnc_ir::IrError;

const LLADA: &str = include_str!("../../examples/llada-8b.toml");
const BLOCK: &str = include_str!("../../examples/block-diffusion.toml");

fn parse(text: &str, sets: &[&str], tiny: bool) -> Result<attnc_ir::spec::Spec, IrError> {
    let source = SpecSource {
        sets: sets.iter().map(|s| s.to_string()).collect(),
        tiny,
    };
    parse_spec(text, Format::Toml, &source)
}

fn sampler(text: &str, sets: &[&str], tiny: bool) -> Diffusion {
    parse(text, sets, tiny)
        .unwrap()
        .diffusion()
        .unwrap()
        .unwrap()
}

#[test]
fn examples_resolve_their_samplers() {
    let d = sampler(LLADA, &[], false);
    assert_eq!(
        d,
        Diffusion {
            mask_token: 126_336,
            gen_length: 128,
            block_length: 32,
            steps: 128,
            remasking: Remasking::LowConfidence,
        }
    );
    let g = lower(&parse(LLADA, &[], false).unwrap()).unwrap();
    let params: u64 = (g.params().iter())
        .map(|(_, id)| g.sizes(*id).iter().map(|&n| n as u64).product::<u64>())
        .sum();
    // LLaDA 8B: 8.02B parameters (untied embeddings and head).
    assert_eq!(params, 8_015_581_184);
    let b = sampler(BLOCK, &[], false);
    assert_eq!((b.gen_length, b.block_length, b.steps), (512, 16, 512));
    // Defaults: half the sequence, one block, one token per step.
    let d = sampler(
        LLADA,
        &[
            "diffusion.gen_length=null",
            "diffusion.block_length=null",
            "diffusion.steps=null",
        ],
        false,
    );
    assert_eq!((d.gen_length, d.block_length, d.steps), (2048, 2048, 2048));
}

#[test]
fn tiny_keeps_a_valid_sampler_and_block_mask() {
    for text in [LLADA, BLOCK] {
        let spec = parse(text, &[], true).unwrap();
        let d = spec.diffusion().unwrap().unwrap();
        assert!(d.mask_token < spec.vocab, "{d:?}");
        assert_eq!((d.gen_length, d.block_length), (16, 4), "{d:?}");
    }
    // The attention blocks shrink with the diffusion blocks, not to 1.
    let spec = parse(BLOCK, &[], true).unwrap();
    assert_eq!(spec.dims["block"], 4);
    // A pinned value is kept.
    let d = sampler(LLADA, &["diffusion.block_length=8"], true);
    assert_eq!((d.gen_length, d.block_length), (16, 8));
}

#[test]
fn bad_samplers_name_the_field() {
    let cases: &[(&[&str], &str)] = &[
        (&["diffusion.mask_token=126464"], "diffusion.mask_token"),
        (&["diffusion.block_length=48"], "diffusion.block_length"),
        (&["diffusion.steps=6"], "diffusion.steps"),
        (&["diffusion.gen_length=5000"], "diffusion.gen_length"),
        (&["diffusion.remasking=\"highest\""], "remasking"),
        (&["diffusion.temperature=1"], "temperature"),
    ];
    for (sets, field) in cases {
        let e = parse(LLADA, sets, false)
            .and_then(|s| s.diffusion().map(|_| ()))
            .expect_err(field);
        assert!(e.to_string().contains(field), "{sets:?}: {e}");
    }
}
