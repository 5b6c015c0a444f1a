//! The `cosmos3_wn` plugin: loads a Cosmos3 checkpoint (transformer, VAE, optional audio
//! decoder, scheduler) and runs requests: text tower once per branch, the denoising loop,
//! then the video and audio decoders.

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use super::config::ModelIndex;
use super::denoise::{self, Branch, Velocity, VelocityModel};
use super::sampler::{Schedule, ScheduleOptions, SchedulerConfig};
use super::transformer::{Cosmos3Transformer, GenInputs, TransformerConfig, UndKv};
use super::vae::{decode_tiled, AudioDecoder, WanVae};
use crate::engine::registry::Plugin;
use crate::engine::{
    Conditioning, Cosmos3Args, EngineConfig, GenerationOutput, GenerationRequest, PluginArgs,
    Progress, Target,
};
use crate::io::json::read_json;
use crate::parallel::RankMesh;
use crate::{Error, Result};

/// Audio decoder hop: latent steps → samples (strides 2·4·5·6·8).
const SOUND_HOP: usize = 1920;

pub struct Cosmos3Plugin {
    args: Cosmos3Args,
    index: ModelIndex,
    scheduler: SchedulerConfig,
    transformer: Cosmos3Transformer,
    vae: WanVae,
    audio: Option<AudioDecoder>,
    mesh: RankMesh,
    device: Device,
    dtype: DType,
    vae_tiles: Option<usize>,
}

/// Registry constructor: one rank's plugin on its mesh.
pub fn create(args: &PluginArgs, config: &EngineConfig, mesh: RankMesh) -> Result<Box<dyn Plugin>> {
    let PluginArgs::Cosmos3(args) = args;
    Ok(Box::new(Cosmos3Plugin::load(args, config, mesh)?))
}

/// The device of an engine config; a CUDA target in a CPU-only build is a clear error.
pub fn device_for(target: Target) -> Result<Device> {
    match target {
        Target::Cpu => Ok(Device::Cpu),
        Target::Cuda(i) => {
            if !candle_core::utils::cuda_is_available() {
                return Err(Error::invalid(
                    "--device",
                    "cuda: this build has no CUDA support (rebuild with `--features cuda`)",
                ));
            }
            Ok(Device::new_cuda(i)?)
        }
    }
}

fn require_dir(ckpt: &Path, name: &str) -> Result<std::path::PathBuf> {
    let d = ckpt.join(name);
    if !d.is_dir() {
        return Err(Error::invalid(
            "--checkpoint",
            format!("{}: missing the {name}/ folder", ckpt.display()),
        ));
    }
    Ok(d)
}

impl Cosmos3Plugin {
    pub fn load(args: &Cosmos3Args, config: &EngineConfig, mesh: RankMesh) -> Result<Self> {
        let ckpt = &args.checkpoint_dir;
        if !ckpt.is_dir() {
            return Err(Error::invalid(
                "--checkpoint",
                format!("{} is not a folder", ckpt.display()),
            ));
        }
        let index_file = ckpt.join("model_index.json");
        let index: ModelIndex = read_json(&index_file)?;
        index.validate(&index_file)?;

        let device = device_for(config.device.target)?;
        let dtype = config.device.dtype;

        let tdir = require_dir(ckpt, "transformer")?;
        let tfile = tdir.join("config.json");
        let tcfg: TransformerConfig = read_json(&tfile)?;
        tcfg.validate(&tfile)?;
        config.parallel.validate(tcfg.num_key_value_heads)?;
        let transformer =
            Cosmos3Transformer::load_quantized(&tdir, &tcfg, dtype, &device, &mesh, args.quantize)?;

        let sfile = require_dir(ckpt, "scheduler")?.join("scheduler_config.json");
        let scheduler = SchedulerConfig::from_file(&sfile)?;

        let vae = WanVae::load(&require_dir(ckpt, "vae")?, dtype, &device, true)?;
        let audio = if args.load_sound {
            if !index.has_sound_tokenizer() || !ckpt.join("sound_tokenizer").is_dir() {
                return Err(Error::invalid(
                    "--sound",
                    format!("{} ships no sound_tokenizer/", ckpt.display()),
                ));
            }
            Some(AudioDecoder::load(
                &ckpt.join("sound_tokenizer"),
                dtype,
                &device,
            )?)
        } else {
            None
        };
        Ok(Self {
            args: args.clone(),
            index,
            scheduler,
            transformer,
            vae,
            audio,
            mesh,
            device,
            dtype,
            vae_tiles: config.runtime.vae_tiles,
        })
    }

