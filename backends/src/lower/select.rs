//! Ops that walk an axis in order: cumsum and linear_scan (a running sum, or a
//! decayed one, along the axis), scatter_add (updates added at their indices, one
//! after another) and top-k (one selection pass per result along the last axis).
//!
//! Each is an `scf.for` carrying tensors (`iter_args`). Its body works on one slice
//! of the carried tensors at a time — one element thick along the walked axis — with
//! `linalg.generic`s across every other axis, writing the slice in place through
//! `tensor.extract_slice` / `tensor.insert_slice` (the pattern bufferization turns
//! into writes without copies). Floats are accumulated in their compute type (see
//! [`Elem::compute`]) and narrowed once, as the interpreter rounds once.

use super::elementwise::map;
use super::emit::{list, tensor_type, Elem, Emitter, Generic, Ix, Map, Val};
use super::reduce::{accumulate, Acc};
use attnc_ir::TopKOutput;

/// `scf.for %i = 0 to n step 1` carrying `iters`. `body` gets the induction variable
/// (an index) and the carried tensors, and returns the tensors to yield (of the same
/// types, in order). Returns the loop's results.
fn for_loop(
    em: &mut Emitter,
    n: usize,
    iters: &[&Val],
    body: impl FnOnce(&mut Emitter, &str, &[Val]) -> Vec<Val>,
) -> Vec<Val> {
    let lb = em.const_index(0);
    let ub = em.const_index(n);
    let step = em.const_index(1);
    let result = em.fresh();
    let iv = em.fresh();
    let carried: Vec<Val> = iters
        .iter()
        .map(|v| Val {
            name: em.fresh(),
            sizes: v.sizes.clone(),
            elem: v.elem,
        })
        .collect();
    let types: Vec<String> = iters.iter().map(|v| v.ty()).collect();
    let inits: Vec<String> = carried
        .iter()
        .zip(iters)
        .map(|(arg, init)| format!("{} = {}", arg.name, init.name))
        .collect();
    let single = iters.len() == 1;
    let lhs = if single {
        result.clone()
    } else {
        format!("{result}:{}", iters.len())
    };
    em.open_region(format_args!(
        "{lhs} = scf.for {iv} = {lb} to {ub} step {step} iter_args({}) -> ({}) {{",
        inits.join(", "),
        types.join(", ")
    ));
    let yields = body(em, &iv, &carried);
    debug_assert!(yields.iter().map(Val::ty).eq(types.iter().cloned()));
    let names: Vec<&str> = yields.iter().map(|v| v.name.as_str()).collect();
    em.stmt(format_args!(
        "scf.yield {} : {}",
        names.join(", "),
        types.join(", ")
    ));
    em.close_region();
    iters
        .iter()
        .enumerate()
        .map(|(i, v)| Val {
            name: if single {
                result.clone()
            } else {
                format!("{result}#{i}")
            },
            sizes: v.sizes.clone(),
            elem: v.elem,
        })
        .collect()
}

/// The offsets, sizes and strides of the slice of `t` one element thick at (index
/// value) `at` along `axis`, as `extract_slice` / `insert_slice` write them.
fn slab_bounds(t: &Val, axis: usize, at: &str) -> (String, Vec<usize>, String) {
    let offsets: Vec<String> = (0..t.rank())
        .map(|d| {
            if d == axis {
                at.to_string()
            } else {
                "0".to_string()
            }
        })
        .collect();
    let mut sizes = t.sizes.clone();
    sizes[axis] = 1;
    let strides = list(&vec![1; t.rank()]);
    (format!("[{}]", offsets.join(", ")), sizes, strides)
}

/// The slice of `t` at `at` along `axis` (size 1 there, same rank).
fn slab(em: &mut Emitter, t: &Val, axis: usize, at: &str) -> Val {
    let (offsets, sizes, strides) = slab_bounds(t, axis, at);
    em.tensor_op(
        format_args!(
            "tensor.extract_slice {}{offsets} {} {strides} : {} to {}",
            t.name,
            list(&sizes),
            t.ty(),
            tensor_type(&sizes, t.elem)
        ),
        &sizes,
        t.elem,
    )
}

