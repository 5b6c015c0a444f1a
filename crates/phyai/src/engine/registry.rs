//! Plugin registry: maps a plugin name (`cosmos3_wn`) to the model that serves it.

use super::config::{EngineConfig, PluginArgs};
use super::progress::Progress;
use super::request::{Conditioning, GenerationOutput, GenerationRequest};
use crate::parallel::RankMesh;
use crate::{Error, Result};
use candle_core::Tensor;

/// A model family behind the engine.
pub trait Plugin: Send {
    /// Registry name.
    fn name(&self) -> &'static str;
    /// `(sample_rate, samples per sound latent step)` when the audio decoder is loaded.
    fn sound_spec(&self) -> Option<(u32, usize)>;
    /// Encodes a conditioning image `[1, 3, H, W]` in [−1, 1] into clean latent frames.
    fn encode_image(&mut self, pixels: &Tensor) -> Result<Conditioning>;
    /// Runs one request to completion.
    fn step(
        &mut self,
        request: &GenerationRequest,
        progress: &dyn Progress,
    ) -> Result<GenerationOutput>;
}

type Factory = fn(&PluginArgs, &EngineConfig, RankMesh) -> Result<Box<dyn Plugin>>;

/// Registered plugins: name and constructor.
const PLUGINS: &[(&str, Factory)] = &[("cosmos3_wn", crate::models::cosmos3::plugin::create)];

/// Names of all registered plugins.
pub fn plugin_names() -> Vec<&'static str> {
    PLUGINS.iter().map(|(n, _)| *n).collect()
}

/// The constructor of plugin `name`.
pub fn factory(name: &str) -> Result<Factory> {
    PLUGINS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, f)| *f)
        .ok_or_else(|| {
            Error::invalid(
                "plugin",
                format!(
                    "unknown plugin {name:?}; registered: {}",
                    plugin_names().join(", ")
                ),
            )
        })
}
