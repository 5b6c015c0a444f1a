//! Progress reporting hooks: the engine announces stages and steps; the CLI draws bars.

use std::time::Duration;

/// Receives progress events from a running request. Implementations must be cheap: `step`
/// is called once per denoising step.
pub trait Progress: Send + Sync {
    /// A stage starts (`"text"`, `"denoise"`, `"decode"`, …) with `total` units of work.
    fn stage(&self, _name: &str, _total: usize) {}
    /// One unit of the current stage finished.
    fn step(&self) {}
    /// The current stage ended after `elapsed`.
    fn done(&self, _name: &str, _elapsed: Duration) {}
}

/// Reports nothing.
pub struct Silent;

impl Progress for Silent {}
