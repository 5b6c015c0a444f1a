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
pub mod known_amax;
pub mod policy;
pub mod weight;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub use config::{is_quantizer_state, ModulePatterns, QuantConfig, Quantize};
pub use policy::{ActivationPrecision, StepPolicy};
pub use weight::{Fp8Weight, LinearWeight};

/// How the FP8 GEMMs accumulate on Hopper. Its tensor cores add FP8 products into an
/// accumulator narrower than f32; `Exact` has cuBLASLt promote the partial sums into f32
/// registers every few k-steps, `Fast` keeps the tensor cores' own accumulation, as most
/// FP8 inference engines do. Fast is the default: measured at the Nano shapes its error
/// against the bf16 product equals Exact's to three digits (the quantization dominates)
/// and it is 3-8 % faster. The CPU path and the W8A16 steps are unaffected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accumulation {
    Exact,
    Fast,
}

impl Accumulation {
    /// The process default: `PHYAI_FP8_ACCUMULATION=exact|fast` when set, else `Fast`.
    pub fn from_env() -> Self {
        match std::env::var("PHYAI_FP8_ACCUMULATION").as_deref() {
            Ok("exact") => Accumulation::Exact,
            _ => Accumulation::Fast,
        }
    }
}

/// The activation precision (flipped per denoising step) and GEMM accumulation shared by
/// the FP8 layers of one tower. Cloning shares both.
#[derive(Debug, Clone)]
pub struct PrecisionSwitch {
    w8a16: Arc<AtomicBool>,
    fast: Arc<AtomicBool>,
}

impl PrecisionSwitch {
    pub fn new(p: ActivationPrecision) -> Self {
        Self {
            w8a16: Arc::new(AtomicBool::new(p == ActivationPrecision::W8A16)),
            fast: Arc::new(AtomicBool::new(
                Accumulation::from_env() == Accumulation::Fast,
            )),
        }
    }

    pub fn get(&self) -> ActivationPrecision {
        if self.w8a16.load(Ordering::Relaxed) {
            ActivationPrecision::W8A16
        } else {
            ActivationPrecision::W8A8
        }
    }

    pub fn set(&self, p: ActivationPrecision) {
        self.w8a16
            .store(p == ActivationPrecision::W8A16, Ordering::Relaxed);
    }

    pub fn accumulation(&self) -> Accumulation {
        if self.fast.load(Ordering::Relaxed) {
            Accumulation::Fast
        } else {
            Accumulation::Exact
        }
    }

    pub fn set_accumulation(&self, a: Accumulation) {
        self.fast.store(a == Accumulation::Fast, Ordering::Relaxed);
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
