//! Model specs (being written).
