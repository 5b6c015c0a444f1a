//! The `cosmos3_wn` plugin: loads a Cosmos3 checkpoint (transformer, VAE, optional audio
//! decoder, scheduler, text processor) and runs requests: prompt formatting and
//! tokenization, the image encode of I2V, the text tower once per branch, the denoising
//! loop, then the video and audio decoders.

mod action_step;

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use super::action::{self, ActionMode, ActionRequest};
use super::action_loop::{ActionDenoiser, ActionLatents};
use super::config::ModelIndex;
use super::denoise::{self, Conditioning, Start};
use super::denoiser::{CfgPair, Denoiser, CFG_PAIR_MAX_TOKENS};
use super::distilled::denoise_fixed_step;
use super::guided::{GuidedVelocity, StepInfo};
use super::processor::{Processor, PromptInputs};
use super::request::{
    pixel_to_latent_shape, sound_latent_frames, Cosmos3Output, Cosmos3Request, Prompt, VideoInput,
};
use super::sampler::noise::{self, RandomState};
use super::sampler::{
    FixedStepSchedule, Schedule, ScheduleOptions, SchedulerConfig, SigmaStyle, StepNoise,
};
use super::transfer::TransferInput;
use super::transfer_loop::{run_transfer, TransferModels, TransferPrompt};
use super::transformer::{Cosmos3Transformer, TransformerConfig, UndKv};
use super::vae::{AudioDecoder, WanVae};
use crate::engine::{EngineConfig, Plugin, Progress};
use crate::io::json::read_json;
use crate::layers::fp8::Quantize;
use crate::parallel::RankMesh;
use crate::{Error, Result};

/// How the video is decoded when the engine has several ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VaeDecode {
    /// Rank 0 decodes the whole clip; the others skip the decode. Exact.
    #[default]
    Full,
    /// Every rank decodes one spatial tile (with a halo) and the tiles are blended: faster
    /// with many GPUs, an approximation at the tile seams.
    Tiled,
}

/// Arguments of the `cosmos3_wn` plugin.
#[derive(Debug, Clone)]
pub struct Cosmos3Args {
    pub checkpoint_dir: PathBuf,
    /// Overrides the checkpoint scheduler's `flow_shift`.
    pub flow_shift: Option<f64>,
    /// Overrides the checkpoint scheduler's `use_karras_sigmas`.
    pub use_karras_sigmas: Option<bool>,
    /// Load the audio decoder (needed for requests with sound).
    pub load_sound: bool,
    /// Which reference's flow-sigma construction to follow.
    pub sigma_schedule: SigmaStyle,
    pub vae_decode: VaeDecode,
    /// Quantize an unquantized transformer at load (`--quantize fp8`); a checkpoint that is
    /// already FP8 keeps its own quantization.
    pub quantize: Option<Quantize>,
    /// Run the generation tower's attention in FP8 in the W8A8 steps (`--fp8-attention`;
    /// needs an FP8 transformer on a CUDA device of a build with the FP8 attention kernels).
    pub fp8_attention: bool,
    /// Whether guided steps evaluate both CFG branches in one pass of the generation tower.
    pub cfg_pair: CfgPair,
}

impl Cosmos3Args {
    /// The checkpoint's own settings, without sound.
    pub fn new(checkpoint_dir: impl Into<PathBuf>) -> Self {
        Self {
            checkpoint_dir: checkpoint_dir.into(),
            flow_shift: None,
            use_karras_sigmas: None,
            load_sound: false,
            sigma_schedule: SigmaStyle::default(),
            vae_decode: VaeDecode::default(),
            quantize: None,
            fp8_attention: false,
            cfg_pair: CfgPair::default(),
        }
    }
}

pub struct Cosmos3Plugin {
    args: Cosmos3Args,
    index: ModelIndex,
    scheduler: SchedulerConfig,
    /// Distilled checkpoints: their fixed few-step SDE schedule (`scheduler` is unused).
    fixed_step: Option<FixedStepSchedule>,
    transformer: Cosmos3Transformer,
    vae: WanVae,
    audio: Option<AudioDecoder>,
    /// Loaded on the first text prompt (requests with token ids need none).
    processor: Option<Processor>,
    mesh: RankMesh,
    device: Device,
    dtype: DType,
}

fn require_dir(ckpt: &Path, name: &str) -> Result<PathBuf> {
    let d = ckpt.join(name);
    if !d.is_dir() {
        return Err(Error::invalid(
            "checkpoint",
            format!("{}: missing the {name}/ folder", ckpt.display()),
        ));
    }
    Ok(d)
}

