//! Media writers: mp4 (H.264 + AAC) checked with ffprobe and decoded with ffmpeg (both are
//! test dependencies: a missing one fails the test), and a wav round trip.

use std::path::Path;
use std::process::Command;

use phyai::io::audio::{read_wav, write_wav};
use phyai::io::video::write_mp4;

/// A moving gradient, `[T, H, W, 3]`.
fn frames(t: usize, h: usize, w: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(t * h * w * 3);
    for f in 0..t {
        for y in 0..h {
            for x in 0..w {
                v.push(((x * 4 + f * 9) % 256) as u8);
                v.push(((y * 4 + f * 5) % 256) as u8);
                v.push(((x + y + f * 3) % 256) as u8);
            }
        }
    }
    v
}

/// Interleaved stereo tones (440 Hz left, 660 Hz right).
fn tone(seconds: f64, rate: u32) -> Vec<f32> {
    let n = (seconds * rate as f64) as usize;
    (0..n)
        .flat_map(|i| {
            let t = i as f32 / rate as f32;
            [
                0.5 * (2.0 * std::f32::consts::PI * 440.0 * t).sin(),
                0.3 * (2.0 * std::f32::consts::PI * 660.0 * t).sin(),
            ]
        })
        .collect()
}

/// `ffprobe` entries `key=value` for one stream.
fn probe(path: &Path, stream: &str, entries: &str) -> Vec<(String, String)> {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            stream,
            "-count_frames",
            "-show_entries",
        ])
        .arg(format!("stream={entries}"))
        .args(["-of", "default=noprint_wrappers=1"])
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("ffprobe (from ffmpeg) is needed to check mp4 files: {e}"));
    assert!(
        out.status.success(),
        "ffprobe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

fn get<'a>(kv: &'a [(String, String)], key: &str) -> &'a str {
    kv.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {key} in {kv:?}"))
}

/// Decodes the file completely; any error message fails the test.
fn decodes_cleanly(path: &Path) {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-f", "null", "-"])
        .output()
        .unwrap_or_else(|e| panic!("ffmpeg is needed to decode mp4 files: {e}"));
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "decode errors: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn mp4_video_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clip.mp4");
    let (t, h, w) = (17, 64, 96);
    write_mp4(&path, &frames(t, h, w), t, h, w, 24.0, None).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[4..8], b"ftyp");
    // Nothing but the output is left in the folder.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    let v = probe(
        &path,
        "v:0",
        "codec_name,pix_fmt,width,height,r_frame_rate,nb_read_frames,duration",
    );
    assert_eq!(get(&v, "codec_name"), "h264");
    assert_eq!(get(&v, "pix_fmt"), "yuv420p");
    assert_eq!(get(&v, "width"), "96");
    assert_eq!(get(&v, "height"), "64");
    assert_eq!(get(&v, "r_frame_rate"), "24/1");
    assert_eq!(get(&v, "nb_read_frames"), "17");
    let dur: f64 = get(&v, "duration").parse().unwrap();
    assert!((dur - 17.0 / 24.0).abs() < 1e-3, "duration {dur}");
    assert!(
        probe(&path, "a", "codec_name").is_empty(),
        "unexpected audio stream"
    );
    decodes_cleanly(&path);
}

#[test]
fn mp4_with_audio_and_fractional_fps() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("av.mp4");
    let (t, h, w, fps, rate) = (33, 48, 64, 29.97, 48_000u32);
    let seconds = t as f64 / fps;
    let audio = tone(seconds, rate);
    write_mp4(&path, &frames(t, h, w), t, h, w, fps, Some((&audio, rate))).unwrap();
    let v = probe(
        &path,
        "v:0",
        "codec_name,r_frame_rate,nb_read_frames,duration",
    );
    assert_eq!(get(&v, "codec_name"), "h264");
    assert_eq!(get(&v, "r_frame_rate"), "2997/100");
    assert_eq!(get(&v, "nb_read_frames"), "33");
    let a = probe(&path, "a:0", "codec_name,sample_rate,channels,duration");
    assert_eq!(get(&a, "codec_name"), "aac");
    assert_eq!(get(&a, "sample_rate"), "48000");
    assert_eq!(get(&a, "channels"), "2");
    let adur: f64 = get(&a, "duration").parse().unwrap();
    let want = (audio.len() / 2) as f64 / rate as f64;
    assert!(
        (adur - want).abs() < 0.03,
        "audio duration {adur} vs {want}"
    );
    decodes_cleanly(&path);
    check_decoded_audio(&path, &audio);
}

