//! `attnc-passes`: the optimizer — e-graph language, rule families, cost models and
//! extraction. Its first rules arrive with the optimizer issue; the crate exists now so
//! the dependency order `ir ← passes ← backends ← src` is fixed from the start.
