//! Cosmos3 decoders: the Wan2.2 video VAE (48-channel latent, ×16 space, ×4 time) with its
//! encoder for image/video conditioning, the spatially tiled decode, and the audio VAE
//! decoder (latent → 48 kHz stereo waveform).
//!
//! Video tensors inside the VAE are stacks of frames, one video at a time: frame-major
//! `[T, C, H, W]` on the CPU, channels-last `[T, H, W, C]` on a GPU ([`Layout`]); the public
//! API takes and returns diffusers' `[B, C, T, H, W]`.

pub mod audio;
pub mod blocks;
pub mod causal_conv;
pub mod config;
pub mod decoder;
pub mod encoder;
pub mod parallel;
pub mod tiles;

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device};

pub use crate::layers::frames::Layout;
pub use audio::AudioDecoder;
pub use config::{AudioVaeConfig, VaeConfig};
pub use decoder::WanDecoder;
pub use encoder::WanEncoder;
pub use parallel::decode_parallel;
pub use tiles::{decode_tile, decode_tiled, tile_grid, TileGrid, TilePlan};

use crate::io::json::read_json;
use crate::io::weights::{WeightStore, Weights};
use crate::Result;

/// The video VAE of a checkpoint's `vae/` folder: always the decoder, the encoder on request
/// (image/video conditioning only).
#[derive(Debug, Clone)]
pub struct WanVae {
    pub config: VaeConfig,
    pub decoder: WanDecoder,
    pub encoder: Option<WanEncoder>,
}

impl WanVae {
    pub fn load(dir: &Path, dtype: DType, device: &Device, with_encoder: bool) -> Result<Self> {
        Self::load_with_layout(dir, dtype, device, with_encoder, Layout::for_device(device))
    }

    /// As [`Self::load`] with the activations in `layout` rather than the device's own.
    pub fn load_with_layout(
        dir: &Path,
        dtype: DType,
        device: &Device,
        with_encoder: bool,
        layout: Layout,
    ) -> Result<Self> {
        let file = dir.join("config.json");
        let config: VaeConfig = read_json(&file)?;
        config.validate(&file)?;
        let store = Arc::new(WeightStore::open_dir(dir)?);
        let w = Weights::new(store, dtype, device);
        let decoder = WanDecoder::with_layout(&config, &w, layout)?;
        let encoder = if with_encoder {
            Some(WanEncoder::with_layout(&config, &w, layout)?)
        } else {
            None
        };
        Ok(Self {
            config,
            decoder,
            encoder,
        })
    }
}