/// `t` with its slice at `at` along `axis` replaced by `part`.
fn put_slab(em: &mut Emitter, part: &Val, t: &Val, axis: usize, at: &str) -> Val {
    let (offsets, sizes, strides) = slab_bounds(t, axis, at);
    em.tensor_op(
        format_args!(
            "tensor.insert_slice {} into {}{offsets} {} {strides} : {} into {}",
            part.name,
            t.name,
            list(&sizes),
            part.ty(),
            t.ty()
        ),
        &t.sizes,
        t.elem,
    )
}

/// `acc + v` in the compute type `c` of `elem`, `v` an `elem` (widened first).
fn add(em: &mut Emitter, acc: &str, v: &str, elem: Elem, c: Elem) -> String {
    if elem.is_float() {
        let v = em.extend(v, elem, c);
        em.arith2("addf", acc, &v, c)
    } else {
        em.arith2("addi", acc, v, c)
    }
}

/// Inclusive prefix sum along `axis` (see [`recurrence`]).
pub(super) fn cumsum(em: &mut Emitter, x: &Val, axis: usize) -> Val {
    recurrence(em, x, None, axis)
}

/// `linear_scan`: `out[t] = a[t]·out[t-1] + x[t]` along `axis` (see [`recurrence`]).
pub(super) fn scan(em: &mut Emitter, x: &Val, a: &Val, axis: usize) -> Val {
    recurrence(em, x, Some(a), axis)
}

/// The first-order recurrence `state = a[t]·state + x[t]` along `axis` (`a` = 1, a
/// prefix sum, when there is no multiplier): a loop along the axis carrying the
/// result and the state (one slice, in the compute type), which each step updates
/// from the inputs' slices and writes, narrowed, into the result's.
fn recurrence(em: &mut Emitter, x: &Val, a: Option<&Val>, axis: usize) -> Val {
    let (elem, c) = (x.elem, x.elem.compute());
    if x.sizes.contains(&0) {
        return em.empty(&x.sizes, elem);
    }
    let mut row = x.sizes.clone();
    row[axis] = 1;
    let out = em.empty(&x.sizes, elem);
    let state = em.filled(&row, c, 0.0);
    let results = for_loop(em, x.sizes[axis], &[&out, &state], |em, i, carried| {
        let (out, state) = (&carried[0], &carried[1]);
        let xs = slab(em, x, axis, i);
        let state = match a {
            None => {
                let ins = vec![(&xs, Map::identity(xs.rank()))];
                em.generic(Generic::parallel(ins, state.clone()), |em, args| {
                    add(em, &args[1], &args[0], elem, c)
                })
            }
            Some(a) => {
                let ms = slab(em, a, axis, i);
                let ins = vec![
                    (&xs, Map::identity(xs.rank())),
                    (&ms, Map::identity(ms.rank())),
                ];
                em.generic(Generic::parallel(ins, state.clone()), |em, args| {
                    let m = em.extend(&args[1], elem, c);
                    let decayed = em.arith2("mulf", &m, &args[2], c);
                    add(em, &decayed, &args[0], elem, c)
                })
            }
        };
        let slot = slab(em, out, axis, i);
        let ins = vec![(&state, Map::identity(state.rank()))];
        let written = em.generic(Generic::parallel(ins, slot), |em, args| {
            em.narrow(&args[0], c, elem)
        });
        let out = put_slab(em, &written, out, axis, i);
        vec![out, state]
    });
    results[0].clone()
}

