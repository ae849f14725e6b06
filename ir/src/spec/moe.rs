//! Mixture-of-experts fields of a layer, resolved: the router, the experts' MLP, the
//! shared experts. Field names follow the Hugging Face configs (`norm_topk_prob`,
//! `scoring_func`, `routed_scaling_factor`) where one exists.

use super::{FfnFields, FfnKind, Spec};
use crate::IrError;

/// How tokens and experts are matched.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Router {
    /// Each token takes its `k` highest-scoring experts (Mixtral, DeepSeekMoE,
    /// Qwen2-MoE); ties go to the lower expert index.
    TopK { k: u64 },
    /// Switch Transformer: each token its best expert, each expert at most
    /// `capacity` tokens, first come (in token order) first served; a token over
    /// capacity is dropped — the layer adds nothing for it and the residual carries it.
    Switch { capacity: u64 },
    /// Expert choice (Zhou et al., 2022): each expert takes its `capacity`
    /// highest-scoring tokens (ties: the earlier token); a token may be taken by any
    /// number of experts, or none.
    ExpertChoice { capacity: u64 },
}

/// Router scores from the logits `x·W_router`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scoring {
    /// Softmax over the experts.
    Softmax,
    /// Each expert's own sigmoid (DeepSeek-V3).
    Sigmoid,
}

/// Shared experts: always on, together one MLP of `hidden` (`n × moe_hidden` for
/// DeepSeekMoE's `n` shared experts), scaled by `sigmoid(x·w)` when `gate` (Qwen2-MoE).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedExperts {
    pub hidden: u64,
    pub gate: bool,
}

/// A resolved mixture of experts: `y = Σ_e g_e(x)·FFN_e(x) [+ shared(x)]` with `g`
/// zero for unselected experts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Moe {
    pub experts: u64,
    pub router: Router,
    /// The experts' MLP: [`FfnKind::Swiglu`], `Gelu`, `GeluTanh` or `Relu`.
    pub expert_kind: FfnKind,
    pub scoring: Scoring,
    /// Top-k gates divided by their sum.
    pub norm_topk_prob: bool,
    /// Routed gates multiplied by this.
    pub routed_scaling_factor: f64,
    /// A learned per-expert bias added to the scores for selection only.
    pub selection_bias: bool,
    pub shared: Option<SharedExperts>,
}

