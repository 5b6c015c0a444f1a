//! Transfer and continuation over `phyai serve`: control clips uploaded as `control_<hint>`
//! files, or a video as `input_reference`, give the same video as `phyai generate --control`
//! or `--video`, and bad requests are 4xx errors that leave no files behind.

use std::path::Path;
use std::process::Command;

mod serve_support;
use serve_support::*;

/// An H.264 clip of `frames` frames of drifting stripes (a stand-in for an edge map).
fn stripes_mp4(path: &Path, frames: usize, height: usize, width: usize) -> Vec<u8> {
    let mut rgb = Vec::with_capacity(frames * height * width * 3);
    for f in 0..frames {
        for y in 0..height {
            for x in 0..width {
                let v = if ((x + y + 2 * f) / 4) % 3 == 0 {
                    255
                } else {
                    0
                };
                rgb.extend([v, v, v]);
            }
        }
    }
    phyai::io::video::write_mp4(path, &rgb, frames, height, width, 24.0, None).unwrap();
    std::fs::read(path).unwrap()
}

fn decoded(path: &Path) -> (usize, usize, usize, Vec<u8>) {
    let v = phyai::io::mp4_read::read_mp4(path, "video").unwrap();
    (v.frames, v.height, v.width, v.data)
}

#[test]
fn transfer_jobs_match_the_cli_and_refuse_bad_controls() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let srv = Server::start(&data, &[], &[]);
    // The edge clip is 9 frames at another size (resized as the CLI does); depth is longer.
    let edge_path = tmp.path().join("edge.mp4");
    let depth_path = tmp.path().join("depth.mp4");
    let edge = stripes_mp4(&edge_path, 9, 48, 32);
    let depth = stripes_mp4(&depth_path, 13, 32, 32);
    let fields = [
        ("prompt", "a robot arm in a kitchen"),
        ("size", "32x32"),
        ("steps", "2"),
        ("guidance_scale", "1"),
        ("chunk_frames", "5"),
        ("conditional_frames", "1"),
        ("control_guidance", "1.5"),
    ];
    // Sent depth first: the canonical order puts edge first, and edge sets the length.
    let (ct, body) = multipart_files(
        &fields,
        &[
            ("control_depth", "depth.mp4", &depth),
            ("control_edge", "edge.mp4", &edge),
        ],
    );
    let (s, v) = srv.post(&ct, &body);
    assert_eq!(s, 200, "{v}\n{}", srv.log());
    assert_eq!(v["controls"], serde_json::json!(["edge", "depth"]));
    assert_eq!(
        (v["num_frames"].as_u64(), v["chunk_frames"].as_u64()),
        (Some(9), Some(5))
    );
    let id = v["id"].as_str().unwrap().to_string();
    let done = srv.wait_for(&id, &["completed", "failed"]);
    assert_eq!(done["status"], "completed", "{done}\n{}", srv.log());
    let (s, mp4, _) = srv.get_raw(&format!("/v1/videos/{id}/content"));
    assert_eq!(s, 200);
    let served = tmp.path().join("served.mp4");
    std::fs::write(&served, mp4).unwrap();

    // The same request through the CLI.
    let out = tmp.path().join("cli");
    let o = Command::new(env!("CARGO_BIN_EXE_phyai"))
        .args(["generate", "--prompt", fields[0].1])
        .args(["--width", "32", "--height", "32", "--steps", "2"])
        .args(["--guidance-scale", "1", "--chunk-frames", "5"])
        .args(["--conditional-frames", "1", "--control-guidance", "1.5"])
        .arg(format!("--control=depth={}", depth_path.display()))
        .arg(format!("--control=edge={}", edge_path.display()))
        .arg("--out")
        .arg(&out)
        .env("PHYAI_CACHE", cache_dir())
        .env("PHYAI_LOG", "off")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (f, h, w, served_px) = decoded(&served);
    assert_eq!((f, h, w), (9, 32, 32));
    let (_, _, _, cli_px) = decoded(&out.with_extension("mp4"));
    assert!(
        served_px == cli_px,
        "the served transfer differs from the CLI's"
    );

    // Bad transfer requests: 400s naming the field, nothing left in the inputs folder.
    let inputs_before = std::fs::read_dir(data.join("inputs")).unwrap().count();
    let garbage: &[u8] = b"not an mp4";
    let base: Vec<(&str, &str)> = fields.to_vec();
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut f = base.clone();
        f.extend_from_slice(extra);
        f
    };
    for (case, fs, files, param) in [
        (
            "unknown hint",
            with(&[]),
            vec![("control_normals", "n.mp4", &edge[..])],
            "control_normals",
        ),
        (
            "unreadable clip",
            with(&[]),
            vec![("control_edge", "e.mp4", garbage)],
            "control_edge",
        ),
        (
            "control with an image",
            with(&[]),
            vec![
                ("control_edge", "e.mp4", &edge[..]),
                ("input_reference", "ref.png", &png(32, 32)[..]),
            ],
            "input_reference",
        ),
        (
            "control with sound",
            with(&[("sound", "true")]),
            vec![("control_edge", "e.mp4", &edge[..])],
            "sound",
        ),
        (
            "conditional frames not below the chunk",
            with(&[("conditional_frames", "5")]),
            vec![("control_edge", "e.mp4", &edge[..])],
            "conditional_frames",
        ),
        (
            "a hint twice",
            with(&[]),
            vec![
                ("control_edge", "e.mp4", &edge[..]),
                ("control_edge", "e.mp4", &edge[..]),
            ],
            "control_edge",
        ),
    ] {
        // Later duplicates of a text field win in the server's reader.
        let (ct, body) = multipart_files(&fs, &files);
        let (s, v) = srv.post(&ct, &body);
        assert_error(s, &v, 400, Some(param), case);
    }
    let (s, v) = srv.post(
        "application/json",
        br#"{"prompt": "x", "control_edge": "edge.mp4"}"#,
    );
    assert_error(s, &v, 400, Some("control_edge"), "control clip in JSON");
    let inputs_after = std::fs::read_dir(data.join("inputs")).unwrap().count();
    assert_eq!(inputs_before, inputs_after, "refused requests left files");
}

