//! Command-line flags. `generate` mirrors the original launch script's options.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "phyai",
    version,
    about = "Cosmos3 world-model inference: prompt (+ image) → video (+ audio)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Generate a video (and optionally its soundtrack) from a prompt.
    #[command(args_override_self = true)]
    Generate(Box<GenerateArgs>),
    /// Write the tiny random-weight demo checkpoint to DIR (published Cosmos3 layout).
    DemoCheckpoint {
        /// Output folder (created; must not exist or be empty).
        dir: PathBuf,
    },
    /// Serve the OpenAI Videos API (and a web page) with the model resident.
    Serve(Box<ServeArgs>),
    /// Measure attention and the generation forward on the GPU (Nano config, random weights).
    Bench(crate::bench::BenchArgs),
    /// Write a random-weights checkpoint in the published layout (Nano size: about 34 GB),
    /// for measuring checkpoint loads.
    #[command(hide = true)]
    MakeCheckpoint(crate::bench::MakeCheckpointArgs),
}

/// `cpu`, `cuda` or `cuda:N`, where N is the first GPU the ranks use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceArg {
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for DeviceArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| format!("expected cpu, cuda or cuda:N, got {s:?}")),
        }
    }
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DtypeArg {
    F32,
    Bf16,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptStyleArg {
    /// PhyAI: no system prompt, metadata on the positive prompt, structured default negative.
    Phyai,
    /// diffusers: system prompt, inverse metadata on the negative prompt, empty default negative.
    Diffusers,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantizeArg {
    /// FP8 E4M3, per-tensor scales (dynamic activation scales).
    Fp8,
}

impl From<QuantizeArg> for phyai::layers::fp8::Quantize {
    fn from(q: QuantizeArg) -> Self {
        match q {
            QuantizeArg::Fp8 => Self::Fp8,
        }
    }
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigmaScheduleArg {
    /// What diffusers derives from the checkpoint's scheduler_config.json.
    Checkpoint,
    /// PhyAI's own flow schedule.
    Phyai,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum VaeDecodeArg {
    /// Rank 0 decodes the whole clip (exact).
    Full,
    /// Every rank decodes one spatial tile; the tiles are blended.
    Tiled,
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Cosmos3 checkpoint folder (transformer/ vae/ text_tokenizer/ scheduler/ [sound_tokenizer/]).
    /// Without it, a tiny demo checkpoint with RANDOM weights is used.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Text prompt (plain text, or a JSON object for structured prompts).
    #[arg(long)]
    pub prompt: String,
    /// Negative prompt for classifier-free guidance (default depends on --prompt-style).
    #[arg(long)]
    pub negative_prompt: Option<String>,
    /// Conditioning image (PNG/JPEG) for image-to-video.
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Video-to-video continuation: an mp4 or a folder of PNG frames (resized to the request
    /// size as diffusers' video processor does), whose leading (or, with
    /// --condition-video-keep last, trailing) frames condition the clip.
    #[arg(long, conflicts_with = "image")]
    pub video: Option<PathBuf>,
    /// Latent frames kept from --video, comma-separated (frame k uses pixel frames up to 4k).
    #[arg(long, default_value = "0,1")]
    pub condition_frames: String,
    /// Which end of a longer --video conditions the clip: first or last.
    #[arg(long, default_value = "first")]
    pub condition_video_keep: String,
    /// Long rollouts: N further chunks, each conditioned on the end of the video so far
    /// (--condition-frames), appended to the output.
    #[arg(long, default_value_t = 0)]
    pub extend: usize,
    /// Action-conditioned generation (checkpoints trained with action_gen): policy (actions
    /// and video from --image), forward-dynamics (video from --image and --actions) or
    /// inverse-dynamics (actions from --video).
    #[arg(long)]
    pub action_mode: Option<String>,
    /// Embodiment of the actions (e.g. bridge_orig_lerobot, fractal, pusht).
    #[arg(long)]
    pub domain: Option<String>,
    /// Actions per chunk (a multiple of 4; the clip has N + 1 frames).
    #[arg(long)]
    pub action_chunk: Option<usize>,
    /// Canvas tier of the conditioning input: 256, 480, 704 or 720 [default: 480].
    #[arg(long)]
    pub resolution_tier: Option<usize>,
    /// Camera framing named in the action caption: ego_view, third_person_view, wrist_view
    /// or concat_view [default: ego_view].
    #[arg(long)]
    pub view_point: Option<String>,
    /// Forward dynamics: the actions [n, width of the domain], a .npy or JSON file.
    #[arg(long)]
    pub actions: Option<PathBuf>,
    /// Transfer: a clip following a control map, HINT=PATH with HINT one of edge, blur,
    /// depth, seg, wsm and PATH an mp4 or a folder of PNG frames (resized to the request size).
    /// Repeatable (one per hint); the output is as long as the controls (--num-frames caps it).
    #[arg(long = "control", value_name = "HINT=PATH")]
    pub controls: Vec<String>,
    /// Transfer: frames per chunk, rounded up to 4k+1 [default: the whole clip in one chunk].
    #[arg(long)]
    pub chunk_frames: Option<usize>,
    /// Transfer: frames each chunk reuses from the end of the previous one (decoded and re-encoded).
    #[arg(long, default_value_t = 1)]
    pub conditional_frames: usize,
    /// Transfer: scale of the control guidance axis (1 runs no control-free branch).
    #[arg(long, default_value_t = 1.0)]
    pub control_guidance: f64,
    /// Transfer: control guidance only at timesteps (0-1000) in LO,HI [default: every step].
    #[arg(long)]
    pub control_guidance_interval: Option<String>,
    /// Also generate the soundtrack (needs sound_tokenizer/ in the checkpoint).
    #[arg(long)]
    pub sound: bool,
    /// Frames to generate, 4k+1 [default: 189; demo 17].
    #[arg(long)]
    pub num_frames: Option<usize>,
    /// Height in pixels, multiple of 16 [default: 720; demo 128].
    #[arg(long)]
    pub height: Option<usize>,
    /// Width in pixels, multiple of 16 [default: 1280; demo 224].
    #[arg(long)]
    pub width: Option<usize>,
    /// Frames per second.
    #[arg(long, default_value_t = 24.0)]
    pub fps: f64,
    /// Denoising steps [default: 35; demo 8].
    #[arg(long)]
    pub steps: Option<usize>,
    /// Classifier-free guidance scale (≤ 1 disables the unconditional branch) [default: 6;
    /// 1 on distilled checkpoints, whose guidance is in the weights].
    #[arg(long)]
    pub guidance_scale: Option<f64>,
    /// Guide only steps whose timestep (0-1000) lies in LO,HI, e.g. 400,1000 [default: every step].
    #[arg(long)]
    pub guidance_interval: Option<String>,
    /// Seed of the initial noise (numpy RandomState-compatible, as the original: 0 to 2^32 − 1).
    #[arg(long, default_value_t = 42)]
    pub seed: u32,
    /// Override the scheduler's flow shift.
    #[arg(long)]
    pub flow_shift: Option<f64>,
    /// Use Karras sigmas (overrides the scheduler config).
    #[arg(long, conflicts_with = "no_karras")]
    pub karras: bool,
    /// Do not use Karras sigmas (overrides the scheduler config).
    #[arg(long)]
    pub no_karras: bool,
    /// Sigma schedule construction.
    #[arg(long, value_enum, default_value_t = SigmaScheduleArg::Checkpoint)]
    pub sigma_schedule: SigmaScheduleArg,
    /// Tensor-parallel degree.
    #[arg(long, default_value_t = 1)]
    pub tp: usize,
    /// CFG-parallel degree (1, or 2: cond and uncond branches on two GPU groups).
    #[arg(long, default_value_t = 1)]
    pub cfg: usize,
    /// Sequence-parallel degree.
    #[arg(long, default_value_t = 1)]
    pub sp: usize,
    /// How several ranks decode the video: `full` (rank 0 decodes the whole clip, exact) or
    /// `tiled` (one spatial tile per rank, blended: faster, approximate at the seams).
    #[arg(long, value_enum, default_value_t = VaeDecodeArg::Full)]
    pub vae_decode: VaeDecodeArg,
    /// Prompt formatting of the reference to follow.
    #[arg(long, value_enum, default_value_t = PromptStyleArg::Phyai)]
    pub prompt_style: PromptStyleArg,
    /// Where the models run: cpu, cuda or cuda:N. N is the first GPU: rank r of a
    /// one-process run uses GPU N + r; under a multi-process launch each process uses GPU
    /// N + LOCAL_RANK.
    #[arg(long, default_value = "cpu", value_parser = clap::value_parser!(DeviceArg))]
    pub device: DeviceArg,
    /// Compute dtype [default: f32 on CPU, bf16 on CUDA].
    #[arg(long, value_enum)]
    pub dtype: Option<DtypeArg>,
    /// Quantize the transformer's linear layers at load: fp8 = E4M3 weights and activations
    /// with per-tensor scales, as NVIDIA's FP8 checkpoints (which need no flag).
    #[arg(long, value_enum)]
    pub quantize: Option<QuantizeArg>,
    /// Run the video tower's attention in FP8 too (E4M3 q/k/v with per-head scales, FP8
    /// tensor cores; Hopper GPUs), in the steps the FP8 step policy runs W8A8. Needs an FP8
    /// checkpoint or --quantize fp8.
    #[arg(long)]
    pub fp8_attention: bool,
    /// safetensors file with initial noise: `video` [1,C,t,h,w] and optional `sound` [1,64,T]
    /// (f32); for transfer `chunk_noise` [chunks,1,C,t,h,w], one draw per chunk in order.
    #[arg(long)]
    pub init_noise: Option<PathBuf>,
    /// Write latents.safetensors and output.safetensors (f32) into this folder.
    #[arg(long)]
    pub dump_dir: Option<PathBuf>,
    /// Output prefix: writes PREFIX.mp4 (and PREFIX.wav with --sound); `clip.mp4` is read as the prefix `clip`.
    #[arg(long)]
    pub out: PathBuf,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
    /// Print a machine-readable JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Cosmos3 checkpoint folder. Without it, the tiny demo checkpoint (RANDOM weights).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Tensor-parallel degree.
    #[arg(long, default_value_t = 1)]
    pub tp: usize,
    /// CFG-parallel degree (1 or 2).
    #[arg(long, default_value_t = 1)]
    pub cfg: usize,
    /// Sequence-parallel degree.
    #[arg(long, default_value_t = 1)]
    pub sp: usize,
    /// Where the models run: cpu, cuda or cuda:N (rank r uses GPU N + r).
    #[arg(long, default_value = "cpu", value_parser = clap::value_parser!(DeviceArg))]
    pub device: DeviceArg,
    /// Compute dtype [default: f32 on CPU, bf16 on CUDA].
    #[arg(long, value_enum)]
    pub dtype: Option<DtypeArg>,
    /// Quantize the transformer's linear layers at load, as `generate --quantize`.
    #[arg(long, value_enum)]
    pub quantize: Option<QuantizeArg>,
    /// FP8 attention in the W8A8 steps, as `generate --fp8-attention`.
    #[arg(long)]
    pub fp8_attention: bool,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free port; the address is printed on stdout).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Folder of the job database and the finished videos (created if missing).
    #[arg(long, default_value = "phyai-data")]
    pub data_dir: PathBuf,
    /// Require `Authorization: Bearer KEY` on every /v1 request.
    #[arg(long)]
    pub api_key: Option<String>,
    /// Videos that may wait in the queue; further creates get HTTP 429.
    #[arg(long, default_value_t = 64)]
    pub max_queue: usize,
    /// Largest request body in MiB (an image-to-video upload included).
    #[arg(long, default_value_t = 32)]
    pub max_body_mb: usize,
}
