//! The weight of a linear layer, 16-bit or FP8, and its GEMM `x · Wᵀ`.
//!
//! [`LinearWeight::load`] decides per module: F8_E4M3 in the file → the checkpoint's codes
//! and scales; `--quantize fp8` and a module outside the ignore patterns → quantized here;
//! otherwise the plain tensor. Tensor-parallel shards slice the codes; the per-tensor scales
//! belong to the whole tensor and are shared by every shard (online quantization reads the
//! whole tensor for its scale), so sharded and unsharded layers compute the same values.
//!
//! Execution: CPU runs the dequantized math (the same formulas, in the compute dtype) on a
//! cached `w_fp8 · s_w`. An accelerator GEMM on E4M3 operands with per-tensor scales (bf16
//! output) belongs in [`Fp8Weight::matmul_t`], dispatching on the device; it finds the raw
//! codes in [`Fp8Weight::codes`] and the scales in [`Fp8Weight::parts`]. Until it exists,
//! accelerators run the dequantized fallback too.

use std::ops::Range;

use candle_core::{DType, Device, Tensor};

use super::e4m3;
use super::policy::ActivationPrecision;
use super::{Fp8Source, PrecisionSwitch};
use crate::io::weights::Weights;
use crate::parallel::Communicator;
use crate::{Error, Result};

/// One projection inside a (possibly fused) FP8 weight: `rows` consecutive output rows
/// with their own scales.
#[derive(Debug, Clone, PartialEq)]
pub struct Fp8Part {
    pub rows: usize,
    pub weight_scale: f32,
    /// Calibrated activation scale; `None`: dynamic (`max|x| / 448` per call).
    pub input_scale: Option<f32>,
}

/// FP8 weight `[out, in]` with per-tensor scales.
#[derive(Debug, Clone)]
pub struct Fp8Weight {
    /// `w_fp8 · s_w` in the compute dtype on the layer's device: the dequantized operand.
    dequant: Tensor,
    /// E4M3 codes `[out, in]` as `u8`, kept on accelerators for an FP8 GEMM (not on CPU).
    codes: Option<Tensor>,
    parts: Vec<Fp8Part>,
    precision: PrecisionSwitch,
}

#[derive(Debug, Clone)]
pub enum LinearWeight {
    Dense(Tensor),
    Fp8(Fp8Weight),
}

fn matmul_t(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    Ok(x.broadcast_matmul(&w.t()?)?)
}

impl LinearWeight {
    /// Loads `weight` `[out, in]` of module `w`, whole or `range` of dimension `dim`.
    pub fn load(
        w: &Weights,
        out_dim: usize,
        in_dim: usize,
        slice: Option<(usize, Range<usize>)>,
    ) -> Result<Self> {
        let module = w.module_path();
        let ctx = w.fp8();
        let stored_fp8 = w.stored_dtype("weight") == Some(DType::F8E4M3);
        let file = || w.store().file_of(&w.full_name("weight")).to_path_buf();
        if stored_fp8 {
            let ctx = match ctx {
                Some(c) if c.source == Fp8Source::Checkpoint => c,
                _ => {
                    return Err(Error::weights(
                        file(),
                        format!(
                            "tensor {}: F8_E4M3 weights need a ModelOpt FP8 quantization_config in the component's config.json",
                            w.full_name("weight")
                        ),
                    ))
                }
            };
            if let Some(p) = ctx.ignore.matching(module) {
                return Err(Error::weights(
                    file(),
                    format!(
                        "tensor {}: F8_E4M3, but quantization_config keeps {module} unquantized (pattern {p:?})",
                        w.full_name("weight")
                    ),
                ));
            }
            return Ok(Self::Fp8(Fp8Weight::from_checkpoint(
                w,
                out_dim,
                in_dim,
                slice,
                &ctx.precision,
            )?));
        }
        if let Some(ctx) = ctx {
            if ctx.source == Fp8Source::Online && ctx.ignore.matching(module).is_none() {
                return Ok(Self::Fp8(Fp8Weight::quantize_online(
                    w,
                    out_dim,
                    in_dim,
                    slice,
                    &ctx.precision,
                )?));
            }
        }
        Ok(Self::Dense(match slice {
            None => w.get((out_dim, in_dim), "weight")?,
            Some((dim, range)) => w.get_slice((out_dim, in_dim), "weight", dim, range)?,
        }))
    }

