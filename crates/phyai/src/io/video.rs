//! MP4 output: RGB frames → H.264 (yuv420p, BT.709 limited range) and, optionally,
//! stereo audio → AAC-LC, muxed by [`super::mp4`]. Both encoders are compiled from
//! bundled C sources, so writing a video needs nothing installed on the machine.

use std::path::Path;

use openh264::encoder::{
    BitRate, Encoder, EncoderConfig, FrameRate, IntraFramePeriod, RateControlMode, VuiConfig,
};
use openh264::formats::YUVBuffer;
use openh264::OpenH264API;

use super::atomic::write_atomic;
use super::audio::to_i16;
use super::mp4::{self, AudioTrack, VideoTrack};
use crate::{Error, Result};

/// Writes `frames` (`[T, H, W, 3]` RGB bytes) at `fps` as an mp4, with an AAC track when
/// `audio` = (interleaved stereo samples in [−1, 1], sample rate) is given.
///
/// Every frame is stored (no frame dropping), so the file has exactly `num_frames`
/// frames at exactly `fps` (as a rational with denominator ≤ 1000). `height` and `width`
/// must be even (4:2:0 chroma). The file is written to a temporary name in the same
/// folder and renamed into place, so a failure never leaves a partial file.
pub fn write_mp4(
    path: &Path,
    frames: &[u8],
    num_frames: usize,
    height: usize,
    width: usize,
    fps: f64,
    audio: Option<(&[f32], u32)>,
) -> Result<()> {
    check_video(frames, num_frames, height, width, fps)?;
    let video = encode_h264(frames, num_frames, height, width, fps)?;
    let audio = match audio {
        Some((samples, rate)) => Some(encode_aac(samples, rate)?),
        None => None,
    };
    write_atomic(path, &mp4::mux(&video, audio.as_ref()))
}

fn check_video(frames: &[u8], t: usize, h: usize, w: usize, fps: f64) -> Result<()> {
    if t == 0 || h == 0 || w == 0 {
        return Err(Error::invalid("video", format!("empty video {t}x{h}x{w}")));
    }
    if !h.is_multiple_of(2) || !w.is_multiple_of(2) || h > 2160 && w > 2160 || h.max(w) > 3840 {
        return Err(Error::invalid(
            "video",
            format!("{h}x{w}: height and width must be even and at most 3840x2160"),
        ));
    }
    if frames.len() != t * h * w * 3 {
        return Err(Error::invalid(
            "video",
            format!("{} bytes is not {t}x{h}x{w}x3 RGB", frames.len()),
        ));
    }
    if !(fps.is_finite() && fps > 0.0 && fps <= 1000.0) {
        return Err(Error::invalid(
            "fps",
            format!("must be in (0, 1000], got {fps}"),
        ));
    }
    Ok(())
}

