//! The `phyai` command end to end: bad inputs give one clear line and a non-zero exit with
//! no output file; good runs write the files and match the reference fixtures.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[path = "../../../tests/support/mod.rs"]
mod support;
use support::{fixtures, load_ref, rel_err};

fn tiny() -> PathBuf {
    fixtures().join("tiny")
}

fn phyai(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_phyai"))
        .args(args)
        .env("PHYAI_LOG", "off")
        .output()
        .expect("run phyai")
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

/// Asserts a failed run: non-zero exit, exactly one stderr line naming `needle`, no mp4.
fn assert_one_line_error(out: &Output, needle: &str, prefix: &Path, case: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{case}: should fail\n{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{case}: expected one line, got:\n{stderr}");
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains(needle),
        "{case}: {:?} should name {needle:?}",
        lines[0]
    );
    let mp4 = PathBuf::from(format!("{}.mp4", prefix.display()));
    assert!(!mp4.exists(), "{case}: left {} behind", mp4.display());
}

#[test]
fn bad_inputs_give_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("clip");
    let out_s = out.to_str().unwrap();
    let ckpt = tiny();
    let ckpt_s = ckpt.to_str().unwrap();

    // A checkpoint whose first transformer shard is cut short.
    let corrupt = tmp.path().join("corrupt");
    copy_dir(&ckpt, &corrupt);
    let shard = std::fs::read_dir(corrupt.join("transformer"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with("00001-of-00002.safetensors"))
        .unwrap();
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() / 2]).unwrap();
    // A checkpoint without its audio decoder.
    let silent = tmp.path().join("silent");
    copy_dir(&ckpt, &silent);
    std::fs::remove_dir_all(silent.join("sound_tokenizer")).unwrap();
    // An "image" that is not one.
    let not_image = tmp.path().join("not-image.png");
    std::fs::write(&not_image, b"definitely not a png").unwrap();
    // Initial noise of the wrong shape.
    let bad_noise = tmp.path().join("noise.safetensors");
    {
        let t = candle_core::Tensor::zeros(
            (1, 48, 1, 1, 1),
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let mut m = std::collections::HashMap::new();
        m.insert("video".to_string(), t);
        candle_core::safetensors::save(&m, &bad_noise).unwrap();
    }
    let missing_dir_out = tmp.path().join("no/such/folder/clip");

    let small = [
        "--num-frames",
        "5",
        "--height",
        "32",
        "--width",
        "32",
        "--steps",
        "1",
    ];
    let cases: Vec<(&str, Vec<&str>, &str)> = vec![
        (
            "missing checkpoint",
            vec!["--checkpoint", "/no/such/checkpoint"],
            "--checkpoint",
        ),
        (
            "corrupt weights",
            vec!["--checkpoint", corrupt.to_str().unwrap()],
            "00001-of-00002.safetensors",
        ),
        (
            "frames not 4k+1",
            vec!["--checkpoint", ckpt_s, "--num-frames", "10"],
            "--num-frames",
        ),
        (
            "height not /16",
            vec!["--checkpoint", ckpt_s, "--height", "100"],
            "--height",
        ),
        (
            "width zero",
            vec!["--checkpoint", ckpt_s, "--width", "0"],
            "--width",
        ),
        ("cfg 3", vec!["--checkpoint", ckpt_s, "--cfg", "3"], "--cfg"),
        (
            "tp not dividing kv heads",
            vec!["--checkpoint", ckpt_s, "--tp", "3"],
            "--tp",
        ),
        (
            "unreadable image",
            vec!["--checkpoint", ckpt_s, "--image", "/no/such/image.png"],
            "--image",
        ),
        (
            "image that is not one",
            vec![
                "--checkpoint",
                ckpt_s,
                "--image",
                not_image.to_str().unwrap(),
            ],
            "not-image.png",
        ),
        (
            "empty prompt",
            vec!["--checkpoint", ckpt_s, "--prompt", "  "],
            "--prompt",
        ),
        (
            "zero steps",
            vec!["--checkpoint", ckpt_s, "--steps", "0"],
            "--steps",
        ),
        (
            "zero fps",
            vec!["--checkpoint", ckpt_s, "--fps", "0"],
            "--fps",
        ),
        (
            "negative guidance",
            vec!["--checkpoint", ckpt_s, "--guidance-scale=-1"],
            "--guidance-scale",
        ),
        (
            "sound without decoder",
            vec!["--checkpoint", silent.to_str().unwrap(), "--sound"],
            "--sound",
        ),
        (
            "noise of the wrong shape",
            vec![
                "--checkpoint",
                ckpt_s,
                "--init-noise",
                bad_noise.to_str().unwrap(),
            ],
            "--init-noise",
        ),
        (
            "noise file missing",
            vec![
                "--checkpoint",
                ckpt_s,
                "--init-noise",
                "/no/such/noise.safetensors",
            ],
            "--init-noise",
        ),
        (
            "cuda in a cpu build",
            vec!["--checkpoint", ckpt_s, "--device", "cuda"],
            "--device",
        ),
        (
            "fp8 attention on a 16-bit model",
            vec!["--checkpoint", ckpt_s, "--fp8-attention"],
            "--fp8-attention: needs an FP8 transformer",
        ),
        (
            "fp8 attention on the cpu",
            vec![
                "--checkpoint",
                ckpt_s,
                "--fp8-attention",
                "--quantize",
                "fp8",
            ],
            "--fp8-attention: needs a CUDA device",
        ),
    ];
    for (case, extra, needle) in cases {
        let mut args = vec!["generate", "--prompt", "a robot", "--out", out_s, "--quiet"];
        args.extend_from_slice(&small);
        // Later flags win in the table (clap keeps the last occurrence).
        args.extend(extra.iter().copied());
        if case == "cuda in a cpu build" && cfg!(feature = "cuda") {
            continue;
        }
        let o = phyai(&args);
        assert_one_line_error(&o, needle, &out, case);
    }
    let o = phyai(&[
        "generate",
        "--checkpoint",
        ckpt_s,
        "--prompt",
        "a robot",
        "--out",
        missing_dir_out.to_str().unwrap(),
    ]);
    assert_one_line_error(&o, "--out", &missing_dir_out, "output folder missing");
}