    /// Weights of projections that share an input, stacked along the output rows (one
    /// GEMM). Parts must be all 16-bit or all FP8; `what` names them in the error.
    pub fn cat_rows(parts: Vec<Self>, what: &str) -> Result<Self> {
        if parts.iter().all(|p| matches!(p, Self::Dense(_))) {
            let ws: Vec<Tensor> = parts
                .into_iter()
                .filter_map(|p| match p {
                    Self::Dense(t) => Some(t),
                    Self::Fp8(_) => None,
                })
                .collect();
            return Ok(Self::Dense(Tensor::cat(&ws, 0)?));
        }
        let mut fp8 = Vec::with_capacity(parts.len());
        for p in parts {
            match p {
                Self::Fp8(f) => fp8.push(f),
                Self::Dense(_) => {
                    return Err(Error::msg(format!(
                        "{what}: fused projections mix FP8 and unquantized weights"
                    )))
                }
            }
        }
        Ok(Self::Fp8(Fp8Weight::cat_rows(fp8)?))
    }

    pub fn out_features(&self) -> usize {
        match self {
            Self::Dense(t) => t.dim(0).unwrap_or(0),
            Self::Fp8(f) => f.dequant.dim(0).unwrap_or(0),
        }
    }

    pub fn as_fp8(&self) -> Option<&Fp8Weight> {
        match self {
            Self::Fp8(f) => Some(f),
            Self::Dense(_) => None,
        }
    }

    /// `x` `[.., in]` → `x · Wᵀ` `[.., out]`. `group`: the ranks holding the other slices
    /// of `x`'s last dimension (row-parallel), over which a dynamic activation scale is taken.
    pub fn matmul_t(&self, x: &Tensor, group: Option<&dyn Communicator>) -> Result<Tensor> {
        match self {
            Self::Dense(w) => matmul_t(x, w),
            Self::Fp8(f) => f.matmul_t(x, group),
        }
    }
}

