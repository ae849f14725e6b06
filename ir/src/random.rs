//! Seeded random inputs and weights: the same seed gives the same model everywhere
//! (interpreter, JIT, tests), independent of any crate's RNG version.

use crate::{DType, Graph, NodeId, Op, Tensor};
use std::collections::HashMap;

/// SplitMix64: tiny, fast, and good enough for test data.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform integer in [0, n).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// One value per input and param of `graph`, keyed by name, drawn from `seed`.
///
/// Weights are scaled so activations stay O(1) through deep stacks: matrices get
/// N(0, 1/fan_in), embedding tables N(0, 1/d), norm scales 1 + N(0, 0.1²), vectors
/// N(0, 0.02²). Integer inputs
/// that index a table (embedding, gather) are drawn below the table's size; an input
/// named `segments` (document ids) is packed documents: ids that start at 0 and step
/// up by one with probability 1/16 at each position of a row.
pub fn random_bindings(graph: &Graph, seed: u64) -> HashMap<String, Tensor> {
    let mut out = HashMap::new();
    for id in graph.node_ids() {
        if let Some((name, t)) = random_binding(graph, id, seed) {
            out.insert(name, t);
        }
    }
    out
}

/// The tensor [`random_bindings`] binds to input or param `id` (with its name), one
/// at a time: for callers that convert each and drop it before making the next.
pub fn random_binding(graph: &Graph, id: NodeId, seed: u64) -> Option<(String, Tensor)> {
    let (name, is_param) = match &graph.node(id).op {
        Op::Input { name } => (name, false),
        Op::Param { name } => (name, true),
        _ => return None,
    };
    // Each tensor gets its own stream so adding one input does not shift the others.
    let mut rng = Rng::new(seed ^ fnv1a(name.as_bytes()));
    Some((name.clone(), random_tensor(graph, id, is_param, &mut rng)))
}

fn random_tensor(graph: &Graph, id: NodeId, is_param: bool, rng: &mut Rng) -> Tensor {
    let ty = &graph.node(id).ty;
    let shape = graph.sizes(id);
    let n: usize = shape.iter().product();
    let role = role_of(graph, id);
    let data: Vec<f64> = match ty.dtype {
        DType::Bool => (0..n).map(|_| rng.below(2) as f64).collect(),
        DType::I32 | DType::I64 => {
            let bound = match role {
                Role::Index(bound) => bound,
                _ => 2,
            };
            (0..n).map(|_| rng.below(bound) as f64).collect()
        }
        _ => {
            let (mean, std) = match (is_param, role, shape.len()) {
                (_, Role::NormScale, _) => (1.0, 0.1),
                (true, _, 0 | 1) => (0.0, 0.02),
                // Rows of width d with variance 1/d: a tied output head then gives
                // O(1) logits, so f32 rounding stays far below the check tolerance.
                (true, Role::Table, _) => {
                    (0.0, 1.0 / (shape[shape.len() - 1].max(1) as f64).sqrt())
                }
                (true, _, _) => (0.0, 1.0 / (shape[shape.len() - 2].max(1) as f64).sqrt()),
                (false, _, _) => (0.0, 1.0),
            };
            (0..n).map(|_| mean + std * rng.normal()).collect()
        }
    };
    let name = match &graph.node(id).op {
        Op::Input { name } => name.as_str(),
        _ => "",
    };
    let data = if name == "segments" && ty.dtype.is_int() && !shape.is_empty() {
        let row = shape[shape.len() - 1].max(1);
        let mut doc = 0.0;
        (0..n)
            .map(|i| {
                if i % row == 0 {
                    doc = 0.0;
                } else if rng.below(16) == 0 {
                    doc += 1.0;
                }
                doc
            })
            .collect()
    } else {
        data
    };
    let mut t = Tensor::new(ty.dtype, shape, data);
    crate::interp::round_to_dtype(&mut t);
    t
}

#[derive(Clone, Copy, PartialEq)]
enum Role {
    Plain,
    NormScale,
    Table,
    Index(u64),
}

/// How the first user consumes a source: decides a sensible distribution.
fn role_of(graph: &Graph, id: NodeId) -> Role {
    for user in graph.users(id) {
        let operands = graph.operands(user);
        let slot = operands.iter().position(|&o| o == id).unwrap_or(0);
        match (&graph.node(user).op, slot) {
            (Op::LayerNorm { .. } | Op::RmsNorm { .. }, 1) => return Role::NormScale,
            (Op::Embedding, 0) => return Role::Table,
            (Op::Embedding, 1) => return Role::Index(graph.sizes(operands[0])[0] as u64),
            (Op::Gather { axis }, 1) => return Role::Index(graph.sizes(operands[0])[*axis] as u64),
            (Op::ScatterAdd { axis }, 1) => {
                return Role::Index(graph.sizes(operands[0])[*axis] as u64)
            }
            _ => {}
        }
    }
    Role::Plain
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}
