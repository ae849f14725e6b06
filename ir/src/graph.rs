//! The tensor graph and its typed builder.
//!
//! A [`Graph`] is a petgraph `DiGraph` whose nodes are ops with their result type and
//! whose edges run from operand to user, weighted by the operand's position. Nodes are
//! only ever appended, after their operands, so node order is a topological order and
//! a node's index is its SSA number (`%7`) in the text format.

use crate::{infer, DType, Dims, IrError, Op, Result, Shape, TensorType};
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;
use petgraph::Direction;

pub type NodeId = NodeIndex<u32>;

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub op: Op,
    pub ty: TensorType,
    /// The model layer this node belongs to (`layers.3.attn`), for messages and stats.
    pub layer: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub name: String,
    pub dims: Dims,
    g: DiGraph<Node, usize>,
    outputs: Vec<(String, NodeId)>,
}

impl Graph {
    pub fn new(name: impl Into<String>, dims: Dims) -> Graph {
        Graph {
            name: name.into(),
            dims,
            ..Graph::default()
        }
    }

    pub fn len(&self) -> usize {
        self.g.node_count()
    }

    pub fn is_empty(&self) -> bool {
        self.g.node_count() == 0
    }

    /// Node ids in topological (= insertion) order.
    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.g.node_indices()
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.g[id]
    }

    /// Operands of `id` in order.
    pub fn operands(&self, id: NodeId) -> Vec<NodeId> {
        let mut edges: Vec<(usize, NodeId)> = self
            .g
            .edges_directed(id, Direction::Incoming)
            .map(|e| (*e.weight(), e.source()))
            .collect();
        edges.sort_unstable();
        edges.into_iter().map(|(_, n)| n).collect()
    }

    /// Nodes that use `id` (each once, in order).
    pub fn users(&self, id: NodeId) -> Vec<NodeId> {
        let mut users: Vec<NodeId> = self.g.neighbors_directed(id, Direction::Outgoing).collect();
        users.sort_unstable();
        users.dedup();
        users
    }

    pub fn outputs(&self) -> &[(String, NodeId)] {
        &self.outputs
    }

    /// Named sources of one kind, in order: `(name, id)`.
    pub fn inputs(&self) -> Vec<(&str, NodeId)> {
        self.sources(|op| match op {
            Op::Input { name } => Some(name),
            _ => None,
        })
    }

    pub fn params(&self) -> Vec<(&str, NodeId)> {
        self.sources(|op| match op {
            Op::Param { name } => Some(name),
            _ => None,
        })
    }

    fn sources<'a>(
        &'a self,
        pick: impl Fn(&'a Op) -> Option<&'a String>,
    ) -> Vec<(&'a str, NodeId)> {
        self.node_ids()
            .filter_map(|id| pick(&self.g[id].op).map(|n| (n.as_str(), id)))
            .collect()
    }

    /// Concrete sizes of a node's result (always resolvable in a verified graph).
    pub fn sizes(&self, id: NodeId) -> Vec<usize> {
        self.dims
            .resolve(&self.g[id].ty.shape)
            .map(|s| s.into_iter().map(|n| n as usize).collect())
            .unwrap_or_default()
    }

    /// The underlying petgraph (for DOT export and graph algorithms).
    pub fn petgraph(&self) -> &DiGraph<Node, usize> {
        &self.g
    }

    /// Append a node whose type was already computed. Callers outside this crate go
    /// through [`GraphBuilder`], which infers and checks the type.
    pub(crate) fn push(&mut self, node: Node, operands: &[NodeId]) -> NodeId {
        let id = self.g.add_node(node);
        for (slot, &src) in operands.iter().enumerate() {
            self.g.add_edge(src, id, slot);
        }
        id
    }

    /// Remove the most recently added node (and its operand edges).
    pub(crate) fn pop_last(&mut self) {
        if let Some(last) = self.g.node_indices().next_back() {
            self.g.remove_node(last);
        }
    }

    pub(crate) fn set_type(&mut self, id: NodeId, ty: TensorType) {
        self.g[id].ty = ty;
    }

    /// Add one operand edge by hand: lets verifier tests build malformed graphs.
    #[cfg(test)]
    pub(crate) fn connect(&mut self, src: NodeId, dst: NodeId, slot: usize) {
        self.g.add_edge(src, dst, slot);
    }

    pub(crate) fn push_output(&mut self, name: String, id: NodeId) {
        self.outputs.push((name, id));
    }

    /// This graph with `extra` outputs after its own: how translation validation
    /// reads intermediate values out of compiled code. Names must be new.
    pub fn with_outputs(&self, extra: impl IntoIterator<Item = (String, NodeId)>) -> Result<Graph> {
        let mut g = self.clone();
        for (name, id) in extra {
            if id.index() >= g.len() || g.outputs.iter().any(|(n, _)| *n == name) {
                return Err(crate::IrError::Spec {
                    layer: None,
                    message: format!(
                        "output `{name}` (%{}) is defined twice or does not exist",
                        id.index()
                    ),
                });
            }
            g.outputs.push((name, id));
        }
        Ok(g)
    }
}

