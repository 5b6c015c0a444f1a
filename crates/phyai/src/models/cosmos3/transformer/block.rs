//! One expert of a decoder layer: pre-norm, Q/K/V with per-head QK norm, output
//! projection, post-norm SwiGLU. The text ("und") and generation ("gen") experts of a layer
//! have the same structure and differ only in their checkpoint leaf names.

use candle_core::Tensor;

use super::config::TransformerConfig;
use crate::io::weights::Weights;
use crate::layers::glue;
use crate::layers::mlp::{Activation, GatedMlp};
use crate::layers::norm::{RmsNorm, RmsScale};
use crate::layers::profile::mark;
use crate::layers::tp::{ColumnParallelLinear, RowParallelLinear};
use crate::parallel::Group;
use crate::Result;

/// Leaf names of one expert inside `layers.{i}`.
pub struct ExpertKeys {
    pub q: &'static str,
    pub k: &'static str,
    pub v: &'static str,
    pub out: &'static str,
    pub norm_q: &'static str,
    pub norm_k: &'static str,
    pub input_norm: &'static str,
    pub post_norm: &'static str,
    pub mlp: &'static str,
}

pub const UND_KEYS: ExpertKeys = ExpertKeys {
    q: "to_q",
    k: "to_k",
    v: "to_v",
    out: "to_out",
    norm_q: "norm_q",
    norm_k: "norm_k",
    input_norm: "input_layernorm",
    post_norm: "post_attention_layernorm",
    mlp: "mlp",
};

pub const GEN_KEYS: ExpertKeys = ExpertKeys {
    q: "add_q_proj",
    k: "add_k_proj",
    v: "add_v_proj",
    out: "to_add_out",
    norm_q: "norm_added_q",
    norm_k: "norm_added_k",
    input_norm: "input_layernorm_moe_gen",
    post_norm: "post_attention_layernorm_moe_gen",
    mlp: "mlp_moe_gen",
};

/// The norm convention of a config: Nemotron-style scaling goes with the squared-ReLU MLP.
pub fn norm_scale(cfg: &TransformerConfig) -> RmsScale {
    if cfg.hidden_act == "relu2" {
        RmsScale::BeforeCast
    } else {
        RmsScale::AfterCast
    }
}

