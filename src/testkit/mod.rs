//! The one test kit: packet builders and a virtual-clock harness shared by
//! the unit and integration tests, the benchmarks and `tunwall simulate`.
//! It is test scaffolding in the library (so the simulator and benches can
//! use it); its items are documented by their module, not one by one.
#![allow(missing_docs)]

pub mod harness;
pub mod ids;
pub mod packets;
pub mod pair;

pub use harness::*;
pub use ids::Ids;
pub use packets::*;
