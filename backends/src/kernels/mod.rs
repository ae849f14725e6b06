//! Hand-scheduled kernels, written at the memref level in `scf` + `vector` +
//! `memref` + `arith` + `math`: the ops whose speed decides a model's (matmuls and
//! fused attention). Each kernel is specialized to its static shapes — every loop
//! bound, tail and stride the generator can know is a constant for LLVM — and emitted
//! once per distinct shape as a private function the layer functions call.
//!
//! Parallel loops are `scf.parallel`, which the CPU pipeline turns into OpenMP
//! work-sharing loops (`convert-scf-to-openmp`); the runtime is LLVM's libomp.
//!
//! Tensors reach a kernel through `bufferization.to_buffer` as memrefs with a
//! dynamic layout whose innermost stride is 1 (slices and reshapes of contiguous
//! buffers), so no copy is made to call one; the result is a fresh buffer.

pub(crate) mod attention;
pub(crate) mod gemm;
pub(crate) mod linear;
pub(crate) mod moe;

use attnc_ir::{Dims, MaskExpr};
use std::collections::HashMap;
use std::fmt::{Display, Write};

/// Most key blocks a `random_blocks` table may have (its bitmap is `n × n` bytes).
const MAX_RANDOM_BLOCKS: i64 = 4096;

/// The compile-time `(r, n, seed)` of a `random_blocks(qb, kb, r, n, seed)` call.
fn random_constants(args: &[MaskExpr; 5], dims: &Dims) -> Result<[i64; 3], String> {
    let any = (i64::MIN, i64::MAX);
    let mut out = [0; 3];
    for (i, name) in ["count", "block count", "seed"].into_iter().enumerate() {
        let (lo, hi) = args[i + 2].range([any; 4], dims);
        if lo != hi {
            return Err(format!(
                "the {name} of `random_blocks` must be a constant, got `{}`",
                args[i + 2]
            ));
        }
        out[i] = lo;
    }
    if !(0..=MAX_RANDOM_BLOCKS).contains(&out[1]) {
        return Err(format!(
            "`random_blocks` over {} blocks: the compiled table supports 0 to {MAX_RANDOM_BLOCKS}",
            out[1]
        ));
    }
    Ok(out)
}

/// Whether the backends can compile `expr`: every `random_blocks` has constant count,
/// block count and seed.
pub(crate) fn check_mask(expr: &MaskExpr, dims: &Dims) -> Result<(), String> {
    let mut result = Ok(());
    visit_random_blocks(expr, &mut |args| {
        if result.is_ok() {
            result = random_constants(args, dims).map(|_| ());
        }
    });
    result
}

fn visit_random_blocks(e: &MaskExpr, f: &mut impl FnMut(&[MaskExpr; 5])) {
    match e {
        MaskExpr::RandomBlocks(args) => {
            f(args);
            args.iter().for_each(|a| visit_random_blocks(a, f));
        }
        MaskExpr::Neg(x) | MaskExpr::Not(x) => visit_random_blocks(x, f),
        MaskExpr::Bin(_, l, r) => {
            visit_random_blocks(l, f);
            visit_random_blocks(r, f);
        }
        MaskExpr::Int(_) | MaskExpr::Coord(_) | MaskExpr::Dim(_) => {}
    }
}

/// The module constant holding the bitmap of `random_blocks(·, ·, r, n, seed)`, `n·n`
/// bytes (row = query block): `(symbol, memref type, n)`. [`declare_random_tables`]
/// writes it.
pub(crate) fn random_table(args: &[MaskExpr; 5], dims: &Dims) -> (String, String, i64) {
    // `check_mask` ran before any lowering.
    let [r, n, seed] = random_constants(args, dims).unwrap_or([0, 0, 0]);
    let symbol = format!("attnc.random_blocks.{r}.{n}.{seed}").replace('-', "m");
    (symbol, format!("memref<{}xi8>", (n * n).max(1)), n)
}

