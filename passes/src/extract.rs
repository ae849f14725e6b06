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
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::rc::Rc;

/// Updates per class before giving up on a fixpoint; greedy choices converge in a few
/// passes on real graphs, the bound only guards against oscillation.
const MAX_UPDATES_PER_CLASS: usize = 64;

struct Best {
    node: usize,
    total: Cost,
    /// Every class in the chosen subterm (this one included) with its node's cost.
    uses: Rc<BTreeMap<Id, Cost>>,
}

/// The chosen node of every class that has a finite-cost, acyclic choice.
pub struct DagChoice {
    best: HashMap<Id, Best>,
}

impl DagChoice {
    /// Greedy DAG extraction over all of `egraph` with per-node costs `cost(class, node)`.
    pub fn new(egraph: &EGraph, cost: impl Fn(Id, &Attn) -> Cost) -> DagChoice {
        let mut best: HashMap<Id, Best> = HashMap::new();
        let mut queue: VecDeque<Id> = egraph.classes().map(|c| c.id).collect();
        let mut queued: BTreeSet<Id> = queue.iter().copied().collect();
        let mut updates: HashMap<Id, usize> = HashMap::new();
        while let Some(id) = queue.pop_front() {
            queued.remove(&id);
            let Some(candidate) = Self::evaluate(egraph, id, &best, &cost) else {
                continue;
            };
            let changed = match best.get(&id) {
                Some(old) => old.node != candidate.node || old.total != candidate.total,
                None => true,
            };
            if !changed {
                continue;
            }
            let n = updates.entry(id).or_default();
            *n += 1;
            if *n > MAX_UPDATES_PER_CLASS {
                continue;
            }
            best.insert(id, candidate);
            for parent in egraph[id].parents() {
                let p = egraph.find(parent);
                if queued.insert(p) {
                    queue.push_back(p);
                }
            }
        }
        DagChoice { best }
    }

    /// The cheapest acyclic node of class `id` given its children's current choices.
    fn evaluate(
        egraph: &EGraph,
        id: Id,
        best: &HashMap<Id, Best>,
        cost: &impl Fn(Id, &Attn) -> Cost,
    ) -> Option<Best> {
        let mut winner: Option<Best> = None;
        for (i, node) in egraph[id].nodes.iter().enumerate() {
            let children: Option<Vec<&Best>> = node
                .children()
                .iter()
                .map(|&c| best.get(&egraph.find(c)))
                .collect();
            let Some(children) = children else { continue };
            if children.iter().any(|c| c.uses.contains_key(&id)) {
                continue; // choosing this node would close a cycle
            }
            let own = cost(id, node);
            if own == Cost::INFINITE {
                continue;
            }
            // Start from the largest child set: most nodes extend one operand chain.
            let mut sorted = children.clone();
            sorted.sort_by_key(|c| std::cmp::Reverse(c.uses.len()));
            let mut uses: Rc<BTreeMap<Id, Cost>> = match sorted.first() {
                Some(c) => Rc::clone(&c.uses),
                None => Rc::new(BTreeMap::new()),
            };
            {
                let map = Rc::make_mut(&mut uses);
                for c in sorted.iter().skip(1) {
                    for (&k, &v) in c.uses.iter() {
                        map.entry(k).or_insert(v);
                    }
                }
                map.insert(id, own);
            }
            let total: Cost = uses.values().copied().sum();
            if winner.as_ref().is_none_or(|w| total < w.total) {
                winner = Some(Best {
                    node: i,
                    total,
                    uses,
                });
            }
        }
        winner
    }

    /// The chosen node of class `id`; `None` if no acyclic finite choice exists.
    pub fn node<'a>(&self, egraph: &'a EGraph, id: Id) -> Option<&'a Attn> {
        let id = egraph.find(id);
        self.best.get(&id).map(|b| &egraph[id].nodes[b.node])
    }

    /// The DAG cost of everything `roots` use, each class counted once.
    pub fn cost_of(&self, egraph: &EGraph, roots: &[Id]) -> Cost {
        let mut all: BTreeMap<Id, Cost> = BTreeMap::new();
        for &r in roots {
            if let Some(b) = self.best.get(&egraph.find(r)) {
                all.extend(b.uses.iter().map(|(&k, &v)| (k, v)));
            }
        }
        all.values().copied().sum()
    }
}
