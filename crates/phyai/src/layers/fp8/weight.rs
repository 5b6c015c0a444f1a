//! The weight of a linear layer, 16-bit or FP8, and its GEMM `x · Wᵀ`.
//!
//! [`LinearWeight::load`] decides per module: F8_E4M3 in the file → the checkpoint's codes
//! and scales; `--quantize fp8` and a module outside the ignore patterns → quantized here;
//! otherwise the plain tensor. Tensor-parallel shards slice the codes; the per-tensor scales
//! belong to the whole tensor and are shared by every shard (online quantization reads the
//! whole tensor for its scale), so sharded and unsharded layers compute the same values.
//!
//! Execution: the CPU runs the dequantized math (the same formulas, in the compute dtype)
//! on a cached `w_fp8 · s_w`. A CUDA device keeps only the codes and runs FP8 GEMMs with
//! the per-tensor scales (`layers::cuda::fp8`).

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

/// Where an FP8 weight's values live and how its products run.
#[derive(Debug, Clone)]
enum Operand {
    /// `w_fp8 · s_w` in the compute dtype: the dequantized math.
    Dequant(Tensor),
    /// Codes and scales on a CUDA device: FP8 GEMMs.
    #[cfg(feature = "cuda")]
    Cuda(crate::layers::cuda::fp8::Fp8Operand),
}

