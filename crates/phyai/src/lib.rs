//! phyai: an inference engine for NVIDIA Cosmos3, the omnimodal world model.
//!
//! The module layout follows the data path of one request:
//! `engine` (API, request) → `models::cosmos3::processor` (prompt → ids) →
//! `models::cosmos3::transformer` (denoiser) → `models::cosmos3::sampler` (UniPC, noise) →
//! `models::cosmos3::vae` (video/audio decoders) → `models::cosmos3::postprocess` and `io` (mp4/wav).

pub mod bench;
pub mod engine;
pub mod error;
pub mod io;
pub mod layers;
pub mod models;
pub mod parallel;

pub use error::{Error, Result};
