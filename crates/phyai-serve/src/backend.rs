//! The one file that speaks the engine's API: loads the model once and turns a job's
//! parameters into pixels and samples. Everything else in the server sees only
//! [`Backend`], [`Clip`] and [`Observer`], so an engine API change is confined here.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::DType;
use phyai::engine::{DeviceConfig, Engine, EngineArgs, EngineConfig, Plugin, Target};
use phyai::models::cosmos3::processor::PromptStyle;
use phyai::models::cosmos3::{
    demo, postprocess, Cosmos3Args, Cosmos3Plugin, Cosmos3Request, Prompt,
};
use phyai::parallel::MeshShape;
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
    engine: Engine<Cosmos3Plugin>,
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
    fn cancelled(&self) -> bool {
        self.0.cancelled()
    }
}

impl Backend {
    pub fn load(args: &BackendArgs) -> Result<Self> {
        let (checkpoint, is_demo) = match &args.checkpoint {
            Some(dir) if dir.is_dir() => (dir.clone(), false),
            Some(dir) => {
                return Err(Error::invalid(
                    "checkpoint",
                    format!("{} is not a folder", dir.display()),
                ))
            }
            None => (demo::ensure_demo_checkpoint()?, true),
        };
        let sound = checkpoint.join("sound_tokenizer").is_dir();
        let engine = Engine::<Cosmos3Plugin>::new(EngineArgs {
            plugin: Cosmos3Plugin::NAME.into(),
            plugin_args: Cosmos3Args {
                load_sound: sound,
                ..Cosmos3Args::new(&checkpoint)
            },
            config: EngineConfig {
                device: DeviceConfig {
                    target: args.target,
                    dtype: args.dtype,
                },
                parallel: MeshShape::new(args.cfg, args.sp, args.tp),
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
                sound: engine.plugin().sound_spec().is_some(),
            },
            engine,
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
        let mut request = Cosmos3Request::new(
            Prompt::Text {
                prompt: p.prompt.clone(),
                negative_prompt: p.negative_prompt.clone(),
                style: PromptStyle::Phyai,
            },
            p.num_frames,
            p.height,
            p.width,
        );
        request.fps = p.fps;
        request.steps = p.steps;
        request.guidance_scale = p.guidance_scale;
        request.seed = p.seed;
        request.sound = p.sound;
        if let Some(path) = image {
            request.image = Some(phyai::io::image::load_image(path, p.height, p.width)?);
        }
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
