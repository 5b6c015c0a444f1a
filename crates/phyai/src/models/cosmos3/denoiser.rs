//! The transformer as the guided denoising loop sees it ([`VelocityModel`]): one branch's
//! velocity at the current latents, or both branches' in one pass of the generation tower
//! when the clip is small enough for that to pay ([`CfgPair`]).

use candle_core::{DType, Tensor};

use super::guided::{Branch, StepInfo, Velocity, VelocityModel};
use super::transformer::{Cosmos3Transformer, GenInputs, GenOutput, UndKv};
use crate::{Error, Result};

/// When guided steps run both CFG branches in one pass (one rank's tokens of the two
/// branches side by side; attention per branch): the same velocities with larger GEMMs and
/// half the launches, which pays where one branch leaves the GPU idle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CfgPair {
    /// On CUDA for at most [`CFG_PAIR_MAX_TOKENS`] generation tokens per branch
    /// (`PHYAI_CFG_PAIR=0` turns it off, `=1` on for any size and device).
    #[default]
    Auto,
    On,
    Off,
}

/// Generation tokens per branch up to which [`CfgPair::Auto`] pairs the branches: a 720p
/// frame (920) and 256p video (2,880) gain; from 480p video (18,720) on, one branch fills
/// the GPU and pairing would only double the activations.
pub const CFG_PAIR_MAX_TOKENS: usize = 8192;

/// The transformer seen by the loop: text K/V computed once for each branch this rank
/// evaluates (under CFG parallelism, only its own).
pub(super) struct Denoiser<'a> {
    pub(super) model: &'a Cosmos3Transformer,
    pub(super) cond: Option<UndKv>,
    pub(super) uncond: Option<UndKv>,
    pub(super) fps: f64,
    pub(super) dtype: DType,
    /// Evaluate both branches in one pass (see [`Cosmos3Transformer::velocity_pair`]).
    pub(super) pair: bool,
}

impl VelocityModel for Denoiser<'_> {
    fn velocity(
        &self,
        branch: Branch,
        video: &Tensor,
        sound: Option<&Tensor>,
        step: StepInfo,
        noisy: &[bool],
    ) -> Result<Velocity> {
        let und = match branch {
            Branch::Cond => self.cond.as_ref(),
            Branch::Uncond => self.uncond.as_ref(),
        }
        .ok_or_else(|| Error::msg(format!("{branch:?} branch requested without its text")))?;
        let out = self.step_inputs(video, sound, step, noisy, |i| self.model.velocity(und, i))?;
        f32_velocity(out)
    }

    fn velocity_pair(
        &self,
        video: &Tensor,
        sound: Option<&Tensor>,
        step: StepInfo,
        noisy: &[bool],
    ) -> Result<(Velocity, Velocity)> {
        let (Some(cond), Some(uncond), true) = (&self.cond, &self.uncond, self.pair) else {
            return Ok((
                self.velocity(Branch::Cond, video, sound, step, noisy)?,
                self.velocity(Branch::Uncond, video, sound, step, noisy)?,
            ));
        };
        let [c, u] = self.step_inputs(video, sound, step, noisy, |i| {
            self.model.velocity_pair(cond, uncond, i)
        })?;
        Ok((f32_velocity(c)?, f32_velocity(u)?))
    }
}

impl Denoiser<'_> {
    /// Starts step `step` (FP8 checkpoints switch the precision of their activations by
    /// step) and runs `f` on the step's inputs in the model dtype.
    fn step_inputs<T>(
        &self,
        video: &Tensor,
        sound: Option<&Tensor>,
        step: StepInfo,
        noisy: &[bool],
        f: impl FnOnce(&GenInputs) -> Result<T>,
    ) -> Result<T> {
        self.model.begin_step(step.index, step.count);
        let video_in = video.to_dtype(self.dtype)?;
        let sound_in = sound.map(|s| s.to_dtype(self.dtype)).transpose()?;
        f(&GenInputs {
            video: &video_in,
            sound: sound_in.as_ref(),
            timestep: step.timestep,
            noisy_frames: noisy,
            fps: self.fps,
        })
    }
}

fn f32_velocity(out: GenOutput) -> Result<Velocity> {
    Ok(Velocity {
        video: out.video.to_dtype(DType::F32)?,
        sound: out.sound.map(|s| s.to_dtype(DType::F32)).transpose()?,
    })
}
