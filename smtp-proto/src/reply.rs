//! reply (being written)