/// Declares (once per module) the bitmap of every `random_blocks` call in `expr`.
pub(crate) fn declare_random_tables(set: &mut KernelSet, expr: &MaskExpr, dims: &Dims) {
    visit_random_blocks(expr, &mut |args| {
        let (symbol, ty, n) = random_table(args, dims);
        let [r, _, seed] = random_constants(args, dims).unwrap_or([0, 0, 0]);
        let mut hex = String::with_capacity(2 * (n * n).max(1) as usize);
        for qb in 0..n {
            for kb in 0..n {
                let held = attnc_ir::random_blocks(qb, kb, r, n, seed);
                let _ = write!(hex, "{:02X}", held as u8);
            }
        }
        if n == 0 {
            hex.push_str("00");
        }
        set.declare(&format!(
            "memref.global \"private\" constant @{symbol} : {ty} = dense<\"0x{hex}\">\n"
        ));
    });
}

/// The vector width in f32 lanes the kernels are written for (AVX-512; on narrower
/// hosts LLVM splits each vector in two, which keeps them correct and fast).
pub(crate) const LANES: usize = 16;

/// The kernels a module needs, each written once.
pub(crate) struct KernelSet {
    text: String,
    by_key: HashMap<String, String>,
    /// Whether the host has AVX-512 (`vscalefps` in `exp2`).
    pub avx512: bool,
}

impl Default for KernelSet {
    fn default() -> KernelSet {
        KernelSet {
            text: String::new(),
            by_key: HashMap::new(),
            avx512: crate::llvm::host_features().contains("+avx512f"),
        }
    }
}

impl KernelSet {
    /// The function named after `key`, written by `write` the first time it is asked
    /// for. `write` receives the symbol (without `@`) and returns the function's text.
    pub fn get(&mut self, key: String, write: impl FnOnce(&str) -> String) -> String {
        if let Some(name) = self.by_key.get(&key) {
            return name.clone();
        }
        let name = format!("attnc.{key}");
        let text = write(&name);
        self.text.push_str(&text);
        self.by_key.insert(key, name.clone());
        name
    }

    /// Module-level declarations (external functions), each written once.
    pub fn declare(&mut self, text: &str) {
        if self
            .by_key
            .insert(format!("decl:{text}"), String::new())
            .is_none()
        {
            self.text.push_str(text);
        }
    }

    pub fn text(&self) -> &str {
        &self.text
    }
}

/// `memref<2x8x16xf32, strided<[?, ?, 1], offset: ?>>`: the type a kernel takes an
/// operand in (any layout with unit innermost stride).
pub(crate) fn strided_type(sizes: &[usize], elem: &str) -> String {
    let mut s = String::from("memref<");
    for n in sizes {
        let _ = write!(s, "{n}x");
    }
    s.push_str(elem);
    if !sizes.is_empty() {
        let mut strides = vec!["?"; sizes.len() - 1];
        strides.push("1");
        let _ = write!(s, ", strided<[{}], offset: ?>", strides.join(", "));
    }
    s.push('>');
    s
}

/// Writes one kernel function: fresh SSA names, indentation, structured loops.
pub(crate) struct Code {
    out: String,
    next: usize,
    indent: usize,
    consts: Vec<HashMap<String, String>>,
}

impl Code {
    pub fn new() -> Code {
        Code {
            out: String::new(),
            next: 0,
            indent: 2,
            consts: vec![HashMap::new()],
        }
    }

    pub fn finish(self) -> String {
        self.out
    }

    pub fn fresh(&mut self) -> String {
        self.next += 1;
        format!("%x{}", self.next)
    }

    pub fn line(&mut self, text: impl Display) {
        let _ = writeln!(self.out, "{:indent$}{text}", "", indent = self.indent);
    }

    /// `%xN = <rhs>`; returns `%xN`.
    pub fn let_(&mut self, rhs: impl Display) -> String {
        let v = self.fresh();
        self.line(format_args!("{v} = {rhs}"));
        v
    }