    /// A single-rank plugin from components already built, with the checkpoints' default
    /// scheduler and no audio decoder: the benchmark's random-weight model at full size.
    pub fn from_parts(
        transformer: Cosmos3Transformer,
        vae: WanVae,
        device: Device,
        dtype: DType,
    ) -> Result<Self> {
        Ok(Self {
            args: Cosmos3Args {
                checkpoint_dir: "(built in memory)".into(),
                flow_shift: None,
                use_karras_sigmas: None,
                load_sound: false,
                sigma_schedule: Default::default(),
                quantize: None,
            },
            index: serde_json::from_str("{}")
                .map_err(|e| Error::msg(format!("default model index: {e}")))?,
            scheduler: SchedulerConfig::default(),
            transformer,
            vae,
            audio: None,
            mesh: RankMesh::single(),
            device,
            dtype,
            vae_tiles: None,
        })
    }

    /// Adds a sound decoder to a plugin made by [`Self::from_parts`], for T2AV requests.
    pub fn with_audio(mut self, audio: AudioDecoder) -> Self {
        self.audio = Some(audio);
        self
    }

    fn schedule(&self, steps: usize) -> Result<Schedule> {
        Schedule::new(
            &self.scheduler,
            ScheduleOptions {
                steps,
                flow_shift: self.args.flow_shift,
                karras: self.args.use_karras_sigmas,
                style: self.args.sigma_schedule,
                native_flow: self.index.use_native_flow_schedule,
            },
        )
    }

    fn decode_video(&self, latents: &Tensor) -> Result<Tensor> {
        let z = latents.to_dtype(self.dtype)?;
        let world = self.mesh.shape.world();
        let video = if world > 1 {
            let t = z.dim(2)?;
            let frames = (t - 1) * self.vae.config.temporal_scale() + 1;
            super::vae::decode_parallel(&self.vae.decoder, &z, frames, &self.mesh)?
        } else {
            match self.vae_tiles {
                Some(n) if n > 1 => decode_tiled(&self.vae.decoder, &z, n)?,
                _ => self.vae.decoder.decode(&z)?,
            }
        };
        Ok(video.to_dtype(DType::F32)?)
    }
}

/// The transformer seen by the loop: text K/V computed once for each branch this rank
/// evaluates (under CFG parallelism, only its own).
struct Denoiser<'a> {
    model: &'a Cosmos3Transformer,
    /// The schedule's timesteps: the step index of a velocity call (for the FP8 step policy).
    timesteps: &'a [f64],
    cond: Option<UndKv>,
    uncond: Option<UndKv>,
    fps: f64,
    dtype: DType,
}

impl VelocityModel for Denoiser<'_> {
    fn velocity(
        &self,
        branch: Branch,
        video: &Tensor,
        sound: Option<&Tensor>,
        timestep: f64,
        noisy: &[bool],
    ) -> Result<Velocity> {
        let und = match branch {
            Branch::Cond => self.cond.as_ref(),
            Branch::Uncond => self.uncond.as_ref(),
        }
        .ok_or_else(|| Error::msg(format!("{branch:?} branch requested without its text")))?;
        // FP8 step policy. Interim: the step index is recovered from the timestep (distinct
        // per step); once the loop passes `StepInfo { index, count, .. }` this becomes
        // `self.model.begin_step(step.index, step.count)`.
        if let Some(i) = self.timesteps.iter().position(|&t| t == timestep) {
            self.model.begin_step(i, self.timesteps.len());
        }
        let video_in = video.to_dtype(self.dtype)?;
        let sound_in = match sound {
            Some(s) => Some(s.to_dtype(self.dtype)?),
            None => None,
        };
        let out = self.model.velocity(
            und,
            &GenInputs {
                video: &video_in,
                sound: sound_in.as_ref(),
                timestep,
                noisy_frames: noisy,
                fps: self.fps,
            },
        )?;
        Ok(Velocity {
            video: out.video.to_dtype(DType::F32)?,
            sound: match out.sound {
                Some(s) => Some(s.to_dtype(DType::F32)?),
                None => None,
            },
        })
    }
}

