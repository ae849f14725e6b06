//! `fusion`: plain attention into fused attention, GQA and MLA.

use super::Rule;

pub fn rules() -> Vec<Rule> {
    Vec::new()
}