/// A per-tensor scale (`weight_scale`, `input_scale`) of module `w`: one finite positive
/// float stored with shape `[]` or `[1]`; anything else is an error naming the tensor.
fn read_scale(w: &Weights, name: &str) -> Result<f32> {
    let full = w.full_name(name);
    let file = w.store().file_of(&full).to_path_buf();
    let info = w.store().info(&full)?;
    let bad = |m: String| Err(Error::weights(&file, format!("tensor {full}: {m}")));
    if !matches!(
        info.dtype,
        DType::F32 | DType::BF16 | DType::F16 | DType::F64
    ) {
        return bad(format!(
            "a scale must be a float tensor, found {:?}",
            info.dtype
        ));
    }
    if info.shape.len() > 1 || info.shape.iter().product::<usize>() != 1 {
        return bad(format!(
            "shape {:?} is not a per-tensor scale (expected [] or [1])",
            info.shape
        ));
    }
    let v = w
        .store()
        .load(&full, DType::F32, &Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?[0];
    if !(v.is_finite() && v > 0.0) {
        return bad(format!("scale {v} must be finite and positive"));
    }
    Ok(v)
}

/// Checks the codes hold no NaN (a corrupt file, or not E4M3 at all).
fn check_codes(codes: &[u8], w: &Weights) -> Result<()> {
    if let Some(i) = codes.iter().position(|&c| e4m3::is_nan_code(c)) {
        let name = w.full_name("weight");
        return Err(Error::weights(
            w.store().file_of(&name),
            format!("tensor {name}: element {i} is an E4M3 NaN code"),
        ));
    }
    Ok(())
}

impl Fp8Weight {
    fn build(
        codes: Vec<u8>,
        shape: Vec<usize>,
        part: Fp8Part,
        w: &Weights,
        precision: &PrecisionSwitch,
    ) -> Result<Self> {
        let s = part.weight_scale;
        let values: Vec<f32> = codes.iter().map(|&c| e4m3::decode(c) * s).collect();
        let dev = w.device();
        let dequant = Tensor::from_vec(values, shape.as_slice(), &Device::Cpu)?
            .to_dtype(w.dtype())?
            .to_device(dev)?;
        let codes = if dev.is_cpu() {
            None
        } else {
            Some(Tensor::from_vec(codes, shape.as_slice(), &Device::Cpu)?.to_device(dev)?)
        };
        Ok(Self {
            dequant,
            codes,
            parts: vec![Fp8Part {
                rows: shape[0],
                ..part
            }],
            precision: precision.clone(),
        })
    }

    /// The checkpoint's codes with `weight_scale` and `input_scale` of the same module.
    fn from_checkpoint(
        w: &Weights,
        out_dim: usize,
        in_dim: usize,
        slice: Option<(usize, Range<usize>)>,
        precision: &PrecisionSwitch,
    ) -> Result<Self> {
        let (codes, shape) = w.get_fp8_codes((out_dim, in_dim), "weight", slice)?;
        check_codes(&codes, w)?;
        let part = Fp8Part {
            rows: shape[0],
            weight_scale: read_scale(w, "weight_scale")?,
            input_scale: Some(read_scale(w, "input_scale")?),
        };
        Self::build(codes, shape, part, w, precision)
    }

    /// Per-tensor quantization of a 16-bit weight: `s_w = max|w| / 448` over the whole
    /// tensor (1 when it is all zeros), codes `e4m3(w / s_w)`, dynamic activation scale.
    fn quantize_online(
        w: &Weights,
        out_dim: usize,
        in_dim: usize,
        slice: Option<(usize, Range<usize>)>,
        precision: &PrecisionSwitch,
    ) -> Result<Self> {
        let full = w
            .with_dtype(DType::F32)
            .get((out_dim, in_dim), "weight")?
            .to_device(&Device::Cpu)?;
        let amax = full.abs()?.max_all()?.to_scalar::<f32>()?;
        if !amax.is_finite() {
            let name = w.full_name("weight");
            return Err(Error::weights(
                w.store().file_of(&name),
                format!("tensor {name}: not finite, cannot be quantized"),
            ));
        }
        let scale = if amax > 0.0 { amax / e4m3::MAX } else { 1.0 };
        let part = match slice {
            None => full,
            Some((dim, r)) => full.narrow(dim, r.start, r.len())?,
        };
        let shape = part.dims().to_vec();
        let codes: Vec<u8> = part
            .flatten_all()?
            .to_vec1::<f32>()?
            .into_iter()
            .map(|v| e4m3::encode((v / scale).clamp(-e4m3::MAX, e4m3::MAX)))
            .collect();
        let p = Fp8Part {
            rows: shape[0],
            weight_scale: scale,
            input_scale: None,
        };
        Self::build(codes, shape, p, w, precision)
    }

    fn cat_rows(parts: Vec<Self>) -> Result<Self> {
        let dequant = Tensor::cat(&parts.iter().map(|p| &p.dequant).collect::<Vec<_>>(), 0)?;
        let codes = if parts.iter().all(|p| p.codes.is_some()) {
            let c: Vec<&Tensor> = parts.iter().filter_map(|p| p.codes.as_ref()).collect();
            Some(Tensor::cat(&c, 0)?)
        } else {
            None
        };
        let precision = parts[0].precision.clone();
        Ok(Self {
            dequant,
            codes,
            parts: parts.into_iter().flat_map(|p| p.parts).collect(),
            precision,
        })
    }

    /// Output-row blocks and their scales, in row order.
    pub fn parts(&self) -> &[Fp8Part] {
        &self.parts
    }

    /// E4M3 codes on an accelerator (`None` on CPU).
    pub fn codes(&self) -> Option<&Tensor> {
        self.codes.as_ref()
    }

    /// W8A8 or W8A16 per the tower's switch.
    pub fn matmul_t(&self, x: &Tensor, group: Option<&dyn Communicator>) -> Result<Tensor> {
        if self.precision.get() == ActivationPrecision::W8A16 {
            return matmul_t(x, &self.dequant);
        }
        let first = self.parts[0].input_scale;
        if self.parts.iter().all(|p| p.input_scale == first) {
            let xq = quantize_activation(x, first, group)?;
            return matmul_t(&xq, &self.dequant);
        }
        // Fused projections calibrated with different input scales: each part sees the
        // input quantized with its own scale.
        let mut outs = Vec::with_capacity(self.parts.len());
        let mut row = 0;
        for p in &self.parts {
            let xq = quantize_activation(x, p.input_scale, group)?;
            outs.push(matmul_t(&xq, &self.dequant.narrow(0, row, p.rows)?)?);
            row += p.rows;
        }
        Ok(Tensor::cat(&outs, x.rank() - 1)?)
    }
}

/// `e4m3(clamp(x / s, ±448)) · s` elementwise in f32, back in `x`'s dtype and device.
/// `scale` `None`: `s = max|x| / 448` over the whole input (all of `group`'s slices); an
/// all-zero input is returned as is. Under sequence parallelism a dynamic scale is that of
/// this rank's token shard (static scales are unaffected).
pub fn quantize_activation(
    x: &Tensor,
    scale: Option<f32>,
    group: Option<&dyn Communicator>,
) -> Result<Tensor> {
    let (dtype, device) = (x.dtype(), x.device().clone());
    let xf = x.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
    let s = match scale {
        Some(s) => s,
        None => {
            let local = xf.abs()?.max_all()?;
            let amax = match group {
                Some(g) if g.size() > 1 => g
                    .all_gather(&local.reshape(1)?.to_device(&device)?, 0)?
                    .to_device(&Device::Cpu)?
                    .max_all()?,
                _ => local,
            }
            .to_scalar::<f32>()?;
            if amax == 0.0 {
                return Ok(x.clone());
            }
            amax / e4m3::MAX
        }
    };
    let values: Vec<f32> = xf
        .flatten_all()?
        .to_vec1::<f32>()?
        .into_iter()
        .map(|v| e4m3::fake_quant(v, s))
        .collect();
    Ok(Tensor::from_vec(values, xf.dims(), &Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(&device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activation_fake_quant_static_and_dynamic() {
        let x = Tensor::new(&[[0.3f32, -2.0, 7.9], [1000.0, 0.0, -0.001]], &Device::Cpu).unwrap();
        let y = quantize_activation(&x, Some(0.5), None).unwrap();
        let got = y.to_vec2::<f32>().unwrap();
        // 0.3/0.5 = 0.6 → 0.625; 7.9/0.5 = 15.8 → 16; 1000/0.5 clamps to 448; 0.002 → 0.001953125.
        assert_eq!(got[0], vec![0.3125, -2.0, 8.0]);
        assert_eq!(got[1], vec![224.0, 0.0, -0.0009765625]);
        // Dynamic: max|x| maps to 448 exactly.
        let y = quantize_activation(&x, None, None).unwrap();
        assert_eq!(y.to_vec2::<f32>().unwrap()[1][0], 1000.0);
        let z = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
        let y = quantize_activation(&z, None, None).unwrap();
        assert_eq!(
            y.abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0
        );
    }
}
