//! Cosmos3 (Nano, Super): configs, denoiser, sampler, decoders, prompt processing.

pub mod config;
pub mod continuation;
pub mod demo;
pub mod denoise;
pub mod distilled;
pub mod plugin;
pub mod postprocess;
pub mod processor;
pub mod sampler;
pub mod transformer;
pub mod vae;