/// `out = data; out[.., indices[j], ..] += updates[.., j, ..]` for j in order (so
/// repeated indices add up in order), accumulated in the compute type. Indices are
/// clamped into range so memory stays safe; the caller's [`index_out_of_range`]
/// flag reports any that were not.
///
/// [`index_out_of_range`]: super::layout::index_out_of_range
pub(super) fn scatter_add(
    em: &mut Emitter,
    data: &Val,
    indices: &Val,
    updates: &Val,
    axis: usize,
) -> Val {
    let (elem, c) = (data.elem, data.elem.compute());
    let n = data.sizes[axis];
    if data.sizes.contains(&0) {
        // Nothing to update: the result is empty (and any index is out of range).
        return data.clone();
    }
    // A fresh copy to update in place (widened for half floats).
    let acc = map(em, &data.sizes, c, &[data], |em, args| {
        em.extend(&args[0], elem, c)
    });
    let m = indices.sizes[0];
    let acc = for_loop(em, m, &[&acc], |em, j, carried| {
        let acc = &carried[0];
        let raw = em.extract(indices, &[j.to_string()]);
        let i = em.convert("index_cast", &raw, indices.elem, Elem::Index);
        let zero = em.const_index(0);
        let last = em.const_index(n - 1);
        let i = em.arith2("maxsi", &i, &zero, Elem::Index);
        let i = em.arith2("minsi", &i, &last, Elem::Index);
        let update = slab(em, updates, axis, j);
        let slot = slab(em, acc, axis, &i);
        let ins = vec![(&update, Map::identity(update.rank()))];
        let added = em.generic(Generic::parallel(ins, slot), |em, args| {
            add(em, &args[1], &args[0], elem, c)
        });
        vec![put_slab(em, &added, acc, axis, &i)]
    });
    let acc = &acc[0];
    if c == elem {
        return acc.clone();
    }
    map(em, &data.sizes, elem, &[acc], |em, args| {
        em.narrow(&args[0], c, elem)
    })
}

/// Whether `(a, i)` comes before `(b, j)` in top-k order: NaN first, then larger
/// values, equal values (or two NaNs) by lower position. Values are of type `f` (the
/// compute type), positions `i64`. A strict total order on the positions of a row.
fn precedes(em: &mut Emitter, (a, i): (&str, &str), (b, j): (&str, &str), f: Elem) -> String {
    let lower = em.cmpi("slt", i, j, Elem::I64);
    if !f.is_float() {
        let greater = em.cmpi("sgt", a, b, f);
        let equal = em.cmpi("eq", a, b, f);
        let tie = em.arith2("andi", &equal, &lower, Elem::I1);
        return em.arith2("ori", &greater, &tie, Elem::I1);
    }
    let greater = em.cmpf("ogt", a, b, f);
    let equal = em.cmpf("oeq", a, b, f);
    let a_nan = em.cmpf("uno", a, a, f);
    let b_nan = em.cmpf("uno", b, b, f);
    let b_number = em.cmpf("ord", b, b, f);
    let both_nan = em.arith2("andi", &a_nan, &b_nan, Elem::I1);
    let same = em.arith2("ori", &equal, &both_nan, Elem::I1);
    let tie = em.arith2("andi", &same, &lower, Elem::I1);
    let only_a_nan = em.arith2("andi", &a_nan, &b_number, Elem::I1);
    let first = em.arith2("ori", &greater, &tie, Elem::I1);
    em.arith2("ori", &first, &only_a_nan, Elem::I1)
}

/// `x[rows.., at]` in the compute type `f`, `at` an `i64` position clamped below at 0
/// (the "none yet" -1 of a selection reads position 0, which the caller ignores).
fn value_at(em: &mut Emitter, x: &Val, rows: &[String], at: &str, f: Elem) -> String {
    let zero = em.constant(0.0, Elem::I64);
    let at = em.arith2("maxsi", at, &zero, Elem::I64);
    let at = em.convert("index_cast", &at, Elem::I64, Elem::Index);
    let mut coords = rows.to_vec();
    coords.push(at);
    let v = em.extract(x, &coords);
    em.extend(&v, x.elem, f)
}

