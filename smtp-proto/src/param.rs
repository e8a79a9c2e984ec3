//! param (being written)
