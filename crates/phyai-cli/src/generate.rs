//! `phyai generate`: prompt (+ image) → request → engine → mp4 (+ wav) and optional dumps.
//!
//! Under a multi-process launch (WORLD_SIZE set) every process runs this same command as
//! one rank; only rank 0 prints progress and writes files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use phyai::engine::{DeviceConfig, Engine, EngineArgs, EngineConfig, Plugin, Target};
use phyai::io::still::StillFormat;
use phyai::models::cosmos3::continuation::{extend, VideoCondition, VideoKeep};
use phyai::models::cosmos3::processor::PromptStyle;
use phyai::models::cosmos3::sampler::{FixedStepSchedule, GuidanceInterval, SigmaStyle};
use phyai::models::cosmos3::{
    demo, postprocess, ClipDefaults, Cosmos3Args, Cosmos3Output, Cosmos3Plugin, Cosmos3Request,
    InitNoise, Prompt, VaeDecode, VideoInput,
};
use phyai::parallel::rendezvous::LaunchEnv;
use phyai::parallel::MeshShape;
use phyai::{Error, Result};

use crate::args::{
    DeviceArg, DtypeArg, GenerateArgs, PromptStyleArg, SigmaScheduleArg, VaeDecodeArg,
};
use crate::progress::{summary, Bars, LoadBar, StallHook};