/// The `k` largest along the last axis, in descending order (NaN above everything,
/// ties to the lower position): the values, or their positions as `i64` (the dtype
/// `infer` gives `topk_indices`).
///
/// A loop over the `k` results carries the positions picked so far. Pass `p` is one
/// reduction over each row (a `linalg.generic`, rows parallel) that keeps the
/// position coming first in top-k order among those coming after the pick of pass
/// `p - 1`; the order is strict, so that is exactly the `p`-th of the row.
pub(super) fn topk(em: &mut Emitter, x: &Val, k: usize, output: TopKOutput) -> Val {
    let (elem, f) = (x.elem, x.elem.compute());
    let last = x.rank() - 1;
    let mut sizes = x.sizes.clone();
    sizes[last] = k;
    if sizes.contains(&0) {
        let elem = match output {
            TopKOutput::Values => elem,
            TopKOutput::Indices => Elem::I64,
        };
        return em.empty(&sizes, elem);
    }
    // Every position starts valid (0), so reading the previous pick never leaves the
    // row, even in pass 0, which ignores it.
    let picked = em.filled(&sizes, Elem::I64, 0.0);
    let picked = for_loop(em, k, &[&picked], |em, p, carried| {
        let picked = &carried[0];
        let zero = em.const_index(0);
        let one = em.const_index(1);
        let first = em.cmpi("eq", p, &zero, Elem::Index);
        let before = em.arith2("subi", p, &one, Elem::Index);
        let before = em.arith2("maxsi", &before, &zero, Elem::Index);
        let previous = slab(em, picked, last, &before);
        let row_map = Map::new(x.rank(), (0..last).map(Ix::D).chain([Ix::Zero]).collect());
        let ins = vec![(x, Map::identity(x.rank())), (&previous, row_map)];
        let none = Acc {
            elem: Elem::I64,
            init: -1.0,
        };
        let best = accumulate(em, &x.sizes, &[last], true, ins, none, |em, args| {
            let (v, prev, best) = (&args[0], &args[1], &args[2]);
            let rows: Vec<String> = (0..last).map(|d| em.index(d)).collect();
            let j = em.index(last);
            let j = em.convert("index_cast", &j, Elem::Index, Elem::I64);
            let v = em.extend(v, elem, f);
            // Candidates come after the previous pick (any position in pass 0).
            let prev_v = value_at(em, x, &rows, prev, f);
            let after = precedes(em, (&prev_v, prev), (&v, &j), f);
            let candidate = em.arith2("ori", &first, &after, Elem::I1);
            // ... and replace the best candidate so far (none yet: -1) if before it.
            let best_v = value_at(em, x, &rows, best, f);
            let minus_one = em.constant(-1.0, Elem::I64);
            let nothing = em.cmpi("eq", best, &minus_one, Elem::I64);
            let ahead = precedes(em, (&v, &j), (&best_v, best), f);
            let better = em.arith2("ori", &nothing, &ahead, Elem::I1);
            let take = em.arith2("andi", &candidate, &better, Elem::I1);
            em.select(&take, &j, best, Elem::I64)
        });
        let slot = slab(em, picked, last, p);
        let ins = vec![(&best, Map::identity(best.rank()))];
        let written = em.generic(Generic::parallel(ins, slot), |_, args| args[0].clone());
        vec![put_slab(em, &written, picked, last, p)]
    });
    let picked = &picked[0];
    match output {
        TopKOutput::Indices => picked.clone(),
        TopKOutput::Values => map(em, &sizes, elem, &[picked], |em, args| {
            let mut coords: Vec<String> = (0..last).map(|d| em.index(d)).collect();
            let at = em.convert("index_cast", &args[0], Elem::I64, Elem::Index);
            coords.push(at);
            em.extract(x, &coords)
        }),
    }
}
