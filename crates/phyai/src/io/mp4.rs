//! A small ISO-BMFF (mp4) muxer: one H.264 video track and optionally one AAC audio track,
//! written non-fragmented with the `moov` index before the media data ("fast start"), so
//! browsers can begin playback before the whole file has arrived.
//!
//! Each track's samples are stored as one contiguous chunk. Video samples are AVCC
//! (4-byte length-prefixed NAL units) without parameter sets, which live in `avcC`.

/// H.264 samples and the stream parameters the `avcC` box needs.
pub struct VideoTrack {
    pub width: u16,
    pub height: u16,
    /// Frame rate as `timescale / frame_duration` (e.g. 24/1, 2997/100).
    pub timescale: u32,
    pub frame_duration: u32,
    pub sps: Vec<u8>,
    pub pps: Vec<u8>,
    /// One AVCC access unit per frame, in presentation order (no B-frames).
    pub samples: Vec<Vec<u8>>,
    /// Whether each sample is an IDR (sync) frame.
    pub sync: Vec<bool>,
}

/// AAC-LC access units (raw, 1024 PCM frames each) and their decoder configuration.
pub struct AudioTrack {
    pub sample_rate: u32,
    pub channels: u16,
    /// MPEG-4 AudioSpecificConfig.
    pub config: Vec<u8>,
    pub samples: Vec<Vec<u8>>,
    pub frames_per_sample: u32,
    /// Encoder priming: PCM frames at the start that are not part of the signal.
    pub priming: u32,
    /// PCM frames of real signal (what the edit list presents).
    pub signal_frames: u64,
}

const MOVIE_TIMESCALE: u32 = 1000;

/// Builds the complete file.
pub fn mux(video: &VideoTrack, audio: Option<&AudioTrack>) -> Vec<u8> {
    let ftyp = boxed(b"ftyp", |b| {
        b.extend_from_slice(b"isom");
        put32(b, 0x200);
        for brand in [b"isom", b"iso2", b"avc1", b"mp41"] {
            b.extend_from_slice(brand);
        }
    });
    let video_bytes: usize = video.samples.iter().map(Vec::len).sum();
    let audio_bytes: usize = audio.map_or(0, |a| a.samples.iter().map(Vec::len).sum());
    let payload = (video_bytes + audio_bytes) as u64;
    // Payloads past 4 GiB need the 64-bit box size and chunk offset forms.
    let large = payload + 16 > u32::MAX as u64;
    let mdat_header = if large { 16u64 } else { 8 };
    // The moov size does not depend on the offsets written into it, so build it once
    // to learn its size, then again with the real offsets.
    let probe = moov(video, audio, [0, 0], large);
    let video_off = (ftyp.len() + probe.len()) as u64 + mdat_header;
    let audio_off = video_off + video_bytes as u64;
    let moov = moov(video, audio, [video_off, audio_off], large);
    debug_assert_eq!(moov.len(), probe.len());

    let mut out = Vec::with_capacity(ftyp.len() + moov.len() + 8 + video_bytes + audio_bytes);
    out.extend_from_slice(&ftyp);
    out.extend_from_slice(&moov);
    if large {
        put32(&mut out, 1);
        out.extend_from_slice(b"mdat");
        out.extend_from_slice(&(payload + 16).to_be_bytes());
    } else {
        put32(&mut out, (payload + 8) as u32);
        out.extend_from_slice(b"mdat");
    }
    for s in &video.samples {
        out.extend_from_slice(s);
    }
    if let Some(a) = audio {
        for s in &a.samples {
            out.extend_from_slice(s);
        }
    }
    out
}

fn moov(video: &VideoTrack, audio: Option<&AudioTrack>, offsets: [u64; 2], wide: bool) -> Vec<u8> {
    let v_media = video.samples.len() as u64 * video.frame_duration as u64;
    let v_movie = rescale(v_media, video.timescale);
    let a_movie = audio.map_or(0, |a| rescale(a.signal_frames, a.sample_rate));
    boxed(b"moov", |b| {
        b.extend(boxed(b"mvhd", |m| {
            put32(m, 0); // version 0, flags
            put32(m, 0);
            put32(m, 0);
            put32(m, MOVIE_TIMESCALE);
            put32(m, v_movie.max(a_movie) as u32);
            put32(m, 0x0001_0000); // rate 1.0
            put16(m, 0x0100); // volume 1.0
            m.extend_from_slice(&[0; 10]);
            matrix(m);
            m.extend_from_slice(&[0; 24]);
            put32(m, if audio.is_some() { 3 } else { 2 }); // next track id
        }));
        b.extend(video_trak(video, v_movie, stco(offsets[0], wide)));
        if let Some(a) = audio {
            b.extend(audio_trak(a, a_movie, stco(offsets[1], wide)));
        }
    })
}

