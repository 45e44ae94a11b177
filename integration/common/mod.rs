//! The integration tests' kit is the library's: [`tunwall::testkit`].

#![allow(unused_imports)]

pub use tunwall::testkit::*;