/// `fps` as `(timescale, frame_duration)`, exact to 1/1000 frame per second.
pub fn frame_rate_fraction(fps: f64) -> (u32, u32) {
    let num = (fps * 1000.0).round().max(1.0) as u32;
    let g = gcd(num, 1000);
    (num / g, 1000 / g)
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn encode_h264(frames: &[u8], t: usize, h: usize, w: usize, fps: f64) -> Result<VideoTrack> {
    let herr = |e: openh264::Error| Error::msg(format!("H.264 encoder: {e}"));
    // ~0.25 bit per pixel: visually transparent for generated content at these sizes.
    let bps = ((w * h) as f64 * fps * 0.25).clamp(200_000.0, 40_000_000.0) as u32;
    let gop = ((fps * 2.0).round() as u32).max(1);
    let config = EncoderConfig::new()
        .skip_frames(false)
        // Fixed quantiser: every frame is kept at constant quality, and the encoder has no
        // rate-control warnings to print on stderr.
        .rate_control_mode(RateControlMode::Off)
        .bitrate(BitRate::from_bps(bps))
        .max_frame_rate(FrameRate::from_hz(fps as f32))
        .intra_frame_period(IntraFramePeriod::from_num_frames(gop))
        .vui(VuiConfig::bt709());
    let mut encoder = Encoder::with_api_config(OpenH264API::from_source(), config).map_err(herr)?;
    let (timescale, frame_duration) = frame_rate_fraction(fps);
    let mut track = VideoTrack {
        width: w as u16,
        height: h as u16,
        timescale,
        frame_duration,
        sps: Vec::new(),
        pps: Vec::new(),
        samples: Vec::with_capacity(t),
        sync: Vec::with_capacity(t),
    };
    let frame_bytes = h * w * 3;
    for (i, rgb) in frames.chunks_exact(frame_bytes).enumerate() {
        let yuv = YUVBuffer::from_vec(rgb_to_i420(rgb, h, w), w, h);
        let bits = encoder.encode(&yuv).map_err(herr)?;
        let mut sample = Vec::new();
        let mut idr = false;
        for l in 0..bits.num_layers() {
            let Some(layer) = bits.layer(l) else { continue };
            for n in 0..layer.nal_count() {
                let Some(nal) = layer.nal_unit(n).map(strip_start_code) else {
                    continue;
                };
                if nal.is_empty() {
                    continue;
                }
                match nal[0] & 0x1f {
                    7 => {
                        if track.sps.is_empty() {
                            track.sps = nal.to_vec();
                        }
                    }
                    8 => {
                        if track.pps.is_empty() {
                            track.pps = nal.to_vec();
                        }
                    }
                    kind => {
                        idr |= kind == 5;
                        sample.extend_from_slice(&(nal.len() as u32).to_be_bytes());
                        sample.extend_from_slice(nal);
                    }
                }
            }
        }
        if sample.is_empty() {
            return Err(Error::msg(format!(
                "H.264 encoder produced no data for frame {i}"
            )));
        }
        track.samples.push(sample);
        track.sync.push(idr);
    }
    if track.sps.len() < 4 || track.pps.is_empty() {
        return Err(Error::msg("H.264 encoder produced no parameter sets"));
    }
    Ok(track)
}

/// Drops an Annex-B start code (`00 00 01` or `00 00 00 01`) if present.
fn strip_start_code(nal: &[u8]) -> &[u8] {
    match nal {
        [0, 0, 0, 1, rest @ ..] => rest,
        [0, 0, 1, rest @ ..] => rest,
        _ => nal,
    }
}

/// Packed RGB → planar I420 with BT.709 coefficients in limited range (Y 16..235, chroma
/// 16..240); chroma from the mean of each 2×2 block.
pub fn rgb_to_i420(rgb: &[u8], h: usize, w: usize) -> Vec<u8> {
    let (kr, kb) = (0.2126f32, 0.0722f32);
    let kg = 1.0 - kr - kb;
    let mut out = vec![0u8; w * h * 3 / 2];
    let (y_plane, uv) = out.split_at_mut(w * h);
    let (u_plane, v_plane) = uv.split_at_mut(w * h / 4);
    for (i, px) in rgb.chunks_exact(3).enumerate() {
        let (r, g, b) = (px[0] as f32, px[1] as f32, px[2] as f32);
        y_plane[i] = (16.0 + 219.0 / 255.0 * (kr * r + kg * g + kb * b)).round() as u8;
    }
    for cy in 0..h / 2 {
        for cx in 0..w / 2 {
            let mut sum = [0f32; 3];
            for (dy, dx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                let p = ((2 * cy + dy) * w + 2 * cx + dx) * 3;
                for c in 0..3 {
                    sum[c] += rgb[p + c] as f32;
                }
            }
            let (r, g, b) = (sum[0] / 4.0, sum[1] / 4.0, sum[2] / 4.0);
            let y = kr * r + kg * g + kb * b;
            let cb = (b - y) / (2.0 * (1.0 - kb));
            let cr = (r - y) / (2.0 * (1.0 - kr));
            let idx = cy * (w / 2) + cx;
            u_plane[idx] = (128.0 + 224.0 / 255.0 * cb).round().clamp(16.0, 240.0) as u8;
            v_plane[idx] = (128.0 + 224.0 / 255.0 * cr).round().clamp(16.0, 240.0) as u8;
        }
    }
    out
}

/// Interleaved stereo f32 → raw AAC-LC access units, with the signal's true length and
/// the encoder delay recorded for the edit list.
fn encode_aac(samples: &[f32], rate: u32) -> Result<AudioTrack> {
    use fdk_aac::enc::{
        AudioObjectType, BitRate as AacRate, ChannelMode, Encoder as Aac, EncoderParams, Transport,
    };
    let channels = 2usize;
    if !samples.len().is_multiple_of(channels) || samples.is_empty() {
        return Err(Error::invalid(
            "audio",
            format!(
                "{} samples are not a non-empty interleaved stereo signal",
                samples.len()
            ),
        ));
    }
    let aerr = |e: fdk_aac::enc::EncoderError| Error::msg(format!("AAC encoder ({rate} Hz): {e}"));
    let encoder = Aac::new(EncoderParams {
        bit_rate: AacRate::Cbr(192_000),
        sample_rate: rate,
        transport: Transport::Raw,
        channels: ChannelMode::Stereo,
        audio_object_type: AudioObjectType::Mpeg4LowComplexity,
    })
    .map_err(aerr)?;
    let info = encoder.info().map_err(aerr)?;
    let frame_len = info.frameLength as usize;
    let delay = info.nDelay as usize;
    let config = info.confBuf[..info.confSize as usize].to_vec();
    let signal_frames = samples.len() / channels;
    // Zero padding flushes the encoder: every signal sample must come out of the delay line.
    let needed_units = (delay + signal_frames).div_ceil(frame_len);
    let mut pcm: Vec<i16> = samples.iter().map(|&x| to_i16(x)).collect();
    pcm.resize((needed_units + 2) * frame_len * channels, 0);
    let mut units = Vec::with_capacity(needed_units + 2);
    let mut out = vec![0u8; 8192];
    let mut pos = 0;
    while pos < pcm.len() && units.len() < needed_units {
        let end = (pos + frame_len * channels).min(pcm.len());
        let res = encoder.encode(&pcm[pos..end], &mut out).map_err(aerr)?;
        if res.input_consumed == 0 && res.output_size == 0 {
            break;
        }
        pos += res.input_consumed;
        if res.output_size > 0 {
            units.push(out[..res.output_size].to_vec());
        }
    }
    if units.len() < needed_units {
        return Err(Error::msg(format!(
            "AAC encoder returned {} of {needed_units} frames",
            units.len()
        )));
    }
    Ok(AudioTrack {
        sample_rate: rate,
        channels: channels as u16,
        config,
        samples: units,
        frames_per_sample: frame_len as u32,
        priming: delay as u32,
        signal_frames: signal_frames as u64,
    })
}