pub fn run(a: &GenerateArgs) -> Result<()> {
    let started = Instant::now();
    // `--out clip.mp4` means the prefix `clip`, not `clip.mp4.mp4`.
    let prefix = output_prefix(&a.out);
    let out_mp4 = with_suffix(&prefix, "mp4");
    let out_wav = with_suffix(&prefix, "wav");
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
        parallel: MeshShape::new(a.cfg, a.sp, a.tp),
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
                    "checkpoint",
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
    let d = if is_demo {
        ClipDefaults::DEMO
    } else {
        ClipDefaults::REFERENCE
    };
    // Transfer clips are as long as their controls: --num-frames only caps them.
    let transfer = !a.controls.is_empty();
    let frames = match (transfer, a.num_frames) {
        (_, Some(n)) => n,
        (true, None) => usize::MAX,
        (false, None) => d.num_frames,
    };
    let height = a.height.unwrap_or(d.height);
    let width = a.width.unwrap_or(d.width);
    // Distilled checkpoints fix the step count and bake guidance in: their defaults.
    let fixed_step = if is_demo {
        None
    } else {
        FixedStepSchedule::from_checkpoint(&ckpt)?
    };
    let steps = a
        .steps
        .unwrap_or(fixed_step.as_ref().map_or(d.steps, |f| f.steps()));
    let guidance_scale = a
        .guidance_scale
        .unwrap_or(if fixed_step.is_some() { 1.0 } else { 6.0 });
    // One frame is a still image: PNG, or JPEG when --out ends in .jpg/.jpeg.
    let out_still = match StillFormat::from_path(&a.out) {
        Some(_) => a.out.clone(),
        None => with_suffix(&prefix, "png"),
    };
    if frames == 1 && a.sound {
        return Err(Error::invalid(
            "sound",
            "a one-frame image has no soundtrack",
        ));
    }
    let style = match a.prompt_style {
        PromptStyleArg::Phyai => PromptStyle::Phyai,
        PromptStyleArg::Diffusers => PromptStyle::Diffusers,
    };
    let mut request = Cosmos3Request::new(
        Prompt::Text {
            prompt: a.prompt.clone(),
            negative_prompt: a.negative_prompt.clone(),
            style,
        },
        frames,
        height,
        width,
    );
    request.fps = a.fps;
    request.steps = steps;
    request.guidance_scale = guidance_scale;
    request.guidance_interval = match &a.guidance_interval {
        Some(t) => Some(GuidanceInterval::parse(t, "guidance_interval")?),
        None => None,
    };
    request.seed = a.seed;
    request.sound = a.sound;
    request.action = crate::action::request(a)?;
    let acting = request.action.is_some();
    if acting && transfer {
        return Err(Error::invalid(
            "action_mode",
            "action modes and transfer (--control) cannot be combined",
        ));
    }
    if acting {
        crate::action::load_pixels(&mut request, a.image.as_deref(), a.video.as_deref())?;
    }
    if transfer {
        if a.extend > 0 {
            return Err(Error::invalid(
                "extend",
                "transfer chunks its clip itself (--chunk-frames)",
            ));
        }
        if a.image.is_some() {
            return Err(Error::invalid(
                "image",
                "transfer follows its controls, not an image or a video",
            ));
        }
        request.transfer = Some(crate::transfer::transfer_input(a, height, width)?);
    }
    // Everything that needs no model is checked before the model loads.
    Cosmos3Plugin::validate(&request)?;
    if let Some(img) = &a.image {
        if !img.is_file() {
            return Err(Error::invalid(
                "image",
                format!("{} is not a readable file", img.display()),
            ));
        }
    }
    if let (Some(p), false) = (&a.init_noise, transfer) {
        let (noise, step_noise) = read_init_noise(p)?;
        request.init_noise = Some(noise);
        request.step_noise = step_noise;
        if let Some(act) = request.action.as_mut() {
            act.init_noise = crate::action::init_noise(p)?;
        }
    }
    let condition = VideoCondition::parse(&a.condition_frames, &a.condition_video_keep)?;
    if let (Some(v), false) = (&a.video, acting) {
        if !v.exists() {
            return Err(Error::invalid(
                "video",
                format!("{} does not exist", v.display()),
            ));
        }
        request.video = Some(VideoInput {
            frames: phyai::io::frames::load_video_resized(v, height, width, "video")?,
            condition: condition.clone(),
        });
        Cosmos3Plugin::validate(&request)?;
    }
    if a.extend > 0 {
        if frames == 1 {
            return Err(Error::invalid(
                "extend",
                "a one-frame image cannot be extended",
            ));
        }
        let latent_t = (frames - 1) / 4 + 1;
        condition.validate(latent_t)?;
        if condition.pixel_frames() >= frames {
            return Err(Error::invalid(
                "extend",
                format!(
                    "chunks of {frames} frames conditioned on {} frames add nothing",
                    condition.pixel_frames()
                ),
            ));
        }
        if a.sound {
            return Err(Error::invalid(
                "extend",
                "extended rollouts have no soundtrack",
            ));
        }
    }

    if lead && a.cfg == 2 && guidance_scale <= 1.0 {
        eprintln!(
            "warning: --cfg 2 with --guidance-scale {} ≤ 1: there is no unconditional branch, \
             so the second CFG group idles",
            guidance_scale
        );
    }
    let karras = match (a.karras, a.no_karras) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    };
    let bars = StallHook::from_env(Bars::new(quiet))?;
    let mut timings: Vec<(String, Duration)> = Vec::new();

    if let (Some(path), false) = (&a.image, acting) {
        request.image = Some(phyai::io::image::load_image(path, height, width)?);
    }

    // Model load.
    let t = Instant::now();
    let before = phyai::io::load_stats::load_stats();
    let load_bar = LoadBar::start(weight_bytes(&ckpt, a.sound), quiet);
    let engine = Engine::<Cosmos3Plugin>::new(EngineArgs {
        plugin: Cosmos3Plugin::NAME.into(),
        plugin_args: Cosmos3Args {
            checkpoint_dir: ckpt.clone(),
            flow_shift: a.flow_shift,
            use_karras_sigmas: karras,
            load_sound: a.sound,
            sigma_schedule: match a.sigma_schedule {
                SigmaScheduleArg::Checkpoint => SigmaStyle::Checkpoint,
                SigmaScheduleArg::Phyai => SigmaStyle::Phyai,
            },
            vae_decode: match a.vae_decode {
                VaeDecodeArg::Full => VaeDecode::Full,
                VaeDecodeArg::Tiled => VaeDecode::Tiled,
            },
            quantize: a.quantize.map(Into::into),
            fp8_attention: a.fp8_attention,
            cfg_pair: Default::default(),
        },
        config,
    });
    load_bar.finish();
    let mut engine = engine?;
    timings.push(("load".into(), t.elapsed()));
    let load = phyai::io::load_stats::load_stats().since(&before);

    let mut output = engine.step_with_progress(&request, &bars)?;
    timings.extend(output.timings.iter().cloned());
    if a.extend > 0 {
        // Each chunk: a fresh draw (seed + chunk index), conditioned on the video so far.
        let mut chunk = 0u32;
        let mut next = |running: &Tensor| -> Result<Tensor> {
            chunk += 1;
            let mut r = request.clone();
            r.image = None;
            r.init_noise = None;
            r.step_noise = None;
            r.seed = a.seed.wrapping_add(chunk);
            r.video = Some(VideoInput {
                frames: running.clone(),
                condition: VideoCondition {
                    keep: VideoKeep::Last,
                    ..condition.clone()
                },
            });
            Ok(engine.step_with_progress(&r, &bars)?.video)
        };
        output.video = extend(output.video.clone(), a.extend, &condition, &mut next)?;
    }
    // In a multi-process job rank 0 writes only once every rank has finished.
    engine.finish();
    if !engine.writes_outputs() {
        return Ok(());
    }

    // Outputs: temp files renamed into place, so a failure leaves nothing partial.
    let t = Instant::now();
    let rgb = postprocess::video_to_rgb8(&output.video)?;
    if frames == 1 {
        phyai::io::still::write_still(&out_still, &rgb.data, rgb.height, rgb.width)?;
        if let Some(dir) = &a.dump_dir {
            dump(dir, &output)?;
        }
        if !quiet {
            eprintln!("wrote {}", out_still.display());
        }
        if a.json {
            println!(
                "{}",
                serde_json::json!({"image": out_still, "height": height, "width": width,
                    "steps": steps, "guidance_scale": guidance_scale, "seed": a.seed,
                    "load": load_json(&load)})
            );
        }
        return Ok(());
    }
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
    let action_files = match (&output.actions, &request.action) {
        (Some(x), Some(ar)) => Some(crate::action::write(&prefix, x, ar)?),
        _ => None,
    };
    if let Some(dir) = &a.dump_dir {
        dump(dir, &output)?;
    }
    timings.push(("write".into(), t.elapsed()));

    if !quiet {
        eprintln!("wrote {}", out_mp4.display());
        if audio.is_some() {
            eprintln!("wrote {}", out_wav.display());
        }
        if let Some((npy, json)) = &action_files {
            eprintln!("wrote {} and {}", npy.display(), json.display());
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
            "frames": rgb.frames, "height": rgb.height, "width": rgb.width, "fps": a.fps,
            "actions": action_files.as_ref().map(|(npy, json)| [npy, json]),
            "steps": steps, "guidance_scale": guidance_scale, "seed": a.seed,
            "demo_checkpoint": is_demo,
            "seconds": stages,
            "load": load_json(&load),
            // From the command's start to the first denoising step (load, prompt, text).
            "first_step_seconds": bars.inner().denoise_started()
                .map(|t| t.duration_since(started).as_secs_f64()),
            "total_seconds": started.elapsed().as_secs_f64(),
        });
        println!("{j}");
    }
    Ok(())
}

