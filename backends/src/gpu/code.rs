//! A writer for the text of one `gpu.func`: fresh SSA names, structured control flow
//! (`scf.for` with carried values, `scf.if` with results), and every constant and
//! thread / block id hoisted into the function's entry block — it dominates every
//! nested region, so a constant asked for anywhere is usable everywhere, and asking
//! twice gives the same value.
//!
//! Values are SSA names (`%vN`); the writer does not track types, the callers do (and
//! the MLIR verifier checks them).

use std::collections::HashMap;
use std::fmt::{Display, Write};

/// An open `scf.if` with results (see [`W::if_begin`]).
pub(crate) struct IfToken {
    result: String,
    types: String,
    count: usize,
}

pub(crate) struct W {
    /// The entry block's hoisted definitions (constants, ids).
    consts: String,
    body: String,
    cache: HashMap<String, String>,
    next: usize,
    indent: usize,
}

impl W {
    pub fn new() -> W {
        W {
            consts: String::new(),
            body: String::new(),
            cache: HashMap::new(),
            next: 0,
            indent: 4,
        }
    }

    /// The function body: hoisted definitions, then the code.
    pub fn finish(self) -> String {
        self.consts + &self.body
    }

    pub fn fresh(&mut self) -> String {
        self.next += 1;
        format!("%v{}", self.next)
    }

    pub fn line(&mut self, text: impl Display) {
        let _ = writeln!(self.body, "{:indent$}{text}", "", indent = self.indent);
    }

    /// `%vN = <rhs>`; returns `%vN`.
    pub fn let_(&mut self, rhs: impl Display) -> String {
        let v = self.fresh();
        self.line(format_args!("{v} = {rhs}"));
        v
    }

    /// `rhs` defined once, in the entry block.
    pub fn hoisted(&mut self, rhs: String) -> String {
        if let Some(v) = self.cache.get(&rhs) {
            return v.clone();
        }
        let v = self.fresh();
        let _ = writeln!(self.consts, "    {v} = {rhs}");
        self.cache.insert(rhs, v.clone());
        v
    }

    /// `arith.constant <literal> : <ty>` (hoisted).
    pub fn constant(&mut self, literal: impl Display, ty: &str) -> String {
        self.hoisted(format!("arith.constant {literal} : {ty}"))
    }

    pub fn idx(&mut self, n: usize) -> String {
        self.constant(n, "index")
    }

    pub fn i64(&mut self, n: i64) -> String {
        self.constant(n, "i64")
    }

    pub fn i32(&mut self, n: i64) -> String {
        self.constant(n, "i32")
    }

    /// An exact f32 constant (hexadecimal bits: inf and NaN survive).
    pub fn f32(&mut self, x: f32) -> String {
        self.constant(format_args!("0x{:08X}", x.to_bits()), "f32")
    }

    pub fn f64(&mut self, x: f64) -> String {
        self.constant(format_args!("0x{:016X}", x.to_bits()), "f64")
    }

    pub fn bool(&mut self, b: bool) -> String {
        self.hoisted(format!("arith.constant {b}"))
    }

    /// `gpu.thread_id x` and friends (hoisted): `dim` is `x`, `y` or `z`.
    pub fn thread_id(&mut self, dim: &str) -> String {
        self.hoisted(format!("gpu.thread_id {dim}"))
    }

    pub fn block_id(&mut self, dim: &str) -> String {
        self.hoisted(format!("gpu.block_id {dim}"))
    }

    pub fn grid_dim(&mut self, dim: &str) -> String {
        self.hoisted(format!("gpu.grid_dim {dim}"))
    }

    pub fn barrier(&mut self) {
        self.line("gpu.barrier");
    }

    /// A typed view (`memref<{shape}, workgroup>`, e.g. `64x65xf32`) of the block's
    /// dynamic shared memory at byte `offset` (the launch passes the size: the
    /// kernel's `shared_bytes`). Returns the view and its type.
    pub fn shared(&mut self, offset: usize, shape: &str) -> (String, String) {
        let base = self.hoisted(
            "gpu.dynamic_shared_memory : memref<?xi8, #gpu.address_space<workgroup>>".into(),
        );
        let off = self.idx(offset);
        let ty = format!("memref<{shape}, #gpu.address_space<workgroup>>");
        let v = self.hoisted(format!(
            "memref.view {base}[{off}][] : memref<?xi8, #gpu.address_space<workgroup>> to {ty}"
        ));
        (v, ty)
    }

    /// `gpu.shuffle xor` of an f32 (or i32) across lanes `offset` apart.
    pub fn shuffle_xor(&mut self, v: &str, offset: u32, ty: &str) -> String {
        let off = self.i32(offset as i64);
        let width = self.i32(32);
        let r = self.fresh();
        let valid = self.fresh();
        self.line(format_args!(
            "{r}, {valid} = gpu.shuffle xor {v}, {off}, {width} : {ty}"
        ));
        r
    }

    // --- index arithmetic -----------------------------------------------------

    /// `arith.<op> a, b : index`.
    pub fn ix(&mut self, op: &str, a: &str, b: &str) -> String {
        self.let_(format_args!("arith.{op} {a}, {b} : index"))
    }

