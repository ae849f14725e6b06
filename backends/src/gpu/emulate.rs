//! A CPU emulator of the generated kernels, for tests: there is no GPU here, so the
//! kernels' index math, barriers, shuffles and online-softmax bookkeeping are
//! checked by running the very `gpu.func` text the PTX is made from — every thread
//! of a block, one OS thread each when the kernel synchronizes (block barriers,
//! warp shuffles and ballots exchange values through shared slots) — over the plan's
//! launches, and comparing the outputs with the reference interpreter.
//!
//! It reads the subset of MLIR the kernel writer emits (`arith`, `memref`, `scf`,
//! `gpu` ids / barrier / shuffle / dynamic shared memory, `llvm.call_intrinsic`) and
//! checks every memory access against its buffer (an out-of-bounds index is a test
//! failure). The approximate PTX functions are computed exactly (`ex2.approx` as
//! `2^x`, ...), and a barrier not reached by every thread of a block is reported
//! instead of hanging.

use super::program::{Arg, BufferRole, GpuProgram};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Ty {
    I(u32),
    F16,
    BF16,
    F32,
    F64,
}

fn ty(s: &str) -> Ty {
    match s.trim() {
        "i1" => Ty::I(1),
        "i8" => Ty::I(8),
        "i32" => Ty::I(32),
        "i64" | "index" => Ty::I(64),
        "f16" => Ty::F16,
        "bf16" => Ty::BF16,
        "f32" => Ty::F32,
        "f64" => Ty::F64,
        other => panic!("emulator: unknown type `{other}`"),
    }
}

fn size_of(t: Ty) -> usize {
    match t {
        Ty::I(1) | Ty::I(8) => 1,
        Ty::I(32) | Ty::F32 => 4,
        Ty::F16 | Ty::BF16 => 2,
        _ => 8,
    }
}

/// `memref<64x65xf32, ...>` → dims and element type (`?` dims are empty).
fn memref_ty(s: &str) -> (Vec<usize>, Ty) {
    let inner = s
        .trim()
        .strip_prefix("memref<")
        .unwrap_or_else(|| panic!("emulator: not a memref type `{s}`"));
    let shape = inner.split(',').next().unwrap_or("").trim_end_matches('>');
    let parts: Vec<&str> = shape.split('x').collect();
    let elem = ty(parts[parts.len() - 1]);
    let dims = parts[..parts.len() - 1]
        .iter()
        .filter(|p| **p != "?")
        .map(|p| {
            p.parse()
                .unwrap_or_else(|_| panic!("emulator: dim `{p}` in `{s}`"))
        })
        .collect();
    (dims, elem)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Space {
    Param(usize),
    Global(usize),
    Shared,
}

#[derive(Clone, Debug)]
struct Mem {
    space: Space,
    off: usize,
    dims: Vec<usize>,
    elem: Ty,
}

#[derive(Clone, Debug)]
enum V {
    I(i64),
    F(f64),
    M(Arc<Mem>),
    /// An `!llvm.struct` (the results of `mma.sync`), or a lane's fragments.
    Agg(Arc<Vec<V>>),
    Unset,
}

impl V {
    fn i(&self) -> i64 {
        match self {
            V::I(x) => *x,
            other => panic!("emulator: expected an integer, got {other:?}"),
        }
    }

    fn f(&self) -> f64 {
        match self {
            V::F(x) => *x,
            other => panic!("emulator: expected a float, got {other:?}"),
        }
    }

    fn m(&self) -> Arc<Mem> {
        match self {
            V::M(m) => m.clone(),
            other => panic!("emulator: expected a memref, got {other:?}"),
        }
    }
}

/// `x` wrapped to `bits` (sign-extended; i1 is 0 or 1).
fn wrap(x: i64, bits: u32) -> i64 {
    match bits {
        1 => x & 1,
        64 => x,
        b => (x << (64 - b)) >> (64 - b),
    }
}

fn unsigned(x: i64, bits: u32) -> u64 {
    match bits {
        64 => x as u64,
        b => (x as u64) & ((1u64 << b) - 1),
    }
}

/// The value of half-precision bits.
fn half_value(bits: u16, t: Ty) -> f64 {
    match t {
        Ty::BF16 => half::bf16::from_bits(bits).to_f64(),
        _ => half::f16::from_bits(bits).to_f64(),
    }
}

/// A float result of type `t`, rounded to it.
fn round_f(x: f64, t: Ty) -> f64 {
    match t {
        Ty::F32 => x as f32 as f64,
        Ty::F16 => half::f16::from_f64(x).to_f64(),
        Ty::BF16 => half::bf16::from_f64(x).to_f64(),
        _ => x,
    }
}

#[derive(Debug)]
enum Ex {
    Const(V),
    Bin(String, usize, usize, Ty),
    Neg(usize),
    Cmp(String, usize, usize, Ty),
    Select(usize, usize, usize),
    Cast(String, usize, Ty, Ty),
    Load(usize, Vec<usize>),
    GetGlobal(usize, Vec<usize>, Ty),
    View(usize, usize, Vec<usize>, Ty),
    DynShared,
    Id(char, usize),
    Intrinsic(String, Vec<usize>),
    /// `nvvm.mma.sync` m16n8k16 (row, col), f32 accumulation: the half type, A, B, C.
    Mma(Ty, Vec<usize>, Vec<usize>, Vec<usize>),
    Extract(usize, usize),
    /// A bitcast that keeps the bits (`i32` to `vector<2xf16>`).
    Same(usize),
}

#[derive(Debug)]
enum St {
    Let(usize, Ex),
    Store(usize, usize, Vec<usize>),
    For {
        iv: usize,
        bounds: [usize; 3],
        args: Vec<usize>,
        inits: Vec<usize>,
        results: Vec<usize>,
        body: Vec<St>,
        yields: Vec<usize>,
    },
    If {
        cond: usize,
        results: Vec<usize>,
        then: (Vec<St>, Vec<usize>),
        other: (Vec<St>, Vec<usize>),
    },
    Barrier,
    Shuffle(usize, usize, usize, usize),
}

struct Func {
    /// Slot, dims and element type of each parameter.
    params: Vec<(usize, Vec<usize>, Ty)>,
    body: Vec<St>,
    slots: usize,
    syncs: bool,
}

struct Parser<'a> {
    lines: Vec<&'a str>,
    at: usize,
    names: HashMap<String, usize>,
    globals: &'a HashMap<String, usize>,
}

