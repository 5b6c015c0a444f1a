//! `phyai generate`: prompt (+ image) → request → engine → mp4 (+ wav) and optional dumps.
//!
//! Under a multi-process launch (WORLD_SIZE set) every process runs this same command as
//! one rank; only rank 0 prints progress and writes files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use phyai::engine::{
    pixel_to_latent_shape, sound_latent_frames, Cosmos3Args, DeviceConfig, Engine, EngineArgs,
    EngineConfig, GenerationRequest, InitNoise, ParallelConfig, PluginArgs, RuntimeConfig, Target,
};
use phyai::models::cosmos3::processor::{Processor, PromptInputs, PromptStyle};
use phyai::models::cosmos3::sampler::SigmaStyle;
use phyai::models::cosmos3::{demo, postprocess};
use phyai::parallel::rendezvous::LaunchEnv;
use phyai::{Error, Result};

use crate::args::{
    DeviceArg, DtypeArg, GenerateArgs, PromptStyleArg, QuantizeArg, SigmaScheduleArg,
};
use crate::progress::{summary, Bars, StallHook};

/// Sizes used when the flags leave them out.
struct Defaults {
    frames: usize,
    height: usize,
    width: usize,
    steps: usize,
}

/// The reference's defaults (720p, 189 frames, 35 steps).
const REFERENCE: Defaults = Defaults {
    frames: 189,
    height: 720,
    width: 1280,
    steps: 35,
};

/// Small enough for the random-weight demo to finish in seconds on a laptop CPU.
const DEMO: Defaults = Defaults {
    frames: 17,
    height: 128,
    width: 224,
    steps: 8,
};

pub fn run(a: &GenerateArgs) -> Result<()> {
    let started = Instant::now();
    let out_mp4 = with_suffix(&a.out, "mp4");
    let out_wav = with_suffix(&a.out, "wav");
    let target = match a.device {
        DeviceArg::Cpu => Target::Cpu,
        DeviceArg::Cuda(n) => Target::Cuda(n),
    };
    let dtype = match (a.dtype, a.device) {
        (Some(DtypeArg::F32), _) | (None, DeviceArg::Cpu) => DType::F32,
        (Some(DtypeArg::Bf16), _) | (None, DeviceArg::Cuda(_)) => DType::BF16,
    };
    let lead = LaunchEnv::from_env()?.is_none_or(|e| e.rank == 0);
    let quiet = a.quiet || !lead;
    let config = EngineConfig {
        device: DeviceConfig { target, dtype },
        parallel: ParallelConfig::new(a.cfg, a.tp, a.sp),
        runtime: RuntimeConfig {
            use_cuda_graph: false,
            vae_tiles: None,
            progress: !quiet,
        },
    };
    // Under a multi-process launch, join the job before any work (a bad launch environment
    // fails here): from now on an error in this process reaches every rank.
    phyai::engine::join_launch(&config)?;
    if lead {
        check_output_dir(&a.out)?;
    }

    let (ckpt, is_demo) = match &a.checkpoint {
        Some(dir) => {
            if !dir.is_dir() {
                return Err(Error::invalid(
                    "--checkpoint",
                    format!("{} is not a folder", dir.display()),
                ));
            }
            (dir.clone(), false)
        }
        None => (demo::ensure_demo_checkpoint()?, true),
    };
    if is_demo && !quiet {
        eprintln!(
            "note: no --checkpoint given, using the built-in demo checkpoint ({}).\n      \
             Its weights are RANDOM: the pipeline runs end to end but the video is noise-like.\n      \
             Pass --checkpoint with the real Cosmos3 weights for meaningful output.",
            ckpt.display()
        );
    }
    let d = if is_demo { &DEMO } else { &REFERENCE };
    let frames = a.num_frames.unwrap_or(d.frames);
    let height = a.height.unwrap_or(d.height);
    let width = a.width.unwrap_or(d.width);
    let steps = a.steps.unwrap_or(d.steps);
    let latent = pixel_to_latent_shape(frames, height, width)?;
    if !(a.fps.is_finite() && a.fps > 0.0) {
        return Err(Error::invalid(
            "--fps",
            format!("must be > 0, got {}", a.fps),
        ));
    }
    if a.prompt.trim().is_empty() {
        return Err(Error::invalid("--prompt", "must not be empty"));
    }
    if let Some(img) = &a.image {
        if !img.is_file() {
            return Err(Error::invalid(
                "--image",
                format!("{} is not a readable file", img.display()),
            ));
        }
    }

    if lead && a.cfg == 2 && a.guidance_scale <= 1.0 {
        eprintln!(
            "warning: --cfg 2 with --guidance-scale {} ≤ 1: there is no unconditional branch, \
             so the second CFG group idles",
            a.guidance_scale
        );
    }
    let style = match a.prompt_style {
        PromptStyleArg::Phyai => PromptStyle::Phyai,
        PromptStyleArg::Diffusers => PromptStyle::Diffusers,
    };
    let karras = match (a.karras, a.no_karras) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    };
    let bars = StallHook::from_env(Bars::new(quiet))?;
    let mut timings: Vec<(String, Duration)> = Vec::new();

    // Prompt → token ids.
    let t = Instant::now();
    let processor = Processor::from_dir(&ckpt.join("text_tokenizer"))?;
    let (pos_ids, neg_ids) = processor.encode_pair(&PromptInputs {
        prompt: a.prompt.clone(),
        negative_prompt: a.negative_prompt.clone(),
        num_frames: frames,
        height,
        width,
        fps: a.fps,
        style,
    })?;
    timings.push(("tokenize".into(), t.elapsed()));

    // Model load.
    let t = Instant::now();
    let mut engine = Engine::new(EngineArgs {
        plugin: "cosmos3_wn".into(),
        plugin_args: PluginArgs::Cosmos3(Cosmos3Args {
            checkpoint_dir: ckpt.clone(),
            flow_shift: a.flow_shift,
            use_karras_sigmas: karras,
            load_sound: a.sound,
            sigma_schedule: match a.sigma_schedule {
                SigmaScheduleArg::Checkpoint => SigmaStyle::Checkpoint,
                SigmaScheduleArg::Phyai => SigmaStyle::Phyai,
            },
            quantize: a.quantize.map(|q| match q {
                QuantizeArg::Fp8 => phyai::layers::fp8::Quantize::Fp8,
            }),
        }),
        config,
    })?;
    timings.push(("load".into(), t.elapsed()));

    let conditioning = match &a.image {
        Some(path) => {
            let t = Instant::now();
            let pixels = phyai::io::image::load_image(path, height, width)?;
            let c = engine.encode_image(&pixels)?;
            timings.push(("encode".into(), t.elapsed()));
            Some(c)
        }
        None => None,
    };

    let sound_frames = if a.sound {
        let (rate, hop) = engine.sound_spec().ok_or_else(|| {
            Error::invalid(
                "--sound",
                format!("{} has no sound_tokenizer/", ckpt.display()),
            )
        })?;
        Some(sound_latent_frames(frames, a.fps, rate, hop))
    } else {
        None
    };
    let init_noise = match &a.init_noise {
        Some(p) => Some(read_init_noise(p)?),
        None => None,
    };

    let request = GenerationRequest {
        pos_ids,
        neg_ids,
        latent,
        fps: a.fps,
        steps,
        guidance_scale: a.guidance_scale,
        seed: a.seed,
        sound_frames,
        conditioning,
        init_noise,
    };
    let output = engine.step_with_progress(&request, &bars)?;
    timings.extend(output.timings.iter().cloned());
    // In a multi-process job rank 0 writes only once every rank has finished.
    engine.finish();
    if !engine.writes_outputs() {
        return Ok(());
    }

    // Outputs: temp files renamed into place, so a failure leaves nothing partial.
    let t = Instant::now();
    let rgb = postprocess::video_to_rgb8(&output.video)?;
    let audio = match &output.audio {
        Some((wave, rate)) => Some((postprocess::interleave_audio(wave)?, *rate)),
        None => None,
    };
    phyai::io::video::write_mp4(
        &out_mp4,
        &rgb.data,
        rgb.frames,
        rgb.height,
        rgb.width,
        a.fps,
        audio.as_ref().map(|(s, r)| (s.as_slice(), *r)),
    )?;
    if let Some((samples, rate)) = &audio {
        phyai::io::audio::write_wav(&out_wav, samples, 2, *rate)?;
    }
    if let Some(dir) = &a.dump_dir {
        dump(dir, &output)?;
    }
    timings.push(("write".into(), t.elapsed()));

    if !quiet {
        eprintln!("wrote {}", out_mp4.display());
        if audio.is_some() {
            eprintln!("wrote {}", out_wav.display());
        }
        eprintln!("{}", summary(&timings));
    }
    if a.json {
        let stages: serde_json::Map<String, serde_json::Value> = timings
            .iter()
            .map(|(n, d)| (n.clone(), serde_json::json!(d.as_secs_f64())))
            .collect();
        let j = serde_json::json!({
            "video": out_mp4,
            "audio": audio.as_ref().map(|_| out_wav.clone()),
            "frames": frames, "height": height, "width": width, "fps": a.fps,
            "steps": steps, "guidance_scale": a.guidance_scale, "seed": a.seed,
            "demo_checkpoint": is_demo,
            "seconds": stages,
            "total_seconds": started.elapsed().as_secs_f64(),
        });
        println!("{j}");
    }
    Ok(())
}