    pub fn add(&mut self, a: &str, b: &str) -> String {
        self.ix("addi", a, b)
    }

    pub fn mul(&mut self, a: &str, b: &str) -> String {
        self.ix("muli", a, b)
    }

    /// `a + n` (no op when `n` is 0).
    pub fn add_c(&mut self, a: &str, n: usize) -> String {
        if n == 0 {
            return a.to_string();
        }
        let c = self.idx(n);
        self.add(a, &c)
    }

    /// `a · n` (folded for 0 and 1).
    pub fn mul_c(&mut self, a: &str, n: usize) -> String {
        match n {
            0 => self.idx(0),
            1 => a.to_string(),
            _ => {
                let c = self.idx(n);
                self.mul(a, &c)
            }
        }
    }

    /// `a + b · n`.
    pub fn mad_c(&mut self, a: &str, b: &str, n: usize) -> String {
        if n == 0 {
            return a.to_string();
        }
        let p = self.mul_c(b, n);
        self.add(a, &p)
    }

    /// `a / n` and `a % n` (unsigned; `n` > 0).
    pub fn div_c(&mut self, a: &str, n: usize) -> String {
        if n == 1 {
            return a.to_string();
        }
        let c = self.idx(n);
        self.ix("divui", a, &c)
    }

    pub fn rem_c(&mut self, a: &str, n: usize) -> String {
        if n == 1 {
            return self.idx(0);
        }
        let c = self.idx(n);
        self.ix("remui", a, &c)
    }

    /// `(e / width, e % width)` for item `e = tid + per·p` of a block-wide strided
    /// loop: written so that the parts from `p` are constants (`per` a multiple or a
    /// divisor of `width` keeps `tid`'s part of both loop-invariant and the offsets
    /// foldable into addresses).
    pub fn split_item(
        &mut self,
        tid: &str,
        p: usize,
        per: usize,
        width: usize,
    ) -> (String, String) {
        if per.is_multiple_of(width) {
            let r = self.div_c(tid, width);
            (self.add_c(&r, p * per / width), self.rem_c(tid, width))
        } else if width.is_multiple_of(per) {
            let m = width / per;
            (self.idx(p / m), self.add_c(tid, per * (p % m)))
        } else {
            let e = self.add_c(tid, p * per);
            (self.div_c(&e, width), self.rem_c(&e, width))
        }
    }

    pub fn min_ix(&mut self, a: &str, b: &str) -> String {
        self.ix("minui", a, b)
    }

    /// `a <pred> b` on indices (`ult`, `slt`, `eq`, ...).
    pub fn cmp_ix(&mut self, pred: &str, a: &str, b: &str) -> String {
        self.let_(format_args!("arith.cmpi {pred}, {a}, {b} : index"))
    }

    /// `a < n` on indices.
    pub fn lt_c(&mut self, a: &str, n: usize) -> String {
        let c = self.idx(n);
        self.cmp_ix("ult", a, &c)
    }

    pub fn and(&mut self, a: &str, b: &str) -> String {
        self.let_(format_args!("arith.andi {a}, {b} : i1"))
    }

    pub fn or(&mut self, a: &str, b: &str) -> String {
        self.let_(format_args!("arith.ori {a}, {b} : i1"))
    }

    pub fn not(&mut self, a: &str) -> String {
        let t = self.bool(true);
        self.let_(format_args!("arith.xori {a}, {t} : i1"))
    }

    pub fn select(&mut self, cond: &str, a: &str, b: &str, ty: &str) -> String {
        self.let_(format_args!("arith.select {cond}, {a}, {b} : {ty}"))
    }

    /// `index` to `i64` / `i32` and back.
    pub fn index_cast(&mut self, a: &str, from: &str, to: &str) -> String {
        self.let_(format_args!("arith.index_cast {a} : {from} to {to}"))
    }

    // --- memory -----------------------------------------------------------------

    pub fn load(&mut self, memref: &str, ty: &str, at: &[&str]) -> String {
        self.let_(format_args!(
            "memref.load {memref}[{}] : {ty}",
            at.join(", ")
        ))
    }

    pub fn store(&mut self, value: &str, memref: &str, ty: &str, at: &[&str]) {
        self.line(format_args!(
            "memref.store {value}, {memref}[{}] : {ty}",
            at.join(", ")
        ));
    }

    // --- control flow -------------------------------------------------------------

    fn open(&mut self, header: impl Display) {
        self.line(header);
        self.indent += 2;
    }

    fn close(&mut self, footer: &str) {
        self.indent -= 2;
        self.line(footer);
    }