/// The checkpoint folder, which must exist.
fn checkpoint_dir(ckpt: &Path) -> Result<&Path> {
    if !ckpt.is_dir() {
        return Err(Error::invalid(
            "checkpoint",
            format!("{} is not a folder", ckpt.display()),
        ));
    }
    Ok(ckpt)
}

/// The transformer's `config.json`, validated.
fn transformer_config(ckpt: &Path) -> Result<TransformerConfig> {
    let file = require_dir(checkpoint_dir(ckpt)?, "transformer")?.join("config.json");
    let cfg: TransformerConfig = read_json(&file)?;
    cfg.validate(&file)?;
    Ok(cfg)
}

impl Plugin for Cosmos3Plugin {
    const NAME: &'static str = "cosmos3_wn";
    type Args = Cosmos3Args;
    type Request = Cosmos3Request;
    type Output = Cosmos3Output;

    fn check(args: &Cosmos3Args, config: &EngineConfig) -> Result<()> {
        let tcfg = transformer_config(&args.checkpoint_dir)?;
        config.parallel.check_heads(tcfg.num_key_value_heads)
    }

    fn load(args: &Cosmos3Args, config: &EngineConfig, mesh: RankMesh) -> Result<Self> {
        let ckpt = &args.checkpoint_dir;
        let (index, _) = ModelIndex::from_checkpoint(checkpoint_dir(ckpt)?)?;

        // The tokenizer (a large JSON to parse: about 0.4 s) loads on its own thread while
        // the device starts and the weights are read; a failure here is reported by the
        // first text request instead.
        let tokenizer_dir = ckpt.join("text_tokenizer");
        let tokenizer = std::thread::spawn(move || {
            tokenizer_dir
                .is_dir()
                .then(|| Processor::from_dir(&tokenizer_dir).ok())
                .flatten()
        });

        let device = config.device.target.device()?;
        let dtype = config.device.dtype;

        let tdir = require_dir(ckpt, "transformer")?;
        // The topology was checked against this config before any rank loaded (`check`).
        let tcfg = transformer_config(ckpt)?;
        if args.fp8_attention {
            // Refused before the weights are read.
            let fp8_model = tcfg.quantization_config.is_some() || args.quantize.is_some();
            crate::models::cosmos3::transformer::check_fp8_attention(fp8_model, &device)?;
        }
        let mut transformer =
            Cosmos3Transformer::load_quantized(&tdir, &tcfg, dtype, &device, &mesh, args.quantize)?;
        if args.fp8_attention {
            transformer.enable_fp8_attention()?;
        }
        let sfile = require_dir(ckpt, "scheduler")?.join("scheduler_config.json");
        let fixed_step = FixedStepSchedule::from_checkpoint(ckpt)?;
        let scheduler = match fixed_step {
            Some(_) => SchedulerConfig::default(),
            None => SchedulerConfig::from_file(&sfile)?,
        };

        let vae = WanVae::load(&require_dir(ckpt, "vae")?, dtype, &device, true)?;
        let audio = if args.load_sound {
            if !index.has_sound_tokenizer() || !ckpt.join("sound_tokenizer").is_dir() {
                return Err(Error::invalid(
                    "sound",
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
            fixed_step,
            transformer,
            vae,
            audio,
            processor: tokenizer.join().ok().flatten(),
            mesh,
            device,
            dtype,
        })
    }

    fn validate(request: &Cosmos3Request) -> Result<()> {
        request.validate()
    }

    fn step(&mut self, request: &Cosmos3Request, progress: &dyn Progress) -> Result<Cosmos3Output> {
        if let Some(fs) = &self.fixed_step {
            fs.check_request(Some(request.steps), Some(request.guidance_scale))?;
        }
        request.validate()?;
        if let Some(a) = &request.action {
            return self.step_action(request, a, progress);
        }
        if let Some(t) = &request.transfer {
            return self.step_transfer(request, t, progress);
        }
        if let Some(fs) = self.fixed_step.clone() {
            return self.step_distilled(request, &fs, progress);
        }
        let latent = request.latent()?;
        let sound = match (request.sound, &self.audio) {
            (false, _) => None,
            (true, None) => {
                return Err(Error::invalid(
                    "sound",
                    "the engine was loaded without the audio decoder (load_sound)",
                ))
            }
            (true, Some(dec)) => {
                let channels = self.transformer.config().sound_channels().ok_or_else(|| {
                    Error::invalid("sound", "the transformer has no sound stream (sound_gen)")
                })?;
                let frames = sound_latent_frames(
                    request.num_frames,
                    request.fps,
                    dec.sample_rate() as u32,
                    dec.hop(),
                );
                Some((channels, frames))
            }
        };
        let mut timings = Vec::new();
        let schedule = self.schedule(request.steps)?;

        let t = Instant::now();
        let (pos, neg) = self.token_ids(request)?;
        if !pos.is_empty() || !neg.is_empty() {
            timings.push(("tokenize".to_string(), t.elapsed()));
        }

        let conditioning = self.conditioning(request, &mut timings)?;

        let t = Instant::now();
        let here = GuidedVelocity::branches(
            request.guidance_scale,
            self.mesh.cfg.rank(),
            self.mesh.cfg.size(),
        );
        progress.stage("text", here.cond as usize + here.uncond as usize);
        let encode = |needed: bool, ids: &[u32]| -> Result<Option<UndKv>> {
            if !needed {
                return Ok(None);
            }
            let kv = self.transformer.und(ids)?;
            progress.step();
            Ok(Some(kv))
        };
        let cond = encode(here.cond, &pos)?;
        let uncond = encode(here.uncond, &neg)?;
        progress.done("text", t.elapsed());
        timings.push(("text".to_string(), t.elapsed()));

        let t = Instant::now();
        let start = denoise::initial_latents(
            &Start {
                latent,
                channels: self.transformer.config().latent_channel,
                sound,
                seed: request.seed,
                init_noise: request.init_noise.as_ref(),
                conditioning: conditioning.as_ref(),
            },
            &self.device,
        )?;
        let p = self.transformer.config().latent_patch_size.max(1);
        let tokens = latent.t * latent.h.div_ceil(p) * latent.w.div_ceil(p);
        let model = Denoiser {
            model: &self.transformer,
            cond,
            uncond,
            fps: request.fps,
            dtype: self.dtype,
            pair: self.pair_branches(tokens),
        };
        let guided = GuidedVelocity::new(&model, request.guidance_scale, self.mesh.cfg.clone())
            .with_interval(request.guidance_interval);
        let latents = denoise::denoise(&guided, &schedule, start, conditioning.as_ref(), progress)?;
        timings.push(("denoise".to_string(), t.elapsed()));

        let video = self.decode_stage(&latents.video, progress, &mut timings)?;

        let audio = match (&self.audio, &latents.sound) {
            (Some(dec), Some(s)) => {
                let t = Instant::now();
                let wave = dec.decode(&s.to_dtype(self.dtype)?)?.to_dtype(DType::F32)?;
                timings.push(("audio".to_string(), t.elapsed()));
                Some((wave, dec.sample_rate() as u32))
            }
            _ => None,
        };
        Ok(Cosmos3Output {
            video,
            audio,
            latents: latents.video,
            sound_latents: latents.sound,
            actions: None,
            timings,
        })
    }
}

impl Cosmos3Plugin {
    /// The fixed schedule of a distilled checkpoint (`None` for a base checkpoint): its
    /// step count is the only one requests may ask for, with guidance 1.
    pub fn fixed_step(&self) -> Option<&FixedStepSchedule> {
        self.fixed_step.as_ref()
    }

    /// A request on a distilled checkpoint: one branch, the fixed SDE schedule, clean
    /// frames re-anchored after every step (see [`super::distilled`]).
    fn step_distilled(
        &mut self,
        request: &Cosmos3Request,
        fs: &FixedStepSchedule,
        progress: &dyn Progress,
    ) -> Result<Cosmos3Output> {
        if request.sound {
            return Err(Error::invalid(
                "sound",
                "distilled checkpoints generate video only",
            ));
        }
        let latent = request.latent()?;
        let mut timings = Vec::new();
        let t = Instant::now();
        let (pos, _) = self.token_ids(request)?;
        timings.push(("tokenize".to_string(), t.elapsed()));
        let conditioning = self.conditioning(request, &mut timings)?;

        let t = Instant::now();
        let here = GuidedVelocity::branches(1.0, self.mesh.cfg.rank(), self.mesh.cfg.size());
        progress.stage("text", here.cond as usize);
        let cond = if here.cond {
            let kv = self.transformer.und(&pos)?;
            progress.step();
            Some(kv)
        } else {
            None
        };
        progress.done("text", t.elapsed());
        timings.push(("text".to_string(), t.elapsed()));

        let t = Instant::now();
        let start = denoise::initial_latents(
            &Start {
                latent,
                channels: self.transformer.config().latent_channel,
                sound: None,
                seed: request.seed,
                init_noise: request.init_noise.as_ref(),
                conditioning: conditioning.as_ref(),
            },
            &self.device,
        )?;
        // Step noise: given, or the seed's generator continued after the initial noise
        // (a fresh one when the initial noise was given).
        let noise = match (&request.step_noise, &request.init_noise) {
            (Some(s), _) => StepNoise::given(s.clone(), fs.steps(), start.video.dims())?,
            (None, None) => {
                StepNoise::seeded(request.seed as u64, start.video.dims(), &self.device)?.1
            }
            (None, Some(_)) => StepNoise::Seeded(Box::new(RandomState::new(request.seed))),
        };
        let noisy = denoise::noisy_frames(latent.t, conditioning.as_ref())?;
        let model = Denoiser {
            model: &self.transformer,
            cond,
            uncond: None,
            fps: request.fps,
            dtype: self.dtype,
            pair: false,
        };
        let guided = GuidedVelocity::new(&model, 1.0, self.mesh.cfg.clone());
        let count = fs.steps();
        let mut velocity = |x: &Tensor, timestep: f64, index: usize| -> Result<Tensor> {
            let step = StepInfo {
                index,
                count,
                timestep,
            };
            Ok(guided.velocity(x, None, step, &noisy)?.video)
        };
        let latents = denoise_fixed_step(
            fs,
            start.video,
            conditioning.as_ref(),
            noise,
            &mut velocity,
            progress,
        )?;
        timings.push(("denoise".to_string(), t.elapsed()));

        let video = self.decode_stage(&latents, progress, &mut timings)?;
        Ok(Cosmos3Output {
            video,
            audio: None,
            latents,
            sound_latents: None,
            actions: None,
            timings,
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
            args: Cosmos3Args::new("(built in memory)"),
            index: serde_json::from_str("{}")
                .map_err(|e| Error::msg(format!("default model index: {e}")))?,
            scheduler: SchedulerConfig::default(),
            fixed_step: None,
            transformer,
            vae,
            audio: None,
            processor: None,
            mesh: RankMesh::single(),
            device,
            dtype,
        })
    }

    /// Adds a sound decoder to a plugin made by [`Self::from_parts`], for T2AV requests.
    pub fn with_audio(mut self, audio: AudioDecoder) -> Self {
        self.audio = Some(audio);
        self
    }

    /// `(sample_rate, samples per sound latent step)` when the audio decoder is loaded.
    pub fn sound_spec(&self) -> Option<(u32, usize)> {
        self.audio
            .as_ref()
            .map(|a| (a.sample_rate() as u32, a.hop()))
    }

    fn schedule(&self, steps: usize) -> Result<Schedule> {
        self.schedule_for(steps, self.index.use_native_flow_schedule)
    }

    fn schedule_for(&self, steps: usize, native_flow: bool) -> Result<Schedule> {
        Schedule::new(
            &self.scheduler,
            ScheduleOptions {
                steps,
                flow_shift: self.args.flow_shift,
                karras: self.args.use_karras_sigmas,
                style: self.args.sigma_schedule,
                native_flow,
            },
        )
    }

    /// A transfer request: the chunk loop of [`super::transfer_loop`], on the checkpoint's
    /// own schedule (the reference's transfer never takes the native flow schedule).
    fn step_transfer(
        &mut self,
        request: &Cosmos3Request,
        transfer: &TransferInput,
        progress: &dyn Progress,
    ) -> Result<Cosmos3Output> {
        if self.fixed_step.is_some() {
            return Err(Error::invalid(
                "controls",
                "transfer needs a base checkpoint (distilled checkpoints have no transfer mode)",
            ));
        }
        let t = Instant::now();
        let (pos, neg) = match &request.prompt {
            Prompt::Tokens { pos, neg } => (pos.clone(), neg.clone()),
            Prompt::Text {
                prompt,
                negative_prompt,
                ..
            } => self
                .processor()?
                .encode_transfer_pair(prompt, negative_prompt.as_deref())?,
        };
        let tokenize = t.elapsed();
        let schedule = self.schedule_for(request.steps, false)?;
        let models = TransferModels {
            transformer: &self.transformer,
            vae: &self.vae,
            cfg: self.mesh.cfg.clone(),
            device: &self.device,
            dtype: self.dtype,
        };
        let prompt = TransferPrompt {
            pos: &pos,
            neg: &neg,
        };
        let mut out = run_transfer(&models, request, transfer, &schedule, prompt, progress)?;
        out.timings.insert(0, ("tokenize".to_string(), tokenize));
        Ok(out)
    }

    /// The ids of both branches: formatted and tokenized here for a text prompt.
    fn token_ids(&mut self, request: &Cosmos3Request) -> Result<(Vec<u32>, Vec<u32>)> {
        match &request.prompt {
            Prompt::Tokens { pos, neg } => Ok((pos.clone(), neg.clone())),
            Prompt::Text {
                prompt,
                negative_prompt,
                style,
            } => self.processor()?.encode_pair(&PromptInputs {
                prompt: prompt.clone(),
                negative_prompt: negative_prompt.clone(),
                num_frames: request.num_frames,
                height: request.height,
                width: request.width,
                fps: request.fps,
                style: *style,
            }),
        }
    }

    /// The checkpoint's text processor, loaded on first use.
    fn processor(&mut self) -> Result<&Processor> {
        if self.processor.is_none() {
            let dir = require_dir(&self.args.checkpoint_dir, "text_tokenizer")?;
            self.processor = Some(Processor::from_dir(&dir)?);
        }
        self.processor
            .as_ref()
            .ok_or_else(|| Error::msg("the text processor failed to load"))
    }

    /// Encodes a conditioning image `[1, 3, H, W]` in [−1, 1] into the clean first latent
    /// frame; the causal VAE encodes frame 0 alone exactly as it does inside a longer clip.
    pub fn encode_image(&self, pixels: &Tensor) -> Result<Conditioning> {
        let enc = self
            .vae
            .encoder
            .as_ref()
            .ok_or_else(|| Error::msg("the VAE encoder is not loaded"))?;
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

    /// Encodes a continuation video's conditioning frames (see [`super::continuation`]) into
    /// the clean latent frames it fixes.
    pub fn encode_video(&self, video: &VideoInput) -> Result<Conditioning> {
        let enc = self
            .vae
            .encoder
            .as_ref()
            .ok_or_else(|| Error::msg("the VAE encoder is not loaded"))?;
        let clip = video
            .condition
            .clip(&video.frames)?
            .to_dtype(self.dtype)?
            .to_device(&self.device)?;
        let encoded = enc.encode(&clip)?.to_dtype(DType::F32)?;
        Ok(Conditioning {
            latents: video.condition.select(&encoded)?,
            frame_indexes: video.condition.indexes.clone(),
        })
    }

    /// The clean latents of an image- or video-conditioned request (none for text only),
    /// timed as the `encode` stage.
    fn conditioning(
        &self,
        request: &Cosmos3Request,
        timings: &mut Vec<(String, std::time::Duration)>,
    ) -> Result<Option<Conditioning>> {
        let t = Instant::now();
        let c = match (&request.image, &request.video) {
            (Some(px), _) => self.encode_image(px)?,
            (None, Some(v)) => self.encode_video(v)?,
            (None, None) => return Ok(None),
        };
        timings.push(("encode".to_string(), t.elapsed()));
        Ok(Some(c))
    }

    /// The `decode` stage: latents to pixels, reported and timed.
    fn decode_stage(
        &self,
        latents: &Tensor,
        progress: &dyn Progress,
        timings: &mut Vec<(String, std::time::Duration)>,
    ) -> Result<Tensor> {
        let t = Instant::now();
        progress.stage("decode", 1);
        let video = self.decode_video(latents)?;
        progress.step();
        progress.done("decode", t.elapsed());
        timings.push(("decode".to_string(), t.elapsed()));
        Ok(video)
    }

    /// Whether guided steps of `tokens` generation tokens per branch pair the branches.
    fn pair_branches(&self, tokens: usize) -> bool {
        if !self.transformer.can_pair() {
            return false;
        }
        let env = std::env::var("PHYAI_CFG_PAIR").ok();
        match (self.args.cfg_pair, env.as_deref().map(str::trim)) {
            (CfgPair::On, _) => true,
            (CfgPair::Off, _) => false,
            (CfgPair::Auto, Some("0")) => false,
            (CfgPair::Auto, Some("1")) => true,
            (CfgPair::Auto, _) => self.device.is_cuda() && tokens <= CFG_PAIR_MAX_TOKENS,
        }
    }

    fn decode_video(&self, latents: &Tensor) -> Result<Tensor> {
        let z = latents.to_dtype(self.dtype)?;
        let world = self.mesh.shape.world();
        let video = match self.args.vae_decode {
            VaeDecode::Tiled if world > 1 => {
                let t = z.dim(2)?;
                let frames = (t - 1) * self.vae.config.temporal_scale() + 1;
                super::vae::decode_parallel(&self.vae.decoder, &z, frames, &self.mesh)?
            }
            // Only rank 0's output is used: the others skip the decode.
            VaeDecode::Full if self.mesh.rank != 0 => {
                return Ok(Tensor::zeros(0, DType::F32, &self.device)?)
            }
            _ => self.vae.decoder.decode(&z)?,
        };
        Ok(video.to_dtype(DType::F32)?)
    }
}