impl Plugin for Cosmos3Plugin {
    fn name(&self) -> &'static str {
        "cosmos3_wn"
    }

    fn sound_spec(&self) -> Option<(u32, usize)> {
        self.audio
            .as_ref()
            .map(|a| (a.sample_rate() as u32, SOUND_HOP))
    }

    fn encode_image(&mut self, pixels: &Tensor) -> Result<Conditioning> {
        let enc = self
            .vae
            .encoder
            .as_ref()
            .ok_or_else(|| Error::msg("the VAE encoder is not loaded"))?;
        // [1, 3, H, W] in [−1, 1] → one latent frame; the causal VAE encodes frame 0 alone
        // exactly as it does inside a longer clip.
        let x = pixels
            .to_dtype(self.dtype)?
            .to_device(&self.device)?
            .unsqueeze(2)?;
        let latents = enc.encode(&x)?.to_dtype(DType::F32)?;
        Ok(Conditioning {
            latents,
            frame_indexes: vec![0],
        })
    }

    fn step(
        &mut self,
        request: &GenerationRequest,
        progress: &dyn Progress,
    ) -> Result<GenerationOutput> {
        if request.sound_frames.is_some() && self.audio.is_none() {
            return Err(Error::invalid(
                "--sound",
                "the engine was created without the audio decoder (load_sound)",
            ));
        }
        let mut timings = Vec::new();
        let schedule = self.schedule(request.steps)?;

        let t = Instant::now();
        // The branches this rank evaluates: both, or under CFG parallelism its group's own
        // (cond on group 0, uncond on group 1; none on group 1 without guidance).
        let cfg_parallel = self.mesh.cfg.size() == 2;
        let group = self.mesh.cfg.rank();
        let needs_cond = !cfg_parallel || group == 0;
        let needs_uncond = request.uses_cfg() && (!cfg_parallel || group == 1);
        progress.stage("text", needs_cond as usize + needs_uncond as usize);
        let encode = |needed: bool, ids: &[u32]| -> Result<Option<UndKv>> {
            if !needed {
                return Ok(None);
            }
            let kv = self.transformer.und(ids)?;
            progress.step();
            Ok(Some(kv))
        };
        let cond = encode(needs_cond, &request.pos_ids)?;
        let uncond = encode(needs_uncond, &request.neg_ids)?;
        progress.done("text", t.elapsed());
        timings.push(("text".to_string(), t.elapsed()));

        let t = Instant::now();
        let start = denoise::initial_latents(
            request,
            self.transformer.config().latent_channel,
            self.transformer.config().sound_channels().unwrap_or(64),
            &self.device,
        )?;
        let model = Denoiser {
            model: &self.transformer,
            timesteps: schedule.timesteps(),
            cond,
            uncond,
            fps: request.fps,
            dtype: self.dtype,
        };
        let latents = denoise::denoise(&model, request, &schedule, start, &self.mesh, progress)?;
        timings.push(("denoise".to_string(), t.elapsed()));

        let t = Instant::now();
        progress.stage("decode", 1);
        let video = self.decode_video(&latents.video)?;
        progress.step();
        progress.done("decode", t.elapsed());
        timings.push(("decode".to_string(), t.elapsed()));

        let audio = match (&self.audio, &latents.sound) {
            (Some(dec), Some(s)) => {
                let t = Instant::now();
                let wave = dec.decode(&s.to_dtype(self.dtype)?)?.to_dtype(DType::F32)?;
                timings.push(("audio".to_string(), t.elapsed()));
                Some((wave, dec.sample_rate() as u32))
            }
            _ => None,
        };
        Ok(GenerationOutput {
            video,
            audio,
            latents: latents.video,
            sound_latents: latents.sound,
            timings,
        })
    }
}