    /// `rhs` bound to a fresh name once per region it is first needed in (and visible
    /// in the regions nested in it), looked up by `key`.
    fn cached(&mut self, key: String, rhs: impl Display) -> String {
        for scope in self.consts.iter().rev() {
            if let Some(v) = scope.get(&key) {
                return v.clone();
            }
        }
        let v = self.let_(rhs);
        if let Some(scope) = self.consts.last_mut() {
            scope.insert(key, v.clone());
        }
        v
    }

    /// A constant (see [`Code::cached`]).
    pub fn constant(&mut self, literal: impl Display, ty: &str) -> String {
        let key = format!("{literal}:{ty}");
        self.cached(key, format_args!("arith.constant {literal} : {ty}"))
    }

    pub fn idx(&mut self, n: usize) -> String {
        self.constant(n, "index")
    }

    pub fn f32(&mut self, value: f32) -> String {
        self.constant(format_args!("0x{:08X}", value.to_bits()), "f32")
    }

    /// `value` in every lane of a `vector<LANES x f32>`.
    pub fn splat(&mut self, value: f32) -> String {
        let s = self.f32(value);
        let key = format!("splat:{s}");
        self.cached(
            key,
            format_args!("vector.broadcast {s} : f32 to vector<{LANES}xf32>"),
        )
    }

    /// A 64-byte aligned stack buffer of type `ty`.
    pub fn alloca(&mut self, ty: &str) -> String {
        self.let_(format_args!(
            "memref.alloca() {{alignment = 64 : i64}} : {ty}"
        ))
    }

    /// An index op: `arith.<op> a, b : index`.
    pub fn ix(&mut self, op: &str, a: &str, b: &str) -> String {
        self.let_(format_args!("arith.{op} {a}, {b} : index"))
    }

    /// `a + b·c` on indices (`c` a constant).
    pub fn mad(&mut self, a: &str, b: &str, c: usize) -> String {
        if c == 0 {
            return a.to_string();
        }
        let c = self.idx(c);
        let p = self.ix("muli", b, &c);
        self.ix("addi", a, &p)
    }

    pub fn add_const(&mut self, a: &str, c: usize) -> String {
        if c == 0 {
            return a.to_string();
        }
        let c = self.idx(c);
        self.ix("addi", a, &c)
    }

    /// `min(a, b)` on indices.
    pub fn min(&mut self, a: &str, b: &str) -> String {
        self.ix("minsi", a, b)
    }

    /// A vector op on `vector<LANES x f32>`.
    pub fn vop(&mut self, op: &str, args: &[&str]) -> String {
        self.let_(format_args!(
            "{op} {} : vector<{LANES}xf32>",
            args.join(", ")
        ))
    }

    fn open(&mut self, header: impl Display) {
        self.line(header);
        self.indent += 2;
        self.consts.push(HashMap::new());
    }

    fn close(&mut self, footer: impl Display) {
        self.consts.pop();
        self.indent -= 2;
        self.line(footer);
    }

    /// `scf.for` from `lb` to `ub` by `step` carrying `iters` (value, type); `body`
    /// gets the induction variable and the carried values and returns the values to
    /// yield. Returns the loop's results.
    pub fn for_(
        &mut self,
        (lb, ub, step): (&str, &str, &str),
        iters: &[(String, String)],
        body: impl FnOnce(&mut Code, &str, &[String]) -> Vec<String>,
    ) -> Vec<String> {
        let iv = self.fresh();
        let args: Vec<String> = iters.iter().map(|_| self.fresh()).collect();
        let results: Vec<String> = iters.iter().map(|_| self.fresh()).collect();
        let types: Vec<&str> = iters.iter().map(|(_, t)| t.as_str()).collect();
        if iters.is_empty() {
            self.open(format_args!("scf.for {iv} = {lb} to {ub} step {step} {{"));
        } else {
            let inits: Vec<String> = iters
                .iter()
                .zip(&args)
                .map(|((v, _), a)| format!("{a} = {v}"))
                .collect();
            let lhs = if results.len() == 1 {
                results[0].clone()
            } else {
                format!("{}:{}", results[0], results.len())
            };
            self.open(format_args!(
                "{lhs} = scf.for {iv} = {lb} to {ub} step {step} iter_args({}) -> ({}) {{",
                inits.join(", "),
                types.join(", ")
            ));
        }
        let yields = body(self, &iv, &args);
        if yields.is_empty() {
            self.close("}");
        } else {
            self.line(format_args!(
                "scf.yield {} : {}",
                yields.join(", "),
                types.join(", ")
            ));
            self.close("}");
        }
        if results.len() == 1 {
            return results;
        }
        (0..results.len())
            .map(|i| format!("{}#{i}", results[0]))
            .collect()
    }

