//! The plugin trait: what the engine needs of a model family. The engine is generic over
//! it and knows nothing else of the model; a plugin owns its arguments, request and output
//! types. Front ends (the CLI, the server) choose the plugin by type:
//! `Engine::<Cosmos3Plugin>::new(..)`.

use super::config::EngineConfig;
use super::progress::Progress;
use crate::parallel::RankMesh;
use crate::Result;

/// A model family served by the engine. One instance per rank; every rank receives every
/// request and runs it in lockstep with the others through its mesh's collectives.
pub trait Plugin: Sized + Send + 'static {
    /// The name the original's `EngineArgs(plugin=...)` uses, e.g. `cosmos3_wn`.
    const NAME: &'static str;
    /// Load-time arguments (checkpoint, model options).
    type Args: Clone + Send + Sync + 'static;
    /// One generation request, as the caller states it.
    type Request: Clone + Send + 'static;
    /// What one request produces (meaningful on rank 0; other ranks may return the same).
    type Output: Send + 'static;

    /// Checks the arguments against the engine's topology before any rank loads (so a
    /// topology the model cannot split is one error, not one per rank).
    fn check(_args: &Self::Args, _config: &EngineConfig) -> Result<()> {
        Ok(())
    }

    /// Loads this rank's part of the model on `mesh`.
    fn load(args: &Self::Args, config: &EngineConfig, mesh: RankMesh) -> Result<Self>;

    /// Checks a request before any rank starts work on it (needs no model).
    fn validate(request: &Self::Request) -> Result<()>;

    /// Runs one request to completion, reporting to `progress` (rank 0 only; the other
    /// ranks get a silent one) and stopping with [`crate::Error::Cancelled`] between steps
    /// when it asks to.
    fn step(&mut self, request: &Self::Request, progress: &dyn Progress) -> Result<Self::Output>;
}
