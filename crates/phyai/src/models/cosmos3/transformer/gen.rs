//! The generation tower, run once per denoising step and CFG branch: video (and sound)
//! tokens attend, without a mask, over the concatenation of the cached text K/V of each
//! layer and their own K/V.

use candle_core::{DType, Tensor};

use super::block::{norm_scale, ExpertBlock, GEN_KEYS};
use super::config::TransformerConfig;
use super::und::UndKv;
use crate::io::weights::Weights;
use crate::layers::attention::attention;
use crate::layers::linear::TpGroup;
use crate::layers::norm::RmsNorm;
use crate::layers::rope::apply_rope;
use crate::{Error, Result};

#[derive(Clone)]
pub struct GenTower {
    layers: Vec<ExpertBlock>,
    norm: RmsNorm,
}

impl GenTower {
    /// `w` is the transformer's top level (`layers.{i}`, `norm_moe_gen`).
    pub fn load(w: &Weights, cfg: &TransformerConfig, tp: &TpGroup) -> Result<Self> {
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| ExpertBlock::load(&w.pp("layers").pp(i), cfg, &GEN_KEYS, true, tp))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::load(
            &w.pp("norm_moe_gen"),
            cfg.hidden_size,
            cfg.rms_norm_eps,
            norm_scale(cfg),
        )?;
        Ok(Self { layers, norm })
    }

    /// Tokens `[N, hidden]` with rotary tables `[N, head_dim/2]` → final-normed hidden
    /// states `[N, hidden]`.
    pub fn forward(&self, x: &Tensor, und: &UndKv, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        if und.k.len() != self.layers.len() || und.v.len() != self.layers.len() {
            return Err(Error::invalid(
                "text K/V",
                format!(
                    "{} layers cached, the model has {}",
                    und.k.len(),
                    self.layers.len()
                ),
            ));
        }
        let mut x = x.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            let (q, k, v) = layer.project(&x)?;
            let q = apply_rope(&q, cos, sin)?;
            let k = apply_rope(&k, cos, sin)?;
            let dtype = k.dtype();
            let k_all = Tensor::cat(&[&und.k[i].to_dtype(dtype)?, &k], 1)?;
            let v_all = Tensor::cat(&[&und.v[i].to_dtype(dtype)?, &v], 1)?;
            let a = attention(&q, &k_all, &v_all, false)?;
            x = layer.finish(&x, &a)?;
        }
        self.norm.forward(&x)
    }
}

/// `1` for tokens of noisy frames, `0` for clean ones: `[frames·per_frame, 1]`.
pub fn noisy_token_mask(
    noisy: &[bool],
    per_frame: usize,
    dtype: DType,
    device: &candle_core::Device,
) -> Result<Tensor> {
    let m: Vec<f32> = noisy
        .iter()
        .flat_map(|&n| std::iter::repeat_n(if n { 1.0 } else { 0.0 }, per_frame))
        .collect();
    let len = m.len();
    Ok(Tensor::from_vec(m, (len, 1), device)?.to_dtype(dtype)?)
}