impl Parser<'_> {
    fn slot(&mut self, name: &str) -> usize {
        let name = name.trim();
        let n = self.names.len();
        *self.names.entry(name.to_string()).or_insert(n)
    }

    fn operands(&mut self, text: &str) -> Vec<usize> {
        text.split(',')
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .map(|s| self.slot(s))
            .collect()
    }

    /// Statements up to the closing `}` (or `} else {`); the yield values and
    /// whether an else-branch follows.
    fn block(&mut self) -> (Vec<St>, Vec<usize>, bool) {
        let mut out = Vec::new();
        let mut yields = Vec::new();
        while self.at < self.lines.len() {
            let line = self.lines[self.at].trim();
            self.at += 1;
            if line == "}" {
                return (out, yields, false);
            }
            if line == "} else {" {
                return (out, yields, true);
            }
            if line.is_empty() || line == "gpu.return" {
                continue;
            }
            if let Some(rest) = line.strip_prefix("scf.yield") {
                let vals = rest.split(" : ").next().unwrap_or("");
                yields = self.operands(vals);
                continue;
            }
            if line == "gpu.barrier" {
                out.push(St::Barrier);
                continue;
            }
            if let Some(rest) = line.strip_prefix("memref.store ") {
                let (lhs, _) = rest.split_once(" : ").expect("store type");
                let (v, m) = lhs.split_once(", ").expect("store operands");
                let (mname, idx) = m.split_once('[').expect("store index");
                let v = self.slot(v);
                let mslot = self.slot(mname);
                let idx = self.operands(idx.trim_end_matches(']'));
                out.push(St::Store(v, mslot, idx));
                continue;
            }
            if line.starts_with("scf.for ") || line.starts_with("scf.if ") {
                out.push(self.structured(Vec::new(), line));
                continue;
            }
            let (lhs, rhs) = line
                .split_once(" = ")
                .unwrap_or_else(|| panic!("emulator: cannot read `{line}`"));
            if let Some(args) = rhs.strip_prefix("gpu.shuffle xor ") {
                let (r, _) = lhs.split_once(", ").expect("shuffle results");
                let args = args.split(" : ").next().unwrap_or("");
                let a = self.operands(args);
                let r = self.slot(r);
                out.push(St::Shuffle(r, a[0], a[1], a[2]));
                continue;
            }
            if let Some((name, n)) = lhs.split_once(':') {
                let n: usize = n.parse().expect("result count");
                let results: Vec<usize> =
                    (0..n).map(|i| self.slot(&format!("{name}#{i}"))).collect();
                out.push(self.structured(results, rhs));
                continue;
            }
            let r = self.slot(lhs);
            let ex = self.expr(rhs);
            out.push(St::Let(r, ex));
        }
        (out, yields, false)
    }

    fn structured(&mut self, results: Vec<usize>, text: &str) -> St {
        if let Some(rest) = text.strip_prefix("scf.for ") {
            // %iv = %lb to %ub step %st [iter_args(%a = %x, ...) -> (...)] {
            let (iv, rest) = rest.split_once(" = ").expect("for iv");
            let (lb, rest) = rest.split_once(" to ").expect("for lb");
            let (ub, rest) = rest.split_once(" step ").expect("for ub");
            let (st, rest) = match rest.split_once(" iter_args(") {
                Some((st, rest)) => (st, Some(rest)),
                None => (rest.trim_end_matches(" {"), None),
            };
            let iv = self.slot(iv);
            let bounds = [self.slot(lb), self.slot(ub), self.slot(st)];
            let (mut args, mut inits) = (Vec::new(), Vec::new());
            if let Some(rest) = rest {
                let list = rest.split(") -> (").next().unwrap_or("");
                for pair in list.split(", ") {
                    let (a, x) = pair.split_once(" = ").expect("iter arg");
                    args.push(self.slot(a));
                    inits.push(self.slot(x));
                }
            }
            let (body, yields, _) = self.block();
            return St::For {
                iv,
                bounds,
                args,
                inits,
                results,
                body,
                yields,
            };
        }
        let rest = text.strip_prefix("scf.if ").expect("scf.if");
        let cond = rest.split([' ', '{']).next().unwrap_or("");
        let cond = self.slot(cond);
        let (then, ty_, more) = self.block();
        let other = if more {
            let (b, y, _) = self.block();
            (b, y)
        } else {
            (Vec::new(), Vec::new())
        };
        St::If {
            cond,
            results,
            then: (then, ty_),
            other,
        }
    }

    fn expr(&mut self, rhs: &str) -> Ex {
        let (op, rest) = rhs.split_once(' ').unwrap_or((rhs, ""));
        match op {
            "arith.constant" => {
                if rest == "true" || rest == "false" {
                    return Ex::Const(V::I((rest == "true") as i64));
                }
                let (lit, t) = rest.split_once(" : ").expect("constant type");
                let t = ty(t);
                Ex::Const(match t {
                    Ty::I(bits) => V::I(wrap(lit.parse().expect("int literal"), bits)),
                    Ty::F32 => {
                        let bits = u32::from_str_radix(lit.trim_start_matches("0x"), 16)
                            .expect("f32 bits");
                        V::F(f32::from_bits(bits) as f64)
                    }
                    Ty::F64 => {
                        let bits = u64::from_str_radix(lit.trim_start_matches("0x"), 16)
                            .expect("f64 bits");
                        V::F(f64::from_bits(bits))
                    }
                    Ty::F16 | Ty::BF16 => {
                        let bits = u16::from_str_radix(lit.trim_start_matches("0x"), 16)
                            .expect("half bits");
                        V::F(half_value(bits, t))
                    }
                })
            }
            "arith.cmpi" | "arith.cmpf" => {
                let (body, t) = rest.split_once(" : ").expect("cmp type");
                let mut it = body.splitn(3, ", ");
                let pred = it.next().unwrap_or("").to_string();
                let a = self.slot(it.next().unwrap_or(""));
                let b = self.slot(it.next().unwrap_or(""));
                Ex::Cmp(pred, a, b, ty(t))
            }
            "arith.select" => {
                let body = rest.split(" : ").next().unwrap_or("");
                let o = self.operands(body);
                Ex::Select(o[0], o[1], o[2])
            }
            "arith.negf" => {
                let a = rest.split(" : ").next().unwrap_or("");
                Ex::Neg(self.slot(a))
            }
            "arith.index_cast" | "arith.extsi" | "arith.extui" | "arith.trunci"
            | "arith.sitofp" | "arith.uitofp" | "arith.fptosi" | "arith.extf" | "arith.truncf"
            | "arith.bitcast" => {
                let (a, tys) = rest.split_once(" : ").expect("cast types");
                let (from, to) = tys.split_once(" to ").expect("cast to");
                let a = self.slot(a);
                Ex::Cast(op.to_string(), a, ty(from), ty(to))
            }
            "memref.load" => {
                let (m, _) = rest.split_once(" : ").expect("load type");
                let (mname, idx) = m.split_once('[').expect("load index");
                let ms = self.slot(mname);
                let idx = self.operands(idx.trim_end_matches(']'));
                Ex::Load(ms, idx)
            }
            "memref.get_global" => {
                let (name, t) = rest.split_once(" : ").expect("global type");
                let g = *self
                    .globals
                    .get(name.trim_start_matches('@'))
                    .unwrap_or_else(|| panic!("emulator: no global {name}"));
                let (dims, elem) = memref_ty(t);
                Ex::GetGlobal(g, dims, elem)
            }
            "memref.view" => {
                // %base[%off][] : A to B
                let (m, tys) = rest.split_once(" : ").expect("view type");
                let (base, off) = m.split_once('[').expect("view offset");
                let off = off.split(']').next().unwrap_or("");
                let to = tys.split(" to ").nth(1).expect("view to");
                let (dims, elem) = memref_ty(to);
                let b = self.slot(base);
                let o = self.slot(off);
                Ex::View(b, o, dims, elem)
            }
            "gpu.dynamic_shared_memory" => Ex::DynShared,
            "nvvm.mma.sync" => {
                let list = |p: &mut Self, tag: &str| -> Vec<usize> {
                    let inner = rest
                        .split(tag)
                        .nth(1)
                        .and_then(|x| x.split(']').next())
                        .unwrap_or("");
                    p.operands(inner)
                };
                let (a, b, c) = (list(self, "A["), list(self, "B["), list(self, "C["));
                let half = if rest.contains("mma_type<bf16>") {
                    Ty::BF16
                } else {
                    Ty::F16
                };
                Ex::Mma(half, a, b, c)
            }
            "llvm.extractvalue" => {
                let (v, i) = rest.split_once('[').expect("extractvalue index");
                let i: usize = i.split(']').next().unwrap_or("").parse().expect("index");
                Ex::Extract(self.slot(v), i)
            }
            "llvm.bitcast" => {
                let v = rest.split(" : ").next().unwrap_or("");
                Ex::Same(self.slot(v))
            }
            "gpu.thread_id" => Ex::Id('t', dim(rest)),
            "gpu.block_id" => Ex::Id('b', dim(rest)),
            "gpu.grid_dim" => Ex::Id('g', dim(rest)),
            "llvm.call_intrinsic" => {
                let name = rest.split('"').nth(1).expect("intrinsic name").to_string();
                let args = rest
                    .split('(')
                    .nth(1)
                    .and_then(|s| s.split(')').next())
                    .unwrap_or("");
                let a = self.operands(args);
                Ex::Intrinsic(name, a)
            }
            _ if op.starts_with("arith.") => {
                let (body, t) = rest.rsplit_once(" : ").expect("binary type");
                let body = body.replace(" fastmath<contract>", "");
                let o = self.operands(&body);
                Ex::Bin(op["arith.".len()..].to_string(), o[0], o[1], ty(t))
            }
            _ => panic!("emulator: unknown op `{op}`"),
        }
    }
}

fn dim(s: &str) -> usize {
    match s.trim() {
        "x" => 0,
        "y" => 1,
        _ => 2,
    }
}

/// Parses the kernels and globals of a module.
pub(crate) struct Module {
    funcs: HashMap<String, Func>,
    globals: Vec<Vec<u8>>,
}

fn has_sync(body: &[St]) -> bool {
    body.iter().any(|s| match s {
        St::Barrier | St::Shuffle(..) | St::Let(_, Ex::Mma(..)) => true,
        St::Let(_, Ex::Intrinsic(name, _)) => name.contains("vote"),
        St::For { body, .. } => has_sync(body),
        St::If { then, other, .. } => has_sync(&then.0) || has_sync(&other.0),
        _ => false,
    })
}

impl Module {
    pub fn parse(text: &str) -> Module {
        let mut names = HashMap::new();
        let mut globals = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            let Some(rest) = line.strip_prefix("memref.global \"private\" constant @") else {
                continue;
            };
            let (name, rest) = rest.split_once(" : ").expect("global");
            let hex = rest.split("dense<\"0x").nth(1).expect("global data");
            let hex = hex.split('"').next().unwrap_or("");
            let bytes = (0..hex.len() / 2)
                .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex"))
                .collect();
            names.insert(name.to_string(), globals.len());
            globals.push(bytes);
        }
        let mut funcs = HashMap::new();
        let lines: Vec<&str> = text.lines().collect();
        let mut i = 0;
        while i < lines.len() {
            let line = lines[i].trim();
            i += 1;
            let Some(rest) = line.strip_prefix("gpu.func @") else {
                continue;
            };
            let (name, rest) = rest.split_once('(').expect("func name");
            let params_text = rest.split(") kernel").next().unwrap_or("");
            let mut p = Parser {
                lines: lines.clone(),
                at: i,
                names: HashMap::new(),
                globals: &names,
            };
            let params: Vec<(usize, Vec<usize>, Ty)> = params_text
                .split(", %")
                .filter(|s| !s.is_empty())
                .map(|s| {
                    let (n, t) = s.trim_start_matches('%').split_once(": ").expect("param");
                    let (dims, elem) = memref_ty(t);
                    (p.slot(&format!("%{n}")), dims, elem)
                })
                .collect();
            let (body, _, _) = p.block();
            i = p.at;
            let syncs = has_sync(&body);
            funcs.insert(
                name.to_string(),
                Func {
                    params,
                    body,
                    slots: p.names.len(),
                    syncs,
                },
            );
        }
        Module { funcs, globals }
    }
}