fn video_trak(v: &VideoTrack, movie_duration: u64, chunk_offsets: Vec<u8>) -> Vec<u8> {
    let media_duration = v.samples.len() as u64 * v.frame_duration as u64;
    boxed(b"trak", |t| {
        t.extend(tkhd(1, movie_duration, false, v.width, v.height));
        t.extend(boxed(b"mdia", |m| {
            m.extend(mdhd(v.timescale, media_duration));
            m.extend(hdlr(b"vide", "VideoHandler"));
            m.extend(boxed(b"minf", |i| {
                i.extend(boxed(b"vmhd", |h| {
                    put32(h, 1); // flags = 1
                    h.extend_from_slice(&[0; 8]);
                }));
                i.extend(dinf());
                i.extend(boxed(b"stbl", |s| {
                    s.extend(boxed(b"stsd", |d| {
                        put32(d, 0);
                        put32(d, 1);
                        d.extend(avc1(v));
                    }));
                    s.extend(stts(v.samples.len() as u32, v.frame_duration));
                    s.extend(boxed(b"stss", |x| {
                        put32(x, 0);
                        let idx: Vec<u32> = (0..v.sync.len())
                            .filter(|&i| v.sync[i])
                            .map(|i| i as u32 + 1)
                            .collect();
                        put32(x, idx.len() as u32);
                        idx.iter().for_each(|&i| put32(x, i));
                    }));
                    s.extend(stsc(v.samples.len() as u32));
                    s.extend(stsz(&v.samples));
                    s.extend(chunk_offsets);
                }));
            }));
        }));
    })
}

fn audio_trak(a: &AudioTrack, movie_duration: u64, chunk_offsets: Vec<u8>) -> Vec<u8> {
    let media_duration = a.samples.len() as u64 * a.frames_per_sample as u64;
    boxed(b"trak", |t| {
        t.extend(tkhd(2, movie_duration, true, 0, 0));
        // Edit list: skip the encoder priming, present exactly the signal's length.
        t.extend(boxed(b"edts", |e| {
            e.extend(boxed(b"elst", |l| {
                put32(l, 0);
                put32(l, 1);
                put32(l, movie_duration as u32);
                put32(l, a.priming);
                put32(l, 0x0001_0000);
            }));
        }));
        t.extend(boxed(b"mdia", |m| {
            m.extend(mdhd(a.sample_rate, media_duration));
            m.extend(hdlr(b"soun", "SoundHandler"));
            m.extend(boxed(b"minf", |i| {
                i.extend(boxed(b"smhd", |h| h.extend_from_slice(&[0; 8])));
                i.extend(dinf());
                i.extend(boxed(b"stbl", |s| {
                    s.extend(boxed(b"stsd", |d| {
                        put32(d, 0);
                        put32(d, 1);
                        d.extend(mp4a(a));
                    }));
                    s.extend(stts(a.samples.len() as u32, a.frames_per_sample));
                    s.extend(stsc(a.samples.len() as u32));
                    s.extend(stsz(&a.samples));
                    s.extend(chunk_offsets);
                }));
            }));
        }));
    })
}

fn avc1(v: &VideoTrack) -> Vec<u8> {
    boxed(b"avc1", |b| {
        b.extend_from_slice(&[0; 6]);
        put16(b, 1); // data reference index
        b.extend_from_slice(&[0; 16]);
        put16(b, v.width);
        put16(b, v.height);
        put32(b, 0x0048_0000); // 72 dpi
        put32(b, 0x0048_0000);
        put32(b, 0);
        put16(b, 1); // frame count
        b.extend_from_slice(&[0; 32]); // compressor name
        put16(b, 0x0018); // depth
        put16(b, 0xffff);
        b.extend(boxed(b"avcC", |c| {
            c.push(1);
            c.extend_from_slice(&v.sps[1..4]); // profile, compatibility, level
            c.push(0xff); // 4-byte NAL lengths
            c.push(0xe1); // one SPS
            put16(c, v.sps.len() as u16);
            c.extend_from_slice(&v.sps);
            c.push(1); // one PPS
            put16(c, v.pps.len() as u16);
            c.extend_from_slice(&v.pps);
        }));
    })
}

fn mp4a(a: &AudioTrack) -> Vec<u8> {
    boxed(b"mp4a", |b| {
        b.extend_from_slice(&[0; 6]);
        put16(b, 1);
        b.extend_from_slice(&[0; 8]);
        put16(b, a.channels);
        put16(b, 16);
        put32(b, 0);
        // 16.16 fixed point; rates above 65535 Hz are carried by the decoder config.
        put32(b, (a.sample_rate.min(65535)) << 16);
        b.extend(boxed(b"esds", |e| {
            put32(e, 0);
            let dsi = descriptor(0x05, &a.config);
            let mut dcd = vec![0x40, 0x15]; // MPEG-4 audio, audio stream
            dcd.extend_from_slice(&[0, 0, 0]); // buffer size
            let max = a.samples.iter().map(Vec::len).max().unwrap_or(0) as u32;
            dcd.extend_from_slice(&(max * 8 * a.sample_rate / a.frames_per_sample).to_be_bytes());
            dcd.extend_from_slice(&0u32.to_be_bytes()); // average bit rate unknown
            dcd.extend(dsi);
            let mut es = vec![0, 2, 0]; // ES id, flags
            es.extend(descriptor(0x04, &dcd));
            es.extend(descriptor(0x06, &[0x02]));
            e.extend(descriptor(0x03, &es));
        }));
    })
}

