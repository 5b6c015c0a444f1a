//! Both CFG branches of a step in one pass of the generation tower. The two branches see
//! the same latents and differ only in their prompt (text K/V and the rotary offset of the
//! generation tokens), so their tokens can share every product: on small clips (a 720p
//! frame, 256p video) each branch alone leaves the GPU's GEMMs and launch queue half idle.
//! Attention stays per branch, so the result is each branch's own velocity.

use candle_core::Tensor;

use super::{Cosmos3Transformer, GenInputs, GenOutput, UndKv};
use crate::{Error, Result};

impl Cosmos3Transformer {
    /// Whether [`Self::velocity_pair`] can run: the generation tokens are not split over
    /// sequence-parallel ranks.
    pub fn can_pair(&self) -> bool {
        self.sp.size() == 1
    }

    /// The velocities of the conditional and the unconditional branch of one step, from one
    /// pass over both branches' tokens; equal to two [`Self::velocity`] calls up to the
    /// order of floating-point sums.
    pub fn velocity_pair(
        &self,
        cond: &UndKv,
        uncond: &UndKv,
        inputs: &GenInputs,
    ) -> Result<[GenOutput; 2]> {
        if !self.can_pair() {
            return Err(Error::msg(
                "both CFG branches in one pass need one sequence-parallel rank",
            ));
        }
        let sc = self.stream(cond.text_len, &[], inputs, None)?;
        let su = self.stream(uncond.text_len, &[], inputs, None)?;
        let (cos_c, sin_c) = self.gen_rope_tables(sc.positions.clone())?;
        let (cos_u, sin_u) = self.gen_rope_tables(su.positions.clone())?;
        let x = Tensor::cat(&[&sc.tokens, &su.tokens], 0)?;
        let cos = Tensor::cat(&[&cos_c, &cos_u], 0)?;
        let sin = Tensor::cat(&[&sin_c, &sin_u], 0)?;
        let hidden = {
            let _amax = self.fp8_amax_scope();
            self.gen.forward_pair(&x, [cond, uncond], &cos, &sin)?
        };
        let n = sc.tokens.dim(0)?;
        let c = self.outputs(&hidden.narrow(0, 0, n)?, &sc, inputs, None)?.0;
        let u = self.outputs(&hidden.narrow(0, n, n)?, &su, inputs, None)?.0;
        Ok([c, u])
    }
}