/// Block-wide (or warp-wide) rendezvous with value exchange; a thread that panics
/// poisons it so the others fail instead of waiting.
struct Sync {
    n: usize,
    state: Mutex<(usize, usize)>,
    cv: Condvar,
    slots: Mutex<Vec<V>>,
    poisoned: Arc<AtomicBool>,
}

impl Sync {
    fn new(n: usize, poisoned: Arc<AtomicBool>) -> Sync {
        Sync {
            n,
            state: Mutex::new((0, 0)),
            cv: Condvar::new(),
            slots: Mutex::new(vec![V::Unset; n]),
            poisoned,
        }
    }

    fn wait(&self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let generation = s.1;
        s.0 += 1;
        if s.0 == self.n {
            s.0 = 0;
            s.1 += 1;
            self.cv.notify_all();
            return;
        }
        let mut waited = Duration::ZERO;
        while s.1 == generation {
            if self.poisoned.load(Ordering::SeqCst) {
                panic!("emulator: another thread of the block failed");
            }
            let step = Duration::from_millis(50);
            let (g, _) = self
                .cv
                .wait_timeout(s, step)
                .unwrap_or_else(|e| e.into_inner());
            s = g;
            waited += step;
            if waited > Duration::from_secs(20) {
                self.poisoned.store(true, Ordering::SeqCst);
                panic!("emulator: a barrier or shuffle is not reached by every thread");
            }
        }
    }

    fn exchange(&self, me: usize, v: V) -> Vec<V> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())[me] = v;
        self.wait();
        let all = self.slots.lock().unwrap_or_else(|e| e.into_inner()).clone();
        self.wait();
        all
    }
}

struct Memory {
    params: Vec<Arc<Mutex<Vec<u8>>>>,
    globals: Vec<Vec<u8>>,
    shared: Arc<Mutex<Vec<u8>>>,
}

struct Thread<'a> {
    env: Vec<V>,
    tid: [usize; 3],
    bid: [usize; 3],
    grid: [usize; 3],
    mem: &'a Memory,
    block: Option<&'a Sync>,
    warp: Option<&'a Sync>,
}

fn read(bytes: &[u8], at: usize, t: Ty) -> V {
    let b = |n: usize| -> &[u8] { &bytes[at..at + n] };
    match t {
        Ty::I(1) | Ty::I(8) => V::I(b(1)[0] as i8 as i64),
        Ty::I(32) => V::I(i32::from_le_bytes(b(4).try_into().unwrap_or([0; 4])) as i64),
        Ty::I(_) => V::I(i64::from_le_bytes(b(8).try_into().unwrap_or([0; 8]))),
        Ty::F16 => V::F(half::f16::from_le_bytes(b(2).try_into().unwrap_or([0; 2])).to_f64()),
        Ty::BF16 => V::F(half::bf16::from_le_bytes(b(2).try_into().unwrap_or([0; 2])).to_f64()),
        Ty::F32 => V::F(f32::from_le_bytes(b(4).try_into().unwrap_or([0; 4])) as f64),
        Ty::F64 => V::F(f64::from_le_bytes(b(8).try_into().unwrap_or([0; 8]))),
    }
}

fn write(bytes: &mut [u8], at: usize, t: Ty, v: &V) {
    let data: Vec<u8> = match t {
        Ty::I(1) | Ty::I(8) => vec![v.i() as u8],
        Ty::I(32) => (v.i() as i32).to_le_bytes().to_vec(),
        Ty::I(_) => v.i().to_le_bytes().to_vec(),
        Ty::F16 => half::f16::from_f64(v.f()).to_le_bytes().to_vec(),
        Ty::BF16 => half::bf16::from_f64(v.f()).to_le_bytes().to_vec(),
        Ty::F32 => (v.f() as f32).to_le_bytes().to_vec(),
        Ty::F64 => v.f().to_le_bytes().to_vec(),
    };
    bytes[at..at + data.len()].copy_from_slice(&data);
}

