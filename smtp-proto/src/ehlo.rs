//! ehlo (being written)
