//! (crate doc to be written)
