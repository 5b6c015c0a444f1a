//! FP8 linear layers (ModelOpt static W8A8, per-tensor scales) and what loads them.
//!
//! Format: a quantized linear stores `weight` as F8_E4M3 codes `w_fp8 = e4m3(w / s_w)`,
//! `weight_scale` `s_w` (f32, one value) and `input_scale` `s_x` (f32, one value, calibrated
//! offline). Math, per tensor:
//! - W8A8: `y = (e4m3(clamp(x / s_x, ±448)) · s_x) · (w_fp8 · s_w)ᵀ + b`;
//! - W8A16: `y = x · (w_fp8 · s_w)ᵀ + b` (16-bit activations, the same weights).
//!
//! Online quantization (`--quantize fp8`) makes the same format from 16-bit weights at load
//! (`s_w = max|w| / 448` of the whole tensor) and, with no calibrated `s_x`, uses a dynamic
//! `s_x = max|x| / 448` of each call's whole input (over the tensor-parallel group when the
//! input is sharded).
//!
//! Which layers quantize is decided where weights are read ([`weight::LinearWeight::load`]):
//! an F8_E4M3 tensor in the file, or online quantization of a module the ignore patterns do
//! not cover. Model code never sees the difference; the activation precision of a tower is
//! a [`PrecisionSwitch`] its layers share, flipped per denoising step by the model.

pub mod config;
pub mod e4m3;
pub mod policy;
pub mod weight;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub use config::{is_quantizer_state, ModulePatterns, QuantConfig, Quantize};
pub use policy::{ActivationPrecision, StepPolicy};
pub use weight::{Fp8Weight, LinearWeight};

/// The activation precision shared by the FP8 layers of one tower. Cloning shares it.
#[derive(Debug, Clone)]
pub struct PrecisionSwitch(Arc<AtomicBool>);

impl PrecisionSwitch {
    pub fn new(p: ActivationPrecision) -> Self {
        Self(Arc::new(AtomicBool::new(p == ActivationPrecision::W8A16)))
    }

    pub fn get(&self) -> ActivationPrecision {
        if self.0.load(Ordering::Relaxed) {
            ActivationPrecision::W8A16
        } else {
            ActivationPrecision::W8A8
        }
    }

    pub fn set(&self, p: ActivationPrecision) {
        self.0
            .store(p == ActivationPrecision::W8A16, Ordering::Relaxed);
    }
}

/// Where FP8 weights come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Fp8Source {
    /// The checkpoint stores them (its `quantization_config` said ModelOpt FP8).
    Checkpoint,
    /// 16-bit weights quantized at load (`--quantize fp8`).
    Online,
}

/// What the weight loader needs to build FP8 layers of one tower; carried by
/// [`crate::io::weights::Weights`].
#[derive(Debug, Clone)]
pub struct Fp8Context {
    pub source: Fp8Source,
    /// Modules kept in 16 bits.
    pub ignore: Arc<ModulePatterns>,
    /// The tower's activation precision.
    pub precision: PrecisionSwitch,
}
