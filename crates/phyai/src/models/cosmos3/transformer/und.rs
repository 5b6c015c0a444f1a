//! The text ("understanding") tower: causal self-attention over the prompt. Its only use in
//! generation is the per-layer K/V that the generation tokens attend to, which does not
//! depend on the generation tokens — so it runs once per request and prompt, not per step.

use candle_core::{DType, Tensor};

use super::block::{norm_scale, ExpertBlock, UND_KEYS};
use super::config::TransformerConfig;
use super::positions::text_positions;
use crate::io::weights::Weights;
use crate::layers::attention::attention;
use crate::layers::norm::RmsNorm;
use crate::layers::rope::{apply_rope, MultiAxisRope};
use crate::layers::tp::VocabParallelEmbedding;
use crate::parallel::Group;
use crate::{Error, Result};

/// Per-layer text keys and values as the generation tokens see them: keys after QK norm
/// and rotary embedding. Each tensor is `[kv_heads on this rank, text_len, head_dim]`.
#[derive(Clone, Debug)]
pub struct UndKv {
    pub k: Vec<Tensor>,
    pub v: Vec<Tensor>,
    pub text_len: usize,
}

#[derive(Clone)]
struct UndLayer {
    block: ExpertBlock,
    /// Extra key norm applied to the text keys the generation tokens read (Edge).
    k_norm_for_gen: Option<RmsNorm>,
}

#[derive(Clone)]
pub struct UndTower {
    embed: VocabParallelEmbedding,
    layers: Vec<UndLayer>,
}

impl UndTower {
    /// `w` is the transformer's top level (`embed_tokens`, `layers.{i}`).
    pub fn load(w: &Weights, cfg: &TransformerConfig, tp: &Group) -> Result<Self> {
        let embed = tp.embedding(&w.pp("embed_tokens"), cfg.vocab_size, cfg.hidden_size)?;
        let extra_k = cfg.use_und_k_norm_for_gen && !cfg.qk_norm_for_text;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let lw = w.pp("layers").pp(i);
                let k_norm_for_gen = if extra_k {
                    Some(RmsNorm::load(
                        &lw.pp("self_attn").pp("k_norm_und_for_gen"),
                        cfg.head_dim,
                        cfg.rms_norm_eps,
                        norm_scale(cfg),
                    )?)
                } else {
                    None
                };
                Ok(UndLayer {
                    block: ExpertBlock::load(&lw, cfg, &UND_KEYS, cfg.qk_norm_for_text, tp)?,
                    k_norm_for_gen,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { embed, layers })
    }

    /// Runs the text tower over `ids` and keeps every layer's K/V. The last layer's
    /// attention output and MLP feed nothing the generation tokens read, so they are skipped.
    pub fn forward(&self, ids: &[u32], rope: &MultiAxisRope, dtype: DType) -> Result<UndKv> {
        if ids.is_empty() {
            return Err(Error::invalid("prompt", "no text tokens"));
        }
        let mut h = self.embed.forward(ids)?.to_dtype(dtype)?;
        let (cos, sin) = rope.tables(&text_positions(ids.len()), dtype, h.device())?;
        let mut ks = Vec::with_capacity(self.layers.len());
        let mut vs = Vec::with_capacity(self.layers.len());
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            let (q, k, v) = layer.block.project(&h)?;
            let k_gen = match &layer.k_norm_for_gen {
                Some(n) => apply_rope(&n.forward(&k)?, &cos, &sin)?,
                None => apply_rope(&k, &cos, &sin)?,
            };
            if i < last {
                let q = apply_rope(&q, &cos, &sin)?;
                let k = if layer.k_norm_for_gen.is_some() {
                    apply_rope(&k, &cos, &sin)?
                } else {
                    k_gen.clone()
                };
                let a = attention(&q, &k, &v, true)?;
                h = layer.block.finish(&h, &a)?;
            }
            ks.push(k_gen);
            vs.push(v);
        }
        Ok(UndKv {
            k: ks,
            v: vs,
            text_len: ids.len(),
        })
    }
}
