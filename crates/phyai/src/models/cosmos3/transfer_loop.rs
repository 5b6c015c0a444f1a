//! The autoregressive chunk loop of transfer (see [`super::transfer`] for the geometry).
//!
//! Per chunk, as the reference does: the chunk's window of every (time-padded) control clip
//! is reflect-padded to a whole chunk and encoded into clean latents; the previous chunk's
//! last `conditional_frames` decoded frames are re-encoded as the chunk's clean leading
//! latent frames (`⌊(k−1)/4⌋ + 1` of them); the chunk's noise is drawn, its clean frames
//! written in, and a fresh UniPC run denoises it with the three-branch guidance of
//! [`super::control_guidance`]; then it is decoded. Chunks after the first drop the frames
//! they reused, and the stitched clip is cut to the output length.
//!
//! The reference encodes the whole seeded chunk (the reused frames, then the last one
//! repeated); the causal encoder makes latent frame j depend only on pixel frames ≤ 4j, so
//! encoding just the frames the clean latents need gives the same latents. Every rank
//! decodes every chunk: the next chunk's conditioning needs the pixels everywhere.

use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};

use super::control::{chunk_window, reflect_pad};
use super::control_guidance::{ControlBranches, ControlGuided};
use super::denoise::{self, Conditioning, Latents};
use super::guided::{Branch, GuidedVelocity, StepInfo};
use super::request::{Cosmos3Output, Cosmos3Request};
use super::sampler::noise::RandomState;
use super::sampler::Schedule;
use super::transfer::{ChunkPlan, TransferInput};
use super::transformer::{Cosmos3Transformer, GenInputs, UndKv};
use super::vae::WanVae;
use crate::engine::Progress;
use crate::parallel::Communicator;
use crate::{Error, Result};

/// What the loop runs on: the plugin's models, device and cfg group.
pub struct TransferModels<'a> {
    pub transformer: &'a Cosmos3Transformer,
    pub vae: &'a WanVae,
    /// The rank's communicator on the cfg axis (the text guidance split).
    pub cfg: Arc<dyn Communicator>,
    pub device: &'a Device,
    pub dtype: DType,
}

/// The token ids of both prompt branches.
pub struct TransferPrompt<'a> {
    pub pos: &'a [u32],
    pub neg: &'a [u32],
}

/// Where each chunk's initial noise comes from.
enum ChunkNoise {
    /// `[chunks, 1, C, t, h, w]`, taken in order.
    Given(Tensor),
    /// The seed's generator, continued from chunk to chunk.
    Seeded(Box<RandomState>),
}

impl ChunkNoise {
    fn draw(&mut self, k: usize, shape: &[usize; 5], device: &Device) -> Result<Tensor> {
        match self {
            ChunkNoise::Given(all) => {
                let n = all.get(k)?;
                if n.dims() != shape {
                    return Err(Error::invalid(
                        "chunk_noise",
                        format!(
                            "chunk {k} has shape {:?}, the request needs {shape:?}",
                            n.dims()
                        ),
                    ));
                }
                Ok(n.to_dtype(DType::F32)?.to_device(device)?)
            }
            ChunkNoise::Seeded(rs) => {
                let n: usize = shape.iter().product();
                let v: Vec<f32> = (0..n).map(|_| rs.gauss() as f32).collect();
                Ok(Tensor::from_vec(v, &shape[..], device)?)
            }
        }
    }
}

/// The transformer seen by control guidance: text K/V of each branch this rank evaluates,
/// and the clean control latents of the current chunk.
struct TransferDenoiser<'a> {
    model: &'a Cosmos3Transformer,
    cond: Option<&'a UndKv>,
    uncond: Option<&'a UndKv>,
    /// `[1, C, t, h, w]` each, in canonical hint order, model dtype.
    controls: Vec<Tensor>,
    fps: f64,
    dtype: DType,
}

impl ControlBranches for TransferDenoiser<'_> {
    fn velocity(
        &self,
        branch: Branch,
        controls: bool,
        video: &Tensor,
        step: StepInfo,
        noisy: &[bool],
    ) -> Result<Tensor> {
        let und = match branch {
            Branch::Cond => self.cond,
            Branch::Uncond => self.uncond,
        }
        .ok_or_else(|| Error::msg(format!("{branch:?} branch requested without its text")))?;
        // FP8 checkpoints switch the precision of their activations by step.
        self.model.begin_step(step.index, step.count);
        let video_in = video.to_dtype(self.dtype)?;
        let context: &[Tensor] = if controls { &self.controls } else { &[] };
        let out = self.model.velocity_in_context(
            und,
            context,
            &GenInputs {
                video: &video_in,
                sound: None,
                timestep: step.timestep,
                noisy_frames: noisy,
                fps: self.fps,
            },
        )?;
        Ok(out.video.to_dtype(DType::F32)?)
    }
}

/// Adds `elapsed` to the stage `name` of `timings` (stages repeat once per chunk).
fn add_time(timings: &mut Vec<(String, Duration)>, name: &str, elapsed: Duration) {
    match timings.iter_mut().find(|(n, _)| n == name) {
        Some((_, d)) => *d += elapsed,
        None => timings.push((name.to_string(), elapsed)),
    }
}