/// Continuation over `phyai serve`: an mp4 sent as `input_reference` conditions the clip as
/// `phyai generate --video` does (same frames, same video); bad continuation requests are
/// 400s naming the field and leave no file.
#[test]
fn continuation_jobs_match_the_cli_and_refuse_bad_videos() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let srv = Server::start(&data, &[], &[]);
    // 7 frames at another size (resized to the request as the CLI does).
    let clip_path = tmp.path().join("clip.mp4");
    let clip = stripes_mp4(&clip_path, 7, 48, 32);
    let fields = [
        ("prompt", "the robot arm keeps stacking"),
        ("size", "32x32"),
        ("num_frames", "9"),
        ("steps", "2"),
        ("guidance_scale", "3"),
        ("condition_frames", "0,1"),
        ("condition_video_keep", "last"),
    ];
    let (ct, body) = multipart_files(&fields, &[("input_reference", "clip.mp4", &clip)]);
    let (s, v) = srv.post(&ct, &body);
    assert_eq!(s, 200, "{v}\n{}", srv.log());
    assert_eq!(
        (
            &v["video_to_video"],
            &v["image_to_video"],
            &v["condition_video_keep"]
        ),
        (
            &serde_json::json!(true),
            &serde_json::json!(false),
            &serde_json::json!("last")
        )
    );
    let id = v["id"].as_str().unwrap().to_string();
    let done = srv.wait_for(&id, &["completed", "failed"]);
    assert_eq!(done["status"], "completed", "{done}\n{}", srv.log());
    let (s, mp4, _) = srv.get_raw(&format!("/v1/videos/{id}/content"));
    assert_eq!(s, 200);
    let served = tmp.path().join("served.mp4");
    std::fs::write(&served, mp4).unwrap();

    // The same request through the CLI (the server's default seed and prompt style).
    let out = tmp.path().join("cli");
    let o = Command::new(env!("CARGO_BIN_EXE_phyai"))
        .args(["generate", "--prompt", fields[0].1])
        .args(["--width", "32", "--height", "32", "--num-frames", "9"])
        .args(["--steps", "2", "--guidance-scale", "3"])
        .args([
            "--condition-frames",
            "0,1",
            "--condition-video-keep",
            "last",
        ])
        .arg("--video")
        .arg(&clip_path)
        .arg("--out")
        .arg(&out)
        .env("PHYAI_CACHE", cache_dir())
        .env("PHYAI_LOG", "off")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (f, h, w, served_px) = decoded(&served);
    assert_eq!((f, h, w), (9, 32, 32));
    let (_, _, _, cli_px) = decoded(&out.with_extension("mp4"));
    assert!(
        served_px == cli_px,
        "the served continuation differs from the CLI's"
    );

    let inputs_before = std::fs::read_dir(data.join("inputs")).unwrap().count();
    // An mp4 that is not a readable video: an ftyp box and nothing else.
    let mut broken = clip[..8].to_vec();
    broken.extend_from_slice(&[0u8; 64]);
    let base = &fields[..5];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut f = base.to_vec();
        f.extend_from_slice(extra);
        f
    };
    for (case, fs, file, param) in [
        (
            "unreadable mp4",
            with(&[]),
            Some(&broken[..]),
            "input_reference",
        ),
        (
            "frame outside the clip",
            with(&[("condition_frames", "0,3")]),
            Some(&clip[..]),
            "condition_frames",
        ),
        (
            "bad keep",
            with(&[("condition_video_keep", "middle")]),
            Some(&clip[..]),
            "condition_video_keep",
        ),
        (
            "condition fields without a video",
            with(&[("condition_frames", "0")]),
            None,
            "condition_frames",
        ),
    ] {
        let files: Vec<(&str, &str, &[u8])> = file
            .map(|b| ("input_reference", "clip.mp4", b))
            .into_iter()
            .collect();
        let (ct, body) = multipart_files(&fs, &files);
        let (s, v) = srv.post(&ct, &body);
        assert_error(s, &v, 400, Some(param), case);
    }
    let inputs_after = std::fs::read_dir(data.join("inputs")).unwrap().count();
    assert_eq!(inputs_before, inputs_after, "refused requests left files");
}
