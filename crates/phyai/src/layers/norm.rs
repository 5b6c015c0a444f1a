//! RMS normalisation over the last dimension. Statistics are always computed in f32; the
//! result returns to the input dtype before (plain) or after (Nemotron) the weight.

use candle_core::{DType, Tensor, D};

use crate::io::weights::Weights;
use crate::Result;

/// How the learned scale is applied (the two conventions give identical f32 results and
/// differ only in where a bf16 rounding happens).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RmsScale {
    /// Normalise in f32, round to the activation dtype, multiply by the weight in that dtype.
    AfterCast,
    /// Multiply by the weight in f32, then round to the activation dtype (Nemotron).
    BeforeCast,
}

#[derive(Clone, Debug)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
    scale: RmsScale,
}

impl RmsNorm {
    /// Loads `weight` `[dim]`.
    pub fn load(w: &Weights, dim: usize, eps: f64, scale: RmsScale) -> Result<Self> {
        Ok(Self {
            weight: w.get(dim, "weight")?,
            eps,
            scale,
        })
    }

    pub fn new(weight: Tensor, eps: f64, scale: RmsScale) -> Self {
        Self { weight, eps, scale }
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn eps(&self) -> f64 {
        self.eps
    }

    pub fn scale(&self) -> RmsScale {
        self.scale
    }

    /// `x` `[.., dim]` in any float dtype → same shape and dtype.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        // On the GPU in half precision: one fused pass (f32 statistics, weight applied in
        // f32, one rounding), instead of the eight element-wise passes below. It rounds like
        // `BeforeCast`; for `AfterCast` the two differ by at most one bf16 step.
        if x.device().is_cuda() && dtype != DType::F32 {
            let w = self.weight.to_dtype(dtype)?;
            return Ok(candle_nn::ops::rms_norm(
                &x.contiguous()?,
                &w,
                self.eps as f32,
            )?);
        }
        let xf = x.to_dtype(DType::F32)?;
        let var = xf.sqr()?.mean_keepdim(D::Minus1)?;
        let inv = (var + self.eps)?.sqrt()?.recip()?;
        let y = xf.broadcast_mul(&inv)?;
        Ok(match self.scale {
            RmsScale::AfterCast => y
                .to_dtype(dtype)?
                .broadcast_mul(&self.weight.to_dtype(dtype)?)?,
            RmsScale::BeforeCast => y
                .broadcast_mul(&self.weight.to_dtype(DType::F32)?)?
                .to_dtype(dtype)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn unit_rms_and_weight() {
        let x = Tensor::new(&[[3f32, 4.0], [0.0, 2.0]], &Device::Cpu).unwrap();
        let w = Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap();
        let y = RmsNorm::new(w, 0.0, RmsScale::AfterCast)
            .forward(&x)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let r = (12.5f32).sqrt();
        assert!((y[0][0] - 3.0 / r).abs() < 1e-6 && (y[0][1] - 8.0 / r).abs() < 1e-6);
        let r = (2f32).sqrt();
        assert!(y[1][0].abs() < 1e-7 && (y[1][1] - 4.0 / r).abs() < 1e-6);
        let xb = x.to_dtype(DType::BF16).unwrap();
        let w = Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap();
        let yb = RmsNorm::new(w, 1e-6, RmsScale::BeforeCast)
            .forward(&xb)
            .unwrap();
        assert_eq!(yb.dtype(), DType::BF16);
    }
}
