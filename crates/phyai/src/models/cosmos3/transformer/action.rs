//! Action tokens in and out of the generation stream (checkpoints trained with
//! `action_gen`). One token per action step of a chunk; its projections have one
//! weight/bias pair per embodiment domain, selected by the request's domain id.

use candle_core::Tensor;

use crate::io::weights::Weights;
use crate::{Error, Result};

/// What a step feeds the tower besides video (and sound): the action latent of the chunk.
pub struct ActionTokens<'a> {
    /// `[chunk, action_dim]` (model dtype or f32), zero-padded beyond the domain's width.
    pub latent: &'a Tensor,
    /// Embodiment domain id (row of the domain-aware projections).
    pub domain: usize,
    /// One flag per action step: true when it is denoised (timestep added, velocity
    /// predicted), false for given (clean) actions.
    pub noisy: &'a [bool],
}

/// A linear layer with one `[in, out]` weight and `[out]` bias per domain, stored as the
/// embedding tables `fc.weight` `[domains, in·out]` and `bias.weight` `[domains, out]`.
#[derive(Clone, Debug)]
struct DomainLinear {
    weight: Tensor,
    bias: Tensor,
    input: usize,
    output: usize,
}

impl DomainLinear {
    fn load(w: &Weights, input: usize, output: usize, domains: usize) -> Result<Self> {
        Ok(Self {
            weight: w.get((domains, input * output), "fc.weight")?,
            bias: w.get((domains, output), "bias.weight")?,
            input,
            output,
        })
    }

    /// `[n, in]` → `[n, out]` with domain `domain`'s weights.
    fn forward(&self, x: &Tensor, domain: usize) -> Result<Tensor> {
        let w = self
            .weight
            .get(domain)?
            .reshape((self.input, self.output))?;
        let b = self.bias.get(domain)?;
        Ok(x.to_dtype(w.dtype())?.matmul(&w)?.broadcast_add(&b)?)
    }
}

/// `action_proj_in`, `action_proj_out` and `action_modality_embed`.
#[derive(Clone, Debug)]
pub struct ActionHeads {
    proj_in: DomainLinear,
    proj_out: DomainLinear,
    modality: Tensor,
    dim: usize,
    domains: usize,
}

impl ActionHeads {
    /// Loads the heads from the transformer's top level.
    pub fn load(w: &Weights, dim: usize, hidden: usize, domains: usize) -> Result<Self> {
        Ok(Self {
            proj_in: DomainLinear::load(&w.pp("action_proj_in"), dim, hidden, domains)?,
            proj_out: DomainLinear::load(&w.pp("action_proj_out"), hidden, dim, domains)?,
            modality: w.get(hidden, "action_modality_embed")?,
            dim,
            domains,
        })
    }

    /// Width of an action token (`action_dim`).
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Checks an action input against the heads.
    pub fn check(&self, a: &ActionTokens) -> Result<()> {
        let d = a.latent.dims();
        if d.len() != 2 || d[0] == 0 || d[1] != self.dim {
            return Err(Error::invalid(
                "action latent",
                format!("shape {d:?}, expected [chunk, {}]", self.dim),
            ));
        }
        if a.noisy.len() != d[0] {
            return Err(Error::invalid(
                "noisy actions",
                format!("{} flags for {} action steps", a.noisy.len(), d[0]),
            ));
        }
        if a.domain >= self.domains {
            return Err(Error::invalid(
                "domain",
                format!(
                    "id {} but the checkpoint has {} embodiment domains",
                    a.domain, self.domains
                ),
            ));
        }
        Ok(())
    }

    /// `[chunk, action_dim]` → tokens `[chunk, hidden]` (projection plus modality embedding).
    pub fn embed(&self, latent: &Tensor, domain: usize) -> Result<Tensor> {
        Ok(self
            .proj_in
            .forward(latent, domain)?
            .broadcast_add(&self.modality)?)
    }

    /// Tokens `[chunk, hidden]` → velocities `[chunk, action_dim]`, zero for clean steps.
    pub fn project_out(&self, tokens: &Tensor, domain: usize, noisy: &[bool]) -> Result<Tensor> {
        let v = self.proj_out.forward(tokens, domain)?;
        let mask: Vec<f32> = noisy.iter().map(|&n| if n { 1.0 } else { 0.0 }).collect();
        let mask = Tensor::from_vec(mask, (noisy.len(), 1), v.device())?.to_dtype(v.dtype())?;
        Ok(v.broadcast_mul(&mask)?)
    }
}