impl Thread<'_> {
    fn get(&self, s: usize) -> &V {
        &self.env[s]
    }

    /// The byte offset of element `idx` of `m`, checked against its dims and buffer.
    fn address(&self, m: &Mem, idx: &[usize]) -> usize {
        assert_eq!(idx.len(), m.dims.len(), "emulator: index rank");
        let mut lin = 0usize;
        for (d, &s) in idx.iter().enumerate() {
            let i = self.get(s).i();
            assert!(
                i >= 0 && (i as usize) < m.dims[d],
                "emulator: index {i} out of range for dim {d} of {:?} ({:?})",
                m.dims,
                m.space
            );
            lin = lin * m.dims[d] + i as usize;
        }
        m.off + lin * size_of(m.elem)
    }

    fn with_bytes<R>(&self, space: Space, f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
        match space {
            Space::Param(p) => f(&mut self.mem.params[p].lock().unwrap_or_else(|e| e.into_inner())),
            Space::Shared => f(&mut self.mem.shared.lock().unwrap_or_else(|e| e.into_inner())),
            Space::Global(g) => {
                let mut copy = self.mem.globals[g].clone();
                f(&mut copy)
            }
        }
    }

    fn run(&mut self, body: &[St]) {
        for st in body {
            match st {
                St::Let(r, ex) => {
                    let v = self.eval(ex);
                    self.env[*r] = v;
                }
                St::Store(v, m, idx) => {
                    let m = self.get(*m).m();
                    let at = self.address(&m, idx);
                    let v = self.get(*v).clone();
                    assert!(
                        !matches!(m.space, Space::Global(_)),
                        "emulator: a store into a constant"
                    );
                    self.with_bytes(m.space, |b| {
                        assert!(
                            at + size_of(m.elem) <= b.len(),
                            "emulator: store past the buffer"
                        );
                        write(b, at, m.elem, &v)
                    });
                }
                St::For {
                    iv,
                    bounds,
                    args,
                    inits,
                    results,
                    body,
                    yields,
                } => {
                    let (lb, ub, step) = (
                        self.get(bounds[0]).i(),
                        self.get(bounds[1]).i(),
                        self.get(bounds[2]).i(),
                    );
                    assert!(step > 0, "emulator: loop step {step}");
                    let mut carried: Vec<V> = inits.iter().map(|&s| self.get(s).clone()).collect();
                    let mut i = lb;
                    while i < ub {
                        self.env[*iv] = V::I(i);
                        for (a, v) in args.iter().zip(&carried) {
                            self.env[*a] = v.clone();
                        }
                        self.run(body);
                        carried = yields.iter().map(|&s| self.get(s).clone()).collect();
                        i += step;
                    }
                    for (r, v) in results.iter().zip(carried) {
                        self.env[*r] = v;
                    }
                }
                St::If {
                    cond,
                    results,
                    then,
                    other,
                } => {
                    let (body, yields) = if self.get(*cond).i() != 0 {
                        then
                    } else {
                        other
                    };
                    self.run(body);
                    let vals: Vec<V> = yields.iter().map(|&s| self.get(s).clone()).collect();
                    for (r, v) in results.iter().zip(vals) {
                        self.env[*r] = v;
                    }
                }
                St::Barrier => self.block.expect("emulator: barrier without sync").wait(),
                St::Shuffle(r, v, off, width) => {
                    let lane = self.tid[0] % 32;
                    let all = self
                        .warp
                        .expect("emulator: shuffle without sync")
                        .exchange(lane, self.get(*v).clone());
                    let off = self.get(*off).i() as usize;
                    let width = self.get(*width).i() as usize;
                    let src = lane ^ off;
                    let v = if src < width {
                        all[src].clone()
                    } else {
                        all[lane].clone()
                    };
                    self.env[*r] = v;
                }
            }
        }
    }

    fn eval(&mut self, ex: &Ex) -> V {
        match ex {
            Ex::Const(v) => v.clone(),
            Ex::Neg(a) => V::F(-self.get(*a).f()),
            Ex::Bin(op, a, b, t) => self.binary(op, *a, *b, *t),
            Ex::Cmp(pred, a, b, t) => {
                let holds = match t {
                    Ty::I(bits) => {
                        let (x, y) = (self.get(*a).i(), self.get(*b).i());
                        let (ux, uy) = (unsigned(x, *bits), unsigned(y, *bits));
                        match pred.as_str() {
                            "eq" => x == y,
                            "ne" => x != y,
                            "slt" => x < y,
                            "sle" => x <= y,
                            "sgt" => x > y,
                            "sge" => x >= y,
                            "ult" => ux < uy,
                            "ule" => ux <= uy,
                            "ugt" => ux > uy,
                            "uge" => ux >= uy,
                            p => panic!("emulator: cmpi {p}"),
                        }
                    }
                    _ => {
                        let (x, y) = (self.get(*a).f(), self.get(*b).f());
                        let uno = x.is_nan() || y.is_nan();
                        match pred.as_str() {
                            "oeq" => !uno && x == y,
                            "one" => !uno && x != y,
                            "olt" => !uno && x < y,
                            "ole" => !uno && x <= y,
                            "ogt" => !uno && x > y,
                            "oge" => !uno && x >= y,
                            "une" => uno || x != y,
                            "uno" => uno,
                            p => panic!("emulator: cmpf {p}"),
                        }
                    }
                };
                V::I(holds as i64)
            }
            Ex::Select(c, a, b) => {
                if self.get(*c).i() != 0 {
                    self.get(*a).clone()
                } else {
                    self.get(*b).clone()
                }
            }
            Ex::Cast(op, a, from, to) => self.cast(op, *a, *from, *to),
            Ex::Load(m, idx) => {
                let m = self.get(*m).m();
                let at = self.address(&m, idx);
                self.with_bytes(m.space, |b| {
                    assert!(
                        at + size_of(m.elem) <= b.len(),
                        "emulator: load past the buffer"
                    );
                    read(b, at, m.elem)
                })
            }
            Ex::GetGlobal(g, dims, elem) => V::M(Arc::new(Mem {
                space: Space::Global(*g),
                off: 0,
                dims: dims.clone(),
                elem: *elem,
            })),
            Ex::View(base, off, dims, elem) => {
                let b = self.get(*base).m();
                let off = self.get(*off).i() as usize;
                V::M(Arc::new(Mem {
                    space: b.space,
                    off: b.off + off,
                    dims: dims.clone(),
                    elem: *elem,
                }))
            }
            Ex::DynShared => V::M(Arc::new(Mem {
                space: Space::Shared,
                off: 0,
                dims: Vec::new(),
                elem: Ty::I(8),
            })),
            Ex::Mma(half, a, b, c) => self.mma(*half, a, b, c),
            Ex::Extract(v, i) => match self.get(*v) {
                V::Agg(vals) => vals[*i].clone(),
                other => panic!("emulator: extractvalue of {other:?}"),
            },
            Ex::Same(v) => self.get(*v).clone(),
            Ex::Id(kind, d) => V::I(match kind {
                't' => self.tid[*d],
                'b' => self.bid[*d],
                _ => self.grid[*d],
            } as i64),
            Ex::Intrinsic(name, args) => {
                let f = |s: &Self, i: usize| s.get(args[i]).f();
                match name.as_str() {
                    "llvm.nvvm.ex2.approx.f32" => V::F((f(self, 0) as f32).exp2() as f64),
                    "llvm.nvvm.lg2.approx.f" => V::F((f(self, 0) as f32).log2() as f64),
                    "llvm.sqrt.f32" => V::F((f(self, 0) as f32).sqrt() as f64),
                    "llvm.floor.f32" => V::F((f(self, 0) as f32).floor() as f64),
                    "llvm.roundeven.f64" => V::F(f(self, 0).round_ties_even()),
                    "llvm.nvvm.sin.approx.f" => V::F((f(self, 0) as f32).sin() as f64),
                    "llvm.nvvm.cos.approx.f" => V::F((f(self, 0) as f32).cos() as f64),
                    "llvm.ctpop.i32" => V::I((self.get(args[0]).i() as u32).count_ones() as i64),
                    "llvm.nvvm.vote.ballot.sync" => {
                        let lane = self.tid[0] % 32;
                        let pred = self.get(args[1]).clone();
                        let all = self
                            .warp
                            .expect("emulator: ballot without sync")
                            .exchange(lane, pred);
                        let mut bits = 0u32;
                        for (l, v) in all.iter().enumerate() {
                            if v.i() != 0 {
                                bits |= 1 << l;
                            }
                        }
                        V::I(bits as i32 as i64)
                    }
                    other => panic!("emulator: intrinsic {other}"),
                }
            }
        }
    }

    /// `mma.sync m16n8k16.row.col` for the warp: every lane's fragments exchanged,
    /// A (16 × 16) and B (16 × 8) rebuilt with the PTX ISA's layouts, this lane's
    /// four results `C + A·B` (summed exactly, rounded to f32).
    fn mma(&self, half: Ty, a: &[usize], b: &[usize], c: &[usize]) -> V {
        let lane = self.tid[0] % 32;
        let mine: Vec<V> = a
            .iter()
            .chain(b)
            .chain(c)
            .map(|&s| self.get(s).clone())
            .collect();
        let all = self
            .warp
            .expect("emulator: mma without sync")
            .exchange(lane, V::Agg(Arc::new(mine)));
        let pair = |v: &V| {
            let x = v.i() as u32;
            (
                half_value((x & 0xFFFF) as u16, half),
                half_value((x >> 16) as u16, half),
            )
        };
        let mut am = [[0.0f64; 16]; 16];
        let mut bm = [[0.0f64; 8]; 16];
        for (l, v) in all.iter().enumerate() {
            let V::Agg(f) = v else {
                panic!("emulator: mma fragments")
            };
            let (g, t) = (l / 4, l % 4);
            for j in 0..4 {
                let (lo, hi) = pair(&f[j]);
                let (row, col) = (g + 8 * (j % 2), 2 * t + 8 * (j / 2));
                am[row][col] = lo;
                am[row][col + 1] = hi;
            }
            for j in 0..2 {
                let (lo, hi) = pair(&f[4 + j]);
                let k = 2 * t + 8 * j;
                bm[k][g] = lo;
                bm[k + 1][g] = hi;
            }
        }
        let (g, t) = (lane / 4, lane % 4);
        let d: Vec<V> = (0..4)
            .map(|i| {
                let (row, col) = (g + 8 * (i / 2), 2 * t + i % 2);
                let sum: f64 = (0..16).map(|k| am[row][k] * bm[k][col]).sum();
                V::F((self.get(c[i]).f() + sum) as f32 as f64)
            })
            .collect();
        V::Agg(Arc::new(d))
    }

    fn binary(&self, op: &str, a: usize, b: usize, t: Ty) -> V {
        if let Ty::I(bits) = t {
            let (x, y) = (self.get(a).i(), self.get(b).i());
            let (ux, uy) = (unsigned(x, bits), unsigned(y, bits));
            let r = match op {
                "addi" => x.wrapping_add(y),
                "subi" => x.wrapping_sub(y),
                "muli" => x.wrapping_mul(y),
                "divsi" => {
                    assert!(y != 0, "emulator: divsi by zero");
                    x.wrapping_div(y)
                }
                "remsi" => {
                    assert!(y != 0, "emulator: remsi by zero");
                    x.wrapping_rem(y)
                }
                "divui" => {
                    assert!(uy != 0, "emulator: divui by zero");
                    (ux / uy) as i64
                }
                "remui" => {
                    assert!(uy != 0, "emulator: remui by zero");
                    (ux % uy) as i64
                }
                "minui" => ux.min(uy) as i64,
                "minsi" => x.min(y),
                "maxsi" => x.max(y),
                "shli" => x.wrapping_shl(y as u32),
                "shrui" => (ux >> (uy as u32)) as i64,
                "andi" => x & y,
                "ori" => x | y,
                "xori" => x ^ y,
                other => panic!("emulator: arith.{other} on integers"),
            };
            return V::I(wrap(r, bits));
        }
        let (x, y) = (self.get(a).f(), self.get(b).f());
        let r = match op {
            "addf" => x + y,
            "subf" => x - y,
            "mulf" => x * y,
            "divf" => x / y,
            "maximumf" => {
                if x.is_nan() || y.is_nan() {
                    f64::NAN
                } else {
                    x.max(y)
                }
            }
            "minimumf" => {
                if x.is_nan() || y.is_nan() {
                    f64::NAN
                } else {
                    x.min(y)
                }
            }
            other => panic!("emulator: arith.{other} on floats"),
        };
        V::F(round_f(r, t))
    }

    fn cast(&self, op: &str, a: usize, from: Ty, to: Ty) -> V {
        let v = self.get(a);
        let bits = |t: Ty| match t {
            Ty::I(b) => b,
            _ => 0,
        };
        match op {
            "arith.index_cast" | "arith.extsi" | "arith.trunci" => V::I(wrap(v.i(), bits(to))),
            "arith.extui" => V::I(unsigned(v.i(), bits(from)) as i64),
            "arith.sitofp" => V::F(round_f(v.i() as f64, to)),
            "arith.uitofp" => V::F(round_f(unsigned(v.i(), bits(from)) as f64, to)),
            "arith.fptosi" => V::I(wrap(v.f() as i64, bits(to))),
            "arith.extf" => V::F(v.f()),
            "arith.truncf" => V::F(round_f(v.f(), to)),
            "arith.bitcast" => match (from, to) {
                (Ty::F32, Ty::I(32)) => V::I((v.f() as f32).to_bits() as i32 as i64),
                (Ty::I(32), Ty::F32) => V::F(f32::from_bits(v.i() as u32) as f64),
                _ => panic!("emulator: bitcast {from:?} to {to:?}"),
            },
            other => panic!("emulator: {other}"),
        }
    }
}

