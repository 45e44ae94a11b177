//! Output, in one place: the JSON of SPEC §7 ([`json`]: flows, events,
//! stats), the text tables and the `check` summary ([`text`]), and the
//! Prometheus exposition ([`prometheus`]). The daemon, the CLI and the
//! simulator all render through here.

pub mod explain;
pub mod json;
pub mod pcapng;
pub mod prometheus;
pub mod text;
