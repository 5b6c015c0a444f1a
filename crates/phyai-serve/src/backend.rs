//! The one file that speaks the engine's API: loads the model once and turns a job's
//! parameters into pixels and samples. Everything else in the server sees only
//! [`Backend`], [`Clip`] and [`Observer`], so an engine API change is confined here.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::DType;
use phyai::engine::{
    pixel_to_latent_shape, sound_latent_frames, Cosmos3Args, DeviceConfig, Engine, EngineArgs,
    EngineConfig, GenerationRequest, ParallelConfig, PluginArgs, RuntimeConfig, Target,
};
use phyai::models::cosmos3::processor::{Processor, PromptInputs, PromptStyle};
use phyai::models::cosmos3::sampler::SigmaStyle;
use phyai::models::cosmos3::{demo, postprocess};
use phyai::{Error, Result};

use crate::params::{JobParams, ModelInfo, DEMO, REFERENCE};

/// How to load the model: the checkpoint (the demo one when `None`) and the topology.
#[derive(Debug, Clone)]
pub struct BackendArgs {
    pub checkpoint: Option<PathBuf>,
    pub target: Target,
    pub dtype: DType,
    pub cfg: usize,
    pub tp: usize,
    pub sp: usize,
}

/// What the running request reports and asks, on the engine's thread.
pub trait Observer: Send + Sync {
    /// A stage (`text`, `denoise`, `decode`, …) starts with `total` units.
    fn stage(&self, name: &str, total: usize);
    /// One unit of the current stage finished.
    fn step(&self);
    /// Whether the job was deleted; the engine stops between denoising steps.
    fn cancelled(&self) -> bool;
}

/// A finished generation, ready to be written.
pub struct Clip {
    /// Packed RGB bytes, `frames × height × width × 3`.
    pub rgb: Vec<u8>,
    pub frames: usize,
    pub height: usize,
    pub width: usize,
    /// Interleaved stereo samples and their rate.
    pub audio: Option<(Vec<f32>, u32)>,
    /// The engine's own time: tokenizing, image encoding, denoising and decoding.
    pub engine_time: Duration,
}

/// The resident model: one engine on every rank of the topology.
pub struct Backend {
    engine: Engine,
    processor: Processor,
    info: ModelInfo,
}

/// Bridges the engine's progress hook to an [`Observer`].
struct Hook<'a>(&'a dyn Observer);

impl phyai::engine::Progress for Hook<'_> {
    fn stage(&self, name: &str, total: usize) {
        self.0.stage(name, total)
    }
    fn step(&self) {
        self.0.step()
    }
}

impl Backend {
    pub fn load(args: &BackendArgs) -> Result<Self> {
        let (checkpoint, is_demo) = match &args.checkpoint {
            Some(dir) if dir.is_dir() => (dir.clone(), false),
            Some(dir) => {
                return Err(Error::invalid(
                    "--checkpoint",
                    format!("{} is not a folder", dir.display()),
                ))
            }
            None => (demo::ensure_demo_checkpoint()?, true),
        };
        let sound = checkpoint.join("sound_tokenizer").is_dir();
        let processor = Processor::from_dir(&checkpoint.join("text_tokenizer"))?;
        let engine = Engine::new(EngineArgs {
            plugin: "cosmos3_wn".into(),
            plugin_args: PluginArgs::Cosmos3(Cosmos3Args {
                checkpoint_dir: checkpoint.clone(),
                flow_shift: None,
                use_karras_sigmas: None,
                load_sound: sound,
                sigma_schedule: SigmaStyle::Checkpoint,
            }),
            config: EngineConfig {
                device: DeviceConfig {
                    target: args.target,
                    dtype: args.dtype,
                },
                parallel: ParallelConfig::new(args.cfg, args.tp, args.sp),
                runtime: RuntimeConfig {
                    use_cuda_graph: false,
                    vae_tiles: None,
                    progress: false,
                },
            },
        })?;
        let name = if is_demo {
            "cosmos3-demo".to_string()
        } else {
            checkpoint_name(&checkpoint)
        };
        Ok(Self {
            info: ModelInfo {
                name,
                defaults: if is_demo { DEMO } else { REFERENCE },
                sound: engine.sound_spec().is_some(),
            },
            engine,
            processor,
        })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Runs one request. `image` is the conditioning picture of an image-to-video job.
    pub fn generate(
        &mut self,
        p: &JobParams,
        image: Option<&Path>,
        observer: &dyn Observer,
    ) -> Result<Clip> {
        let started = Instant::now();
        let latent = pixel_to_latent_shape(p.num_frames, p.height, p.width)?;
        let (pos_ids, neg_ids) = self.processor.encode_pair(&PromptInputs {
            prompt: p.prompt.clone(),
            negative_prompt: p.negative_prompt.clone(),
            num_frames: p.num_frames,
            height: p.height,
            width: p.width,
            fps: p.fps,
            style: PromptStyle::Phyai,
        })?;
        let conditioning = match image {
            Some(path) => {
                let pixels = phyai::io::image::load_image(path, p.height, p.width)?;
                Some(self.engine.encode_image(&pixels)?)
            }
            None => None,
        };
        let sound_frames = match (p.sound, self.engine.sound_spec()) {
            (false, _) => None,
            (true, Some((rate, hop))) => Some(sound_latent_frames(p.num_frames, p.fps, rate, hop)),
            (true, None) => return Err(Error::invalid("sound", "no sound decoder is loaded")),
        };
        let request = GenerationRequest {
            pos_ids,
            neg_ids,
            latent,
            fps: p.fps,
            steps: p.steps,
            guidance_scale: p.guidance_scale,
            seed: u64::from(p.seed),
            sound_frames,
            conditioning,
            init_noise: None,
        };
        let output = self.engine.step_with_progress(&request, &Hook(observer))?;
        let engine_time = started.elapsed();
        let rgb = postprocess::video_to_rgb8(&output.video)?;
        let audio = match &output.audio {
            Some((wave, rate)) => Some((postprocess::interleave_audio(wave)?, *rate)),
            None => None,
        };
        Ok(Clip {
            rgb: rgb.data,
            frames: rgb.frames,
            height: rgb.height,
            width: rgb.width,
            audio,
            engine_time,
        })
    }
}

/// The checkpoint folder's name (`Cosmos3-Nano`), the `model` a request gets by default.
fn checkpoint_name(dir: &Path) -> String {
    dir.canonicalize()
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "cosmos3".to_string())
}