/// The decoded track lines up with the input (the edit list removes the encoder delay):
/// high SNR at lag 0.
fn check_decoded_audio(path: &Path, input: &[f32]) {
    let Ok(out) = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-map", "0:a", "-f", "f32le", "-"])
        .output()
    else {
        return;
    };
    assert!(out.status.success());
    let decoded: Vec<f32> = out
        .stdout
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let n = decoded.len().min(input.len());
    assert!(
        n + 2 * 1024 >= input.len(),
        "decoded {} of {} samples",
        decoded.len(),
        input.len()
    );
    // Skip the first and last 1024 frames (codec edge effects).
    let (lo, hi) = (2048, n - 2048);
    let signal: f64 = input[lo..hi].iter().map(|&x| (x as f64).powi(2)).sum();
    let noise: f64 = input[lo..hi]
        .iter()
        .zip(&decoded[lo..hi])
        .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
        .sum();
    let snr_db = 10.0 * (signal / noise).log10();
    assert!(
        snr_db > 20.0,
        "decoded audio SNR {snr_db:.1} dB (misaligned?)"
    );
}

#[test]
fn mp4_rejects_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.mp4");
    assert!(write_mp4(&path, &frames(2, 8, 8), 2, 8, 8, 0.0, None).is_err());
    assert!(write_mp4(&path, &frames(2, 7, 8), 2, 7, 8, 24.0, None).is_err());
    assert!(write_mp4(&path, &[0u8; 10], 2, 8, 8, 24.0, None).is_err());
    assert!(write_mp4(
        &path,
        &frames(2, 8, 8),
        2,
        8,
        8,
        24.0,
        Some((&[0.0; 3], 48_000))
    )
    .is_err());
    assert!(!path.exists());
}

#[test]
fn wav_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.wav");
    let samples = tone(0.05, 44_100);
    write_wav(&path, &samples, 2, 44_100).unwrap();
    let wav = read_wav(&path).unwrap();
    assert_eq!(wav.channels, 2);
    assert_eq!(wav.rate, 44_100);
    assert_eq!(wav.samples.len(), samples.len());
    let max_err = samples
        .iter()
        .zip(&wav.samples)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(max_err <= 0.5 / 32767.0 + 1e-7, "max error {max_err}");
    // Clipping and the 44-byte header.
    write_wav(&path, &[2.0, -2.0], 1, 8000).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 44 + 4);
    assert_eq!(read_wav(&path).unwrap().samples, vec![1.0, -1.0]);
    assert!(write_wav(&path, &[0.0; 3], 2, 8000).is_err());
}

/// Conditioning-image preprocessing against diffusers' `_preprocess_conditioning_image`
/// (cover-resize with antialiased bilinear, centre crop, integer levels) on
/// `refs/conditioning_image.png`, stored as levels k (value = k / 127.5 − 1).
#[test]
fn conditioning_image_matches_reference() {
    let refs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/refs");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(refs.join("processor.json")).unwrap())
            .unwrap();
    let image = &doc["image"];
    let file = refs.join(image["file"].as_str().unwrap());
    for case in image["cases"].as_array().unwrap() {
        let (h, w) = (
            case["height"].as_u64().unwrap() as usize,
            case["width"].as_u64().unwrap() as usize,
        );
        let want: Vec<i64> = case["chw_levels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        let t = phyai::io::image::load_image(&file, h, w).unwrap();
        assert_eq!(t.dims(), &[1, 3, h, w]);
        let got: Vec<i64> = t
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|&x| ((x + 1.0) * 127.5).round() as i64)
            .collect();
        let off: Vec<usize> = (0..got.len()).filter(|&i| got[i] != want[i]).collect();
        let worst = off
            .iter()
            .map(|&i| (got[i] - want[i]).abs())
            .max()
            .unwrap_or(0);
        // Levels are integers after rounding (measured: identical); allow a rare ±1 where a
        // differently ordered float sum lands on the other side of .5.
        assert!(
            worst <= 1 && off.len() * 1000 <= got.len(),
            "{h}x{w}: {} of {} levels differ (worst {worst})",
            off.len(),
            got.len()
        );
        println!("{h}x{w}: {} of {} levels differ by 1", off.len(), got.len());
    }
    assert!(phyai::io::image::load_image(&refs.join("missing.png"), 16, 16).is_err());
    assert!(phyai::io::image::load_image(&refs.join("processor.json"), 16, 16).is_err());
}
