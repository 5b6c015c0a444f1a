//! `phyai generate --action-mode …` end to end on the tiny action checkpoint: a policy run
//! writes the video and the predicted actions (`.actions.npy`, `.actions.json`, `action` in
//! the dump) equal to diffusers' (`refs/action_policy.safetensors`); bad action inputs are
//! one line and leave no file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{Device, Tensor};

#[path = "../../../tests/support/mod.rs"]
mod support;
use support::{fixtures, load_ref, rel_err};

fn phyai(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_phyai"))
        .args(args)
        .env("PHYAI_LOG", "off")
        .output()
        .expect("run phyai")
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn with(prefix: &Path, ext: &str) -> PathBuf {
    PathBuf::from(format!("{}{ext}", prefix.display()))
}

#[test]
fn policy_writes_video_and_actions() {
    let dir = tempfile::tempdir().unwrap();
    let r = load_ref("action_policy.safetensors");
    let noise: HashMap<String, Tensor> = [
        ("video".to_string(), r["init_video"].clone()),
        ("action".to_string(), r["init_action"].clone()),
    ]
    .into();
    let noise_file = dir.path().join("noise.safetensors");
    candle_core::safetensors::save(&noise, &noise_file).unwrap();
    let ckpt = fixtures().join("tiny_action");
    let image = fixtures().join("refs/action_small.png");
    let out = dir.path().join("step");
    let dump = dir.path().join("dump");
    let o = phyai(&[
        "generate",
        "--checkpoint",
        path(&ckpt),
        "--prompt",
        "A robot arm stacks three red cubes on a wooden table",
        "--action-mode",
        "policy",
        "--domain",
        "bridge_orig_lerobot",
        "--action-chunk",
        "4",
        "--resolution-tier",
        "256",
        "--image",
        path(&image),
        "--steps",
        "3",
        "--init-noise",
        path(&noise_file),
        "--dump-dir",
        path(&dump),
        "--out",
        path(&out),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(with(&out, ".mp4").exists());
    let npy = std::fs::read(with(&out, ".actions.npy")).unwrap();
    let m = phyai::io::npy::parse(&npy, "actions").unwrap();
    let got = Tensor::from_vec(m.data, (m.rows, m.cols), &Device::Cpu).unwrap();
    let err = rel_err(&got, &r["actions"]);
    println!("cli policy actions rel err {err:.2e}");
    assert!(err <= 1e-4, "actions rel err {err:e}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(with(&out, ".actions.json")).unwrap())
            .unwrap();
    assert_eq!(json["mode"], "policy");
    assert_eq!(json["actions"].as_array().unwrap().len(), 4);
    let dumped =
        candle_core::safetensors::load(dump.join("output.safetensors"), &Device::Cpu).unwrap();
    assert!(rel_err(&dumped["action"], &r["actions"]) <= 1e-4);
    assert!(rel_err(&dumped["video"], &r["video"]) <= 1e-4);
}

#[test]
fn bad_action_inputs_give_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let action_ckpt = fixtures().join("tiny_action");
    let plain_ckpt = fixtures().join("tiny");
    let image = fixtures().join("refs/action_small.png");
    let narrow = dir.path().join("narrow.json");
    std::fs::write(&narrow, "[[0.1, 0.2, 0.3]]").unwrap();
    let out = dir.path().join("bad");
    let base = |ckpt: &Path| {
        vec![
            "generate".to_string(),
            "--checkpoint".into(),
            path(ckpt).into(),
            "--prompt".into(),
            "stack the cubes".into(),
            "--action-chunk".into(),
            "4".into(),
            "--resolution-tier".into(),
            "256".into(),
            "--image".into(),
            path(&image).into(),
            "--steps".into(),
            "1".into(),
            "--out".into(),
            path(&out).into(),
            "--quiet".into(),
        ]
    };
    let cases: Vec<(&Path, Vec<&str>, &str)> = vec![
        (
            &action_ckpt,
            vec!["--action-mode", "policy", "--domain", "warehouse"],
            "--domain: unknown embodiment",
        ),
        (
            &action_ckpt,
            vec![
                "--action-mode",
                "forward-dynamics",
                "--domain",
                "fractal",
                "--actions",
                path(&narrow),
            ],
            "--actions: shape [1, 3], domain fractal needs [n, 10]",
        ),
        (
            &plain_ckpt,
            vec!["--action-mode", "policy", "--domain", "fractal"],
            "has no action heads",
        ),
        (
            &action_ckpt,
            vec![
                "--action-mode",
                "policy",
                "--domain",
                "fractal",
                "--num-frames",
                "9",
            ],
            "--num-frames: not with --action-mode",
        ),
        (
            &action_ckpt,
            vec!["--domain", "fractal"],
            "--domain: needs --action-mode",
        ),
        (
            &action_ckpt,
            vec![
                "--action-mode",
                "policy",
                "--domain",
                "fractal",
                "--view-point",
                "drone_view",
            ],
            "--view-point: expected ego_view, third_person_view, wrist_view or concat_view",
        ),
    ];
    for (ckpt, extra, needle) in cases {
        let mut args = base(ckpt);
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = phyai(&args);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{needle}: should fail");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{needle}: {stderr}");
        assert!(
            lines[0].starts_with("error: ") && lines[0].contains(needle),
            "{needle}: {}",
            lines[0]
        );
        for ext in [".mp4", ".actions.npy", ".actions.json"] {
            assert!(!with(&out, ext).exists(), "{needle}: left {ext}");
        }
    }
    // An action flag alone names itself.
    let o = phyai(&[
        "generate",
        "--checkpoint",
        path(&plain_ckpt),
        "--prompt",
        "x",
        "--view-point",
        "wrist_view",
        "--out",
        path(&out),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert_eq!(stderr.trim(), "error: --view-point: needs --action-mode");
}
