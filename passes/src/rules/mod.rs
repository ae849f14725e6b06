//! Rule families. Every rule is exact (both sides compute the same function, up to
//! floating-point reassociation) and has a test that evaluates both sides in the
//! interpreter on seeded random inputs.
//!
//! A rule is a searcher — an egg [`Pattern`] or a Rust function over one e-class —
//! and a builder that turns each match into a candidate term ([`Build`]). The builder
//! checks every node's type before anything is added, so an invalid candidate is
//! simply not applied and the analysis never sees an ill-typed node.

pub mod algebra;
pub mod fusion;
pub mod linear;
pub mod moe;
pub mod sparse;

use crate::{type_with, Attn, Attr, EGraph, Source, TypeAnalysis};
use attnc_ir::{DType, Shape, TensorType};
use egg::{ENodeOrVar, Id, Language, Pattern, PatternAst, RecExpr, Rewrite, Subst, Symbol, Var};
use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// Identities of the plain ops: scalars through linear ops, softmax written out,
    /// layout pairs that cancel, projections that share an input.
    Algebra,
    /// Plain attention into fused attention, GQA, MLA absorption.
    Fusion,
    /// Masked attention into block-sparse attention over the mask's non-empty blocks.
    Sparse,
    /// Kernelized attention into linear attention; its chunkwise and recurrent forms.
    Linear,
    /// Dense-gated mixtures of experts into the sparse dispatch.
    Moe,
}

impl Family {
    pub const ALL: [Family; 5] = [
        Family::Algebra,
        Family::Fusion,
        Family::Sparse,
        Family::Linear,
        Family::Moe,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Family::Algebra => "algebra",
            Family::Fusion => "fusion",
            Family::Sparse => "sparse",
            Family::Linear => "linear",
            Family::Moe => "moe",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One named rewrite and the identity it implements.
pub struct Rule {
    pub name: &'static str,
    pub family: Family,
    /// The identity, as in the rule's comment: `matmul(a·c, b) == matmul(a, b)·c`.
    pub identity: &'static str,
    pub rewrite: Rewrite<Attn, TypeAnalysis>,
}

/// Every rule of every family, in a fixed order.
pub fn all_rules() -> Vec<Rule> {
    let mut rules = algebra::rules();
    rules.extend(fusion::rules());
    rules.extend(sparse::rules());
    rules.extend(linear::rules());
    rules.extend(moe::rules());
    rules
}

/// Which rules run: all by default; `--rules` edits the set with a comma list of
/// family or rule names, each `-name` (disable) or `+name`/`name` (enable). A list
/// that starts with a plain name starts from nothing: `--rules fusion` runs only the
/// fusion family, `--rules -algebra` runs all but algebra, `none` runs nothing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RuleSelection {
    /// `(enable, name)` edits in order, applied to the full set.
    edits: Vec<(bool, String)>,
    start_empty: bool,
}

impl RuleSelection {
    pub fn all() -> RuleSelection {
        RuleSelection::default()
    }

    pub fn parse(text: &str) -> Result<RuleSelection, String> {
        let known = all_rules();
        let mut sel = RuleSelection::default();
        for (i, item) in text.split(',').map(str::trim).enumerate() {
            if item.is_empty() {
                continue;
            }
            let (enable, name) = match item.as_bytes()[0] {
                b'-' => (false, &item[1..]),
                b'+' => (true, &item[1..]),
                _ => {
                    if i == 0 {
                        sel.start_empty = true;
                    }
                    (true, item)
                }
            };
            match name {
                "all" => {
                    sel.edits.clear();
                    sel.start_empty = !enable;
                    continue;
                }
                "none" => {
                    sel.edits.clear();
                    sel.start_empty = enable;
                    continue;
                }
                _ => {}
            }
            let is_family = Family::ALL.iter().any(|f| f.name() == name);
            if !is_family && !known.iter().any(|r| r.name == name) {
                let mut names: Vec<&str> = Family::ALL.iter().map(|f| f.name()).collect();
                names.extend(known.iter().map(|r| r.name));
                let hint = names
                    .iter()
                    .min_by_key(|n| strsim::levenshtein(n, name))
                    .filter(|n| strsim::levenshtein(n, name) <= 3)
                    .map(|n| format!("; did you mean `{n}`?"))
                    .unwrap_or_default();
                return Err(format!(
                    "unknown rule or family `{name}`{hint} (families: algebra, fusion, sparse, linear, moe; \
                     `attnc inspect --list-rules` lists the rules)"
                ));
            }
            sel.edits.push((enable, name.to_string()));
        }
        Ok(sel)
    }

    pub fn enabled(&self, rule: &Rule) -> bool {
        let mut on = !self.start_empty;
        for (enable, name) in &self.edits {
            if name == rule.name || name == rule.family.name() {
                on = *enable;
            }
        }
        on
    }