/// An MPEG-4 descriptor with the 4-byte length form every parser accepts.
fn descriptor(tag: u8, body: &[u8]) -> Vec<u8> {
    let n = body.len() as u32;
    let mut d = vec![
        tag,
        0x80 | ((n >> 21) & 0x7f) as u8,
        0x80 | ((n >> 14) & 0x7f) as u8,
        0x80 | ((n >> 7) & 0x7f) as u8,
        (n & 0x7f) as u8,
    ];
    d.extend_from_slice(body);
    d
}

fn tkhd(id: u32, duration: u64, audio: bool, width: u16, height: u16) -> Vec<u8> {
    boxed(b"tkhd", |b| {
        put32(b, 3); // enabled | in movie
        put32(b, 0);
        put32(b, 0);
        put32(b, id);
        put32(b, 0);
        put32(b, duration as u32);
        b.extend_from_slice(&[0; 8]);
        put16(b, 0); // layer
        put16(b, if audio { 1 } else { 0 }); // alternate group
        put16(b, if audio { 0x0100 } else { 0 });
        put16(b, 0);
        matrix(b);
        put32(b, (width as u32) << 16);
        put32(b, (height as u32) << 16);
    })
}

fn mdhd(timescale: u32, duration: u64) -> Vec<u8> {
    boxed(b"mdhd", |b| {
        put32(b, 0);
        put32(b, 0);
        put32(b, 0);
        put32(b, timescale);
        put32(b, duration as u32);
        put16(b, 0x55c4); // "und"
        put16(b, 0);
    })
}

fn hdlr(kind: &[u8; 4], name: &str) -> Vec<u8> {
    boxed(b"hdlr", |b| {
        put32(b, 0);
        put32(b, 0);
        b.extend_from_slice(kind);
        b.extend_from_slice(&[0; 12]);
        b.extend_from_slice(name.as_bytes());
        b.push(0);
    })
}

fn dinf() -> Vec<u8> {
    boxed(b"dinf", |d| {
        d.extend(boxed(b"dref", |r| {
            put32(r, 0);
            put32(r, 1);
            r.extend(boxed(b"url ", |u| put32(u, 1))); // media in this file
        }));
    })
}

fn stts(count: u32, delta: u32) -> Vec<u8> {
    boxed(b"stts", |b| {
        put32(b, 0);
        put32(b, 1);
        put32(b, count);
        put32(b, delta);
    })
}

/// All samples of the track in one chunk.
fn stsc(count: u32) -> Vec<u8> {
    boxed(b"stsc", |b| {
        put32(b, 0);
        put32(b, 1);
        put32(b, 1);
        put32(b, count);
        put32(b, 1);
    })
}

fn stsz(samples: &[Vec<u8>]) -> Vec<u8> {
    boxed(b"stsz", |b| {
        put32(b, 0);
        put32(b, 0);
        put32(b, samples.len() as u32);
        samples.iter().for_each(|s| put32(b, s.len() as u32));
    })
}

fn stco(offset: u64, wide: bool) -> Vec<u8> {
    if wide {
        boxed(b"co64", |b| {
            put32(b, 0);
            put32(b, 1);
            b.extend_from_slice(&offset.to_be_bytes());
        })
    } else {
        boxed(b"stco", |b| {
            put32(b, 0);
            put32(b, 1);
            put32(b, offset as u32);
        })
    }
}

fn matrix(b: &mut Vec<u8>) {
    for v in [0x0001_0000u32, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000] {
        put32(b, v);
    }
}

/// `value` in `timescale` units → movie timescale (rounded to nearest).
fn rescale(value: u64, timescale: u32) -> u64 {
    (value * MOVIE_TIMESCALE as u64 + timescale as u64 / 2) / timescale as u64
}

fn boxed(kind: &[u8; 4], fill: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut b = vec![0, 0, 0, 0];
    b.extend_from_slice(kind);
    fill(&mut b);
    let n = b.len() as u32;
    b[..4].copy_from_slice(&n.to_be_bytes());
    b
}

fn put32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_be_bytes());
}

fn put16(b: &mut Vec<u8>, v: u16) {
    b.extend_from_slice(&v.to_be_bytes());
}
