//! Reading and writing files: checkpoint weights and configs, media output (mp4, wav, still
//! images).

pub mod atomic;
pub mod audio;
pub mod bicubic;
pub mod frames;
pub mod image;
pub mod json;
pub mod load_stats;
pub mod mp4;
pub mod mp4_read;
pub mod npy;
pub mod read;
pub mod resample;
pub mod shards;
pub mod still;
#[cfg(feature = "cuda")]
mod upload;
pub mod video;
pub mod weights;

pub use weights::{WeightStore, Weights};
