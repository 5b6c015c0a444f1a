//! The denoising loop of an action-conditioned request: the video and the action chunk
//! are stepped together, each with its own UniPC state over one schedule, from one guided
//! transformer call per branch and step. As in the reference, velocities of clean video
//! frames and clean action rows are zeroed, the action stream is stepped only while it has
//! noisy rows, and action channels beyond the domain's width are kept at zero.

use std::time::Instant;

use candle_core::{DType, Tensor};

use super::action::zero_padding_columns;
use super::denoise::{mask_clean, noisy_frames, reanchor, Conditioning};
use super::guided::StepInfo;
use super::sampler::{cfg_combine, guided_at, GuidanceInterval, Schedule, UniPc};
use super::transformer::{ActionTokens, Cosmos3Transformer, GenInputs, UndKv};
use crate::engine::Progress;
use crate::{Error, Result};

/// The model side of the loop: the transformer and the text K/V of its branches.
pub struct ActionDenoiser<'a> {
    pub model: &'a Cosmos3Transformer,
    pub cond: &'a UndKv,
    /// The unconditional branch (present when the request guides).
    pub uncond: Option<&'a UndKv>,
    pub guidance_scale: f64,
    pub interval: Option<GuidanceInterval>,
    pub fps: f64,
    pub dtype: DType,
    /// Embodiment domain id and width.
    pub domain: usize,
    pub raw_dim: usize,
}

/// The loop's state: video `[1, C, t, h, w]` and actions `[chunk, action_dim]`, f32.
pub struct ActionLatents {
    pub video: Tensor,
    pub action: Tensor,
}

impl ActionDenoiser<'_> {
    /// Guided velocities of the video and the actions at the current latents.
    fn velocity(
        &self,
        x: &ActionLatents,
        step: StepInfo,
        noisy: &[bool],
        action_noisy: &[bool],
    ) -> Result<(Tensor, Tensor)> {
        self.model.begin_step(step.index, step.count);
        let video = x.video.to_dtype(self.dtype)?;
        let action = x.action.to_dtype(self.dtype)?;
        let branch = |und: &UndKv| -> Result<(Tensor, Tensor)> {
            let (out, a) = self.model.velocity_with_action(
                und,
                &GenInputs {
                    video: &video,
                    sound: None,
                    timestep: step.timestep,
                    noisy_frames: noisy,
                    fps: self.fps,
                },
                Some(&ActionTokens {
                    latent: &action,
                    domain: self.domain,
                    noisy: action_noisy,
                }),
            )?;
            let a = a.ok_or_else(|| Error::msg("the transformer returned no action velocity"))?;
            Ok((
                mask_clean(&out.video.to_dtype(DType::F32)?, noisy)?,
                zero_padding_columns(&a.to_dtype(DType::F32)?, self.raw_dim)?,
            ))
        };
        let (cv, ca) = branch(self.cond)?;
        let g = self.guidance_scale;
        match self.uncond {
            Some(u) if guided_at(g, self.interval.as_ref(), step.timestep) => {
                let (uv, ua) = branch(u)?;
                Ok((cfg_combine(&cv, &uv, g)?, cfg_combine(&ca, &ua, g)?))
            }
            _ => Ok((cv, ca)),
        }
    }

    /// Runs the whole loop from `start`; `action_noisy` flags the denoised action rows.
    pub fn denoise(
        &self,
        schedule: &Schedule,
        start: ActionLatents,
        conditioning: &Conditioning,
        action_noisy: &[bool],
        progress: &dyn Progress,
    ) -> Result<ActionLatents> {
        let noisy = noisy_frames(start.video.dim(2)?, Some(conditioning))?;
        let any_noisy_action = action_noisy.iter().any(|&n| n);
        let mut video_sampler = UniPc::new(schedule);
        let mut action_sampler = UniPc::new(schedule);
        let mut x = start;
        let started = Instant::now();
        let count = schedule.timesteps().len();
        progress.stage("denoise", count);
        for (index, &timestep) in schedule.timesteps().iter().enumerate() {
            if progress.cancelled() {
                return Err(Error::Cancelled);
            }
            let step = StepInfo {
                index,
                count,
                timestep,
            };
            let (vv, va) = self.velocity(&x, step, &noisy, action_noisy)?;
            // Zero velocity keeps clean frames in exact arithmetic; rewrite them so rounding
            // in the sampler cannot drift them either.
            let video = reanchor(&video_sampler.step(&vv, &x.video)?, conditioning)?;
            let action = if any_noisy_action {
                let a = action_sampler.step(&va.unsqueeze(0)?, &x.action.unsqueeze(0)?)?;
                zero_padding_columns(&a.squeeze(0)?, self.raw_dim)?
            } else {
                x.action.clone()
            };
            x = ActionLatents { video, action };
            progress.step();
        }
        progress.done("denoise", started.elapsed());
        Ok(x)
    }
}
