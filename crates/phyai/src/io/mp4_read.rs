//! Reading an H.264 mp4 back as RGB frames (the conditioning video of video-to-video
//! continuation): the first video track's samples are located through its sample table
//! (`stsz`, `stsc`, `stco`/`co64`), turned from length-prefixed NAL units into an Annex-B
//! stream behind the `avcC` parameter sets, decoded with the bundled OpenH264 decoder and
//! converted to RGB with BT.709 limited-range coefficients (what [`super::video`] writes).

use std::path::Path;

use openh264::decoder::{DecodedYUV, Decoder};
use openh264::formats::YUVSource;

use crate::{Error, Result};

/// Decoded frames, packed RGB `[frames, height, width, 3]`.
pub struct RgbFrames {
    pub data: Vec<u8>,
    pub frames: usize,
    pub height: usize,
    pub width: usize,
}

/// Reads and decodes the first video track of the mp4 at `path`; errors name `field`.
pub fn read_mp4(path: &Path, field: &str) -> Result<RgbFrames> {
    let mut out = RgbFrames {
        data: Vec::new(),
        frames: 0,
        height: 0,
        width: 0,
    };
    decode_mp4(path, field, |yuv| push_frame(&mut out, yuv))?;
    Ok(out)
}

/// Decodes the whole first video track without keeping the pixels (so a clip is known to
/// be readable before it is used): its frame count, height and width.
pub fn probe_mp4(path: &Path, field: &str) -> Result<(usize, usize, usize)> {
    let (mut frames, mut size) = (0, (0, 0));
    decode_mp4(path, field, |yuv| {
        frames += 1;
        let (w, h) = yuv.dimensions();
        size = (h, w);
    })?;
    Ok((frames, size.0, size.1))
}

/// Decodes the first video track of the mp4 at `path`, handing each picture to `frame`;
/// errors name `field`. A track that decodes to no frames is an error.
fn decode_mp4(path: &Path, field: &str, mut frame: impl FnMut(&DecodedYUV<'_>)) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |msg: &str| Error::invalid(field, format!("{}: {msg}", path.display()));
    let track = video_track(&bytes).ok_or_else(|| bad("not an H.264 mp4 (no avc1 video track)"))?;
    let mut decoder = Decoder::new().map_err(|e| bad(&format!("H.264 decoder: {e}")))?;
    let mut frames = 0usize;
    let mut stream = Vec::new();
    for ps in track.sps.iter().chain(&track.pps) {
        stream.extend_from_slice(&[0, 0, 0, 1]);
        stream.extend_from_slice(ps);
    }
    for &(offset, size) in &track.samples {
        let sample = bytes
            .get(offset..offset + size)
            .ok_or_else(|| bad("a sample lies outside the file (truncated?)"))?;
        let mut pos = 0;
        while pos < sample.len() {
            let n = track.length_size;
            let len = sample
                .get(pos..pos + n)
                .ok_or_else(|| bad("truncated NAL length"))?
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | b as usize);
            let nal = sample
                .get(pos + n..pos + n + len)
                .ok_or_else(|| bad("truncated NAL unit"))?;
            stream.extend_from_slice(&[0, 0, 0, 1]);
            stream.extend_from_slice(nal);
            pos += n + len;
        }
        let decoded = decoder
            .decode(&stream)
            .map_err(|e| bad(&format!("H.264 decoding failed: {e}")))?;
        stream.clear();
        if let Some(yuv) = decoded {
            frame(&yuv);
            frames += 1;
        }
    }
    let rest = decoder
        .flush_remaining()
        .map_err(|e| bad(&format!("H.264 decoding failed: {e}")))?;
    for yuv in &rest {
        frame(yuv);
        frames += 1;
    }
    if frames == 0 {
        return Err(bad("the video track decodes to no frames"));
    }
    Ok(())
}

/// Appends one decoded picture as RGB (BT.709, limited range, chroma held over 2×2).
fn push_frame(out: &mut RgbFrames, yuv: &DecodedYUV<'_>) {
    let (w, h) = yuv.dimensions();
    let (sy, su, sv) = yuv.strides();
    let (yp, up, vp) = (yuv.y(), yuv.u(), yuv.v());
    let (kr, kb) = (0.2126f32, 0.0722f32);
    let kg = 1.0 - kr - kb;
    out.width = w;
    out.height = h;
    out.data.reserve(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            let l = (yp[y * sy + x] as f32 - 16.0) * 255.0 / 219.0;
            let cb = (up[(y / 2) * su + x / 2] as f32 - 128.0) * 255.0 / 224.0;
            let cr = (vp[(y / 2) * sv + x / 2] as f32 - 128.0) * 255.0 / 224.0;
            let r = l + 2.0 * (1.0 - kr) * cr;
            let b = l + 2.0 * (1.0 - kb) * cb;
            let g = (l - kr * r - kb * b) / kg;
            for v in [r, g, b] {
                out.data.push(v.round().clamp(0.0, 255.0) as u8);
            }
        }
    }
    out.frames += 1;
}

/// What the decoder needs from the first video track.
struct Track {
    sps: Vec<Vec<u8>>,
    pps: Vec<Vec<u8>>,
    /// Bytes of each NAL length prefix (1, 2 or 4).
    length_size: usize,
    /// (file offset, size) of every sample, in decoding order.
    samples: Vec<(usize, usize)>,
}

fn be(bytes: &[u8], at: usize, n: usize) -> Option<u64> {
    let s = bytes.get(at..at.checked_add(n)?)?;
    Some(s.iter().fold(0u64, |acc, &b| (acc << 8) | b as u64))
}