    /// `scf.for` with constant bounds and no carried values.
    pub fn for_range(
        &mut self,
        lb: &str,
        ub: &str,
        step: usize,
        body: impl FnOnce(&mut Code, &str),
    ) {
        let step = self.idx(step);
        self.for_((lb, ub, &step), &[], |c, iv, _| {
            body(c, iv);
            Vec::new()
        });
    }

    /// `scf.parallel` over `[0, ub_i)` for each bound (run by OpenMP's threads).
    pub fn parallel(&mut self, ubs: &[&str], body: impl FnOnce(&mut Code, &[String])) {
        let ivs: Vec<String> = ubs.iter().map(|_| self.fresh()).collect();
        let zero = self.idx(0);
        let one = self.idx(1);
        let lbs = vec![zero.as_str(); ubs.len()];
        let steps = vec![one.as_str(); ubs.len()];
        self.open(format_args!(
            "scf.parallel ({}) = ({}) to ({}) step ({}) {{",
            ivs.join(", "),
            lbs.join(", "),
            ubs.join(", "),
            steps.join(", ")
        ));
        body(self, &ivs);
        self.line("scf.reduce");
        self.close("}");
    }

    /// `scf.if cond { then }` with no results.
    pub fn if_(&mut self, cond: &str, then: impl FnOnce(&mut Code)) {
        self.open(format_args!("scf.if {cond} {{"));
        then(self);
        self.close("}");
    }

    /// `scf.if cond { then } else { other }` with no results.
    pub fn if_else(
        &mut self,
        cond: &str,
        then: impl FnOnce(&mut Code),
        other: impl FnOnce(&mut Code),
    ) {
        self.open(format_args!("scf.if {cond} {{"));
        then(self);
        self.close("} else {");
        self.indent += 2;
        self.consts.push(HashMap::new());
        other(self);
        self.close("}");
    }
}

impl Code {
    /// `scf.while` taking one task index after the other from the shared `i32`
    /// counter `counter[0]` (`memref<1xi32>`, atomically incremented) while it is
    /// below `tasks`: dynamic scheduling of uneven tasks over the threads of a
    /// parallel loop. `body` gets the task index.
    pub fn for_each_task(
        &mut self,
        counter: &str,
        tasks: &str,
        body: impl FnOnce(&mut Code, &str),
    ) {
        let one = self.constant(1, "i32");
        let zero = self.idx(0);
        let result = self.fresh();
        self.open(format_args!("{result} = scf.while : () -> index {{"));
        let old = self.let_(format_args!(
            "memref.atomic_rmw addi {one}, {counter}[{zero}] : (i32, memref<1xi32>) -> i32"
        ));
        let task = self.let_(format_args!("arith.index_cast {old} : i32 to index"));
        let more = self.let_(format_args!("arith.cmpi ult, {task}, {tasks} : index"));
        self.line(format_args!("scf.condition({more}) {task} : index"));
        self.close("} do {");
        self.indent += 2;
        self.consts.push(HashMap::new());
        let arg = self.fresh();
        self.line(format_args!("^bb0({arg}: index):"));
        body(self, &arg);
        self.line("scf.yield");
        self.close("}");
    }
}