/// Run every launch of `program` (kernels from `module`) on `inputs`: the bytes of
/// each input and param buffer by name. Returns the bytes of every output buffer by
/// name, and the indices of the checks ([`GpuProgram::checks`]) that failed.
pub(crate) fn run(
    program: &GpuProgram,
    module: &Module,
    inputs: &HashMap<String, Vec<u8>>,
) -> (HashMap<String, Vec<u8>>, Vec<usize>) {
    let buffers: Vec<Arc<Mutex<Vec<u8>>>> = program
        .buffers
        .iter()
        .map(|b| {
            let bytes = match &b.role {
                BufferRole::Input(n) | BufferRole::Param(n) => inputs
                    .get(n)
                    .cloned()
                    .unwrap_or_else(|| panic!("emulator: no binding for {n}")),
                BufferRole::Status => vec![0; b.bytes() as usize],
                // Poison: kernels must write what they read.
                _ => vec![0xFF; b.bytes() as usize],
            };
            assert_eq!(bytes.len() as u64, b.bytes(), "emulator: binding size");
            Arc::new(Mutex::new(bytes))
        })
        .collect();
    for l in &program.launches {
        let k = &program.kernels[l.kernel];
        let f = module
            .funcs
            .get(&k.name)
            .unwrap_or_else(|| panic!("emulator: no kernel {}", k.name));
        let params: Vec<Arc<Mutex<Vec<u8>>>> = l
            .args
            .iter()
            .map(|a| match a {
                Arg::Buffer(b) => buffers[*b].clone(),
                Arg::I64(_) => panic!("emulator: scalar arguments"),
            })
            .collect();
        launch(module, f, k.block, k.shared_bytes as usize, l.grid, &params);
    }
    let bytes = |i: usize| buffers[i].lock().unwrap_or_else(|e| e.into_inner()).clone();
    let outputs = program
        .buffers
        .iter()
        .enumerate()
        .filter_map(|(i, b)| match &b.role {
            BufferRole::Output(n) => Some((n.clone(), bytes(i))),
            _ => None,
        })
        .collect();
    let failed = (program.checks.iter().enumerate())
        .filter(|(_, c)| bytes(c.buffer).iter().any(|&b| b != 0))
        .map(|(i, _)| i)
        .collect();
    (outputs, failed)
}

fn run_thread<'a>(
    f: &Func,
    mem: &'a Memory,
    t: usize,
    bid: [usize; 3],
    grid: [usize; 3],
    block: Option<&'a Sync>,
    warp: Option<&'a Sync>,
) {
    let mut th = Thread {
        env: vec![V::Unset; f.slots],
        tid: [t, 0, 0],
        bid,
        grid,
        mem,
        block,
        warp,
    };
    for (i, (p, dims, elem)) in f.params.iter().enumerate() {
        th.env[*p] = V::M(Arc::new(Mem {
            space: Space::Param(i),
            off: 0,
            dims: dims.clone(),
            elem: *elem,
        }));
    }
    th.run(&f.body);
}