impl Spec {
    /// The mixture of a layer whose merged FFN fields are `f` (`None` for a dense
    /// FFN). MoE fields on a dense layer are an error unless the base `[ffn]` is the
    /// mixture they came from (a `first_k_dense` override keeps them).
    pub(super) fn moe(
        &self,
        f: &FfnFields,
        kind: FfnKind,
        hidden: u64,
        err: &dyn Fn(String) -> IrError,
    ) -> Result<Option<Moe>, IrError> {
        let set: Vec<&str> = [
            ("experts", f.experts.is_some()),
            ("top_k", f.top_k.is_some()),
            ("shared_experts", f.shared_experts.is_some()),
            ("shared_hidden", f.shared_hidden.is_some()),
            ("shared_expert_gate", f.shared_expert_gate.is_some()),
            ("router", f.router.is_some()),
            ("capacity_factor", f.capacity_factor.is_some()),
            ("expert_kind", f.expert_kind.is_some()),
            ("scoring_func", f.scoring_func.is_some()),
            ("norm_topk_prob", f.norm_topk_prob.is_some()),
            ("routed_scaling_factor", f.routed_scaling_factor.is_some()),
            ("selection_bias", f.selection_bias.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, on)| on.then_some(name))
        .collect();
        if kind != FfnKind::Moe {
            if !set.is_empty() && self.ffn.kind != Some(FfnKind::Moe) {
                return Err(err(format!(
                    "`ffn.{}` needs `ffn.kind = \"moe\"`",
                    set.join("` / `ffn.")
                )));
            }
            return Ok(None);
        }
        if f.bias == Some(true) {
            return Err(err(
                "mixture-of-experts MLPs have no biases here: remove `ffn.bias`".into(),
            ));
        }
        let count = |name: &str, v: Option<u64>| -> Result<Option<u64>, IrError> {
            match v {
                Some(0) => Err(err(format!("`ffn.{name}` must be at least 1"))),
                Some(v) if v > super::MAX_DIM => {
                    Err(err(format!("`ffn.{name}` = {v} is too large")))
                }
                v => Ok(v),
            }
        };
        let experts = count("experts", f.experts)?
            .ok_or_else(|| err("`ffn.kind = \"moe\"` needs `ffn.experts`".into()))?;
        if experts < 2 {
            return Err(err(format!(
                "`ffn.experts` = {experts}: a mixture needs at least 2 experts"
            )));
        }
        let tokens = self.dim("batch")?.saturating_mul(self.dim("seq")?);
        let factor = |default: f64| -> Result<f64, IrError> {
            let cf = f.capacity_factor.unwrap_or(default);
            if !(cf > 0.0 && cf.is_finite()) {
                return Err(err(format!(
                    "`ffn.capacity_factor` must be a positive number, got {cf}"
                )));
            }
            Ok(cf)
        };
        // `capacity_factor × tokens / experts`, rounded up, at least 1, at most all.
        let capacity =
            |cf: f64| ((cf * tokens as f64 / experts as f64).ceil() as u64).clamp(1, tokens);
        let top_k = count("top_k", f.top_k)?;
        let router_name = f.router.as_deref().map(str::trim).unwrap_or("softmax_topk");
        let router = match router_name {
            "softmax_topk" => {
                let k = top_k.ok_or_else(|| {
                    err("the `softmax_topk` router needs `ffn.top_k`".into())
                })?;
                if k > experts {
                    return Err(err(format!(
                        "`ffn.top_k` = {k} is more than the {experts} experts"
                    )));
                }
                if f.capacity_factor.is_some() {
                    return Err(err(
                        "`ffn.capacity_factor` is for the `switch` and `expert_choice` routers"
                            .into(),
                    ));
                }
                Router::TopK { k }
            }
            "switch" => {
                if top_k.is_some_and(|k| k != 1) {
                    return Err(err(
                        "the `switch` router is top-1: remove `ffn.top_k` or set it to 1".into(),
                    ));
                }
                Router::Switch {
                    capacity: capacity(factor(1.0)?),
                }
            }
            "expert_choice" => {
                if top_k.is_some() {
                    return Err(err(
                        "the `expert_choice` router has no `ffn.top_k`: experts pick `capacity_factor × tokens / experts` tokens each"
                            .into(),
                    ));
                }
                Router::ExpertChoice {
                    capacity: capacity(factor(2.0)?),
                }
            }
            other => {
                return Err(err(format!(
                    "`ffn.router` = {other:?}: expected \"softmax_topk\", \"switch\" or \"expert_choice\""
                )))
            }
        };
        let top_k_only = |name: &str, on: bool| -> Result<(), IrError> {
            if on && !matches!(router, Router::TopK { .. }) {
                return Err(err(format!(
                    "`ffn.{name}` works with the `softmax_topk` router, not `{router_name}`"
                )));
            }
            Ok(())
        };
        top_k_only("norm_topk_prob", f.norm_topk_prob == Some(true))?;
        top_k_only("selection_bias", f.selection_bias == Some(true))?;
        let expert_kind = f.expert_kind.unwrap_or(FfnKind::Swiglu);
        if !matches!(
            expert_kind,
            FfnKind::Swiglu | FfnKind::Gelu | FfnKind::GeluTanh | FfnKind::Relu
        ) {
            return Err(err(format!(
                "`ffn.expert_kind` = {:?}: expected \"swiglu\", \"gelu\", \"gelu_tanh\" or \"relu\"",
                format!("{expert_kind:?}").to_lowercase()
            )));
        }
        let scoring = match f.scoring_func.as_deref().map(str::trim) {
            None | Some("softmax") => Scoring::Softmax,
            Some("sigmoid") => Scoring::Sigmoid,
            Some(other) => {
                return Err(err(format!(
                    "`ffn.scoring_func` = {other:?}: expected \"softmax\" or \"sigmoid\""
                )))
            }
        };
        let routed_scaling_factor = f.routed_scaling_factor.unwrap_or(1.0);
        if !(routed_scaling_factor > 0.0 && routed_scaling_factor.is_finite()) {
            return Err(err(format!(
                "`ffn.routed_scaling_factor` must be a positive number, got {routed_scaling_factor}"
            )));
        }
        let shared_count = count("shared_experts", f.shared_experts)?;
        let shared_hidden = count("shared_hidden", f.shared_hidden)?;
        let shared = match (shared_count, shared_hidden) {
            (None, None) => {
                if f.shared_expert_gate == Some(true) {
                    return Err(err(
                        "`ffn.shared_expert_gate` needs shared experts (`ffn.shared_experts`)"
                            .into(),
                    ));
                }
                None
            }
            (n, h) => Some(SharedExperts {
                hidden: h.unwrap_or(n.unwrap_or(1).saturating_mul(hidden)),
                gate: f.shared_expert_gate.unwrap_or(false),
            }),
        };
        Ok(Some(Moe {
            experts,
            router,
            expert_kind,
            scoring,
            norm_topk_prob: f.norm_topk_prob.unwrap_or(false),
            routed_scaling_factor,
            selection_bias: f.selection_bias.unwrap_or(false),
            shared,
        }))
    }
}