    /// `scf.for iv = lb to ub step step` carrying `iters` (`(initial value, type)`);
    /// `body` gets the induction variable and the carried values and returns the
    /// values to yield. Returns the loop's results.
    pub fn for_(
        &mut self,
        (lb, ub, step): (&str, &str, &str),
        iters: &[(String, String)],
        body: impl FnOnce(&mut W, &str, &[String]) -> Vec<String>,
    ) -> Vec<String> {
        let iv = self.fresh();
        let args: Vec<String> = iters.iter().map(|_| self.fresh()).collect();
        let result = self.fresh();
        let types: Vec<&str> = iters.iter().map(|(_, t)| t.as_str()).collect();
        if iters.is_empty() {
            self.open(format_args!("scf.for {iv} = {lb} to {ub} step {step} {{"));
        } else {
            let inits: Vec<String> = iters
                .iter()
                .zip(&args)
                .map(|((v, _), a)| format!("{a} = {v}"))
                .collect();
            self.open(format_args!(
                "{result}:{} = scf.for {iv} = {lb} to {ub} step {step} iter_args({}) -> ({}) {{",
                iters.len(),
                inits.join(", "),
                types.join(", ")
            ));
        }
        let yields = body(self, &iv, &args);
        if !iters.is_empty() {
            self.line(format_args!(
                "scf.yield {} : {}",
                yields.join(", "),
                types.join(", ")
            ));
        }
        self.close("}");
        (0..iters.len()).map(|i| format!("{result}#{i}")).collect()
    }

    /// `scf.for` from constant `lb` to constant `ub` by `step`, nothing carried.
    pub fn for_c(&mut self, lb: usize, ub: usize, step: usize, body: impl FnOnce(&mut W, &str)) {
        let (l, u, s) = (self.idx(lb), self.idx(ub), self.idx(step));
        self.for_((&l, &u, &s), &[], |w, iv, _| {
            body(w, iv);
            Vec::new()
        });
    }

    /// `scf.for` over index values, nothing carried.
    pub fn for_ix(&mut self, lb: &str, ub: &str, step: &str, body: impl FnOnce(&mut W, &str)) {
        self.for_((lb, ub, step), &[], |w, iv, _| {
            body(w, iv);
            Vec::new()
        });
    }

    /// `scf.if cond { then }`.
    pub fn if_(&mut self, cond: &str, then: impl FnOnce(&mut W)) {
        self.open(format_args!("scf.if {cond} {{"));
        then(self);
        self.close("}");
    }

    /// Set the status flag `flag` (an [`Args::flag`] parameter) when `bad`: a failed
    /// run-time check. Threads that find it write the same 1, so the race is benign.
    ///
    /// [`Args::flag`]: super::module::Args::flag
    pub fn raise(&mut self, flag: &str, bad: &str) {
        let flag = flag.to_string();
        self.if_(bad, |w| {
            let one = w.i32(1);
            let zero = w.idx(0);
            w.store(&one, &flag, "memref<1xi32>", &[&zero]);
        });
    }

    /// `scf.if cond -> (types) { then } else { other }`, written in the open:
    /// `if_begin`, the then-branch, `if_else` with its values, the
    /// else-branch, `if_end` with its values (returns the results).
    pub fn if_begin(&mut self, cond: &str, types: &[&str]) -> IfToken {
        let result = self.fresh();
        let tys = types.join(", ");
        self.open(format_args!(
            "{result}:{} = scf.if {cond} -> ({tys}) {{",
            types.len()
        ));
        IfToken {
            result,
            types: tys,
            count: types.len(),
        }
    }

    pub fn if_else(&mut self, t: &IfToken, yields: &[String]) {
        self.line(format_args!(
            "scf.yield {} : {}",
            yields.join(", "),
            t.types
        ));
        self.close("} else {");
        self.indent += 2;
    }

    pub fn if_end(&mut self, t: IfToken, yields: &[String]) -> Vec<String> {
        self.line(format_args!(
            "scf.yield {} : {}",
            yields.join(", "),
            t.types
        ));
        self.close("}");
        (0..t.count).map(|i| format!("{}#{i}", t.result)).collect()
    }

    /// An LLVM intrinsic call (opaque to MLIR's conversions: it reaches LLVM as is).
    pub fn intrinsic(
        &mut self,
        name: &str,
        args: &[&str],
        arg_types: &[&str],
        ret: &str,
    ) -> String {
        self.let_(format_args!(
            "llvm.call_intrinsic \"{name}\"({}) : ({}) -> {ret}",
            args.join(", "),
            arg_types.join(", ")
        ))
    }

    /// The loop of one thread over `n` items in a grid-stride loop along x: `i =
    /// block·bdim + thread`, stepping by the whole grid (`block` threads per block).
    pub fn grid_stride(&mut self, n: usize, block: usize, body: impl FnOnce(&mut W, &str)) {
        let tid = self.thread_id("x");
        let bid = self.block_id("x");
        let gdim = self.grid_dim("x");
        let start = self.mad_c(&tid, &bid, block);
        let step = self.mul_c(&gdim, block);
        let end = self.idx(n);
        self.for_ix(&start, &end, &step, body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_are_hoisted_once() {
        let mut w = W::new();
        let a = w.idx(3);
        let mut inner = String::new();
        w.for_c(0, 4, 1, |w, iv| {
            let b = w.idx(3);
            inner = b.clone();
            let _ = w.add(iv, &b);
        });
        assert_eq!(a, inner);
        let text = w.finish();
        assert_eq!(text.matches("arith.constant 3 : index").count(), 1);
        assert!(text.find("arith.constant 3").unwrap() < text.find("scf.for").unwrap());
    }
}
