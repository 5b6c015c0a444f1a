//! The engine API, shaped like the original: `Engine::new(EngineArgs)` then
//! `engine.step(request)` per generation.

pub mod config;
pub mod progress;
pub mod registry;
pub mod request;

pub use config::{
    Cosmos3Args, DeviceConfig, EngineArgs, EngineConfig, ParallelConfig, PluginArgs, RuntimeConfig,
    Target,
};
pub use progress::{Progress, Silent};
pub use request::{
    pixel_to_latent_shape, sound_latent_frames, Conditioning, GenerationOutput, GenerationRequest,
    InitNoise, LatentShape,
};

use crate::Result;

/// Loads a model plugin once and serves requests with it.
pub struct Engine {
    plugin: Box<dyn registry::Plugin>,
    config: EngineConfig,
}

impl Engine {
    pub fn new(args: EngineArgs) -> Result<Self> {
        let plugin = registry::create(&args.plugin, &args.plugin_args, &args.config)?;
        Ok(Self {
            plugin,
            config: args.config,
        })
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// `(sample_rate, samples per sound latent step)` when the audio decoder is loaded.
    pub fn sound_spec(&self) -> Option<(u32, usize)> {
        self.plugin.sound_spec()
    }

    /// Encodes a conditioning image (`[1, 3, H, W]` in [−1, 1], already resized to the
    /// request's size) into the clean latent frames of an I2V request.
    pub fn encode_image(&mut self, pixels: &candle_core::Tensor) -> Result<Conditioning> {
        self.plugin.encode_image(pixels)
    }

    /// Runs one request silently.
    pub fn step(&mut self, request: &GenerationRequest) -> Result<GenerationOutput> {
        self.step_with_progress(request, &Silent)
    }

    /// Runs one request, reporting stages and denoising steps to `progress`.
    pub fn step_with_progress(
        &mut self,
        request: &GenerationRequest,
        progress: &dyn Progress,
    ) -> Result<GenerationOutput> {
        request.validate()?;
        self.plugin.step(request, progress)
    }
}
