//! The masked-diffusion sampler (`attnc run --diffusion-steps T`): LLaDA's
//! generation loop around the compiled denoiser.
//!
//! The sequence is the prompt followed by `gen_length` mask tokens. The generated
//! part is unmasked in `gen_length / block_length` blocks, left to right, with
//! `T / blocks` steps each. A step runs the network once on the whole sequence,
//! takes each masked position's most likely token (ties: the lower id) and its
//! probability (or, with `remasking = "random"`, a seeded random score), and keeps
//! the `n` best positions of the current block (ties: the earlier position), `n`
//! being the block's masked count spread evenly over its steps (the first steps take
//! the remainder); the other positions stay masked for the next step. Later blocks
//! are never touched before their turn. Every row of the batch is sampled alike.
//!
//! The network is compiled once and run at every step with only the tokens changed.
//! With `--check`, the reference interpreter runs the original graph on the same
//! tokens at every step: the logits are compared, and the unmasking it would choose
//! with the compiled ones.

use crate::{err, ms_since, optimize, OptimizeOptions, Result};
use attnc_ir::spec::{Diffusion, Remasking};
use attnc_ir::{interp, DType, Graph, Rng, Tensor};
use serde::Serialize;
use std::collections::HashMap;
use std::time::Instant;

/// Options of a diffusion run.
#[derive(Clone, Debug)]
pub struct DiffusionOptions {
    pub sampler: Diffusion,
    /// The prompt's token ids (every row); default: seeded random ids.
    pub prompt: Option<Vec<i64>>,
    pub seed: u64,
    pub check: bool,
    pub optimize: OptimizeOptions,
    pub threads: Option<usize>,
}

#[derive(Clone, Debug, Serialize)]
pub struct StepReport {
    pub step: u64,
    pub block: u64,
    /// Positions unmasked in this step (per row).
    pub unmasked: u64,
    /// Masked positions left after it (per row).
    pub masked: u64,
    /// Milliseconds of the compiled network.
    pub ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interp_ms: Option<f64>,
    /// Worst difference of the logits from the interpreter's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_abs_err: Option<f64>,
    /// Whether the interpreter's logits unmask the same positions with the same
    /// tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_agree: Option<bool>,
}

#[derive(Clone, Debug, Serialize)]
pub struct DiffusionReport {
    pub model: String,
    pub seed: u64,
    pub steps: u64,
    pub gen_length: u64,
    pub block_length: u64,
    pub mask_token: u64,
    pub remasking: Remasking,
    pub prompt_length: u64,
    pub compile_ms: f64,
    pub per_step: Vec<StepReport>,
    /// The final sequences, one per row (prompt and generated tokens).
    pub tokens: Vec<Vec<i64>>,
    /// Denoising steps per second of the compiled network (median step).
    pub steps_per_s: f64,
    /// The same for the interpreter (`--check`), and the ratio.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interp_steps_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speedup: Option<f64>,
    /// Worst logits error over every step (`--check`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_abs_err: Option<f64>,
    /// Whether every step unmasked what the interpreter's logits would have.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_agree: Option<bool>,
}

/// The sizes the sampler works on, from the graph's `tokens` input and `logits`
/// output.
struct Shape {
    batch: usize,
    seq: usize,
    vocab: usize,
}

fn shape_of(graph: &Graph) -> Result<Shape> {
    let tokens = graph
        .inputs()
        .into_iter()
        .find(|(name, _)| *name == "tokens")
        .ok_or_else(|| err("--diffusion-steps needs a model with a `tokens` input"))?;
    let logits = (graph.outputs().iter())
        .find(|(name, _)| name == "logits")
        .ok_or_else(|| err("--diffusion-steps needs a model with a `logits` output"))?;
    let (t, l) = (graph.sizes(tokens.1), graph.sizes(logits.1));
    match (t.as_slice(), l.as_slice()) {
        ([b, s], [b2, s2, v]) if b == b2 && s == s2 => Ok(Shape {
            batch: *b,
            seq: *s,
            vocab: *v,
        }),
        _ => Err(err(format!(
            "--diffusion-steps needs tokens [batch, seq] and logits [batch, seq, vocab], not {t:?} and {l:?}"
        ))),
    }
}

