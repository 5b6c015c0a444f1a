//! The server harness shared by the `phyai serve` tests: the real binary on the demo
//! checkpoint, driven over HTTP. Each test binary uses part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const TINY: &[(&str, &str)] = &[
    ("size", "32x32"),
    ("num_frames", "5"),
    ("steps", "2"),
    ("guidance_scale", "1"),
];

/// A running server, SIGKILLed on drop.
pub struct Server {
    pub child: Child,
    pub base: String,
    pub log: PathBuf,
    pub key: Option<String>,
    pub agent: ureq::Agent,
}

/// The demo checkpoint is made once per build and shared by every server of this file.
pub fn cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("serve-demo-cache")
}

impl Server {
    pub fn start(data: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let log = data.with_extension(format!("log{}", std::process::id()));
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_phyai"));
        cmd.args(["serve", "--port", "0", "--data-dir"])
            .arg(data)
            .args(extra)
            .env("PHYAI_CACHE", cache_dir())
            .env("PHYAI_LOG", "off")
            .env_remove("PHYAI_TEST_STALL_AT_STEP")
            .stdout(Stdio::piped())
            .stderr(log_file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start phyai serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("phyai serve: listening on ") {
                    let _ = tx.send(addr.to_string());
                }
            }
        });
        let base = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(b) => b,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "server did not start:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        };
        let key = extra
            .iter()
            .position(|a| *a == "--api-key")
            .map(|i| extra[i + 1].to_string());
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        Server {
            child,
            base,
            log,
            key,
            agent,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn auth<B>(&self, r: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.key {
            Some(k) => r.header("Authorization", format!("Bearer {k}")),
            None => r,
        }
    }

    /// (status, body bytes, content type)
    pub fn get_raw(&self, path: &str) -> (u16, Vec<u8>, String) {
        let mut r = self.auth(self.agent.get(self.url(path))).call().unwrap();
        let ct = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = r
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_vec()
            .unwrap();
        (r.status().as_u16(), body, ct)
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        let (s, b, _) = self.get_raw(path);
        (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
    }

    pub fn delete(&self, path: &str) -> (u16, Value) {
        let mut r = self.auth(self.agent.delete(self.url(path))).call().unwrap();
        let s = r.status().as_u16();
        (
            s,
            serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap(),
        )
    }

    pub fn post(&self, content_type: &str, body: &[u8]) -> (u16, Value) {
        let mut r = self
            .auth(self.agent.post(self.url("/v1/videos")))
            .header("Content-Type", content_type)
            .send(body)
            .unwrap();
        let s = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap();
        (s, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Sends only the head of a multipart POST whose body would be `len` bytes and
    /// reads the answer (a server refusing the size answers before the body).
    pub fn post_declared_length(&self, len: usize) -> (u16, Value) {
        use std::io::Write;
        let addr = self.base.trim_start_matches("http://");
        let mut tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            tcp,
            "POST /v1/videos HTTP/1.1\r\nHost: {addr}\r\nContent-Type: multipart/form-data; \
             boundary=x\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        let _ = tcp.read_to_string(&mut answer);
        let status = answer.split(' ').nth(1).unwrap().parse().unwrap();
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
        (status, serde_json::from_str(body).unwrap_or(Value::Null))
    }

    pub fn create(&self, fields: &[(&str, &str)], image: Option<&[u8]>) -> (u16, Value) {
        let (ct, body) = multipart(fields, image);
        self.post(&ct, &body)
    }

    pub fn create_ok(&self, prompt: &str, extra: &[(&str, &str)]) -> Value {
        let mut fields = vec![("prompt", prompt)];
        fields.extend_from_slice(TINY);
        fields.extend_from_slice(extra);
        let (s, v) = self.create(&fields, None);
        assert_eq!(s, 200, "{v}\n{}", self.log());
        assert_eq!(v["status"], "queued");
        v
    }

    /// Polls until the job's status is one of `want`, returning the video object.
    pub fn wait_for(&self, id: &str, want: &[&str]) -> Value {
        let start = Instant::now();
        loop {
            let (s, v) = self.get(&format!("/v1/videos/{id}"));
            assert_eq!(s, 200, "{v}");
            if want.contains(&v["status"].as_str().unwrap()) {
                return v;
            }
            assert!(
                start.elapsed() < Duration::from_secs(90),
                "{id} never reached {want:?}: {v}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Polls until the running job `id` has stalled in its denoising (test hook).
    pub fn wait_stalled(&self, id: &str) -> Value {
        let start = Instant::now();
        loop {
            let v = self.wait_for(id, &["in_progress"]);
            if v["stage"] == "denoise" && v["stage_progress"]["done"] == 1 {
                return v;
            }
            assert!(start.elapsed() < Duration::from_secs(90), "{v}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- server log ---\n{}", self.log());
        }
    }
}

pub fn multipart(fields: &[(&str, &str)], image: Option<&[u8]>) -> (String, Vec<u8>) {
    let files: Vec<(&str, &str, &[u8])> = image
        .map(|img| ("input_reference", "ref.png", img))
        .into_iter()
        .collect();
    multipart_files(fields, &files)
}

/// A multipart body with text `fields` and `files` as (field, file name, bytes).
pub fn multipart_files(
    fields: &[(&str, &str)],
    files: &[(&str, &str, &[u8])],
) -> (String, Vec<u8>) {
    let boundary = "phyaiTestBoundary7MA4YWxkTrZu0gW";
    let mut body = Vec::new();
    for (k, v) in fields {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n")
                .as_bytes(),
        );
    }
    for (name, file, bytes) in files {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; \
                 filename=\"{file}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

pub fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 8) as u8, (y * 8) as u8, 90]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// `width,height,frames` of the mp4's video stream, or None without ffprobe.
pub fn ffprobe(path: &Path) -> Option<String> {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=width,height,nb_read_frames",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub fn assert_error(s: u16, v: &Value, status: u16, param: Option<&str>, case: &str) {
    assert_eq!(s, status, "{case}: {v}");
    let e = &v["error"];
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{case}: {v}"
    );
    assert!(e["type"].is_string(), "{case}: {v}");
    assert!(
        e.get("code").is_some() && e.get("param").is_some(),
        "{case}: {v}"
    );
    if let Some(p) = param {
        assert_eq!(e["param"], p, "{case}: {v}");
    }
}
