//! The `gpu.module` being built: module-level constants (block layouts, random
//! tables, rotary frequencies, random features) and the kernels, each written once
//! — a kernel is identified by its text (parameters, block, shared memory, body), so
//! the identical layers of a model share theirs.

use super::math::memref;
use super::program::{Kernel, Param};
use attnc_ir::DType;
use std::collections::{HashMap, HashSet};
use std::fmt::Write;

/// Module-level declarations, each written once, in order.
#[derive(Default)]
pub(crate) struct Globals {
    lines: Vec<String>,
    seen: HashSet<String>,
}

impl Globals {
    pub fn add(&mut self, line: &str) {
        if self.seen.insert(line.to_string()) {
            self.lines.push(line.to_string());
        }
    }

    /// A constant array `@name` of `values` (little-endian bytes of `ty`); returns
    /// its memref type.
    pub fn constant_bytes(&mut self, name: &str, ty: &str, count: usize, bytes: &[u8]) -> String {
        let t = format!("memref<{}x{ty}>", count.max(1));
        let mut hex = String::with_capacity(2 * bytes.len().max(8));
        for b in bytes {
            let _ = write!(hex, "{b:02X}");
        }
        if count == 0 {
            hex = "00".repeat(width(ty));
        }
        self.add(&format!(
            "memref.global \"private\" constant @{name} : {t} = dense<\"0x{hex}\">"
        ));
        t
    }

    pub fn constant_i32(&mut self, name: &str, values: &[u32]) -> String {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.constant_bytes(name, "i32", values.len(), &bytes)
    }

    pub fn constant_f64(&mut self, name: &str, values: &[f64]) -> String {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.constant_bytes(name, "f64", values.len(), &bytes)
    }
}

fn width(ty: &str) -> usize {
    match ty {
        "i8" => 1,
        "f16" | "bf16" => 2,
        "f64" | "i64" => 8,
        _ => 4,
    }
}

/// The buffers one kernel takes, in parameter order: `%a0, %a1, ...`, each a plan
/// buffer seen as a 1-D memref of its elements.
#[derive(Default, Clone)]
pub(crate) struct Args {
    /// `(plan buffer, dtype, elements)`.
    pub list: Vec<(usize, DType, usize)>,
    /// The plan buffers the kernel writes.
    pub writes: Vec<usize>,
    /// Run-time checks the kernel makes: `(parameter, node, message)`, the node
    /// checked (`None`: the one the launch computes). The plan gives each parameter
    /// the check's status buffer when it launches the kernel.
    pub flags: Vec<(usize, Option<usize>, &'static str)>,
}

impl Args {
    /// The parameter holding plan buffer `buf` (added on first use).
    pub fn get(&mut self, buf: usize, dtype: DType, n: usize) -> String {
        if let Some(i) = self.list.iter().position(|&(b, _, _)| b == buf) {
            return format!("%a{i}");
        }
        self.list.push((buf, dtype, n));
        format!("%a{}", self.list.len() - 1)
    }

    /// A parameter the kernel writes (see [`Args::get`]).
    pub fn output(&mut self, buf: usize, dtype: DType, n: usize) -> String {
        if !self.writes.contains(&buf) {
            self.writes.push(buf);
        }
        self.get(buf, dtype, n)
    }

    /// The status flag parameter (`memref<1xi32>`) of a run-time check of `node`
    /// (`None`: the node the launch computes); set it with [`W::raise`].
    ///
    /// [`W::raise`]: super::code::W::raise
    pub fn flag(&mut self, node: Option<usize>, message: &'static str) -> String {
        if let Some(&(i, _, _)) = self.flags.iter().find(|f| f.1 == node && f.2 == message) {
            return format!("%a{i}");
        }
        // A placeholder buffer until the plan assigns the status buffer.
        self.list.push((usize::MAX, DType::I32, 1));
        let i = self.list.len() - 1;
        self.flags.push((i, node, message));
        format!("%a{i}")
    }

    pub fn buffers(&self) -> Vec<usize> {
        self.list.iter().map(|&(b, _, _)| b).collect()
    }
}

/// One kernel ready to be added: what [`Kernels::add`] dedupes.
pub(crate) struct KernelCode {
    pub op: String,
    pub args: Args,
    pub block: [u32; 3],
    pub shared_bytes: u32,
    /// The body (uses `%a0...`), without `gpu.return`.
    pub body: String,
}

#[derive(Default)]
pub(crate) struct Kernels {
    pub globals: Globals,
    pub list: Vec<Kernel>,
    texts: Vec<String>,
    by_key: HashMap<String, usize>,
}

impl Kernels {
    /// The index of the kernel `code` describes, written the first time.
    pub fn add(&mut self, code: &KernelCode) -> usize {
        let params: Vec<String> = code
            .args
            .list
            .iter()
            .enumerate()
            .map(|(i, &(_, d, n))| format!("%a{i}: {}", memref(d, n)))
            .collect();
        let [x, y, z] = code.block;
        let head = format!(
            "({}) kernel attributes {{known_block_size = array<i32: {x}, {y}, {z}>}} {{\n",
            params.join(", ")
        );
        let key = format!("{}|{}|{head}{}", code.op, code.shared_bytes, code.body);
        if let Some(&k) = self.by_key.get(&key) {
            return k;
        }
        let index = self.list.len();
        let name = format!("{}_{index}", code.op);
        let text = format!(
            "  gpu.func @{name}{head}{}    gpu.return\n  }}\n",
            code.body
        );
        self.list.push(Kernel {
            name,
            params: code
                .args
                .list
                .iter()
                .map(|&(_, d, _)| Param::Pointer(d))
                .collect(),
            block: code.block,
            shared_bytes: code.shared_bytes,
            op: code.op.clone(),
        });
        self.texts.push(text);
        self.by_key.insert(key, index);
        index
    }

    /// The whole module text.
    pub fn text(&self) -> String {
        let mut s = String::from(
            "module attributes {gpu.container_module} {\ngpu.module @attnc_kernels {\n",
        );
        for g in &self.globals.lines {
            let _ = writeln!(s, "  {g}");
        }
        for t in &self.texts {
            s.push_str(t);
        }
        s.push_str("}\n}\n");
        s
    }
}