/// The load split (summed over ranks): reading the files into host memory, copying to the
/// device, and the kernel set-up of the whole run (kernel modules load at first use); how
/// the files were read and how much of them the page cache held when opened.
fn load_json(load: &phyai::io::load_stats::LoadStats) -> serde_json::Value {
    let kernels = phyai::layers::kernel_setup::kernel_setup();
    serde_json::json!({
        "bytes": load.bytes,
        "tensors": load.tensors,
        "read_mode": phyai::io::read::ReadMode::from_env().name(),
        "file_bytes": load.file_bytes,
        "page_cache_bytes": load.resident_bytes,
        "read_seconds": load.read_seconds,
        "copy_seconds": load.copy_seconds,
        "kernel_setup_seconds": kernels.map(|k| k.seconds),
        "kernel_modules": kernels.map(|k| k.modules),
        "kernel_modules_compiled": kernels.map(|k| k.compiled),
    })
}

/// Bytes of the weight files a load reads: the transformer, the VAE and, with sound, the
/// sound tokenizer (the progress bar's length).
fn weight_bytes(ckpt: &Path, sound: bool) -> u64 {
    let mut dirs = vec!["transformer", "vae"];
    if sound {
        dirs.push("sound_tokenizer");
    }
    dirs.iter()
        .filter_map(|d| std::fs::read_dir(ckpt.join(d)).ok())
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// `PREFIX` → `PREFIX.ext` (keeps dots already in the prefix).
/// The output prefix: `--out` without a trailing `.mp4` (any case).
fn output_prefix(out: &Path) -> PathBuf {
    match out.extension().and_then(|e| e.to_str()) {
        Some(e) if e.eq_ignore_ascii_case("mp4") => out.with_extension(""),
        _ => out.to_path_buf(),
    }
}

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
            "out",
            format!("folder {} does not exist", parent.display()),
        ));
    }
    if prefix.file_name().is_none() {
        return Err(Error::invalid("out", "needs a file name prefix"));
    }
    Ok(())
}

/// The initial noise, and the per-step noise of distilled checkpoints when the file has it.
fn read_init_noise(path: &Path) -> Result<(InitNoise, Option<Tensor>)> {
    let map = candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| {
        Error::invalid(
            "init_noise",
            format!("{}: {e}", path.display()).replace('\n', " "),
        )
    })?;
    let video = map
        .get("video")
        .ok_or_else(|| {
            Error::invalid(
                "init_noise",
                format!("{}: no tensor named `video`", path.display()),
            )
        })?
        .to_dtype(DType::F32)?;
    let sound = match map.get("sound") {
        Some(s) => Some(s.to_dtype(DType::F32)?),
        None => None,
    };
    let step_noise = match map.get("step_noise") {
        Some(s) => Some(s.to_dtype(DType::F32)?),
        None => None,
    };
    Ok((InitNoise { video, sound }, step_noise))
}

fn dump(dir: &Path, out: &Cosmos3Output) -> Result<()> {
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
    if let Some(x) = &out.actions {
        pixels.insert("action".into(), x.clone());
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
