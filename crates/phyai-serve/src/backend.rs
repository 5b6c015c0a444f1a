//! The one file that speaks the engine's API: loads the model once and turns a job's
//! parameters into pixels and samples. Everything else in the server sees only
//! [`Backend`], [`Clip`] and [`Observer`], so an engine API change is confined here.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use phyai::engine::{DeviceConfig, Engine, EngineArgs, EngineConfig, Plugin, Target};
use phyai::models::cosmos3::processor::PromptStyle;
use phyai::models::cosmos3::{
    demo, postprocess, Cosmos3Args, Cosmos3Plugin, Cosmos3Request, Prompt,
};
use phyai::parallel::MeshShape;
use phyai::{Error, Result};

use crate::params::{JobParams, ModelInfo, DEMO, REFERENCE};
use crate::transfer::TransferParams;
use phyai::io::frames::load_video_resized;
use phyai::models::cosmos3::sampler::GuidanceInterval;
use phyai::models::cosmos3::{Control, Hint, TransferInput, VideoInput};

/// How to load the model: the checkpoint (the demo one when `None`) and the topology.
#[derive(Debug, Clone)]
pub struct BackendArgs {
    pub checkpoint: Option<PathBuf>,
    pub target: Target,
    pub dtype: DType,
    pub cfg: usize,
    pub tp: usize,
    pub sp: usize,
    /// `--quantize fp8`: FP8 linear layers from a 16-bit checkpoint.
    pub quantize: Option<phyai::layers::fp8::Quantize>,
    /// `--fp8-attention`.
    pub fp8_attention: bool,
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

/// A finished generation, on the host, ready to be written. The conversion to bytes and
/// samples happens on the writer thread ([`Clip::rgb8`]), beside the next job.
pub struct Clip {
    /// The decoded video `[1, 3, T, H, W]` in [0, 1], on the CPU.
    video: Tensor,
    /// The waveform `[1, C, N]` and its rate, on the CPU.
    audio: Option<(Tensor, u32)>,
    /// The engine's own time: tokenizing, image encoding, denoising, decoding and the
    /// clip's copy to the host.
    pub engine_time: Duration,
}

/// A clip as the files need it.
pub struct Rgb8Clip {
    /// Packed RGB bytes, `frames × height × width × 3`.
    pub rgb: Vec<u8>,
    pub frames: usize,
    pub height: usize,
    pub width: usize,
    /// Interleaved samples and their rate.
    pub audio: Option<(Vec<f32>, u32)>,
}

impl Clip {
    /// Bytes and interleaved samples, the post-processing of `phyai generate`.
    pub fn rgb8(&self) -> Result<Rgb8Clip> {
        let rgb = postprocess::video_to_rgb8(&self.video)?;
        let audio = match &self.audio {
            Some((wave, rate)) => Some((postprocess::interleave_audio(wave)?, *rate)),
            None => None,
        };
        Ok(Rgb8Clip {
            rgb: rgb.data,
            frames: rgb.frames,
            height: rgb.height,
            width: rgb.width,
            audio,
        })
    }
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
                quantize: args.quantize,
                fp8_attention: args.fp8_attention,
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

    /// Runs one request. `image` is the input file: the conditioning picture of an
    /// image-to-video job, or the video of a continuation job;
    /// `control` gives the stored clip of each hint of a transfer job.
    pub fn generate(
        &mut self,
        p: &JobParams,
        image: Option<&Path>,
        control: &dyn Fn(&str) -> PathBuf,
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
        match (image, &p.continuation) {
            (Some(path), Some(c)) => {
                request.video = Some(VideoInput {
                    frames: load_video_resized(path, p.height, p.width, "input_reference")?,
                    condition: c.condition()?,
                });
            }
            (Some(path), None) => {
                request.image = Some(phyai::io::image::load_image(path, p.height, p.width)?);
            }
            (None, _) => {}
        }
        if let Some(t) = &p.transfer {
            request.transfer = Some(transfer_input(t, p.height, p.width, control)?);
        }
        let output = self.engine.step_with_progress(&request, &Hook(observer))?;
        // The clip on the host is the engine's result: the copy waits for the device's
        // queued work, so the engine's time ends after it (no device memory is held while
        // the next job runs).
        let video = output.video.to_device(&Device::Cpu)?;
        let audio = match output.audio {
            Some((wave, rate)) => Some((wave.to_device(&Device::Cpu)?, rate)),
            None => None,
        };
        let engine_time = started.elapsed();
        Ok(Clip {
            video,
            audio,
            engine_time,
        })
    }
}

/// The controls of a transfer job, read from their files at the clip's size.
fn transfer_input(
    t: &TransferParams,
    height: usize,
    width: usize,
    control: &dyn Fn(&str) -> PathBuf,
) -> Result<TransferInput> {
    let mut controls = Vec::with_capacity(t.hints.len());
    for name in &t.hints {
        let field = format!("control_{name}");
        let hint = Hint::parse(name, &field)?;
        let frames = load_video_resized(&control(name), height, width, &field)?;
        controls.push(Control { hint, frames });
    }
    let mut input = TransferInput::new(controls);
    input.chunk_frames = t.chunk_frames;
    input.conditional_frames = t.conditional_frames;
    input.control_guidance = t.control_guidance;
    input.control_guidance_interval = match &t.control_guidance_interval {
        Some(s) => Some(GuidanceInterval::parse(s, "control_guidance_interval")?),
        None => None,
    };
    Ok(input)
}

/// The checkpoint folder's name (`Cosmos3-Nano`), the `model` a request gets by default.
fn checkpoint_name(dir: &Path) -> String {
    dir.canonicalize()
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "cosmos3".to_string())
}