/// `PREFIX` → `PREFIX.ext` (keeps dots already in the prefix).
fn with_suffix(prefix: &Path, ext: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

fn check_output_dir(prefix: &Path) -> Result<()> {
    let parent = match prefix.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        return Err(Error::invalid(
            "--out",
            format!("folder {} does not exist", parent.display()),
        ));
    }
    if prefix.file_name().is_none() {
        return Err(Error::invalid("--out", "needs a file name prefix"));
    }
    Ok(())
}

fn read_init_noise(path: &Path) -> Result<InitNoise> {
    let map = candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| {
        Error::invalid(
            "--init-noise",
            format!("{}: {e}", path.display()).replace('\n', " "),
        )
    })?;
    let video = map
        .get("video")
        .ok_or_else(|| {
            Error::invalid(
                "--init-noise",
                format!("{}: no tensor named `video`", path.display()),
            )
        })?
        .to_dtype(DType::F32)?;
    let sound = match map.get("sound") {
        Some(s) => Some(s.to_dtype(DType::F32)?),
        None => None,
    };
    Ok(InitNoise { video, sound })
}

fn dump(dir: &Path, out: &phyai::engine::GenerationOutput) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut latents: HashMap<String, Tensor> = HashMap::new();
    latents.insert("video".into(), out.latents.clone());
    if let Some(s) = &out.sound_latents {
        latents.insert("sound".into(), s.clone());
    }
    let mut pixels: HashMap<String, Tensor> = HashMap::new();
    pixels.insert("video".into(), out.video.clone());
    if let Some((a, _)) = &out.audio {
        pixels.insert("audio".into(), a.clone());
    }
    for (name, map) in [("latents", latents), ("output", pixels)] {
        let path = dir.join(format!("{name}.safetensors"));
        let tmp = dir.join(format!(".{name}.safetensors.partial"));
        candle_core::safetensors::save(&map, &tmp)
            .map_err(|e| Error::msg(format!("{}: {e}", tmp.display())))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
    }
    Ok(())
}