    /// The selected rules, in the fixed order.
    pub fn rules(&self) -> Vec<Rule> {
        all_rules()
            .into_iter()
            .filter(|r| self.enabled(r))
            .collect()
    }
}

// ---------------------------------------------------------------------------------
// Candidates.

/// A candidate term under construction: nodes over existing classes, each checked
/// for its type as it is added. `finish` gives the pattern and substitution that
/// `EGraph::union_instantiations` adds (which also records the rule for
/// explanations).
pub struct Build<'e> {
    egraph: &'e EGraph,
    ast: RecExpr<ENodeOrVar<Attn>>,
    bindings: Vec<(Var, Id)>,
    types: Vec<Option<TensorType>>,
    attrs: Vec<Option<Attr>>,
    /// The matched node the candidate replaces, when the searcher is not a pattern:
    /// explanations then start from that node rather than from its class.
    from: Option<Attn>,
}

/// A finished candidate: its pattern, the classes its variables stand for, and the
/// pattern of the node it replaces (if not the searcher's).
type Finished = (PatternAst<Attn>, Vec<(Var, Id)>, Option<PatternAst<Attn>>);

/// A node index in a [`Build`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct B(Id);

impl<'e> Build<'e> {
    pub fn new(egraph: &'e EGraph) -> Build<'e> {
        Build {
            egraph,
            ast: RecExpr::default(),
            bindings: Vec::new(),
            types: Vec::new(),
            attrs: Vec::new(),
            from: None,
        }
    }

    /// A build that replaces `node` (a node of the matched class).
    pub fn replacing(egraph: &'e EGraph, node: &Attn) -> Build<'e> {
        let mut b = Build::new(egraph);
        b.from = Some(node.clone());
        b
    }

    fn push(&mut self, n: ENodeOrVar<Attn>, ty: Option<TensorType>, attr: Option<Attr>) -> B {
        self.types.push(ty);
        self.attrs.push(attr);
        B(self.ast.add(n))
    }

    /// An existing class.
    pub fn class(&mut self, id: Id) -> B {
        let var = Var::from_str(&format!("?b{}", self.ast.len())).expect("a valid var name");
        self.bindings.push((var, id));
        let id = self.egraph.find(id);
        let ty = self.egraph[id].data.ty.clone();
        let attr = crate::attr_in(self.egraph, id).cloned();
        self.push(ENodeOrVar::Var(var), ty, attr)
    }

    pub fn attr(&mut self, a: Attr) -> B {
        self.push(ENodeOrVar::ENode(Attn::Attr(a.clone())), None, Some(a))
    }

    /// A scalar constant of `dtype`.
    pub fn constant(&mut self, value: f64, dtype: DType) -> Option<B> {
        self.node(Attn::Source(Source {
            kind: crate::SourceKind::Const(crate::F64::new(value)),
            ty: TensorType::new(Shape::scalar(), dtype),
        }))
    }

    /// A node whose children are `B` indices of this build; `None` if it is ill-typed.
    pub fn node(&mut self, node: Attn) -> Option<B> {
        let ty = type_with(
            &self.egraph.analysis.dims,
            &node,
            |c| self.attrs[usize::from(c)].clone(),
            |c| self.types[usize::from(c)].clone(),
        )
        .ok()?;
        Some(self.push(ENodeOrVar::ENode(node), ty, None))
    }

    /// `op(attr, operands…)` through [`Attn::of_op`].
    pub fn op(&mut self, op: &attnc_ir::Op, operands: &[B]) -> Option<B> {
        let mut children: Vec<Id> = Vec::new();
        if let Some(a) = crate::attr_of(op) {
            children.push(self.attr(a).0);
        }
        children.extend(operands.iter().map(|b| b.0));
        let node = Attn::of_op(op, &children)?;
        self.node(node)
    }

    pub fn ty(&self, b: B) -> Option<&TensorType> {
        self.types[usize::from(b.0)].as_ref()
    }

    /// The attribute at `b`, when `b` is (or binds a class that is) an attribute.
    pub fn attr_at(&self, b: B) -> Option<&Attr> {
        self.attrs[usize::from(b.0)].as_ref()
    }

    pub fn egraph(&self) -> &'e EGraph {
        self.egraph
    }

    /// The candidate, its bindings, and the pattern of the node it replaces.
    fn finish(self) -> Finished {
        let from = self.from.map(|node| {
            let mut ast: PatternAst<Attn> = RecExpr::default();
            let mut bindings = Vec::new();
            let node = node.map_children(|c| {
                let v = Var::from_str(&format!("?f{}", usize::from(c))).expect("a valid var name");
                bindings.push((v, c));
                ast.add(ENodeOrVar::Var(v))
            });
            ast.add(ENodeOrVar::ENode(node));
            (ast, bindings)
        });
        let mut bindings = self.bindings;
        let from = from.map(|(ast, b)| {
            bindings.extend(b);
            ast
        });
        (self.ast, bindings, from)
    }
}

/// What a rule's builder returns: finished candidates for one match.
pub type Candidates<'e> = Vec<Build<'e>>;

type BuildFn = dyn for<'e> Fn(&'e EGraph, Id, &Subst) -> Candidates<'e> + Send + Sync;

/// The applier every rule uses: build, check, union with the matched class.
struct Apply(Box<BuildFn>);