/// Run the sampler on `graph` (a spec's lowered network) with random weights drawn
/// from `options.seed`.
pub fn run_diffusion(graph: &Graph, options: &DiffusionOptions) -> Result<DiffusionReport> {
    let d = options.sampler;
    let Shape { batch, seq, vocab } = shape_of(graph)?;
    let (gen, block_len) = (d.gen_length as usize, d.block_length as usize);
    if gen > seq
        || block_len == 0
        || !gen.is_multiple_of(block_len)
        || d.mask_token as usize >= vocab
    {
        return Err(err(format!(
            "the sampler (gen_length {gen}, block_length {block_len}, mask_token {}) does not fit the model (seq {seq}, vocab {vocab})",
            d.mask_token
        )));
    }
    let blocks = gen / block_len;
    attnc_ir::spec::check_steps(d.steps, blocks as u64, "--diffusion-steps").map_err(err)?;
    let prompt_len = seq - gen;
    let mut rng = Rng::new(options.seed ^ 0xD1FF_u64);
    let prompt: Vec<i64> = match &options.prompt {
        Some(p) if p.len() != prompt_len => {
            return Err(err(format!(
                "--prompt has {} tokens; this model generates {gen} of {seq} positions, so the prompt is {prompt_len}",
                p.len()
            )))
        }
        Some(p) => {
            if let Some(bad) = p.iter().find(|&&t| t < 0 || t as usize >= vocab) {
                return Err(err(format!("--prompt: token {bad} is not below vocab = {vocab}")));
            }
            p.clone()
        }
        None => (0..prompt_len)
            .map(|_| {
                // Any id but the mask token.
                let t = rng.below(vocab as u64 - 1);
                (t + (t >= d.mask_token) as u64) as i64
            })
            .collect(),
    };
    let mask = d.mask_token as i64;
    let mut x: Vec<Vec<i64>> = (0..batch)
        .map(|_| {
            let mut row = prompt.clone();
            row.resize(seq, mask);
            row
        })
        .collect();

    let t = Instant::now();
    let optimized = optimize(graph, &options.optimize)?;
    let mut model =
        attnc_backends::CompiledModel::new(&optimized.graph).map_err(|e| err(e.to_string()))?;
    if let Some(n) = options.threads {
        model.set_threads(n);
    }
    let mut bindings: HashMap<String, Tensor> = attnc_ir::random_bindings(graph, options.seed);
    bindings.insert("tokens".into(), tokens_tensor(&x));
    let mut prepared = model.prepare(&bindings).map_err(|e| err(e.to_string()))?;
    let compile_ms = ms_since(t);

    let steps_per_block = d.steps as usize / blocks;
    let mut per_step = Vec::new();
    for b in 0..blocks {
        let (start, end) = (prompt_len + b * block_len, prompt_len + (b + 1) * block_len);
        let counts = transfer_counts(block_len, steps_per_block);
        for &n in &counts {
            let tokens = tokens_tensor(&x);
            model
                .set_input(&mut prepared, "tokens", &tokens)
                .map_err(|e| err(e.to_string()))?;
            let t = Instant::now();
            model
                .run_prepared(&mut prepared)
                .map_err(|e| err(e.to_string()))?;
            let ms = ms_since(t);
            let logits = model.outputs(&prepared).remove(0);
            let scores: Vec<f64> = match d.remasking {
                Remasking::Random => (0..batch * seq).map(|_| rng.uniform()).collect(),
                Remasking::LowConfidence => Vec::new(),
            };
            let choice = unmask(&x, &logits, vocab, (start, end), n, mask, &scores);
            let mut step = StepReport {
                step: per_step.len() as u64,
                block: b as u64,
                unmasked: n as u64,
                masked: 0,
                ms,
                interp_ms: None,
                max_abs_err: None,
                tokens_agree: None,
            };
            if options.check {
                bindings.insert("tokens".into(), tokens);
                let t = Instant::now();
                let want = interp::eval(graph, &bindings, interp::Precision::F64)
                    .map_err(|e| err(format!("interpreter, step {}: {e}", step.step)))?;
                step.interp_ms = Some(ms_since(t));
                let want = &want[output_index(graph)];
                if want.data.iter().any(|v| !v.is_finite()) {
                    return Err(err(format!(
                        "step {}: the interpreter's logits are not finite, so the check is meaningless",
                        step.step
                    )));
                }
                step.max_abs_err = Some(logits.max_abs_diff(want));
                let theirs = unmask(&x, want, vocab, (start, end), n, mask, &scores);
                step.tokens_agree = Some(theirs == choice);
            }
            for (row, picks) in x.iter_mut().zip(&choice) {
                for &(pos, tok) in picks {
                    row[pos] = tok;
                }
            }
            step.masked = x[0].iter().filter(|&&t| t == mask).count() as u64;
            per_step.push(step);
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let steps_per_s = 1e3 / median(per_step.iter().map(|s| s.ms).collect()).max(1e-9);
    let interp_steps_per_s = options
        .check
        .then(|| 1e3 / median(per_step.iter().filter_map(|s| s.interp_ms).collect()).max(1e-9));
    let max_abs_err = (per_step.iter().filter_map(|s| s.max_abs_err)).reduce(f64::max);
    let tokens_agree = options
        .check
        .then(|| per_step.iter().all(|s| s.tokens_agree == Some(true)));
    Ok(DiffusionReport {
        model: graph.name.clone(),
        seed: options.seed,
        steps: d.steps,
        gen_length: d.gen_length,
        block_length: d.block_length,
        mask_token: d.mask_token,
        remasking: d.remasking,
        prompt_length: prompt_len as u64,
        compile_ms,
        per_step,
        tokens: x,
        steps_per_s,
        interp_steps_per_s,
        speedup: interp_steps_per_s.map(|i| steps_per_s / i),
        max_abs_err,
        tokens_agree,
    })
}

fn output_index(graph: &Graph) -> usize {
    (graph.outputs().iter())
        .position(|(name, _)| name == "logits")
        .unwrap_or(0)
}

fn tokens_tensor(x: &[Vec<i64>]) -> Tensor {
    let seq = x.first().map_or(0, Vec::len);
    let data = x.iter().flatten().map(|&t| t as f64).collect();
    Tensor::new(DType::I64, vec![x.len(), seq], data)
}

/// How many of a block's `n` masked positions each of its `steps` steps unmasks:
/// `n / steps` each, the first `n % steps` one more (LLaDA's schedule).
pub fn transfer_counts(n: usize, steps: usize) -> Vec<usize> {
    let steps = steps.max(1);
    (0..steps)
        .map(|i| n / steps + usize::from(i < n % steps))
        .collect()
}

/// Per row, the `n` positions of `[start, end)` still masked in `x` to unmask, with
/// their tokens: the argmax of `logits` (ties: the lower id), ranked by its softmax
/// probability — or by `scores` when given (random remasking) — highest first,
/// ties to the earlier position.
fn unmask(
    x: &[Vec<i64>],
    logits: &Tensor,
    vocab: usize,
    (start, end): (usize, usize),
    n: usize,
    mask: i64,
    scores: &[f64],
) -> Vec<Vec<(usize, i64)>> {
    let seq = x.first().map_or(0, Vec::len);
    x.iter()
        .enumerate()
        .map(|(r, row)| {
            let mut candidates: Vec<(f64, usize, i64)> = (start..end)
                .filter(|&p| row[p] == mask)
                .map(|p| {
                    let at = (r * seq + p) * vocab;
                    let l = &logits.data[at..at + vocab];
                    let (best, &top) =
                        (l.iter().enumerate()).fold((0, &f64::NEG_INFINITY), |acc, (i, v)| {
                            if *v > *acc.1 {
                                (i, v)
                            } else {
                                acc
                            }
                        });
                    let confidence = if scores.is_empty() {
                        1.0 / l.iter().map(|v| (v - top).exp()).sum::<f64>()
                    } else {
                        scores[r * seq + p]
                    };
                    (confidence, p, best as i64)
                })
                .collect();
            candidates.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            candidates.truncate(n);
            let mut picks: Vec<(usize, i64)> = candidates.iter().map(|c| (c.1, c.2)).collect();
            picks.sort();
            picks
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfer_counts_spread_the_remainder_over_the_first_steps() {
        assert_eq!(transfer_counts(10, 4), vec![3, 3, 2, 2]);
        assert_eq!(transfer_counts(4, 4), vec![1, 1, 1, 1]);
        assert_eq!(transfer_counts(2, 4), vec![1, 1, 0, 0]);
        assert_eq!(transfer_counts(8, 1), vec![8]);
    }

    #[test]
    fn unmask_keeps_the_most_confident_masked_positions_of_the_block() {
        let m = 9;
        // One row: positions 0 (prompt), 1..4 masked; vocab 3.
        let x = vec![vec![2, m, m, m, m]];
        #[rustfmt::skip]
        let logits = Tensor::new(DType::F32, vec![1, 5, 3], vec![
            0.0, 0.0, 0.0,
            0.0, 5.0, 0.0, // pos 1: token 1, very confident
            1.0, 1.0, 0.0, // pos 2: tie 0/1 -> 0, less confident
            0.0, 0.0, 3.0, // pos 3: token 2
            9.0, 0.0, 0.0, // pos 4: outside the block
        ]);
        let picks = unmask(&x, &logits, 3, (1, 4), 2, m, &[]);
        assert_eq!(picks, vec![vec![(1, 1), (3, 2)]]);
        let picks = unmask(&x, &logits, 3, (1, 4), 3, m, &[]);
        assert_eq!(picks, vec![vec![(1, 1), (2, 0), (3, 2)]]);
        // Random scores rank instead of the probabilities.
        let scores = [0.0, 0.1, 0.9, 0.2, 0.0];
        let picks = unmask(&x, &logits, 3, (1, 4), 1, m, &scores);
        assert_eq!(picks, vec![vec![(2, 0)]]);
    }
}
