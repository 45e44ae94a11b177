//! The process clock: the one place the shell reads time for the core.

use crate::time::Instant;
use std::time::Duration;

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

    /// Milliseconds since start, as the engine's time.
    pub fn now(&self) -> Instant {
        Instant::from_millis(self.start.elapsed().as_millis() as u64)
    }

    /// The wall-clock time of an engine instant.
    pub fn wall(&self, at: Instant) -> std::time::SystemTime {
        self.wall_start + Duration::from_millis(at.as_millis())
    }
}
