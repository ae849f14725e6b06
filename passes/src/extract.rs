//! DAG extraction: the cost of a program counts each shared subterm once.
//!
//! egg's `Extractor` sums tree costs, so a value used twice (the normed input feeding
//! Q, K and V; a weight read by two forms) is paid twice and sharing looks expensive.
//! Here each class's best choice carries the *set* of classes its subterm uses, and
//! its cost is the sum over that set (greedy DAG extraction, as in extraction-gym's
//! `faster-greedy-dag`). A choice whose set contains its own class would be a cycle
//! and is never taken.

use crate::{Attn, Cost, EGraph};
use egg::{Id, Language};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::rc::Rc;

/// Updates per class before giving up on a fixpoint; greedy choices converge in a few
/// passes on real graphs, the bound only guards against oscillation.
const MAX_UPDATES_PER_CLASS: usize = 64;
/// Whole-graph sweeps after the worklist, each in class order.
const MAX_SWEEPS: usize = 8;

/// A set of classes by dense index, one bit each: unions are word-wise ORs, which
/// keeps a 32-layer model (thousands of classes per set) cheap.
#[derive(Clone, PartialEq)]
struct ClassSet(Vec<u64>);

impl ClassSet {
    fn empty(n: usize) -> ClassSet {
        ClassSet(vec![0; n.div_ceil(64)])
    }

    fn contains(&self, i: usize) -> bool {
        self.0[i / 64] >> (i % 64) & 1 == 1
    }

    fn insert(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }

    fn union_with(&mut self, other: &ClassSet) {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a |= b;
        }
    }

    fn members(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().enumerate().flat_map(|(w, &bits)| {
            let mut bits = bits;
            std::iter::from_fn(move || {
                (bits != 0).then(|| {
                    let b = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    w * 64 + b
                })
            })
        })
    }
}

struct Best {
    node: usize,
    /// This node's own cost.
    own: Cost,
    total: Cost,
    /// Every class in the chosen subterm, this one included.
    uses: Rc<ClassSet>,
}

/// The chosen node of every class that has a finite-cost, acyclic choice.
pub struct DagChoice {
    index: HashMap<Id, usize>,
    best: Vec<Option<Best>>,
}

impl DagChoice {
    /// Greedy DAG extraction over all of `egraph` with per-node costs `cost(class, node)`.
    pub fn new(egraph: &EGraph, cost: impl Fn(Id, &Attn) -> Cost) -> DagChoice {
        let ids: Vec<Id> = egraph.classes().map(|c| c.id).collect();
        let index: HashMap<Id, usize> = ids.iter().enumerate().map(|(i, &id)| (id, i)).collect();
        let mut choice = DagChoice {
            best: (0..ids.len()).map(|_| None).collect(),
            index,
        };
        // Leaves first: everything else waits for its children.
        let mut queue: VecDeque<usize> = (0..ids.len())
            .filter(|&i| egraph[ids[i]].nodes.iter().any(|n| n.is_leaf()))
            .collect();
        let mut queued: BTreeSet<usize> = queue.iter().copied().collect();
        let mut updates = vec![0usize; ids.len()];
        while let Some(i) = queue.pop_front() {
            queued.remove(&i);
            let Some(candidate) = choice.evaluate(egraph, ids[i], i, &cost) else {
                continue;
            };
            let changed = match &choice.best[i] {
                Some(old) => old.node != candidate.node || old.total != candidate.total,
                None => true,
            };
            if !changed || updates[i] >= MAX_UPDATES_PER_CLASS {
                continue;
            }
            updates[i] += 1;
            choice.best[i] = Some(candidate);
            for parent in egraph[ids[i]].parents() {
                let p = choice.index[&egraph.find(parent)];
                if queued.insert(p) {
                    queue.push_back(p);
                }
            }
        }
        // Parent links reach every user, but a choice made while a child was still
        // unknown is only revisited when that child changes; sweep until stable.
        for _ in 0..MAX_SWEEPS {
            let mut changed = false;
            for (i, &id) in ids.iter().enumerate() {
                let Some(candidate) = choice.evaluate(egraph, id, i, &cost) else {
                    continue;
                };
                let better = match &choice.best[i] {
                    Some(old) => candidate.total < old.total,
                    None => true,
                };
                if better {
                    choice.best[i] = Some(candidate);
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        choice
    }

    fn best_of(&self, egraph: &EGraph, id: Id) -> Option<&Best> {
        self.best[*self.index.get(&egraph.find(id))?].as_ref()
    }

    /// The cheapest acyclic node of class `id` (dense index `i`) given its children's
    /// current choices.
    fn evaluate(
        &self,
        egraph: &EGraph,
        id: Id,
        i: usize,
        cost: &impl Fn(Id, &Attn) -> Cost,
    ) -> Option<Best> {
        let mut winner: Option<Best> = None;
        for (n, node) in egraph[id].nodes.iter().enumerate() {
            let children: Option<Vec<&Best>> = node
                .children()
                .iter()
                .map(|&c| self.best_of(egraph, c))
                .collect();
            let Some(children) = children else { continue };
            if children.iter().any(|c| c.uses.contains(i)) {
                continue; // choosing this node would close a cycle
            }
            let own = cost(id, node);
            if own == Cost::INFINITE {
                continue;
            }
            let mut uses = match children.first() {
                Some(c) => ClassSet::clone(&c.uses),
                None => ClassSet::empty(self.best.len()),
            };
            for c in children.iter().skip(1) {
                uses.union_with(&c.uses);
            }
            uses.insert(i);
            let total: Cost = uses
                .members()
                .map(|m| match &self.best[m] {
                    _ if m == i => own,
                    Some(b) => b.own,
                    None => Cost(0.0), // unreachable: every member has a choice
                })
                .sum();
            if winner.as_ref().is_none_or(|w| total < w.total) {
                winner = Some(Best {
                    node: n,
                    own,
                    total,
                    uses: Rc::new(uses),
                });
            }
        }
        winner
    }

    /// The chosen node of class `id`; `None` if no acyclic finite choice exists.
    pub fn node<'a>(&self, egraph: &'a EGraph, id: Id) -> Option<&'a Attn> {
        let b = self.best_of(egraph, id)?;
        Some(&egraph[egraph.find(id)].nodes[b.node])
    }
}
