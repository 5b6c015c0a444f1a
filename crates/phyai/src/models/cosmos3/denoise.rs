//! The denoising loop: initial noise, per-step velocities of the conditional and
//! unconditional branches, classifier-free guidance, UniPC steps for the video and sound
//! streams, and the clean conditioning frames of I2V.
//!
//! With a CFG-parallel mesh (`cfg` axis of size 2) rank group 0 evaluates the conditional
//! branch and group 1 the unconditional one; the velocities are all-gathered on the cfg
//! axis and every rank steps the sampler identically, so all ranks hold the same latents.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use super::sampler::{cfg_combine, noise, Schedule, UniPc};
use crate::engine::{GenerationRequest, Progress};
use crate::parallel::RankMesh;
use crate::{Error, Result};

/// Which prompt a velocity is evaluated for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Branch {
    Cond,
    Uncond,
}

/// Velocities of one branch: video `[1, C, t, h, w]`, sound `[1, 64, T]`, both f32.
pub struct Velocity {
    pub video: Tensor,
    pub sound: Option<Tensor>,
}

/// The denoiser as the loop sees it: one branch's velocity at the current latents.
pub trait VelocityModel {
    /// `video`/`sound` are the current f32 latents; `timestep` is what the reference feeds the
    /// model for this step; `noisy` flags the latent frames that are being denoised.
    fn velocity(
        &self,
        branch: Branch,
        video: &Tensor,
        sound: Option<&Tensor>,
        timestep: f64,
        noisy: &[bool],
    ) -> Result<Velocity>;
}

/// Final latents of a request.
pub struct Latents {
    pub video: Tensor,
    pub sound: Option<Tensor>,
}

/// Draws the initial latents (or takes the request's), then blends in the clean
/// conditioning frames.
pub fn initial_latents(
    request: &GenerationRequest,
    channels: usize,
    sound_channels: usize,
    device: &Device,
) -> Result<Latents> {
    let l = request.latent;
    let video_shape = [1, channels, l.t, l.h, l.w];
    let mut video = match &request.init_noise {
        Some(n) => {
            if n.video.dims() != video_shape {
                return Err(Error::invalid(
                    "--init-noise",
                    format!(
                        "`video` has shape {:?}, the request needs {video_shape:?}",
                        n.video.dims()
                    ),
                ));
            }
            n.video.to_dtype(DType::F32)?.to_device(device)?
        }
        None => {
            let v = noise::standard_normal(request.seed, &video_shape)?;
            Tensor::from_vec(v, &video_shape[..], device)?
        }
    };
    let sound = match request.sound_frames {
        None => None,
        Some(frames) => {
            let shape = [1, sound_channels, frames];
            Some(
                match request.init_noise.as_ref().and_then(|n| n.sound.as_ref()) {
                    Some(s) => {
                        if s.dims() != shape {
                            return Err(Error::invalid(
                                "--init-noise",
                                format!(
                                    "`sound` has shape {:?}, the request needs {shape:?}",
                                    s.dims()
                                ),
                            ));
                        }
                        s.to_dtype(DType::F32)?.to_device(device)?
                    }
                    None => {
                        // A fresh generator drawn as [C, T] (the reference transposes that
                        // to its [T, C] layout, i.e. it is already our [C, T]).
                        let v = noise::standard_normal(request.seed, &[sound_channels, frames])?;
                        Tensor::from_vec(v, (1, sound_channels, frames), device)?
                    }
                },
            )
        }
    };
    if let Some(c) = &request.conditioning {
        video = overwrite_frames(&video, &c.latents, &c.frame_indexes)?;
    }
    Ok(Latents { video, sound })
}

/// Replaces latent frames `idx` of `video` `[1,C,t,h,w]` with `clean` `[1,C,k,h,w]`.
fn overwrite_frames(video: &Tensor, clean: &Tensor, idx: &[usize]) -> Result<Tensor> {
    let t = video.dim(2)?;
    let clean = clean.to_dtype(DType::F32)?.to_device(video.device())?;
    let mut frames = Vec::with_capacity(t);
    for f in 0..t {
        match idx.iter().position(|&i| i == f) {
            Some(k) => frames.push(clean.narrow(2, k, 1)?),
            None => frames.push(video.narrow(2, f, 1)?),
        }
    }
    Ok(Tensor::cat(&frames, 2)?)
}

