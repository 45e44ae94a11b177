//! The process clock: the one place the shell reads time for the core.

use crate::time::Instant;
use std::time::Duration;

/// Where the process clock starts: engine time is counted from an origin
/// about 35 years before the process started, so the creation time of a
/// flow carried over from an earlier process (SPEC §13) is still an instant
/// after the origin.
const ORIGIN: Duration = Duration::from_millis(1 << 40);

/// The process clock shared by workers and the control thread.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    start: std::time::Instant,
    wall_start: std::time::SystemTime,
}

impl Clock {
    /// Starts the clock now.
    pub fn start() -> Clock {
        Clock {
            start: std::time::Instant::now(),
            wall_start: std::time::SystemTime::now(),
        }
    }

    /// The engine's time now.
    pub fn now(&self) -> Instant {
        Instant::ZERO + ORIGIN + self.start.elapsed()
    }

    /// The wall-clock time of an engine instant.
    pub fn wall(&self, at: Instant) -> std::time::SystemTime {
        (self.wall_start - ORIGIN) + Duration::from_millis(at.as_millis())
    }
}
