//! Reading and writing files: checkpoint weights and configs, media output.

pub mod atomic;
pub mod audio;
pub mod image;
pub mod json;
pub mod mp4;
pub mod video;
pub mod weights;

pub use weights::{WeightStore, Weights};