/// Runs a transfer request (already validated) and returns the stitched clip.
pub fn run_transfer(
    m: &TransferModels,
    request: &Cosmos3Request,
    transfer: &TransferInput,
    schedule: &Schedule,
    prompt: TransferPrompt,
    progress: &dyn Progress,
) -> Result<Cosmos3Output> {
    let plan = transfer.plan(request.num_frames)?;
    let encoder = m
        .vae
        .encoder
        .as_ref()
        .ok_or_else(|| Error::msg("the VAE encoder is not loaded"))?;
    let mut timings = Vec::new();

    // Controls in canonical order, padded in time to the whole output.
    let controls: Vec<Tensor> = transfer
        .ordered()?
        .iter()
        .map(|c| reflect_pad(&c.frames, plan.padded_frames()))
        .collect::<Result<_>>()?;

    let t = Instant::now();
    let here = GuidedVelocity::branches(request.guidance_scale, m.cfg.rank(), m.cfg.size());
    progress.stage("text", here.cond as usize + here.uncond as usize);
    let encode = |needed: bool, ids: &[u32]| -> Result<Option<UndKv>> {
        if !needed {
            return Ok(None);
        }
        let kv = m.transformer.und(ids)?;
        progress.step();
        Ok(Some(kv))
    };
    let cond = encode(here.cond, prompt.pos)?;
    let uncond = encode(here.uncond, prompt.neg)?;
    progress.done("text", t.elapsed());
    timings.push(("text".to_string(), t.elapsed()));

    let latent = plan.latent_frames();
    let (h, w) = (request.height / 16, request.width / 16);
    let shape = [1, m.transformer.config().latent_channel, latent, h, w];
    let mut noise = match &transfer.chunk_noise {
        Some(n) => ChunkNoise::Given(n.clone()),
        None => ChunkNoise::Seeded(Box::new(RandomState::new(request.seed))),
    };

    let mut pieces: Vec<Tensor> = Vec::with_capacity(plan.num_chunks);
    let mut previous: Option<Tensor> = None;
    let mut last_latents = None;
    for k in 0..plan.num_chunks {
        let t = Instant::now();
        let (start, end) = plan.window(k);
        let control_latents = controls
            .iter()
            .map(|c| {
                let clip = chunk_window(c, start, end, plan.chunk_frames)?;
                encoder.encode(&clip.to_dtype(m.dtype)?.to_device(m.device)?)
            })
            .collect::<Result<Vec<_>>>()?;
        let reused = plan.reused_frames(k);
        let conditioning = match (&previous, reused) {
            (Some(prev), r) if r > 0 => Some(reencode(encoder, prev, &plan, r, m)?),
            _ => None,
        };
        add_time(&mut timings, "encode", t.elapsed());

        let t = Instant::now();
        let mut video = noise.draw(k, &shape, m.device)?;
        if let Some(c) = &conditioning {
            video = denoise::reanchor(&video, c)?;
        }
        let model = TransferDenoiser {
            model: m.transformer,
            cond: cond.as_ref(),
            uncond: uncond.as_ref(),
            controls: control_latents,
            fps: request.fps,
            dtype: m.dtype,
        };
        let folded = ControlGuided::new(
            &model,
            transfer.control_guidance,
            transfer.control_guidance_interval,
        );
        let guided = GuidedVelocity::new(&folded, request.guidance_scale, m.cfg.clone())
            .with_interval(request.guidance_interval);
        let start = Latents { video, sound: None };
        let latents = denoise::denoise(&guided, schedule, start, conditioning.as_ref(), progress)?;
        add_time(&mut timings, "denoise", t.elapsed());

        let t = Instant::now();
        progress.stage("decode", 1);
        let decoded = m
            .vae
            .decoder
            .decode(&latents.video.to_dtype(m.dtype)?)?
            .to_dtype(DType::F32)?;
        progress.step();
        progress.done("decode", t.elapsed());
        add_time(&mut timings, "decode", t.elapsed());
        pieces.push(if k == 0 {
            decoded.clone()
        } else {
            decoded.narrow(2, reused, plan.chunk_frames - reused)?
        });
        previous = Some(decoded);
        last_latents = Some(latents.video);
    }
    let video = Tensor::cat(&pieces, 2)?;
    let video = video.narrow(2, 0, plan.total_frames.min(video.dim(2)?))?;
    Ok(Cosmos3Output {
        video,
        audio: None,
        latents: last_latents.ok_or_else(|| Error::msg("transfer ran no chunk"))?,
        sound_latents: None,
        actions: None,
        timings,
    })
}

/// The clean leading latents of a chunk from the previous chunk's decoded pixels
/// `[1, 3, chunk_frames, H, W]` in [0, 1]: its last `reused` frames, mapped to [−1, 1].
fn reencode(
    encoder: &super::vae::WanEncoder,
    previous: &Tensor,
    plan: &ChunkPlan,
    reused: usize,
    m: &TransferModels,
) -> Result<Conditioning> {
    let frames = previous.dim(2)?;
    let tail = previous.narrow(2, frames - reused, reused)?;
    let clean = (reused - 1) / 4 + 1;
    // The pixel frames those latent frames depend on (all among the reused ones).
    let needed = (clean - 1) * 4 + 1;
    debug_assert!(needed <= reused && clean <= plan.latent_frames());
    let clip = ((tail.narrow(2, 0, needed)? * 2.0)? - 1.0)?;
    let latents = encoder
        .encode(&clip.to_dtype(m.dtype)?.to_device(m.device)?)?
        .to_dtype(DType::F32)?;
    Ok(Conditioning {
        latents,
        frame_indexes: (0..clean).collect(),
    })
}