impl egg::Applier<Attn, TypeAnalysis> for Apply {
    fn apply_one(
        &self,
        egraph: &mut EGraph,
        eclass: Id,
        subst: &Subst,
        searcher_ast: Option<&PatternAst<Attn>>,
        rule_name: Symbol,
    ) -> Vec<Id> {
        let built: Vec<Finished> = (self.0)(egraph, eclass, subst)
            .into_iter()
            .map(Build::finish)
            .collect();
        let mut changed = Vec::new();
        for (to, own, from_node) in built {
            // The searcher's bindings plus the build's own (`?bN` never clash).
            let mut all = subst.clone();
            for (var, id) in own {
                all.insert(var, id);
            }
            let root: Var = "?root".parse().expect("a valid var name");
            all.insert(root, eclass);
            let root_ast: PatternAst<Attn> = {
                let mut r = RecExpr::default();
                r.add(ENodeOrVar::Var(root));
                r
            };
            let from = from_node.as_ref().or(searcher_ast).unwrap_or(&root_ast);
            let (id, did) = egraph.union_instantiations(from, &to, &all, rule_name);
            if did {
                egraph.analysis.fired.push((rule_name, eclass));
                changed.push(id);
            }
        }
        changed
    }
}

/// A searcher written in Rust: the substitutions that match at one class.
type SearchFn = dyn Fn(&EGraph, Id) -> Vec<Subst> + Send + Sync;

struct Search {
    f: Box<SearchFn>,
}

impl egg::Searcher<Attn, TypeAnalysis> for Search {
    fn search_eclass_with_limit(
        &self,
        egraph: &EGraph,
        eclass: Id,
        limit: usize,
    ) -> Option<egg::SearchMatches<'_, Attn>> {
        let mut substs = (self.f)(egraph, eclass);
        substs.truncate(limit);
        (!substs.is_empty()).then_some(egg::SearchMatches {
            eclass,
            substs,
            ast: None,
        })
    }

    fn vars(&self) -> Vec<Var> {
        Vec::new()
    }
}

/// A rule whose left side is an egg pattern.
pub fn pattern_rule(
    name: &'static str,
    family: Family,
    identity: &'static str,
    lhs: &str,
    build: impl for<'e> Fn(&'e EGraph, Id, &Subst) -> Candidates<'e> + Send + Sync + 'static,
) -> Rule {
    let lhs: Pattern<Attn> = lhs
        .parse()
        .unwrap_or_else(|e| panic!("rule `{name}`: bad pattern: {e}"));
    rule(name, family, identity, lhs, build)
}

/// A rule whose left side is found by a Rust function over one class.
pub fn class_rule(
    name: &'static str,
    family: Family,
    identity: &'static str,
    search: impl Fn(&EGraph, Id) -> Vec<Subst> + Send + Sync + 'static,
    build: impl for<'e> Fn(&'e EGraph, Id, &Subst) -> Candidates<'e> + Send + Sync + 'static,
) -> Rule {
    let search = Search {
        f: Box::new(search),
    };
    rule(name, family, identity, search, build)
}

fn rule(
    name: &'static str,
    family: Family,
    identity: &'static str,
    searcher: impl egg::Searcher<Attn, TypeAnalysis> + Send + Sync + 'static,
    build: impl for<'e> Fn(&'e EGraph, Id, &Subst) -> Candidates<'e> + Send + Sync + 'static,
) -> Rule {
    let rewrite = Rewrite::new(name, searcher, Apply(Box::new(build)))
        .unwrap_or_else(|e| panic!("rule `{name}`: {e}"));
    Rule {
        name,
        family,
        identity,
        rewrite,
    }
}

// ---------------------------------------------------------------------------------
// Helpers the families share.

/// A class searcher's result: one empty substitution when its rule applies.
pub fn found(yes: bool) -> Vec<Subst> {
    if yes {
        vec![Subst::default()]
    } else {
        Vec::new()
    }
}

/// `?name` as a var.
pub fn var(name: &str) -> Var {
    name.parse().expect("a valid var name")
}

/// The class bound to `name` in `subst`.
pub fn bound(subst: &Subst, name: &str) -> Option<Id> {
    subst.get(var(name)).copied()
}

/// The value of class `id` if it is a scalar constant.
pub fn scalar(egraph: &EGraph, id: Id) -> Option<f64> {
    if egraph[id].data.ty.as_ref()?.rank() != 0 {
        return None;
    }
    egraph[id].nodes.iter().find_map(|n| match n {
        Attn::Source(Source {
            kind: crate::SourceKind::Const(v),
            ..
        }) => Some(v.get()),
        _ => None,
    })
}

/// The concrete sizes of class `id`'s type.
pub fn sizes(egraph: &EGraph, id: Id) -> Option<Vec<u64>> {
    let ty = egraph[id].data.ty.as_ref()?;
    egraph.analysis.dims.resolve(&ty.shape).ok()
}

/// The type of class `id`.
pub fn type_in(egraph: &EGraph, id: Id) -> Option<&TensorType> {
    egraph[id].data.ty.as_ref()
}