#[derive(Clone)]
pub struct ExpertBlock {
    input_norm: RmsNorm,
    post_norm: RmsNorm,
    /// Q, K and V as one GEMM: this rank's query heads, then its key and value heads.
    qkv: ColumnParallelLinear,
    out: RowParallelLinear,
    norm_q: Option<RmsNorm>,
    norm_k: Option<RmsNorm>,
    mlp: GatedMlp,
    /// Heads on this rank.
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl ExpertBlock {
    /// `w` is `layers.{i}`; `qk_norm` false leaves Q and K unnormalised (text expert of Edge).
    pub fn load(
        w: &Weights,
        cfg: &TransformerConfig,
        keys: &ExpertKeys,
        qk_norm: bool,
        tp: &Group,
    ) -> Result<Self> {
        let (h, d) = (cfg.hidden_size, cfg.head_dim);
        let (nq, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let bias = cfg.attention_bias;
        let eps = cfg.rms_norm_eps;
        let scale = norm_scale(cfg);
        let a = w.pp("self_attn");
        let norm = |w: &Weights, dim| RmsNorm::load(w, dim, eps, scale);
        let (norm_q, norm_k) = if qk_norm {
            (
                Some(norm(&a.pp(keys.norm_q), d)?),
                Some(norm(&a.pp(keys.norm_k), d)?),
            )
        } else {
            (None, None)
        };
        Ok(Self {
            input_norm: norm(&w.pp(keys.input_norm), h)?,
            post_norm: norm(&w.pp(keys.post_norm), h)?,
            qkv: tp.fused_column(
                &[
                    (&a.pp(keys.q), nq, d, "num_attention_heads"),
                    (&a.pp(keys.k), nkv, d, "num_key_value_heads"),
                    (&a.pp(keys.v), nkv, d, "num_key_value_heads"),
                ],
                h,
                bias,
            )?,
            out: tp.row(&a.pp(keys.out), nq, d, h, bias, "num_attention_heads")?,
            norm_q,
            norm_k,
            mlp: GatedMlp::load(
                &w.pp(keys.mlp),
                h,
                cfg.intermediate_size,
                Activation::parse(&cfg.hidden_act)?,
                tp,
            )?,
            heads: tp.local(nq, "num_attention_heads")?,
            kv_heads: tp.local(nkv, "num_key_value_heads")?,
            head_dim: d,
        })
    }

    /// The pre-attention norm (applied by [`Self::project`]; callers of
    /// [`Self::attn_inputs`] apply it themselves, fused with the previous residual add).
    pub fn input_norm(&self) -> &RmsNorm {
        &self.input_norm
    }

    /// Hidden states `[N, hidden]` → pre-norm → Q `[Hq, N, D]`, K and V `[Hkv, N, D]`,
    /// Q and K normalised per head, before rotary embedding. The three are views of
    /// token-major `[N, H, D]` data (heads are not copied out); every consumer accepts
    /// strided inputs.
    pub fn project(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let y = self.qkv_tokens(&glue::rms_norm(x, &self.input_norm)?)?;
        let (hq, hkv) = (self.heads, self.kv_heads);
        let part = |start: usize, len: usize, norm: &Option<RmsNorm>| -> Result<Tensor> {
            let t = y.narrow(1, start, len)?;
            let t = match norm {
                Some(nm) => nm.forward(&t)?,
                None => t,
            };
            Ok(t.transpose(0, 1)?)
        };
        Ok((
            part(0, hq, &self.norm_q)?,
            part(hq, hkv, &self.norm_k)?,
            part(hq + hkv, hkv, &None)?,
        ))
    }

    /// Already-normed hidden states `h` `[N, hidden]` → Q, K (normalised and rotated by
    /// `cos`/`sin`) and V, as head-major views like [`Self::project`].
    pub fn attn_inputs(
        &self,
        h: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let y = self.qkv_tokens(h)?;
        mark(h.device(), "qkv GEMM");
        let norms = match (&self.norm_q, &self.norm_k) {
            (Some(q), Some(k)) => Some((q, k)),
            _ => None,
        };
        let out = glue::qk_norm_rope(&y, (self.heads, self.kv_heads), norms, cos, sin)?;
        mark(h.device(), "q/k norm + rope");
        Ok(out)
    }

    /// The fused QKV GEMM, token-major `[N, Hq + 2·Hkv, D]`.
    fn qkv_tokens(&self, h: &Tensor) -> Result<Tensor> {
        let n = h.dim(0)?;
        Ok(self
            .qkv
            .forward(h)?
            .reshape((n, self.heads + 2 * self.kv_heads, self.head_dim))?)
    }

    /// Attention output `[Hq, N, D]` → token-major `[N, Hq·D]` for the output projection.
    fn attn_tokens(&self, x: &Tensor, attn: &Tensor) -> Result<Tensor> {
        let n = x.dim(0)?;
        Ok(attn
            .transpose(0, 1)?
            .contiguous()?
            .reshape((n, self.heads * self.head_dim))?)
    }

    /// Residual stream `x` `[N, hidden]` and attention output `[Hq, N, D]` → next hidden
    /// states: `x + out(attn)`, then `+ mlp(post_norm(·))`.
    pub fn finish(&self, x: &Tensor, attn: &Tensor) -> Result<Tensor> {
        let a = self.attn_tokens(x, attn)?;
        let (x, h) = glue::add_rms_norm(x, &self.out.forward(&a)?, &self.post_norm)?;
        Ok((x + self.mlp.forward(&h)?)?)
    }

    /// Like [`Self::finish`], and also returns `next(x')` of the new residual stream `x'`
    /// (the next layer's input norm, or the tower's final norm), fused with the last add.
    pub fn finish_normed(
        &self,
        x: &Tensor,
        attn: &Tensor,
        next: &RmsNorm,
    ) -> Result<(Tensor, Tensor)> {
        let dev = x.device();
        let a = self.attn_tokens(x, attn)?;
        mark(dev, "attention output layout");
        let o = self.out.forward(&a)?;
        mark(dev, "out GEMM");
        let (x, h) = glue::add_rms_norm(x, &o, &self.post_norm)?;
        mark(dev, "add + norm");
        let m = self.mlp.forward_profiled(&h)?;
        let out = glue::add_rms_norm(&x, &m, next)?;
        mark(dev, "add + norm");
        Ok(out)
    }
}
