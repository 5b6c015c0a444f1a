//! The denoising loop: initial noise, then per step the guided velocity, the mask of the
//! clean conditioning frames, and a UniPC step of the video and sound streams. Guidance and
//! its parallel evaluation live in [`super::guided`]; every rank steps the sampler
//! identically, so all ranks hold the same latents.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use super::guided::{GuidedVelocity, StepInfo};
use super::request::{InitNoise, LatentShape};
use super::sampler::{noise, Schedule, UniPc};
use crate::engine::Progress;
use crate::{Error, Result};

/// Clean latent frames that stay fixed through the loop (I2V: the encoded image at frame 0).
#[derive(Debug, Clone)]
pub struct Conditioning {
    /// Normalised latents `[1, C, k, h, w]` for the conditioned frames.
    pub latents: Tensor,
    /// Latent frame indexes they occupy, ascending.
    pub frame_indexes: Vec<usize>,
}

/// Latents of a request: video `[1, C, t, h, w]` and sound `[1, C_s, T]`, f32.
pub struct Latents {
    pub video: Tensor,
    pub sound: Option<Tensor>,
}

/// What the loop starts from: the latent grid, the noise source and the clean frames.
pub struct Start<'a> {
    pub latent: LatentShape,
    pub channels: usize,
    /// `(channels, frames)` of the sound stream, when the request makes sound.
    pub sound: Option<(usize, usize)>,
    pub seed: u32,
    pub init_noise: Option<&'a InitNoise>,
    pub conditioning: Option<&'a Conditioning>,
}

/// Draws the initial latents (or takes the caller's), then writes in the clean
/// conditioning frames.
pub fn initial_latents(start: &Start, device: &Device) -> Result<Latents> {
    let l = start.latent;
    let video_shape = [1, start.channels, l.t, l.h, l.w];
    let given = |t: &Tensor, name: &str, shape: &[usize]| -> Result<Tensor> {
        if t.dims() != shape {
            return Err(Error::invalid(
                "init_noise",
                format!(
                    "`{name}` has shape {:?}, the request needs {shape:?}",
                    t.dims()
                ),
            ));
        }
        Ok(t.to_dtype(DType::F32)?.to_device(device)?)
    };
    let mut video = match start.init_noise {
        Some(n) => given(&n.video, "video", &video_shape)?,
        None => {
            let v = noise::standard_normal(start.seed, &video_shape)?;
            Tensor::from_vec(v, &video_shape[..], device)?
        }
    };
    let sound = match start.sound {
        None => None,
        Some((channels, frames)) => {
            let shape = [1, channels, frames];
            Some(match start.init_noise.and_then(|n| n.sound.as_ref()) {
                Some(s) => given(s, "sound", &shape)?,
                None => {
                    // A fresh generator drawn as [C, T] (the reference transposes that to
                    // its [T, C] layout, i.e. it is already our [C, T]).
                    let v = noise::standard_normal(start.seed, &[channels, frames])?;
                    Tensor::from_vec(v, (1, channels, frames), device)?
                }
            })
        }
    };
    if let Some(c) = start.conditioning {
        video = reanchor(&video, c)?;
    }
    Ok(Latents { video, sound })
}

/// Writes the clean conditioning latents into their frames of `video` `[1,C,t,h,w]`.
pub fn reanchor(video: &Tensor, c: &Conditioning) -> Result<Tensor> {
    let t = video.dim(2)?;
    let clean = c.latents.to_dtype(DType::F32)?.to_device(video.device())?;
    let mut frames = Vec::with_capacity(t);
    for f in 0..t {
        match c.frame_indexes.iter().position(|&i| i == f) {
            Some(k) => frames.push(clean.narrow(2, k, 1)?),
            None => frames.push(video.narrow(2, f, 1)?),
        }
    }
    Ok(Tensor::cat(&frames, 2)?)
}

/// Which of `t` latent frames are denoised: all but the conditioning's clean ones.
pub fn noisy_frames(t: usize, conditioning: Option<&Conditioning>) -> Result<Vec<bool>> {
    let mut noisy = vec![true; t];
    if let Some(c) = conditioning {
        for &i in &c.frame_indexes {
            *noisy.get_mut(i).ok_or_else(|| {
                Error::invalid("conditioning", "frame index beyond the latent length")
            })? = false;
        }
    }
    Ok(noisy)
}

/// Zeroes the velocity of clean frames (the reference masks predictions the same way).
pub fn mask_clean(v: &Tensor, noisy: &[bool]) -> Result<Tensor> {
    if noisy.iter().all(|&n| n) {
        return Ok(v.clone());
    }
    let mask: Vec<f32> = noisy.iter().map(|&n| if n { 1.0 } else { 0.0 }).collect();
    let mask = Tensor::from_vec(mask, (1, 1, noisy.len(), 1, 1), v.device())?;
    Ok(v.broadcast_mul(&mask)?)
}

/// Runs the whole loop from `start` and returns the final latents. `progress` may cancel
/// between steps.
pub fn denoise(
    guided: &GuidedVelocity,
    schedule: &Schedule,
    start: Latents,
    conditioning: Option<&Conditioning>,
    progress: &dyn Progress,
) -> Result<Latents> {
    let noisy = noisy_frames(start.video.dim(2)?, conditioning)?;
    let mut video_sampler = UniPc::new(schedule);
    let mut sound_sampler = start.sound.as_ref().map(|_| UniPc::new(schedule));
    let Latents {
        mut video,
        mut sound,
    } = start;

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
        let v = guided.velocity(&video, sound.as_ref(), step, &noisy)?;
        let vv = mask_clean(&v.video.to_dtype(DType::F32)?, &noisy)?;
        video = video_sampler.step(&vv, &video)?;
        if let Some(c) = conditioning {
            // Zero velocity keeps clean frames in exact arithmetic; rewrite them so rounding
            // in the sampler cannot drift them either.
            video = reanchor(&video, c)?;
        }
        if let (Some(sampler), Some(cur), Some(vs)) =
            (sound_sampler.as_mut(), sound.as_ref(), v.sound)
        {
            sound = Some(sampler.step(&vs.to_dtype(DType::F32)?, cur)?);
        }
        progress.step();
    }
    progress.done("denoise", started.elapsed());
    Ok(Latents { video, sound })
}