fn launch(
    module: &Module,
    f: &Func,
    block: [u32; 3],
    shared: usize,
    grid: [u32; 3],
    params: &[Arc<Mutex<Vec<u8>>>],
) {
    let threads = (block[0] * block[1] * block[2]) as usize;
    assert_eq!(block[1] * block[2], 1, "emulator: 1-D blocks only");
    let grid_u = [grid[0] as usize, grid[1] as usize, grid[2] as usize];
    for bz in 0..grid_u[2] {
        for by in 0..grid_u[1] {
            for bx in 0..grid_u[0] {
                let mem = Memory {
                    params: params.to_vec(),
                    globals: module.globals.clone(),
                    shared: Arc::new(Mutex::new(vec![0xAB; shared])),
                };
                if !f.syncs {
                    for t in 0..threads {
                        run_thread(f, &mem, t, [bx, by, bz], grid_u, None, None);
                    }
                    continue;
                }
                let poisoned = Arc::new(AtomicBool::new(false));
                let bsync = Sync::new(threads, poisoned.clone());
                let warps: Vec<Sync> = (0..threads.div_ceil(32))
                    .map(|_| Sync::new(32, poisoned.clone()))
                    .collect();
                std::thread::scope(|s| {
                    for t in 0..threads {
                        let (mem, bsync, warps, poisoned) =
                            (&mem, &bsync, &warps, poisoned.clone());
                        std::thread::Builder::new()
                            .stack_size(1 << 20)
                            .spawn_scoped(s, move || {
                                struct Guard(Arc<AtomicBool>);
                                impl Drop for Guard {
                                    fn drop(&mut self) {
                                        if std::thread::panicking() {
                                            self.0.store(true, Ordering::SeqCst);
                                        }
                                    }
                                }
                                let _g = Guard(poisoned);
                                let warp = Some(&warps[t / 32]);
                                run_thread(f, mem, t, [bx, by, bz], grid_u, Some(bsync), warp);
                            })
                            .expect("emulator: spawning a thread");
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::plan::{check_plan, plan};
    use crate::gpu::{Arch, GpuOptions};
    use attnc_ir::interp::{eval, Precision};
    use attnc_ir::{
        Attention, BinaryOp, CmpOp, DType, Decay, Dims, Graph, GraphBuilder, LinearAttention,
        LinearForm, MaskExpr, MoeChoice, MoeDispatch, MoeShared, NodeId, Op, ReduceKind, Shape,
        Tensor, TensorType, TopKOutput, UnaryOp,
    };

    type Bindings = HashMap<String, Tensor>;

    fn shape(s: &[u64]) -> Shape {
        Shape::new(s.iter().copied())
    }

    fn graph_with_dims(
        dims: Dims,
        build: impl FnOnce(&mut GraphBuilder) -> attnc_ir::Result<Vec<NodeId>>,
    ) -> Graph {
        let mut b = GraphBuilder::new("emulated", dims);
        let outputs = build(&mut b).unwrap_or_else(|e| panic!("building the graph: {e}"));
        for (i, id) in outputs.into_iter().enumerate() {
            b.output(format!("out{i}"), id).unwrap();
        }
        b.finish()
            .unwrap_or_else(|e| panic!("verifying the graph: {e}"))
    }

    fn graph(build: impl FnOnce(&mut GraphBuilder) -> attnc_ir::Result<Vec<NodeId>>) -> Graph {
        graph_with_dims(Dims::new(), build)
    }

    fn tolerance(dtype: DType) -> f64 {
        match dtype {
            DType::F16 => 2e-3,
            DType::BF16 => 1.6e-2,
            _ => 1e-4,
        }
    }

    /// Plan `g` for the GPU, emulate its launches and compare every output with the
    /// interpreter (f64).
    fn check_with(g: &Graph, bindings: &Bindings) {
        check_with_options(g, bindings, &GpuOptions::default());
    }

    fn check_with_options(g: &Graph, bindings: &Bindings, options: &GpuOptions) {
        let planned = plan(g, Arch::Sm90, options).unwrap_or_else(|e| panic!("planning: {e}"));
        check_plan(&planned.program).unwrap_or_else(|e| panic!("plan: {e}"));
        let module = Module::parse(&planned.module);
        let inputs: HashMap<String, Vec<u8>> = bindings
            .iter()
            .map(|(n, t)| (n.clone(), crate::host::tensor_to_bytes(t)))
            .collect();
        let (got, failed) = run(&planned.program, &module, &inputs);
        let failed: Vec<_> = failed.iter().map(|&i| &planned.program.checks[i]).collect();
        assert!(
            failed.is_empty(),
            "checks failed on valid inputs: {failed:?}"
        );
        let want =
            eval(g, bindings, Precision::F64).unwrap_or_else(|e| panic!("interpreting: {e}"));
        for ((name, id), w) in g.outputs().iter().zip(&want) {
            let node = g.node(*id);
            let bytes = got.get(name).unwrap_or_else(|| panic!("no output {name}"));
            let t = crate::host::tensor_from_bytes(node.ty.dtype, g.sizes(*id), bytes)
                .unwrap_or_else(|| panic!("{name}: output size"));
            let scale = w
                .data
                .iter()
                .filter(|v| v.is_finite())
                .fold(1.0f64, |m, v| m.max(v.abs()));
            let diff = t.max_abs_diff(w);
            assert!(
                diff <= tolerance(w.dtype) * scale,
                "{name} ({}): max abs diff {diff}\n got  {:?}\n want {:?}",
                node.op.name(),
                t.data,
                w.data
            );
        }
    }

    fn check(g: &Graph) {
        check_with(g, &attnc_ir::random_bindings(g, 7));
    }

    /// A tiny example model, optimized for the H200 as the CLI does.
    fn tiny_example(name: &str) -> Graph {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples")
            .join(format!("{name}.toml"));
        let source = attnc_ir::spec::SpecSource {
            sets: Vec::new(),
            tiny: true,
        };
        let spec = attnc_ir::spec::load_spec(&path, &source).unwrap();
        let graph = attnc_ir::spec::lower(&spec).unwrap();
        let target = attnc_passes::Target::named("h200").unwrap();
        attnc_passes::optimize(&graph, &attnc_passes::Options::new(target))
            .unwrap()
            .graph
    }

    #[test]
    fn fused_elementwise_layout_and_casts() {
        check(&graph(|b| {
            let x = b.input("x", shape(&[2, 3, 5]), DType::F32)?;
            let y = b.input("y", shape(&[3, 1]), DType::F32)?;
            let mut outs = Vec::new();
            for op in BinaryOp::ALL {
                if op != BinaryOp::Pow {
                    outs.push(b.op(Op::Binary(op), &[x, y])?);
                }
            }
            for u in UnaryOp::ALL {
                if !matches!(u, UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::Rsqrt) {
                    outs.push(b.op(Op::Unary(u), &[x])?);
                }
            }
            let c = b.op(Op::Compare(CmpOp::Lt), &[x, y])?;
            let two = b.constant(2.0, DType::F32)?;
            let s = b.op(Op::Select, &[c, x, two])?;
            let t = b.op(
                Op::Transpose {
                    perm: vec![2, 0, 1],
                },
                &[s],
            )?;
            let sl = b.op(
                Op::Slice {
                    axis: 0,
                    start: 1u64.into(),
                    end: 4u64.into(),
                },
                &[t],
            )?;
            let r = b.op(
                Op::Reshape {
                    shape: shape(&[3, 6]),
                },
                &[sl],
            )?;
            outs.push(b.op(Op::Unary(UnaryOp::Exp), &[r])?);
            outs.push(b.op(Op::Concat { axis: 1 }, &[x, x, x])?);
            outs.push(b.op(
                Op::Broadcast {
                    shape: shape(&[4, 3, 2]),
                },
                &[y],
            )?);
            let half = b.op(Op::Cast { to: DType::BF16 }, &[x])?;
            outs.push(b.op(Op::Unary(UnaryOp::Tanh), &[half])?);
            let scaled = b.op(Op::Binary(BinaryOp::Mul), &[x, two])?;
            let ints = b.op(Op::Cast { to: DType::I64 }, &[scaled])?;
            outs.push(ints);
            let i32s = b.op(Op::Cast { to: DType::I32 }, &[ints])?;
            let bools = b.op(Op::Cast { to: DType::Bool }, &[i32s])?;
            outs.push(bools);
            outs.push(b.op(Op::Cast { to: DType::F32 }, &[bools])?);
            Ok(outs)
        }));
    }

    #[test]
    fn positive_only_math_and_pow() {
        let g = graph(|b| {
            let x = b.input("x", shape(&[4, 9]), DType::F32)?;
            let ax = b.op(Op::Unary(UnaryOp::Abs), &[x])?;
            let eps = b.constant(0.1, DType::F32)?;
            let p = b.op(Op::Binary(BinaryOp::Add), &[ax, eps])?;
            let mut outs = Vec::new();
            for u in [UnaryOp::Log, UnaryOp::Sqrt, UnaryOp::Rsqrt] {
                outs.push(b.op(Op::Unary(u), &[p])?);
            }
            outs.push(b.op(Op::Binary(BinaryOp::Pow), &[p, x])?);
            let three = b.constant(3.0, DType::F32)?;
            outs.push(b.op(Op::Binary(BinaryOp::Pow), &[x, three])?);
            Ok(outs)
        });
        check(&g);
    }

    #[test]
    fn integers_iota_and_masks() {
        let g = graph(|b| {
            let x = b.input("x", shape(&[4, 6]), DType::I64)?;
            let y = b.input("y", shape(&[6]), DType::I64)?;
            let mut outs = Vec::new();
            for op in [
                BinaryOp::Add,
                BinaryOp::Sub,
                BinaryOp::Mul,
                BinaryOp::Max,
                BinaryOp::Min,
            ] {
                outs.push(b.op(Op::Binary(op), &[x, y])?);
            }
            for u in [UnaryOp::Neg, UnaryOp::Abs, UnaryOp::Relu] {
                outs.push(b.op(Op::Unary(u), &[x])?);
            }
            outs.push(b.add(
                Op::Iota { axis: 1 },
                &[],
                Some(TensorType::new(shape(&[4, 6]), DType::I32)),
            )?);
            let m = b.add(
                Op::Mask {
                    expr: MaskExpr::parse("k <= q && q - k < 3 || h == 1").unwrap(),
                },
                &[],
                Some(TensorType::new(shape(&[2, 4, 6]), DType::Bool)),
            )?;
            outs.push(m);
            let mi = b.op(Op::Cast { to: DType::I64 }, &[m])?;
            outs.push(b.op(Op::Compare(CmpOp::Ge), &[mi, x])?);
            let c = b.op(Op::CumSum { axis: 1 }, &[x])?;
            outs.push(c);
            Ok(outs)
        });
        // Small integers, and divisors that are never 0.
        let mut bind = Bindings::new();
        let xs: Vec<f64> = (0..24).map(|i| ((i * 7) % 11) as f64 - 5.0).collect();
        bind.insert("x".into(), Tensor::new(DType::I64, vec![4, 6], xs));
        bind.insert(
            "y".into(),
            Tensor::new(DType::I64, vec![6], vec![3.0, -2.0, 1.0, 7.0, -1.0, 2.0]),
        );
        check_with(&g, &bind);
        let d = graph(|b| {
            let x = b.input("x", shape(&[4, 6]), DType::I64)?;
            let y = b.input("y", shape(&[6]), DType::I64)?;
            Ok(vec![b.op(Op::Binary(BinaryOp::Div), &[x, y])?])
        });
        check_with(&d, &bind);
    }

    #[test]
    fn gathers_embeddings_rope_features() {
        let g = graph(|b| {
            let table = b.param("table", shape(&[50, 8]), DType::BF16)?;
            let ids = b.input("ids", shape(&[2, 7]), DType::I64)?;
            let e = b.op(Op::Embedding, &[table, ids])?;
            let data = b.input("data", shape(&[3, 10, 4]), DType::F32)?;
            let idx = b.input("idx", shape(&[5]), DType::I32)?;
            let g1 = b.op(Op::Gather { axis: 1 }, &[data, idx])?;
            let x = b.input("x", shape(&[1, 9, 2, 16]), DType::F32)?;
            let t = b.op(
                Op::Transpose {
                    perm: vec![0, 2, 1, 3],
                },
                &[x],
            )?;
            let r = b.op(
                Op::Rope {
                    theta: 10000.0,
                    scaling: Default::default(),
                },
                &[t],
            )?;
            let f = b.add(
                Op::RandomFeatures { seed: 3 },
                &[],
                Some(TensorType::new(shape(&[12, 16]), DType::F32)),
            )?;
            let ft = b.op(Op::Transpose { perm: vec![1, 0] }, &[f])?;
            let proj = b.op(Op::MatMul, &[r, ft])?;
            Ok(vec![e, g1, r, proj])
        });
        let mut bind = attnc_ir::random_bindings(&g, 3);
        let ids: Vec<f64> = (0..14).map(|i| ((i * 13) % 50) as f64).collect();
        bind.insert("ids".into(), Tensor::new(DType::I64, vec![2, 7], ids));
        bind.insert(
            "idx".into(),
            Tensor::new(DType::I32, vec![5], vec![9.0, 0.0, 3.0, 3.0, 7.0]),
        );
        check_with(&g, &bind);
    }

    #[test]
    fn rows_and_reductions() {
        let g = graph(|b| {
            let x = b.input("x", shape(&[3, 5, 40]), DType::F32)?;
            let long = b.input("long", shape(&[2, 2500]), DType::F16)?;
            let gamma = b.param("gamma", shape(&[40]), DType::F32)?;
            let beta = b.param("beta", shape(&[40]), DType::F32)?;
            let lg = b.param("lg", shape(&[2500]), DType::F16)?;
            let mut outs = vec![
                b.op(Op::Softmax { axis: 2 }, &[x])?,
                b.op(Op::Softmax { axis: 1 }, &[x])?,
                b.op(Op::Softmax { axis: 1 }, &[long])?,
                b.op(Op::LayerNorm { eps: 1e-5 }, &[x, gamma, beta])?,
                b.op(Op::RmsNorm { eps: 1e-6 }, &[x, gamma])?,
                b.op(Op::RmsNorm { eps: 1e-6 }, &[long, lg])?,
            ];
            for kind in ReduceKind::ALL {
                for (axes, keep) in [(vec![2], false), (vec![1], true), (vec![0, 2], false)] {
                    outs.push(b.op(
                        Op::Reduce {
                            kind,
                            axes,
                            keep_dims: keep,
                        },
                        &[x],
                    )?);
                }
                outs.push(b.op(
                    Op::Reduce {
                        kind,
                        axes: vec![1],
                        keep_dims: false,
                    },
                    &[long],
                )?);
            }
            Ok(outs)
        });
        check(&g);
    }

    #[test]
    fn matmuls() {
        for dtype in [DType::F32, DType::BF16] {
            check(&graph(|b| {
                let a = b.input("a", shape(&[2, 1, 70, 45]), dtype)?;
                let w = b.param("w", shape(&[3, 45, 130]), dtype)?;
                let s = b.input("s", shape(&[5, 7]), dtype)?;
                let sw = b.param("sw", shape(&[7, 3]), dtype)?;
                Ok(vec![
                    b.op(Op::MatMul, &[a, w])?,
                    b.op(Op::MatMul, &[s, sw])?,
                ])
            }));
        }
        let g = graph(|b| {
            let a = b.input("a", shape(&[4, 3]), DType::I64)?;
            let w = b.input("w", shape(&[2, 3, 5]), DType::I64)?;
            Ok(vec![b.op(Op::MatMul, &[a, w])?])
        });
        let mut bind = Bindings::new();
        bind.insert(
            "a".into(),
            Tensor::new(
                DType::I64,
                vec![4, 3],
                (0..12).map(|i| i as f64 - 4.0).collect(),
            ),
        );
        bind.insert(
            "w".into(),
            Tensor::new(
                DType::I64,
                vec![2, 3, 5],
                (0..30).map(|i| (i % 7) as f64).collect(),
            ),
        );
        check_with(&g, &bind);
    }

    #[test]
    fn tensor_core_matmuls() {
        let tc = GpuOptions { tensor_cores: true };
        for dtype in [DType::BF16, DType::F16] {
            let g = graph(|b| {
                let a = b.input("a", shape(&[2, 1, 150, 70]), dtype)?;
                let w = b.param("w", shape(&[3, 70, 133]), dtype)?;
                let s = b.input("s", shape(&[5, 40]), dtype)?;
                let sw = b.param("sw", shape(&[40, 3]), dtype)?;
                Ok(vec![
                    b.op(Op::MatMul, &[a, w])?,
                    b.op(Op::MatMul, &[s, sw])?,
                ])
            });
            let p = plan(&g, Arch::Sm90, &tc).unwrap().program;
            assert!(p.kernels.iter().all(|k| k.op == "matmul_mma"));
            check_with_options(&g, &attnc_ir::random_bindings(&g, 9), &tc);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn attention_graph(
        dims: Dims,
        [bs, h, hkv, sq, sk, dk, dv]: [u64; 7],
        dtype: DType,
        mut a: Attention,
        bias: Option<&[u64]>,
        segments: bool,
    ) -> Graph {
        a.groups = h / hkv;
        a.bias = bias.is_some();
        a.segments = segments;
        graph_with_dims(dims, |b| {
            let q = b.input("q", shape(&[bs, h, sq, dk]), dtype)?;
            let k = b.input("k", shape(&[bs, hkv, sk, dk]), dtype)?;
            let v = b.input("v", shape(&[bs, hkv, sk, dv]), dtype)?;
            let mut ops = vec![q, k, v];
            if let Some(s) = bias {
                ops.push(b.input("bias", shape(s), dtype)?);
            }
            if segments {
                ops.push(b.input("segments", shape(&[bs, sq]), DType::I64)?);
            }
            Ok(vec![b.op(Op::Attention(a), &ops)?])
        })
    }

    fn masked(scale: f64, mask: &str) -> Attention {
        Attention {
            mask: Some(MaskExpr::parse(mask).unwrap()),
            ..Attention::new(scale)
        }
    }

    #[test]
    fn attention_dense() {
        let s = [1, 4, 2, 20, 70, 8, 12];
        check(&attention_graph(
            Dims::new(),
            s,
            DType::F32,
            Attention::new(0.3),
            None,
            false,
        ));
        check(&attention_graph(
            Dims::new(),
            s,
            DType::F32,
            masked(0.3, "k <= q + 50"),
            None,
            false,
        ));
        let capped = Attention {
            softcap: Some(2.0),
            ..masked(0.5, "h == 0 || k <= q + b + 40")
        };
        check(&attention_graph(
            Dims::new(),
            [2, 2, 1, 9, 30, 8, 8],
            DType::F32,
            capped,
            Some(&[2, 1, 30]),
            false,
        ));
        check(&attention_graph(
            Dims::new(),
            s,
            DType::BF16,
            masked(0.3, "k >= q"),
            None,
            false,
        ));
    }

    #[test]
    fn attention_fully_masked_rows_are_nan() {
        let g = attention_graph(
            Dims::new(),
            [1, 1, 1, 8, 8, 4, 4],
            DType::F32,
            masked(0.5, "q != 3"),
            None,
            false,
        );
        check(&g);
    }

    #[test]
    fn attention_documents() {
        let g = attention_graph(
            Dims::new(),
            [1, 2, 1, 24, 24, 8, 8],
            DType::F32,
            masked(0.4, "k <= q"),
            None,
            true,
        );
        let mut bind = attnc_ir::random_bindings(&g, 5);
        let seg: Vec<f64> = (0..24).map(|i| (i / 7) as f64).collect();
        bind.insert("segments".into(), Tensor::new(DType::I64, vec![1, 24], seg));
        check_with(&g, &bind);
    }

    #[test]
    fn block_sparse_attention_from_layouts() {
        for (mask, block) in [
            ("k <= q", [16, 16]),
            ("k <= q && q - k < 20", [32, 16]),
            ("h == 1 || k <= q", [16, 32]),
        ] {
            let a = Attention {
                block: Some(block),
                ..masked(0.3, mask)
            };
            check(&attention_graph(
                Dims::new(),
                [1, 2, 1, 50, 50, 8, 8],
                DType::F32,
                a,
                None,
                false,
            ));
        }
    }

    #[test]
    fn moba_runs_over_a_block_list() {
        let g = graph(|b| {
            let q = b.input("q", shape(&[1, 2, 64, 8]), DType::F32)?;
            let k = b.input("k", shape(&[1, 1, 64, 8]), DType::F32)?;
            let v = b.input("v", shape(&[1, 1, 64, 8]), DType::F32)?;
            let m = attnc_ir::Moba {
                scale: 0.3,
                groups: 2,
                block: 16,
                top_k: 2,
            };
            Ok(vec![b.op(Op::Moba(m), &[q, k, v])?])
        });
        check(&g);
    }

    #[test]
    fn topk_scans_scatter() {
        let g = graph(|b| {
            let x = b.input("x", shape(&[6, 9]), DType::F32)?;
            let a = b.input("a", shape(&[6, 9]), DType::F32)?;
            let idx = b.input("idx", shape(&[4]), DType::I64)?;
            let upd = b.input("upd", shape(&[6, 4]), DType::F32)?;
            Ok(vec![
                b.op(
                    Op::TopK {
                        k: 3,
                        output: TopKOutput::Values,
                    },
                    &[x],
                )?,
                b.op(
                    Op::TopK {
                        k: 4,
                        output: TopKOutput::Indices,
                    },
                    &[x],
                )?,
                b.op(Op::CumSum { axis: 0 }, &[x])?,
                b.op(Op::Scan { axis: 1 }, &[x, a])?,
                b.op(Op::ScatterAdd { axis: 1 }, &[x, idx, upd])?,
            ])
        });
        let mut bind = attnc_ir::random_bindings(&g, 11);
        // Ties and a NaN in the top-k rows.
        if let Some(x) = bind.get_mut("x") {
            x.data[1] = x.data[4];
            x.data[10] = f64::NAN;
        }
        bind.insert(
            "idx".into(),
            Tensor::new(DType::I64, vec![4], vec![2.0, 8.0, 2.0, 0.0]),
        );
        check_with(&g, &bind);
    }

    #[test]
    fn recurrent_and_expanded_linear_attention() {
        let (bs, h, n, dk, dv) = (1, 2, 12, 6, 40);
        let mut forms = Vec::new();
        for decay in [Decay::None, Decay::Step, Decay::Gate] {
            forms.push(LinearAttention {
                causal: true,
                decay,
                normalize: false,
                form: LinearForm::Recurrent,
            });
        }
        forms.push(LinearAttention {
            causal: true,
            decay: Decay::Head,
            normalize: false,
            form: LinearForm::Chunkwise { chunk: 4 },
        });
        let g = graph(|b| {
            let q = b.input("q", shape(&[bs, h, n, dk]), DType::F32)?;
            let k = b.input("k", shape(&[bs, h, n, dk]), DType::F32)?;
            let v = b.input("v", shape(&[bs, h, n, dv]), DType::F32)?;
            let head = b.input("ld_head", shape(&[h]), DType::F32)?;
            let step = b.input("ld_step", shape(&[bs, h, n]), DType::F32)?;
            let gate = b.input("ld_gate", shape(&[bs, h, n, dk]), DType::F32)?;
            forms
                .iter()
                .map(|l| {
                    let mut ops = vec![q, k, v];
                    ops.extend(match l.decay {
                        Decay::None => None,
                        Decay::Head => Some(head),
                        Decay::Step => Some(step),
                        Decay::Gate => Some(gate),
                    });
                    b.op(Op::LinearAttention(*l), &ops)
                })
                .collect()
        });
        let mut bind = attnc_ir::random_bindings(&g, 2);
        for name in ["ld_head", "ld_step", "ld_gate"] {
            if let Some(t) = bind.get_mut(name) {
                t.data.iter_mut().for_each(|x| *x = -x.abs() * 0.2);
            }
        }
        check_with(&g, &bind);
    }

    #[test]
    fn moe_dispatch_routes_and_combines() {
        let (t, d, e, h, hs) = (21usize, 12usize, 5usize, 20usize, 8usize);
        let variants = [
            MoeDispatch {
                activation: UnaryOp::Silu,
                gated: true,
                choice: MoeChoice::Token,
                k: 2,
                shared: MoeShared::Gated,
            },
            MoeDispatch {
                activation: UnaryOp::Gelu,
                gated: false,
                choice: MoeChoice::Expert,
                k: 6,
                shared: MoeShared::Always,
            },
        ];
        let g = graph(|b| {
            let u = |x: usize| x as u64;
            let x = b.input("x", shape(&[u(t), u(d)]), DType::F32)?;
            let gate = b.input("gate", shape(&[u(t), u(e)]), DType::F32)?;
            let gate_e = b.input("gate_e", shape(&[u(t), u(e)]), DType::F32)?;
            let wg = b.param("w_gate", shape(&[u(e), u(d), u(h)]), DType::F32)?;
            let wu = b.param("w_up", shape(&[u(e), u(d), u(h)]), DType::F32)?;
            let wd = b.param("w_down", shape(&[u(e), u(h), u(d)]), DType::F32)?;
            let sg = b.param("ws_gate", shape(&[u(d), u(hs)]), DType::F32)?;
            let su = b.param("ws_up", shape(&[u(d), u(hs)]), DType::F32)?;
            let sd = b.param("ws_down", shape(&[u(hs), u(d)]), DType::F32)?;
            let gs = b.input("shared_gate", shape(&[u(t), 1]), DType::F32)?;
            let a = b.op(
                Op::MoeDispatch(variants[0]),
                &[x, gate, wg, wu, wd, sg, su, sd, gs],
            )?;
            let c = b.op(Op::MoeDispatch(variants[1]), &[x, gate_e, wu, wd, su, sd])?;
            Ok(vec![a, c])
        });
        let mut bind = attnc_ir::random_bindings(&g, 4);
        // Token choice: two experts per token (one token none, expert 3 unused);
        // expert choice: at most 6 tokens per expert.
        let mut gate = vec![0.0; t * e];
        let mut gate_e = vec![0.0; t * e];
        for r in 0..t {
            if r != 5 {
                let a = r % e;
                let b = (r * 3 + 1) % e;
                for c in [a, b] {
                    if c != 3 {
                        gate[r * e + c] = 0.25 + 0.1 * ((r + c) % 4) as f64;
                    }
                }
            }
        }
        for c in 0..e {
            for j in 0..6 {
                let r = (c * 5 + j * 3) % t;
                gate_e[r * e + c] = 0.5 - 0.05 * j as f64;
            }
        }
        bind.insert("gate".into(), Tensor::new(DType::F32, vec![t, e], gate));
        bind.insert("gate_e".into(), Tensor::new(DType::F32, vec![t, e], gate_e));
        check_with(&g, &bind);
    }

    /// The `(op, message)` of every check that fails when `g` runs on `bindings`.
    fn failed_checks(g: &Graph, bindings: &Bindings) -> Vec<(String, &'static str)> {
        let planned = plan(g, Arch::Sm90, &GpuOptions::default()).unwrap();
        check_plan(&planned.program).unwrap_or_else(|e| panic!("plan: {e}"));
        let module = Module::parse(&planned.module);
        let inputs = bindings
            .iter()
            .map(|(n, t)| (n.clone(), crate::host::tensor_to_bytes(t)))
            .collect();
        let (_, failed) = run(&planned.program, &module, &inputs);
        let checks = &planned.program.checks;
        failed
            .iter()
            .map(|&i| (checks[i].op.clone(), checks[i].message))
            .collect()
    }

    #[test]
    fn run_time_checks_set_their_flags() {
        let (t, d, e, h) = (9usize, 4usize, 4usize, 6usize);
        let g = graph(|b| {
            let u = |x: usize| x as u64;
            let table = b.param("table", shape(&[5, 3]), DType::F32)?;
            let ids = b.input("ids", shape(&[4]), DType::I64)?;
            let emb = b.op(Op::Embedding, &[table, ids])?;
            let data = b.input("data", shape(&[2, 6]), DType::F32)?;
            let idx = b.input("idx", shape(&[3]), DType::I32)?;
            let gathered = b.op(Op::Gather { axis: 1 }, &[data, idx])?;
            let num = b.input("num", shape(&[5]), DType::I64)?;
            let den = b.input("den", shape(&[5]), DType::I64)?;
            let quot = b.op(Op::Binary(BinaryOp::Div), &[num, den])?;
            let sidx = b.input("sidx", shape(&[2]), DType::I64)?;
            let upd = b.input("upd", shape(&[2, 2]), DType::F32)?;
            let scattered = b.op(Op::ScatterAdd { axis: 1 }, &[data, sidx, upd])?;
            let x = b.input("x", shape(&[u(t), u(d)]), DType::F32)?;
            let gate = b.input("gate", shape(&[u(t), u(e)]), DType::F32)?;
            let wu = b.param("w_up", shape(&[u(e), u(d), u(h)]), DType::F32)?;
            let wd = b.param("w_down", shape(&[u(e), u(h), u(d)]), DType::F32)?;
            let moe = |choice, k| MoeDispatch {
                activation: UnaryOp::Relu,
                gated: false,
                choice,
                k,
                shared: MoeShared::None,
            };
            let by_token = b.op(
                Op::MoeDispatch(moe(MoeChoice::Token, 1)),
                &[x, gate, wu, wd],
            )?;
            let by_expert = b.op(
                Op::MoeDispatch(moe(MoeChoice::Expert, 3)),
                &[x, gate, wu, wd],
            )?;
            Ok(vec![emb, gathered, quot, scattered, by_token, by_expert])
        });
        let mut good = attnc_ir::random_bindings(&g, 5);
        let ints = |v: &[f64]| Tensor::new(DType::I64, vec![v.len()], v.to_vec());
        good.insert("ids".into(), ints(&[0.0, 4.0, 2.0, 1.0]));
        good.insert(
            "idx".into(),
            Tensor::new(DType::I32, vec![3], vec![5.0, 0.0, 3.0]),
        );
        good.insert("num".into(), ints(&[7.0, -7.0, 0.0, 9.0, 1.0]));
        good.insert("den".into(), ints(&[2.0, 3.0, 5.0, -1.0, 1.0]));
        good.insert("sidx".into(), ints(&[1.0, 5.0]));
        // One expert per token, expert `tok % 3`: at most 3 tokens per expert.
        let mut gate = vec![0.0; t * e];
        for tok in 0..t {
            gate[tok * e + tok % 3] = 0.5;
        }
        good.insert(
            "gate".into(),
            Tensor::new(DType::F32, vec![t, e], gate.clone()),
        );
        check_with(&g, &good);
        assert_eq!(failed_checks(&g, &good), vec![]);

        let mut bad = good.clone();
        bad.insert("ids".into(), ints(&[0.0, 5.0, 2.0, 1.0]));
        bad.insert(
            "idx".into(),
            Tensor::new(DType::I32, vec![3], vec![5.0, -1.0, 3.0]),
        );
        bad.insert("den".into(), ints(&[2.0, 3.0, 0.0, -1.0, 1.0]));
        bad.insert("sidx".into(), ints(&[6.0, 0.0]));
        // Token 0 gets a second expert; expert 0 a fourth token.
        gate[1] = 0.25;
        gate[8 * e] = 0.5;
        bad.insert("gate".into(), Tensor::new(DType::F32, vec![t, e], gate));
        let mut failed = failed_checks(&g, &bad);
        failed.sort();
        let index = super::super::ew::INDEX_OUT_OF_RANGE;
        let mut want = vec![
            ("div".to_string(), super::super::ew::DIVISION_BY_ZERO),
            ("embedding".to_string(), index),
            ("gather".to_string(), index),
            ("scatter_add".to_string(), index),
            ("moe_dispatch".to_string(), super::super::moe::TOKEN_BOUND),
            ("moe_dispatch".to_string(), super::super::moe::EXPERT_BOUND),
        ];
        want.sort();
        assert_eq!(failed, want);
        // The interpreter agrees that each is an error.
        assert!(eval(&g, &bad, Precision::F64).is_err());
    }

    #[test]
    fn outputs_copied_and_temporaries_reused() {
        let mut b = GraphBuilder::new("outs", Dims::new());
        let x = b.input("x", shape(&[4, 5]), DType::F32).unwrap();
        let w = b.param("w", shape(&[5, 5]), DType::F32).unwrap();
        let mut y = x;
        for layer in 0..3 {
            b.set_layer(Some(format!("layer{layer}")));
            let m = b.op(Op::MatMul, &[y, w]).unwrap();
            let t = b.op(Op::Unary(UnaryOp::Tanh), &[m]).unwrap();
            y = b.op(Op::Binary(BinaryOp::Add), &[t, y]).unwrap();
        }
        let r = b
            .op(
                Op::Reshape {
                    shape: shape(&[20]),
                },
                &[y],
            )
            .unwrap();
        b.output("x", x).unwrap();
        b.output("y", y).unwrap();
        b.output("y_again", y).unwrap();
        b.output("flat", r).unwrap();
        let g = b.finish().unwrap();
        check(&g);
        let p = plan(&g, Arch::Sm90, &GpuOptions::default())
            .unwrap()
            .program;
        // Matmul results of the three layers share one buffer.
        let temps = p
            .buffers
            .iter()
            .filter(|b| b.role == BufferRole::Temp)
            .count();
        assert!(temps <= 3, "{temps} temporaries");
        // One matmul kernel and one fused tanh-add kernel for all layers.
        assert_eq!(p.kernels.iter().filter(|k| k.op == "matmul").count(), 1);
    }

    fn emulate_examples(names: &[&str]) {
        for name in names {
            let t = std::time::Instant::now();
            check(&tiny_example(name));
            eprintln!("{name}: emulated in {:.1} s", t.elapsed().as_secs_f64());
        }
    }

    /// Whole models, end to end: every op family the examples use, as the optimizer
    /// leaves them for the H200 (fused and block-sparse attention, MoE dispatch with
    /// shared experts, linear attention, the expansion of routing attention).
    #[test]
    fn tiny_example_models_end_to_end() {
        emulate_examples(&[
            "llama3-8b",
            "qwen2-moe",
            "gla",
            "bigbird",
            "routing-transformer",
        ]);
    }

    /// Every example (about two and a half minutes on two cores): `cargo test -p attnc-backends
    /// --lib every_tiny_example_emulated -- --ignored`.
    #[test]
    #[ignore]
    fn every_tiny_example_emulated() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .collect();
        names.sort();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        emulate_examples(&names);
    }
}
