//! Cosmos3 (Nano, Super): the `cosmos3_wn` plugin, its request, configs, denoiser,
//! guidance, sampler, decoders and prompt processing, and transfer (video steered by
//! control hints).

pub mod action;
pub mod action_loop;
pub mod config;
pub mod continuation;
pub mod control;
pub mod control_guidance;
pub mod demo;
pub mod denoise;
mod denoiser;
pub mod distilled;
pub mod guided;
pub mod plugin;
pub mod postprocess;
pub mod processor;
pub mod request;
pub mod sampler;
pub mod transfer;
pub mod transfer_loop;
pub mod transformer;
pub mod vae;

pub use action::{ActionMode, ActionRequest};
pub use control::{Control, Hint};
pub use denoiser::{CfgPair, CFG_PAIR_MAX_TOKENS};
pub use plugin::{Cosmos3Args, Cosmos3Plugin, VaeDecode};
pub use request::{
    pixel_to_latent_shape, sound_latent_frames, ClipDefaults, Cosmos3Output, Cosmos3Request,
    InitNoise, LatentShape, Prompt, VideoInput,
};
pub use transfer::TransferInput;
