//! Library API.
