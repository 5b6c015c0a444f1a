//! The generation tower, run once per denoising step and CFG branch: video (and sound)
//! tokens attend, without a mask, over the concatenation of the cached text K/V of each
//! layer and their own K/V.

use candle_core::{DType, Tensor};

use super::block::{norm_scale, ExpertBlock, GEN_KEYS};
use super::config::TransformerConfig;
use super::und::UndKv;
use crate::io::weights::Weights;
use crate::layers::attention::{attention_branches, attention_fp8_branches, KvParts};
use crate::layers::fp8::{ActivationPrecision, PrecisionSwitch};
use crate::layers::glue;
use crate::layers::norm::RmsNorm;
use crate::layers::profile::mark;
use crate::layers::sp::SeqShard;
use crate::parallel::Group;
use crate::{Error, Result};

#[derive(Clone)]
pub struct GenTower {
    layers: Vec<ExpertBlock>,
    norm: RmsNorm,
    /// With FP8 attention on: the tower's activation precision (attention runs FP8 in W8A8
    /// steps and bf16 in the W8A16 ones of the step policy).
    fp8_attention: Option<PrecisionSwitch>,
}

impl GenTower {
    /// `w` is the transformer's top level (`layers.{i}`, `norm_moe_gen`).
    pub fn load(w: &Weights, cfg: &TransformerConfig, tp: &Group) -> Result<Self> {
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| ExpertBlock::load(&w.pp("layers").pp(i), cfg, &GEN_KEYS, true, tp))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::load(
            &w.pp("norm_moe_gen"),
            cfg.hidden_size,
            cfg.rms_norm_eps,
            norm_scale(cfg),
        )?;
        Ok(Self {
            layers,
            norm,
            fp8_attention: None,
        })
    }

    /// Runs attention in FP8 whenever `precision` says W8A8 (`None`: always bf16).
    pub fn set_fp8_attention(&mut self, precision: Option<PrecisionSwitch>) {
        self.fp8_attention = precision;
    }

    /// This rank's shard of the tokens `[shard.len, hidden]` with its rotary tables
    /// `[shard.len, head_dim/2]` → its shard of the final-normed hidden states. With a
    /// group of one the shard is the whole sequence `[N, hidden]`.
    pub fn forward(
        &self,
        x: &Tensor,
        und: &UndKv,
        cos: &Tensor,
        sin: &Tensor,
        sp: &Group,
        shard: &SeqShard,
    ) -> Result<Tensor> {
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
        let Some(first) = self.layers.first() else {
            return self.norm.forward(x);
        };
        // `h` is always the normed input of the next layer; the norm is fused with the
        // residual add that precedes it, and after the last layer it is the final norm.
        mark(x.device(), "outside the video tower");
        let mut x = x.clone();
        let mut h = glue::rms_norm(&x, first.input_norm())?;
        mark(x.device(), "add + norm");
        for (i, layer) in self.layers.iter().enumerate() {
            let (q, k, v) = layer.attn_inputs(&h, cos, sin)?;
            let dtype = k.dtype();
            let (mut uk, mut uv) = (und.k[i].to_dtype(dtype)?, und.v[i].to_dtype(dtype)?);
            let (q, k, v) = if sp.size() > 1 {
                let heads = sp.local_heads(uk.dim(0)?, "num_key_value_heads")?;
                uk = uk.narrow(0, heads.start, heads.len())?;
                uv = uv.narrow(0, heads.start, heads.len())?;
                let mut p = sp.seq_to_heads(&[&q, &k, &v], shard)?.into_iter();
                match (p.next(), p.next(), p.next()) {
                    (Some(q), Some(k), Some(v)) => (q, k, v),
                    _ => return Err(Error::msg("sequence-parallel exchange lost a tensor")),
                }
            } else {
                (q, k, v)
            };
            mark(x.device(), "sequence-parallel exchange");
            let a = self.attend(
                &q,
                &[KvParts {
                    k: vec![&uk, &k],
                    v: vec![&uv, &v],
                }],
            )?;
            let a = sp.heads_to_seq(&a, shard)?;
            mark(x.device(), "sequence-parallel exchange");
            let next = self
                .layers
                .get(i + 1)
                .map_or(&self.norm, |l| l.input_norm());
            (x, h) = layer.finish_normed(&x, &a, next)?;
        }
        Ok(h)
    }
}

impl GenTower {
    /// Attention of each branch's generation queries (rows of `q`, head-major views) over
    /// that branch's text K/V, then its own; in FP8 when the step runs W8A8 with FP8
    /// attention on.
    fn attend(&self, q: &Tensor, branches: &[KvParts<'_>]) -> Result<Tensor> {
        let out = if self.fp8_attention_now() {
            attention_fp8_branches(q, branches)?
        } else {
            attention_branches(q, branches)?
        };
        mark(q.device(), "attention");
        Ok(out)
    }

    /// Whether this step's attention runs in FP8 (FP8 attention on and a W8A8 step).
    fn fp8_attention_now(&self) -> bool {
        matches!(&self.fp8_attention, Some(p) if p.get() == ActivationPrecision::W8A8)
    }

    /// Both CFG branches in one pass (one rank, no sequence parallelism): `x` `[2N, hidden]`
    /// holds the conditional branch's N tokens, then the unconditional branch's, with their
    /// rotary tables `cos`/`sin` `[2N, head_dim/2]`. Every token-wise product runs once over
    /// the 2N tokens (larger GEMMs, half the launches); attention runs per branch over that
    /// branch's text K/V, so each half equals [`Self::forward`] of its branch.
    pub fn forward_pair(
        &self,
        x: &Tensor,
        und: [&UndKv; 2],
        cos: &Tensor,
        sin: &Tensor,
    ) -> Result<Tensor> {
        for kv in und {
            if kv.k.len() != self.layers.len() || kv.v.len() != self.layers.len() {
                return Err(Error::invalid(
                    "text K/V",
                    format!(
                        "{} layers cached, the model has {}",
                        kv.k.len(),
                        self.layers.len()
                    ),
                ));
            }
        }
        let total = x.dim(0)?;
        if total % 2 != 0 {
            return Err(Error::msg(format!("a branch pair of {total} tokens")));
        }
        let n = total / 2;
        let Some(first) = self.layers.first() else {
            return self.norm.forward(x);
        };
        mark(x.device(), "outside the video tower");
        let mut x = x.clone();
        let mut h = glue::rms_norm(&x, first.input_norm())?;
        mark(x.device(), "add + norm");
        for (i, layer) in self.layers.iter().enumerate() {
            let (q, k, v) = layer.attn_inputs(&h, cos, sin)?;
            let dtype = k.dtype();
            let text = und
                .iter()
                .map(|kv| Ok((kv.k[i].to_dtype(dtype)?, kv.v[i].to_dtype(dtype)?)))
                .collect::<Result<Vec<_>>>()?;
            let half = |t: &Tensor, b: usize| t.narrow(1, b * n, n);
            let own = (0..2)
                .map(|b| Ok((half(&k, b)?, half(&v, b)?)))
                .collect::<Result<Vec<_>>>()?;
            let branches: Vec<KvParts> = text
                .iter()
                .zip(&own)
                .map(|((uk, uv), (k, v))| KvParts {
                    k: vec![uk, k],
                    v: vec![uv, v],
                })
                .collect();
            // Both branches in one call, one output for both (in FP8 without a K/V join).
            let a = self.attend(&q, &branches)?;
            let next = self
                .layers
                .get(i + 1)
                .map_or(&self.norm, |l| l.input_norm());
            (x, h) = layer.finish_normed(&x, &a, next)?;
        }
        Ok(h)
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
