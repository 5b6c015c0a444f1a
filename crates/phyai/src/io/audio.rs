//! WAV (RIFF) writing and reading: 16-bit PCM, interleaved channels.

use std::path::Path;

use super::atomic::write_atomic;
use crate::{Error, Result};

/// Writes interleaved `samples` (`L R L R …` for stereo) in [−1, 1] as 16-bit PCM.
///
/// Values are clamped, scaled by 32767 and rounded to nearest; NaN becomes silence.
pub fn write_wav(path: &Path, samples: &[f32], channels: u16, rate: u32) -> Result<()> {
    if channels == 0 || rate == 0 {
        return Err(Error::invalid(
            "wav",
            format!("channels ({channels}) and sample rate ({rate}) must be positive"),
        ));
    }
    if !samples.len().is_multiple_of(channels as usize) {
        return Err(Error::invalid(
            "wav",
            format!(
                "{} samples do not split into {channels} channels",
                samples.len()
            ),
        ));
    }
    let data_len = samples.len() * 2;
    if data_len > (u32::MAX - 36) as usize {
        return Err(Error::invalid(
            "wav",
            "audio too long for a RIFF file (4 GiB)",
        ));
    }
    let block_align = channels * 2;
    let mut out = Vec::with_capacity(44 + data_len);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len as u32).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&channels.to_le_bytes());
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate * block_align as u32).to_le_bytes());
    out.extend_from_slice(&block_align.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&(data_len as u32).to_le_bytes());
    for &s in samples {
        out.extend_from_slice(&to_i16(s).to_le_bytes());
    }
    write_atomic(path, &out)
}

/// One float sample → 16-bit PCM.
pub fn to_i16(x: f32) -> i16 {
    if x.is_nan() {
        0
    } else {
        (x.clamp(-1.0, 1.0) * 32767.0).round() as i16
    }
}

/// A decoded WAV file.
#[derive(Debug, Clone, PartialEq)]
pub struct Wav {
    pub channels: u16,
    pub rate: u32,
    /// Interleaved samples scaled to [−1, 1] (`i16 / 32767`).
    pub samples: Vec<f32>,
}

/// Reads a 16-bit PCM WAV file (the format [`write_wav`] writes).
pub fn read_wav(path: &Path) -> Result<Wav> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |msg: &str| Error::invalid(path.display().to_string(), msg.to_string());
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(bad("not a RIFF/WAVE file"));
    }
    let mut pos = 12;
    let mut format: Option<(u16, u16, u32, u16)> = None;
    while pos + 8 <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let len = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().unwrap()) as usize;
        let body = bytes
            .get(pos + 8..pos + 8 + len)
            .ok_or_else(|| bad("truncated chunk"))?;
        match id {
            b"fmt " if len >= 16 => {
                let u16_at = |i: usize| u16::from_le_bytes([body[i], body[i + 1]]);
                let rate = u32::from_le_bytes(body[4..8].try_into().unwrap());
                format = Some((u16_at(0), u16_at(2), rate, u16_at(14)));
            }
            b"data" => {
                let (tag, channels, rate, bits) = format.ok_or_else(|| bad("data before fmt"))?;
                if tag != 1 || bits != 16 || channels == 0 {
                    return Err(bad("only 16-bit PCM is supported"));
                }
                let samples = body
                    .chunks_exact(2)
                    .map(|b| i16::from_le_bytes([b[0], b[1]]) as f32 / 32767.0)
                    .collect();
                return Ok(Wav {
                    channels,
                    rate,
                    samples,
                });
            }
            _ => {}
        }
        pos += 8 + len + (len & 1);
    }
    Err(bad("no data chunk"))
}
