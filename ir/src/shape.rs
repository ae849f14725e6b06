//! Shapes with symbolic dimensions.
//!
//! A dimension is either a number or a name (`batch`, `seq`, `d_model`). Names are
//! bound to numbers in the graph's [`Dims`] table at compile time, so every shape
//! check is done on concrete sizes while the printed IR keeps the readable names.

use std::collections::BTreeMap;
use std::fmt;

/// Hard cap on the number of elements of one tensor: 2^48 (a quarter of a PiB in f32)
/// is far past any real model and keeps every byte count well inside `u64`.
pub const MAX_ELEMENTS: u64 = 1 << 48;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dim {
    Const(u64),
    Sym(String),
}

impl Dim {
    pub fn sym(name: impl Into<String>) -> Dim {
        Dim::Sym(name.into())
    }
}

impl From<u64> for Dim {
    fn from(n: u64) -> Dim {
        Dim::Const(n)
    }
}

impl From<&str> for Dim {
    fn from(s: &str) -> Dim {
        Dim::Sym(s.to_string())
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Const(n) => write!(f, "{n}"),
            Dim::Sym(s) => f.write_str(s),
        }
    }
}

/// An ordered list of dimensions; `[]` is a scalar.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Shape(pub Vec<Dim>);

impl Shape {
    pub fn new(dims: impl IntoIterator<Item = impl Into<Dim>>) -> Shape {
        Shape(dims.into_iter().map(Into::into).collect())
    }

    pub fn scalar() -> Shape {
        Shape(Vec::new())
    }

    pub fn rank(&self) -> usize {
        self.0.len()
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

/// The table that binds symbolic dimension names to sizes.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Dims {
    map: BTreeMap<String, u64>,
}

impl Dims {
    pub fn new() -> Dims {
        Dims::default()
    }

    pub fn bind(&mut self, name: impl Into<String>, value: u64) {
        self.map.insert(name.into(), value);
    }

    pub fn get(&self, name: &str) -> Option<u64> {
        self.map.get(name).copied()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.map.iter().map(|(k, v)| (k.as_str(), *v))
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn resolve_dim(&self, dim: &Dim) -> Result<u64, String> {
        match dim {
            Dim::Const(n) => Ok(*n),
            Dim::Sym(s) => self
                .get(s)
                .ok_or_else(|| format!("dimension `{s}` is not bound (no `{s} = N` in dims)")),
        }
    }

    /// Concrete sizes of a shape; fails on unbound names or a size past [`MAX_ELEMENTS`].
    pub fn resolve(&self, shape: &Shape) -> Result<Vec<u64>, String> {
        let sizes: Vec<u64> = shape
            .0
            .iter()
            .map(|d| self.resolve_dim(d))
            .collect::<Result<_, _>>()?;
        num_elements(&sizes).map_err(|e| format!("{e} for shape {shape}"))?;
        Ok(sizes)
    }

    /// `[b, s, 768] (= [1, 128, 768])`, the form error messages use.
    pub fn describe(&self, shape: &Shape) -> String {
        match self.resolve(shape) {
            Ok(sizes) if shape.0.iter().any(|d| matches!(d, Dim::Sym(_))) => {
                format!("{shape} (= {})", Shape::new(sizes))
            }
            _ => shape.to_string(),
        }
    }
}

/// Product of sizes, checked against overflow and [`MAX_ELEMENTS`].
pub fn num_elements(sizes: &[u64]) -> Result<u64, String> {
    let mut n: u64 = 1;
    for &s in sizes {
        n = n
            .checked_mul(s)
            .filter(|&n| n <= MAX_ELEMENTS)
            .ok_or_else(|| format!("tensor has more than 2^48 elements ({sizes:?})"))?;
    }
    Ok(n)
}

/// A tensor's type: shape and element type.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TensorType {
    pub shape: Shape,
    pub dtype: crate::DType,
}

impl TensorType {
    pub fn new(shape: Shape, dtype: crate::DType) -> TensorType {
        TensorType { shape, dtype }
    }

    pub fn rank(&self) -> usize {
        self.shape.rank()
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.shape, self.dtype)
    }
}