/// Structural equality: same name, dims, nodes, operands and outputs.
impl PartialEq for Graph {
    fn eq(&self, other: &Graph) -> bool {
        self.name == other.name
            && self.dims == other.dims
            && self.outputs == other.outputs
            && self.len() == other.len()
            && self
                .node_ids()
                .zip(other.node_ids())
                .all(|(a, b)| self.g[a] == other.g[b] && self.operands(a) == other.operands(b))
    }
}

/// Builds a graph op by op, inferring and checking every result type as it goes.
/// Errors name the current layer and both shapes involved.
pub struct GraphBuilder {
    graph: Graph,
    layer: Option<String>,
}

impl GraphBuilder {
    pub fn new(name: impl Into<String>, dims: Dims) -> GraphBuilder {
        GraphBuilder {
            graph: Graph::new(name, dims),
            layer: None,
        }
    }

    pub fn dims(&self) -> &Dims {
        &self.graph.dims
    }

    /// Replace the dims table. Only used to bind new names while building: a
    /// rebinding would change the meaning of existing nodes, so callers add names only.
    pub fn set_dims(&mut self, dims: Dims) {
        self.graph.dims = dims;
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Nodes added from now on belong to `layer`.
    pub fn set_layer(&mut self, layer: Option<String>) {
        self.layer = layer;
    }

    pub fn layer(&self) -> Option<&str> {
        self.layer.as_deref()
    }

    pub fn ty(&self, id: NodeId) -> &TensorType {
        &self.graph.node(id).ty
    }

    /// Add `op` applied to `operands`; `declared` is the type of a source op.
    pub fn add(
        &mut self,
        op: Op,
        operands: &[NodeId],
        declared: Option<TensorType>,
    ) -> Result<NodeId> {
        if let Some(&bad) = operands.iter().find(|id| id.index() >= self.graph.len()) {
            return Err(self.type_error(&op, format!("operand %{} does not exist", bad.index())));
        }
        let args: Vec<&TensorType> = operands.iter().map(|&id| &self.graph.node(id).ty).collect();
        let ty = infer(&op, &args, declared.as_ref(), &self.graph.dims)
            .map_err(|m| self.type_error(&op, m))?;
        let node = Node {
            op,
            ty,
            layer: self.layer.clone(),
        };
        Ok(self.graph.push(node, operands))
    }

    /// Add a node whose type was written down (by the text parser): the op's inferred
    /// type must agree with it in sizes and dtype; the written spelling is kept.
    pub fn add_declared(
        &mut self,
        op: Op,
        operands: &[NodeId],
        declared: TensorType,
    ) -> Result<NodeId> {
        if op.is_source() {
            return self.add(op, operands, Some(declared));
        }
        let id_if_ok = self.graph.len();
        let inferred = {
            let id = self.add(op, operands, None)?;
            self.graph.node(id).ty.clone()
        };
        if !crate::same_type(&self.graph, &inferred, &declared) {
            let op = self.graph.node(NodeId::new(id_if_ok)).op.name().to_string();
            let message = format!(
                "declared type {} {} but the op computes {} {}",
                self.graph.dims.describe(&declared.shape),
                declared.dtype,
                self.graph.dims.describe(&inferred.shape),
                inferred.dtype
            );
            self.graph.pop_last();
            return Err(IrError::Type {
                layer: self.layer.clone(),
                op,
                message,
            });
        }
        self.graph.set_type(NodeId::new(id_if_ok), declared);
        Ok(NodeId::new(id_if_ok))
    }

    fn type_error(&self, op: &Op, message: String) -> IrError {
        IrError::Type {
            layer: self.layer.clone(),
            op: op.name().to_string(),
            message,
        }
    }

    pub fn op(&mut self, op: Op, operands: &[NodeId]) -> Result<NodeId> {
        self.add(op, operands, None)
    }

    pub fn input(&mut self, name: impl Into<String>, shape: Shape, dtype: DType) -> Result<NodeId> {
        let name = name.into();
        if self.graph.inputs().iter().any(|(n, _)| *n == name) {
            return Err(self.type_error(
                &Op::Input { name: name.clone() },
                format!("input `{name}` is defined twice"),
            ));
        }
        self.add(Op::Input { name }, &[], Some(TensorType::new(shape, dtype)))
    }

    pub fn param(&mut self, name: impl Into<String>, shape: Shape, dtype: DType) -> Result<NodeId> {
        let name = name.into();
        if self.graph.params().iter().any(|(n, _)| *n == name) {
            return Err(self.type_error(
                &Op::Param { name: name.clone() },
                format!("param `{name}` is defined twice"),
            ));
        }
        self.add(Op::Param { name }, &[], Some(TensorType::new(shape, dtype)))
    }

    pub fn constant(&mut self, value: f64, dtype: DType) -> Result<NodeId> {
        self.add(
            Op::Const { value },
            &[],
            Some(TensorType::new(Shape::scalar(), dtype)),
        )
    }

    pub fn output(&mut self, name: impl Into<String>, id: NodeId) -> Result<()> {
        let name = name.into();
        if self.graph.outputs.iter().any(|(n, _)| *n == name) {
            return Err(IrError::Spec {
                layer: self.layer.clone(),
                message: format!("output `{name}` is defined twice"),
            });
        }
        self.graph.push_output(name, id);
        Ok(())
    }

    /// The finished graph, verified.
    pub fn finish(self) -> Result<Graph> {
        crate::verify(&self.graph)?;
        Ok(self.graph)
    }
}