/// `2^x` on `LANES` lanes for any input: [`exp2`] with both clamps, so very negative
/// inputs give exactly 0 and very large ones 2^127.
pub(crate) fn vector_exp2(c: &mut Code, x: &str, avx512: bool) -> String {
    let e = Exp2 {
        neg_inf: true,
        positive: true,
        avx512,
    };
    exp2(c, x, e)
}

/// What [`exp2`] may meet and use.
pub(crate) struct Exp2 {
    /// `-inf` inputs (masked scores): clamped to -127 first, giving exactly 0.
    pub neg_inf: bool,
    /// Positive inputs past 127 (softcap's `2^(2y)`).
    pub positive: bool,
    /// `vscalefps` computes `p·2^n` in one instruction, and is exact for any finite n.
    pub avx512: bool,
}

/// `2^x` on 16 lanes: `2^n · p(x - n)` with `n = round(x)` and `p` the degree-6
/// Taylor polynomial of `2^r` on `[-1/2, 1/2]` (relative error < 2e-7). Without
/// AVX-512, `2^n` is built in the exponent field, which needs `x` in `[-127, 127]`:
/// at -127 the field is 0, so very negative inputs give exactly 0 either way.
pub(crate) fn exp2(c: &mut Code, x: &str, e: Exp2) -> String {
    let vt = format!("vector<{LANES}xf32>");
    let mut x = x.to_string();
    if e.neg_inf || !e.avx512 {
        // With `vscalefps`, 2^-200 rounds to exactly 0 (2^-127 would be a denormal:
        // slow, and not 0).
        let lo = c.splat(if e.avx512 { -200.0 } else { -127.0 });
        x = c.vop("arith.maxnumf", &[&x, &lo]);
    }
    if e.positive || !e.avx512 {
        let hi = c.splat(127.0);
        x = c.vop("arith.minnumf", &[&x, &hi]);
    }
    let n = c.let_(format_args!("math.roundeven {x} : {vt}"));
    let r = c.vop("arith.subf", &[&x, &n]);
    let ln2 = std::f64::consts::LN_2;
    let mut coef = [1.0f64; 7];
    for k in 1..7 {
        coef[k] = coef[k - 1] * ln2 / k as f64;
    }
    let mut p = c.splat(coef[6] as f32);
    for k in (0..6).rev() {
        let ck = c.splat(coef[k] as f32);
        p = c.vop("vector.fma", &[&p, &r, &ck]);
    }
    if e.avx512 {
        let all = c.constant(-1, "i16");
        let rounding = c.constant(4, "i32");
        // Operands go to `llvm.x86.avx512.mask.scalef.ps.512(a, b, passthru, k, r)`
        // in this order: `p · 2^floor(n)` in every lane.
        return c.let_(format_args!(
            "x86vector.avx512.mask.scalef {p}, {n}, {p}, {all}, {rounding} : {vt}"
        ));
    }
    let vi = format!("vector<{LANES}xi32>");
    let ni = c.let_(format_args!("arith.fptosi {n} : {vt} to {vi}"));
    let bias = c.let_(format_args!("arith.constant dense<127> : {vi}"));
    let shift = c.let_(format_args!("arith.constant dense<23> : {vi}"));
    let e = c.let_(format_args!("arith.addi {ni}, {bias} : {vi}"));
    let e = c.let_(format_args!("arith.shli {e}, {shift} : {vi}"));
    let scale = c.let_(format_args!("arith.bitcast {e} : {vi} to {vt}"));
    c.vop("arith.mulf", &[&p, &scale])
}

/// A kernel function's text around its body.
pub(crate) fn function(name: &str, params: &[(String, String)], body: String) -> String {
    let params: Vec<String> = params.iter().map(|(n, t)| format!("{n}: {t}")).collect();
    format!(
        "func.func private @{name}({}) attributes {{passthrough = [\"noinline\"], llvm.linkage = #llvm.linkage<internal>}} {{\n{body}  return\n}}\n",
        params.join(", ")
    )
}
