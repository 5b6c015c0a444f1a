//! The denoising loop of distilled (few-step) checkpoints: one branch (guidance is baked
//! into the weights), the checkpoint's fixed schedule, SDE steps, and conditioned latent
//! frames re-anchored to their clean values after every step (the SDE step re-noises every
//! position, so unlike UniPC with a zero velocity it would not keep them).
//!
//! The velocity is a callback so the loop does not depend on how the model is driven
//! (ranks, precision policies); it receives the f32 latents, the step's model-facing
//! timestep and the step index, and returns the f32 velocity of the conditional branch.

use std::time::Instant;

use candle_core::{DType, Tensor};

pub use super::denoise::reanchor;
use super::denoise::{mask_clean, noisy_frames, Conditioning};
use super::sampler::{FixedStepSchedule, SdeSampler, StepNoise};
use crate::engine::Progress;
use crate::{Error, Result};

/// Runs every step of `schedule` from `start` (`[1, C, t, h, w]` f32, conditioned frames
/// already clean) and returns the final latents.
pub fn denoise_fixed_step(
    schedule: &FixedStepSchedule,
    start: Tensor,
    conditioning: Option<&Conditioning>,
    noise: StepNoise,
    velocity: &mut dyn FnMut(&Tensor, f64, usize) -> Result<Tensor>,
    progress: &dyn Progress,
) -> Result<Tensor> {
    let noisy = noisy_frames(start.dim(2)?, conditioning)?;
    let mut sampler = SdeSampler::new(schedule, noise);
    let mut x = start.to_dtype(DType::F32)?;
    let started = Instant::now();
    progress.stage("denoise", schedule.steps());
    for (i, &timestep) in schedule.timesteps().iter().enumerate() {
        if progress.cancelled() {
            return Err(Error::Cancelled);
        }
        let v = velocity(&x, timestep, i)?.to_dtype(DType::F32)?;
        let v = mask_clean(&v, &noisy)?;
        x = sampler.step(&v, &x)?;
        if let Some(c) = conditioning {
            x = reanchor(&x, c)?;
        }
        progress.step();
    }
    progress.done("denoise", started.elapsed());
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Silent;
    use candle_core::Device;

    #[test]
    fn clean_frames_stay_clean_and_steps_follow_the_schedule() {
        let dev = Device::Cpu;
        let sched = FixedStepSchedule::new(&[1.0, 0.5], 1.0, 1000).unwrap();
        let start = Tensor::ones((1, 1, 2, 1, 1), DType::F32, &dev).unwrap();
        let clean = Tensor::full(3.0f32, (1, 1, 1, 1, 1), &dev).unwrap();
        let cond = Conditioning {
            latents: clean,
            frame_indexes: vec![0],
        };
        let noise = Tensor::zeros((2, 1, 1, 2, 1, 1), DType::F32, &dev).unwrap();
        let noise = StepNoise::given(noise, 2, &[1, 1, 2, 1, 1]).unwrap();
        let mut seen = Vec::new();
        let mut vel = |x: &Tensor, t: f64, i: usize| {
            seen.push((t, i));
            x.ones_like().map_err(Into::into)
        };
        let start = reanchor(&start, &cond).unwrap();
        let out = denoise_fixed_step(&sched, start, Some(&cond), noise, &mut vel, &Silent).unwrap();
        assert_eq!(seen, vec![(1000.0, 0), (500.0, 1)]);
        // Frame 1: x0 = 1 − 1·1 = 0, ×0.5 = 0; then x0 = 0 − 0.5·1 = −0.5 at σ = 0.
        let v = out.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(v, vec![3.0, -0.5]);
    }
}
