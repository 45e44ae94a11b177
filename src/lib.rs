//! tunwall: a userspace stateful firewall over Linux TUN devices with the
//! flow semantics of the Windows Filtering Platform's Application Layer
//! Enforcement.
//!
//! The crate is a sans-IO core inside a thin shell. The core never reads a
//! clock, never sleeps and never touches a file descriptor; dependencies
//! point one way:
//!
//! ```text
//! reason, time ← packet ← flow ← policy/event ← engine ← (shell: io, control, main)
//! ```
//!
//! * [`packet`] parses raw IP packets into a small descriptor.
//! * [`flow`] holds flow keys, the sharded flow table, the TCP tracker,
//!   lifetimes and the fragment table.
//! * [`policy`] defines layers and the [`policy::Authorizer`] the engine asks.
//! * [`engine`] is the state machine the shell drives:
//!   [`engine::Engine::process`] per packet, [`engine::Engine::handle_timeout`]
//!   periodically, events out.
// One exception, allowed where it stands: queuing an io_uring write
// (`io::uring`), whose buffer the kernel reads after the call returns.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod control;
pub mod daemon;
pub mod engine;
pub mod event;
pub mod explain;
pub mod flow;
pub mod handover;
pub mod io;
pub mod nat;
pub mod packet;
pub mod policy;
pub mod reason;
pub mod render;
pub mod restart;
pub mod route;
pub mod state;
pub mod sync;
pub mod testkit;
pub mod time;
pub mod wireguard;
