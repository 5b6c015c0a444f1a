//! Progress reporting hooks: the engine announces stages and steps; front ends draw bars,
//! stream events, and may cancel a request between denoising steps.

use std::time::Duration;

/// Receives progress events from a running request. Implementations must be cheap: `step`
/// and `cancelled` are called once per denoising step.
pub trait Progress: Send + Sync {
    /// A stage starts (`"text"`, `"denoise"`, `"decode"`, …) with `total` units of work.
    fn stage(&self, _name: &str, _total: usize) {}
    /// One unit of the current stage finished.
    fn step(&self) {}
    /// The current stage ended after `elapsed`.
    fn done(&self, _name: &str, _elapsed: Duration) {}
    /// Asked before every denoising step: `true` stops the request with
    /// [`crate::Error::Cancelled`].
    fn cancelled(&self) -> bool {
        false
    }
}

/// Reports nothing.
pub struct Silent;

impl Progress for Silent {}