/// Zeroes the velocity of clean frames (the reference masks predictions the same way).
fn mask_clean(v: &Tensor, noisy: &[bool]) -> Result<Tensor> {
    if noisy.iter().all(|&n| n) {
        return Ok(v.clone());
    }
    let mask: Vec<f32> = noisy.iter().map(|&n| if n { 1.0 } else { 0.0 }).collect();
    let mask = Tensor::from_vec(mask, (1, 1, noisy.len(), 1, 1), v.device())?;
    Ok(v.broadcast_mul(&mask)?)
}

/// Runs the whole loop and returns the final latents.
pub fn denoise(
    model: &dyn VelocityModel,
    request: &GenerationRequest,
    schedule: &Schedule,
    start: Latents,
    mesh: &RankMesh,
    progress: &dyn Progress,
) -> Result<Latents> {
    let l = request.latent;
    let mut noisy = vec![true; l.t];
    if let Some(c) = &request.conditioning {
        for &i in &c.frame_indexes {
            noisy[i] = false;
        }
    }
    let use_cfg = request.uses_cfg();
    let cfg_parallel = mesh.cfg.size() == 2;
    let mut video_sampler = UniPc::new(schedule);
    let mut sound_sampler = start.sound.as_ref().map(|_| UniPc::new(schedule));
    let Latents {
        mut video,
        mut sound,
    } = start;

    let started = Instant::now();
    progress.stage("denoise", schedule.timesteps().len());
    for &timestep in schedule.timesteps() {
        let (v, s) = if !use_cfg {
            if cfg_parallel && mesh.cfg.rank() == 1 {
                // No unconditional branch: this group mirrors group 0's result.
                let zero = video.zeros_like()?;
                let vid = mesh.cfg.broadcast(&zero, 0)?;
                let snd = match &sound {
                    Some(s) => Some(mesh.cfg.broadcast(&s.zeros_like()?, 0)?),
                    None => None,
                };
                (vid, snd)
            } else {
                let c = model.velocity(Branch::Cond, &video, sound.as_ref(), timestep, &noisy)?;
                if cfg_parallel {
                    let vid = mesh.cfg.broadcast(&c.video, 0)?;
                    let snd = match &c.sound {
                        Some(s) => Some(mesh.cfg.broadcast(s, 0)?),
                        None => None,
                    };
                    (vid, snd)
                } else {
                    (c.video, c.sound)
                }
            }
        } else if cfg_parallel {
            let branch = if mesh.cfg.rank() == 0 {
                Branch::Cond
            } else {
                Branch::Uncond
            };
            let mine = model.velocity(branch, &video, sound.as_ref(), timestep, &noisy)?;
            let both = mesh.cfg.all_gather(&mine.video, 0)?;
            let vid = cfg_combine(
                &both.narrow(0, 0, 1)?,
                &both.narrow(0, 1, 1)?,
                request.guidance_scale,
            )?;
            let snd = match &mine.sound {
                Some(s) => {
                    let both = mesh.cfg.all_gather(s, 0)?;
                    Some(cfg_combine(
                        &both.narrow(0, 0, 1)?,
                        &both.narrow(0, 1, 1)?,
                        request.guidance_scale,
                    )?)
                }
                None => None,
            };
            (vid, snd)
        } else {
            let c = model.velocity(Branch::Cond, &video, sound.as_ref(), timestep, &noisy)?;
            let u = model.velocity(Branch::Uncond, &video, sound.as_ref(), timestep, &noisy)?;
            let vid = cfg_combine(&c.video, &u.video, request.guidance_scale)?;
            let snd = match (&c.sound, &u.sound) {
                (Some(cs), Some(us)) => Some(cfg_combine(cs, us, request.guidance_scale)?),
                _ => None,
            };
            (vid, snd)
        };
        let v = mask_clean(&v.to_dtype(DType::F32)?, &noisy)?;
        video = video_sampler.step(&v, &video)?;
        if let Some(c) = &request.conditioning {
            // Zero velocity keeps clean frames in exact arithmetic; rewrite them so rounding
            // in the sampler cannot drift them either.
            video = overwrite_frames(&video, &c.latents, &c.frame_indexes)?;
        }
        if let (Some(sampler), Some(cur), Some(vs)) = (sound_sampler.as_mut(), sound.as_ref(), s) {
            sound = Some(sampler.step(&vs.to_dtype(DType::F32)?, cur)?);
        }
        progress.step();
    }
    progress.done("denoise", started.elapsed());
    Ok(Latents { video, sound })
}
