//! address (being written)
