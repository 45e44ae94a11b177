//! Engine scenario tests.