/// The child boxes of `data` as (type, payload).
fn boxes(data: &[u8]) -> Vec<(&[u8], &[u8])> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos + 8 <= data.len() {
        let Some(mut size) = be(data, pos, 4).map(|s| s as usize) else {
            break;
        };
        let kind = &data[pos + 4..pos + 8];
        let mut header = 8;
        if size == 1 {
            match be(data, pos + 8, 8) {
                Some(s) => size = s as usize,
                None => break,
            }
            header = 16;
        } else if size == 0 {
            size = data.len() - pos;
        }
        if size < header || pos + size > data.len() {
            break;
        }
        out.push((kind, &data[pos + header..pos + size]));
        pos += size;
    }
    out
}

fn child<'a>(data: &'a [u8], kind: &[u8]) -> Option<&'a [u8]> {
    boxes(data)
        .into_iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, p)| p)
}

fn video_track(file: &[u8]) -> Option<Track> {
    let moov = child(file, b"moov")?;
    for (kind, trak) in boxes(moov) {
        if kind != b"trak" {
            continue;
        }
        let mdia = child(trak, b"mdia")?;
        let hdlr = child(mdia, b"hdlr")?;
        if hdlr.get(8..12)? != b"vide" {
            continue;
        }
        let stbl = child(child(mdia, b"minf")?, b"stbl")?;
        return parse_stbl(stbl);
    }
    None
}

fn parse_stbl(stbl: &[u8]) -> Option<Track> {
    // stsd: version/flags, count, then the avc1 sample entry (8 + 78 bytes before its boxes).
    let stsd = child(stbl, b"stsd")?;
    let entry = stsd.get(8..)?;
    if entry.get(4..8)? != b"avc1" {
        return None;
    }
    let entry_size = be(entry, 0, 4)? as usize;
    let avcc = child(entry.get(86..entry_size)?, b"avcC")?;
    let length_size = (*avcc.get(4)? as usize & 3) + 1;
    let mut pos = 5;
    let sets = |count_mask: u8, pos: &mut usize| -> Option<Vec<Vec<u8>>> {
        let n = (avcc.get(*pos)? & count_mask) as usize;
        *pos += 1;
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let len = be(avcc, *pos, 2)? as usize;
            v.push(avcc.get(*pos + 2..*pos + 2 + len)?.to_vec());
            *pos += 2 + len;
        }
        Some(v)
    };
    let sps = sets(0x1f, &mut pos)?;
    let pps = sets(0xff, &mut pos)?;

    let stsz = child(stbl, b"stsz")?;
    let fixed = be(stsz, 4, 4)? as usize;
    let count = be(stsz, 8, 4)? as usize;
    let sizes: Vec<usize> = if fixed != 0 {
        vec![fixed; count]
    } else {
        (0..count)
            .map(|i| be(stsz, 12 + 4 * i, 4).map(|s| s as usize))
            .collect::<Option<_>>()?
    };
    let offsets: Vec<usize> = if let Some(stco) = child(stbl, b"stco") {
        let n = be(stco, 4, 4)? as usize;
        (0..n)
            .map(|i| be(stco, 8 + 4 * i, 4).map(|o| o as usize))
            .collect::<Option<_>>()?
    } else {
        let co64 = child(stbl, b"co64")?;
        let n = be(co64, 4, 4)? as usize;
        (0..n)
            .map(|i| be(co64, 8 + 8 * i, 8).map(|o| o as usize))
            .collect::<Option<_>>()?
    };
    let stsc = child(stbl, b"stsc")?;
    let runs: Vec<(usize, usize)> = (0..be(stsc, 4, 4)? as usize)
        .map(|i| {
            Some((
                be(stsc, 8 + 12 * i, 4)? as usize,
                be(stsc, 12 + 12 * i, 4)? as usize,
            ))
        })
        .collect::<Option<_>>()?;
    let mut samples = Vec::with_capacity(count);
    let mut next = sizes.iter();
    for (c, &offset) in offsets.iter().enumerate() {
        let chunk = c + 1;
        let per_chunk = runs
            .iter()
            .rev()
            .find(|(first, _)| *first <= chunk)
            .map(|r| r.1)?;
        let mut at = offset;
        for _ in 0..per_chunk {
            let Some(&size) = next.next() else { break };
            samples.push((at, size));
            at += size;
        }
    }
    Some(Track {
        sps,
        pps,
        length_size,
        samples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_videos_read_back_close_to_their_pixels() {
        let (t, h, w) = (3, 32, 48);
        let mut rgb = Vec::with_capacity(t * h * w * 3);
        for f in 0..t {
            for y in 0..h {
                for x in 0..w {
                    rgb.extend([(x * 5 + f * 20) as u8, (y * 6) as u8, 128u8]);
                }
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clip.mp4");
        super::super::video::write_mp4(&path, &rgb, t, h, w, 24.0, None).unwrap();
        let back = read_mp4(&path, "video").unwrap();
        assert_eq!((back.frames, back.height, back.width), (t, h, w));
        assert_eq!(probe_mp4(&path, "video").unwrap(), (t, h, w));
        let mse: f64 = rgb
            .iter()
            .zip(&back.data)
            .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
            .sum::<f64>()
            / rgb.len() as f64;
        let psnr = 10.0 * (255.0f64 * 255.0 / mse.max(1e-12)).log10();
        assert!(psnr > 30.0, "PSNR {psnr:.1} dB");
    }

    #[test]
    fn other_files_are_one_line_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.mp4");
        std::fs::write(&path, b"not a video at all").unwrap();
        let e = read_mp4(&path, "video").err().unwrap().to_string();
        assert!(
            e.starts_with("video: ") && e.contains("not an H.264 mp4"),
            "{e}"
        );
        assert!(!e.contains('\n'));
        let e = probe_mp4(&path, "control_edge").err().unwrap().to_string();
        assert!(e.starts_with("control_edge: "), "{e}");
    }
}
