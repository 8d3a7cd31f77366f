//! LIR (being written).
