//! FLOP and byte counts (being written).