/// FP8 weight `[out, in]` with per-tensor scales.
#[derive(Debug, Clone)]
pub struct Fp8Weight {
    operand: Operand,
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
            Self::Fp8(f) => f.parts.iter().map(|p| p.rows).sum(),
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
        let parts = vec![Fp8Part {
            rows: shape[0],
            ..part
        }];
        #[cfg(feature = "cuda")]
        if let Device::Cuda(_) = w.device() {
            let codes =
                Tensor::from_vec(codes, shape.as_slice(), &Device::Cpu)?.to_device(w.device())?;
            let op = crate::layers::cuda::fp8::Fp8Operand::new(codes, &parts, w.dtype())?;
            return Ok(Self {
                operand: Operand::Cuda(op),
                parts,
                precision: precision.clone(),
            });
        }
        let s = parts[0].weight_scale;
        let values: Vec<f32> = codes.iter().map(|&c| e4m3::decode(c) * s).collect();
        let dequant = Tensor::from_vec(values, shape.as_slice(), &Device::Cpu)?
            .to_dtype(w.dtype())?
            .to_device(w.device())?;
        Ok(Self {
            operand: Operand::Dequant(dequant),
            parts,
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
        #[cfg(feature = "cuda")]
        if let Device::Cuda(_) = w.device() {
            // Quantized where the weight lives: no host round trip of every value.
            use crate::layers::cuda::fp8::Fp8Operand;
            let name = w.full_name("weight");
            let full = w.get((out_dim, in_dim), "weight")?;
            let (codes, scale) = Fp8Operand::quantize_weight(&full, slice).map_err(|e| {
                Error::weights(w.store().file_of(&name), format!("tensor {name}: {e}"))
            })?;
            let parts = vec![Fp8Part {
                rows: codes.dim(0)?,
                weight_scale: scale,
                input_scale: None,
            }];
            return Ok(Self {
                operand: Operand::Cuda(Fp8Operand::new(codes, &parts, w.dtype())?),
                parts,
                precision: precision.clone(),
            });
        }
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
        let precision = parts[0].precision.clone();
        #[cfg(feature = "cuda")]
        let mixed = || Error::msg("fused FP8 projections live on different devices");
        let operand = match &parts[0].operand {
            Operand::Dequant(_) => {
                let mut ds = Vec::with_capacity(parts.len());
                for p in &parts {
                    match &p.operand {
                        Operand::Dequant(d) => ds.push(d),
                        #[cfg(feature = "cuda")]
                        Operand::Cuda(_) => return Err(mixed()),
                    }
                }
                Operand::Dequant(Tensor::cat(&ds, 0)?)
            }
            #[cfg(feature = "cuda")]
            Operand::Cuda(_) => {
                let mut ops = Vec::with_capacity(parts.len());
                for p in &parts {
                    match &p.operand {
                        Operand::Cuda(o) => ops.push(o),
                        Operand::Dequant(_) => return Err(mixed()),
                    }
                }
                Operand::Cuda(crate::layers::cuda::fp8::Fp8Operand::cat_rows(&ops)?)
            }
        };
        Ok(Self {
            operand,
            parts: parts.into_iter().flat_map(|p| p.parts).collect(),
            precision,
        })
    }

    /// Per-tensor quantization of a whole 16-bit (or f32) weight `[out, in]` on its device,
    /// with a dynamic activation scale: what `--quantize fp8` makes of one linear layer,
    /// for measurements and tests that start from a tensor.
    pub fn quantize(w: &Tensor, precision: ActivationPrecision) -> Result<Self> {
        let precision = PrecisionSwitch::new(precision);
        let (out, _) = w.dims2()?;
        #[cfg(feature = "cuda")]
        if let Device::Cuda(_) = w.device() {
            use crate::layers::cuda::fp8::Fp8Operand;
            let (codes, scale) = Fp8Operand::quantize_weight(w, None)?;
            let parts = vec![Fp8Part {
                rows: out,
                weight_scale: scale,
                input_scale: None,
            }];
            return Ok(Self {
                operand: Operand::Cuda(Fp8Operand::new(codes, &parts, w.dtype())?),
                parts,
                precision,
            });
        }
        let f = w.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
        let amax = f.abs()?.max_all()?.to_scalar::<f32>()?;
        if !amax.is_finite() {
            return Err(Error::msg("weight not finite, cannot be quantized"));
        }
        let scale = if amax > 0.0 { amax / e4m3::MAX } else { 1.0 };
        let values: Vec<f32> = f
            .flatten_all()?
            .to_vec1::<f32>()?
            .into_iter()
            .map(|v| e4m3::fake_quant(v, scale))
            .collect();
        let dequant = Tensor::from_vec(values, f.dims(), &Device::Cpu)?
            .to_dtype(w.dtype())?
            .to_device(w.device())?;
        Ok(Self {
            operand: Operand::Dequant(dequant),
            parts: vec![Fp8Part {
                rows: out,
                weight_scale: scale,
                input_scale: None,
            }],
            precision,
        })
    }

    /// The device operand on a CUDA device (codes and scales), for direct GEMM calls.
    #[cfg(feature = "cuda")]
    pub fn cuda_operand(&self) -> Option<&crate::layers::cuda::fp8::Fp8Operand> {
        match &self.operand {
            Operand::Cuda(o) => Some(o),
            Operand::Dequant(_) => None,
        }
    }

    /// Output-row blocks and their scales, in row order.
    pub fn parts(&self) -> &[Fp8Part] {
        &self.parts
    }

    /// How this layer's FP8 GEMMs accumulate (shared with the layers of its tower).
    pub fn set_accumulation(&self, a: super::Accumulation) {
        self.precision.set_accumulation(a);
    }

    /// E4M3 codes on a CUDA device (`None` where the dequantized math runs).
    pub fn codes(&self) -> Option<&Tensor> {
        match &self.operand {
            Operand::Dequant(_) => None,
            #[cfg(feature = "cuda")]
            Operand::Cuda(o) => Some(o.codes()),
        }
    }

    /// W8A8 or W8A16 per the tower's switch.
    // Without the `cuda` feature the operand has one variant.
    #[allow(clippy::infallible_destructuring_match)]
    pub fn matmul_t(&self, x: &Tensor, group: Option<&dyn Communicator>) -> Result<Tensor> {
        let w8a16 = self.precision.get() == ActivationPrecision::W8A16;
        let dequant = match &self.operand {
            Operand::Dequant(d) => d,
            #[cfg(feature = "cuda")]
            Operand::Cuda(o) if w8a16 => return o.matmul_w8a16(x, &self.parts),
            #[cfg(feature = "cuda")]
            Operand::Cuda(o) => {
                let fast = self.precision.accumulation() == super::Accumulation::Fast;
                return o.matmul_w8a8(x, &self.parts, group, fast);
            }
        };
        if w8a16 {
            return matmul_t(x, dequant);
        }
        let first = self.parts[0].input_scale;
        if self.parts.iter().all(|p| p.input_scale == first) {
            let xq = quantize_activation(x, first, group)?;
            return matmul_t(&xq, dequant);
        }
        // Fused projections calibrated with different input scales: each part sees the
        // input quantized with its own scale.
        let mut outs = Vec::with_capacity(self.parts.len());
        let mut row = 0;
        for p in &self.parts {
            let xq = quantize_activation(x, p.input_scale, group)?;
            outs.push(matmul_t(&xq, &dequant.narrow(0, row, p.rows)?)?);
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
