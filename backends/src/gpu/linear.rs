//! Recurrent (causal, unnormalized) linear attention: the loop over time
//! `S_t = a_t ⊙ S_{t-1} + k_tᵀ·v_t`, `out_t = q_t·S_t`, with `a_t = 1` (no decay),
//! `exp(log_decay[t])` per step (`Decay::Step`) or per row of the state
//! (`Decay::Gate`).
//!
//! One thread per `(batch · head, value column c)` holds column `c` of the `Dk × Dv`
//! state in registers (`Dk` values carried by the time loop) and needs nobody else:
//! `out_t[c] = Σ_i q_t[i]·S[i][c]`. The threads of a block share `(b, h)`, so their
//! loads of `q_t`, `k_t` and the decay are broadcasts; `v_t` and `out_t` are
//! consecutive.

use super::code::W;
use super::math;
use super::module::{Args, KernelCode};
use attnc_ir::{DType, Decay};

/// Operands: `q, k [B, H, N, Dk]`, `v [B, H, N, Dv]`, the log decay, the result.
pub(crate) struct LinearOperands {
    pub q: (usize, DType, Vec<usize>),
    pub k: usize,
    pub v: (usize, Vec<usize>),
    pub log_decay: Option<(usize, Decay)>,
    pub out: usize,
}

pub(crate) fn linear(l: &LinearOperands) -> (KernelCode, [u32; 3]) {
    let dt = l.q.1;
    let (b, h, n, dk) = (l.q.2[0], l.q.2[1], l.q.2[2], l.q.2[3]);
    let dv = l.v.1[3];
    let threads = dv.next_multiple_of(32).min(128);
    let (nq, nv) = (b * h * n * dk, b * h * n * dv);
    let mut args = Args::default();
    let qp = args.get(l.q.0, dt, nq);
    let kp = args.get(l.k, dt, nq);
    let vp = args.get(l.v.0, dt, nv);
    let decay = l.log_decay.map(|(buf, d)| {
        let count = if d == Decay::Gate { nq } else { b * h * n };
        (args.get(buf, dt, count), d, count)
    });
    let op = args.output(l.out, dt, nv);
    let mut w = W::new();
    let tid = w.thread_id("x");
    let bx = w.block_id("x");
    let bh = w.block_id("y");
    let c = w.mad_c(&tid, &bx, threads);
    let ok = w.lt_c(&c, dv);
    let last = w.idx(dv - 1);
    let cc = w.min_ix(&c, &last);
    let qk_base = w.mul_c(&bh, n * dk);
    let v_base = w.mul_c(&bh, n * dv);
    let d_base = w.mul_c(&bh, n);
    let zero = w.f32(0.0);
    let state: Vec<(String, String)> = (0..dk).map(|_| (zero.clone(), "f32".into())).collect();
    let (lb, ub, one) = (w.idx(0), w.idx(n), w.idx(1));
    w.for_((&lb, &ub, &one), &state, |w, t, s| {
        let row = w.mad_c(&qk_base, t, dk);
        let vr = w.mad_c(&v_base, t, dv);
        let vat = w.add(&vr, &cc);
        let vt = math::load(w, &vp, dt, nv, &vat);
        let step_decay = match &decay {
            Some((dp, Decay::Step, count)) => {
                let at = w.add(&d_base, t);
                let ld = math::load(w, dp, dt, *count, &at);
                Some(math::exp(w, &ld))
            }
            _ => None,
        };
        let mut acc = zero.clone();
        let mut next = Vec::with_capacity(dk);
        for (i, s_i) in s.iter().enumerate() {
            let at = w.add_c(&row, i);
            let kv = math::load(w, &kp, dt, nq, &at);
            let qv = math::load(w, &qp, dt, nq, &at);
            let kv_t = math::fmul(w, &kv, &vt);
            let si = match (&decay, &step_decay) {
                (_, Some(a)) => math::fma(w, a, s_i, &kv_t),
                (Some((dp, Decay::Gate, count)), None) => {
                    let ld = math::load(w, dp, dt, *count, &at);
                    let a = math::exp(w, &ld);
                    math::fma(w, &a, s_i, &kv_t)
                }
                _ => math::fadd(w, s_i, &kv_t),
            };
            acc = math::fma(w, &qv, &si, &acc);
            next.push(si);
        }
        let (op, acc) = (op.clone(), acc.clone());
        let oat = w.add(&vr, &c);
        w.if_(&ok, |w| math::store(w, &acc, &op, dt, nv, &oat));
        next
    });
    (
        KernelCode {
            op: "linear_attention".into(),
            args,
            block: [threads as u32, 1, 1],
            shared_bytes: 0,
            body: w.finish(),
        },
        [dv.div_ceil(threads) as u32, (b * h) as u32, 1],
    )
}
