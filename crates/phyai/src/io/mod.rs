//! Reading and writing files: checkpoint weights and configs, media output.

pub mod json;
pub mod weights;

pub use weights::{WeightStore, Weights};