/// Runs the CLI like the reference pipeline call of `case` (diffusers prompt style, the
/// reference's initial noise) and compares the dumped latents and pixels.
fn cli_matches_reference(case: &str, prompt: &str, sound: bool, image: bool) {
    let r = load_ref(&format!("trajectory_{case}.safetensors"));
    let tmp = tempfile::tempdir().unwrap();
    let noise = tmp.path().join("noise.safetensors");
    let mut m = std::collections::HashMap::new();
    m.insert("video".to_string(), r["init_video"].clone());
    if sound {
        m.insert("sound".to_string(), r["init_sound"].clone());
    }
    candle_core::safetensors::save(&m, &noise).unwrap();
    let dump = tmp.path().join("dump");
    // One case names the output with its extension: `clip.mp4` is the prefix `clip`.
    let out = tmp.path().join(if sound { "clip" } else { "clip.mp4" });
    let png = fixtures().join("refs").join(format!("{case}_image.png"));
    let mut args = vec![
        "generate",
        "--checkpoint",
        tiny().to_str().unwrap().to_owned().leak(),
        "--prompt",
        prompt,
        "--prompt-style",
        "diffusers",
        "--num-frames",
        "9",
        "--height",
        "64",
        "--width",
        "96",
        "--fps",
        "24",
        "--steps",
        "3",
        "--guidance-scale",
        "6",
        "--init-noise",
        noise.to_str().unwrap().to_owned().leak(),
        "--dump-dir",
        dump.to_str().unwrap().to_owned().leak(),
        "--out",
        out.to_str().unwrap().to_owned().leak(),
        "--quiet",
    ];
    if sound {
        args.push("--sound");
    }
    if image {
        args.extend(["--image", png.to_str().unwrap().to_owned().leak()]);
    }
    let o = phyai(&args);
    assert!(
        o.status.success(),
        "{case}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let lat =
        candle_core::safetensors::load(dump.join("latents.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    let px =
        candle_core::safetensors::load(dump.join("output.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    let e_lat = rel_err(&lat["video"], &r["latents"]);
    let e_px = rel_err(&px["video"], &r["video"]);
    println!("{case}: latents {e_lat:.2e}, pixels {e_px:.2e}");
    assert!(e_lat <= 1e-4, "{case}: latents rel err {e_lat:e}");
    assert!(e_px <= 1e-4, "{case}: pixels rel err {e_px:e}");
    if sound {
        let e_s = rel_err(&lat["sound"], &r["sound_latents"]);
        assert!(e_s <= 1e-4, "{case}: sound latents rel err {e_s:e}");
        assert!(out.with_extension("wav").exists());
    }
    let mp4 = tmp.path().join("clip.mp4");
    assert!(mp4.is_file(), "{case}: no {}", mp4.display());
    assert!(
        !tmp.path().join("clip.mp4.mp4").exists(),
        "{case}: clip.mp4.mp4"
    );
}

#[test]
fn cli_t2av_matches_diffusers() {
    cli_matches_reference(
        "t2av",
        "A small drone flies over a green field at sunset, casting a long shadow.",
        true,
        false,
    );
}

#[test]
fn cli_i2v_matches_diffusers() {
    cli_matches_reference(
        "i2v",
        "A robot arm stacks three red cubes on a wooden table in a bright workshop.",
        false,
        true,
    );
}

/// The README's first command: the demo checkpoint (made in a fresh cache) end to end with
/// sound, well under a minute, and an mp4 that ffprobe reads as H.264 + 48 kHz AAC with the
/// requested frames, rate and duration.
#[test]
fn demo_generation_writes_a_playable_mp4_with_audio() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("demo");
    let start = std::time::Instant::now();
    let o = Command::new(env!("CARGO_BIN_EXE_phyai"))
        .args([
            "generate",
            "--prompt",
            "A robot arm stacks three red cubes",
            "--sound",
            "--json",
            "--out",
        ])
        .arg(&out)
        .env("PHYAI_CACHE", tmp.path().join("cache"))
        .output()
        .unwrap();
    let secs = start.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stderr.contains("RANDOM"),
        "the demo must say its weights are random: {stderr}"
    );
    assert!(secs < 60.0, "demo took {secs:.1} s");
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["frames"], 17);
    // The start-up split: the first denoising step comes after the load and before the end.
    let first = summary["first_step_seconds"]
        .as_f64()
        .expect("first_step_seconds");
    let load = summary["seconds"]["load"].as_f64().expect("seconds.load");
    let total = summary["total_seconds"].as_f64().expect("total_seconds");
    assert!(
        load < first && first < total,
        "load {load}, first step {first}, total {total}"
    );
    assert!(
        summary["load"]["bytes"].as_u64().is_some_and(|b| b > 0),
        "{summary}"
    );
    // How the weights were read, and how much of their files the page cache held: the demo
    // checkpoint was just written, so (on Linux) some of it, and never more than the files.
    let l = &summary["load"];
    assert_eq!(l["read_mode"], "pread", "{summary}");
    let files = l["file_bytes"].as_u64().unwrap();
    assert!(files >= l["bytes"].as_u64().unwrap(), "{summary}");
    if cfg!(target_os = "linux") {
        let cached = l["page_cache_bytes"].as_u64().expect("page_cache_bytes");
        assert!(cached > 0 && cached <= files, "{summary}");
    }

    // The read benchmark on the same files: four passes, each reading every stored byte.
    let tdir = tmp.path().join("cache/demo-v1/transformer");
    let stored: u64 = std::fs::read_dir(&tdir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .map(|p| {
            // A safetensors file: 8-byte header length, the header, then the tensor bytes.
            let bytes = std::fs::read(&p).unwrap();
            let header = u64::from_le_bytes(bytes[..8].try_into().unwrap());
            bytes.len() as u64 - 8 - header
        })
        .sum();
    let o = phyai(&[
        "bench",
        "--part",
        "read",
        "--json",
        "--weights",
        tdir.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let passes: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let modes: Vec<&str> = passes.iter().map(|p| p["mode"].as_str().unwrap()).collect();
    assert_eq!(modes, ["pread", "mmap", "direct", "pread"]);
    for p in &passes {
        assert_eq!(p["bytes"].as_u64(), Some(stored), "{p}");
        assert!(p["gb_per_s"].as_f64().is_some_and(|r| r > 0.0), "{p}");
    }
    let o = phyai(&["bench", "--part", "read"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--weights"));

    let mp4 = tmp.path().join("demo.mp4");
    assert!(mp4.exists() && tmp.path().join("demo.wav").exists());
    let probe = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name,nb_frames,r_frame_rate,sample_rate,duration",
            "-of",
            "json",
        ])
        .arg(&mp4)
        .output()
        .unwrap_or_else(|e| panic!("ffprobe (from ffmpeg) is needed to check the mp4: {e}"));
    assert!(
        probe.status.success(),
        "ffprobe failed: {}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&probe.stdout).unwrap();
    let streams = j["streams"].as_array().unwrap();
    let video = streams
        .iter()
        .find(|s| s["codec_name"] == "h264")
        .expect("h264 stream");
    let audio = streams
        .iter()
        .find(|s| s["codec_name"] == "aac")
        .expect("aac stream");
    assert_eq!(video["nb_frames"], "17");
    assert_eq!(video["r_frame_rate"], "24/1");
    let vdur: f64 = video["duration"].as_str().unwrap().parse().unwrap();
    assert!((vdur - 17.0 / 24.0).abs() < 1e-3, "video duration {vdur}");
    assert_eq!(audio["sample_rate"], "48000");
    let adur: f64 = audio["duration"].as_str().unwrap().parse().unwrap();
    assert!((adur - 17.0 / 24.0).abs() < 0.05, "audio duration {adur}");
}

/// Distilled checkpoints, text-to-image and video continuation from the command line: the
/// still is written as PNG (or JPEG by extension), bad inputs are one line and leave no file.
#[test]
fn variants_write_stills_and_refuse_bad_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let distilled = fixtures().join("tiny_distilled");
    let d = distilled.to_str().unwrap();
    let prefix = dir.path().join("t2i");
    let p = prefix.to_str().unwrap();
    let small = ["--height", "32", "--width", "48", "--quiet"];
    let run = |extra: &[&str]| {
        let mut args = vec!["generate", "--prompt", "A drone over a field"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&small);
        phyai(&args)
    };
    let o = run(&["--checkpoint", d, "--num-frames", "1", "--out", p]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let png = image::open(dir.path().join("t2i.png")).unwrap().to_rgb8();
    assert_eq!((png.width(), png.height()), (48, 32));
    assert!(!dir.path().join("t2i.mp4").exists());
    let jpg = dir.path().join("still.jpg");
    let o = run(&[
        "--checkpoint",
        d,
        "--num-frames",
        "1",
        "--out",
        jpg.to_str().unwrap(),
    ]);
    assert!(o.status.success() && jpg.exists());

    let bad = dir.path().join("bad");
    let b = bad.to_str().unwrap();
    let tiny_dir = tiny();
    let t = tiny_dir.to_str().unwrap();
    let frames_dir = fixtures().join("refs/v2v_frames");
    let f = frames_dir.to_str().unwrap();
    for (extra, needle) in [
        (
            vec!["--checkpoint", d, "--num-frames", "5", "--steps", "35"],
            "--steps",
        ),
        (
            vec![
                "--checkpoint",
                d,
                "--num-frames",
                "5",
                "--guidance-scale",
                "6",
            ],
            "--guidance-scale",
        ),
        (
            vec!["--checkpoint", d, "--num-frames", "5", "--sound"],
            "--sound",
        ),
        (
            vec![
                "--checkpoint",
                t,
                "--num-frames",
                "9",
                "--video",
                "/nonexistent.mp4",
            ],
            "--video",
        ),
        (
            vec![
                "--checkpoint",
                t,
                "--num-frames",
                "9",
                "--video",
                f,
                "--condition-frames",
                "0,5",
            ],
            "--condition-frames",
        ),
        (
            vec![
                "--checkpoint",
                t,
                "--num-frames",
                "9",
                "--video",
                f,
                "--condition-video-keep",
                "middle",
            ],
            "--condition-video-keep",
        ),
        (
            vec![
                "--checkpoint",
                t,
                "--num-frames",
                "5",
                "--video",
                f,
                "--extend",
                "1",
                "--condition-frames",
                "0,1",
            ],
            "--extend",
        ),
    ] {
        let mut args = extra.clone();
        args.extend_from_slice(&["--out", b]);
        let o = run(&args);
        assert_one_line_error(&o, needle, &bad, &extra.join(" "));
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            2,
            "{extra:?} left a file"
        );
    }
}

/// `--control` transfer through the flags against the two-chunk diffusers reference (text
/// prompt, controls given depth first, chunk noise from `--init-noise`), then its bad inputs.
#[test]
fn cli_transfer_matches_diffusers_and_refuses_bad_inputs() {
    let r = load_ref("transfer_two_chunks.safetensors");
    let tmp = tempfile::tempdir().unwrap();
    let noise = tmp.path().join("noise.safetensors");
    let mut m = std::collections::HashMap::new();
    m.insert("chunk_noise".to_string(), r["chunk_noise"].clone());
    candle_core::safetensors::save(&m, &noise).unwrap();
    let dump = tmp.path().join("dump");
    let out = tmp.path().join("clip");
    let refs = fixtures().join("refs");
    let control =
        |hint: &str| format!("{hint}={}", refs.join(format!("transfer_{hint}")).display());
    let ckpt = tiny().to_str().unwrap().to_owned();
    let (depth, edge) = (control("depth"), control("edge"));
    let noise_s = noise.to_str().unwrap().to_owned();
    let out_s = out.to_str().unwrap().to_owned();
    let prompt =
        r#"{"subject": "a red forklift", "action": "carries pallets across a warehouse floor"}"#;
    let base: Vec<&str> = vec![
        "generate",
        "--checkpoint",
        &ckpt,
        "--prompt",
        prompt,
        "--height",
        "32",
        "--width",
        "48",
        "--steps",
        "3",
        "--out",
        &out_s,
        "--quiet",
    ];
    let dump_s = dump.to_str().unwrap().to_owned();
    let mut args = base.clone();
    args.extend([
        "--control",
        &depth,
        "--control",
        &edge,
        "--chunk-frames",
        "6",
        "--conditional-frames",
        "5",
        "--guidance-scale",
        "3",
        "--control-guidance",
        "1.5",
        "--control-guidance-interval",
        "500,1000",
        "--init-noise",
        &noise_s,
        "--dump-dir",
        &dump_s,
    ]);
    let o = phyai(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let px =
        candle_core::safetensors::load(dump.join("output.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    let e = rel_err(&px["video"], &r["video"]);
    println!("transfer through the CLI: stitched video {e:.2e}");
    assert!(e <= 1e-4, "video rel err {e:e}");
    let mp4 = PathBuf::from(format!("{out_s}.mp4"));
    assert!(mp4.exists());
    std::fs::remove_file(&mp4).unwrap();

    let bad_png = tmp.path().join("bad");
    std::fs::create_dir(&bad_png).unwrap();
    std::fs::write(bad_png.join("000.png"), b"not a png").unwrap();
    let bad_png = format!("edge={}", bad_png.display());
    for (extra, needle) in [
        (vec!["--control", "normal=/tmp"], "--control: unknown hint"),
        (
            vec!["--control", "edge=/does/not/exist"],
            "--control: edge:",
        ),
        (vec!["--control", &bad_png], "--control: edge:"),
        (
            vec!["--control", &edge, "--control", &edge],
            "--control: the edge hint is given twice",
        ),
        (
            vec![
                "--control",
                &edge,
                "--chunk-frames",
                "9",
                "--conditional-frames",
                "9",
            ],
            "--conditional-frames: 9 must be below the chunk length",
        ),
        (
            vec!["--control", &edge, "--sound"],
            "--sound: transfer generates video only",
        ),
        (vec!["--control", &edge, "--extend", "1"], "--extend:"),
        (
            vec!["--control", &edge, "--control-guidance-interval", "9"],
            "--control-guidance-interval:",
        ),
    ] {
        let mut args = base.clone();
        args.extend(extra.iter().copied());
        let case = extra.join(" ");
        assert_one_line_error(&phyai(&args), needle, &out, &case);
    }
}
