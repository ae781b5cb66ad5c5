//! Crypto Service library.
