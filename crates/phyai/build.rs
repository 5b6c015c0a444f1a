//! With the `cuda` feature, compiles CUDA kernels ahead of time so no GPU run has to wait
//! for the driver's PTX compiler:
//! - the project's own kernels (kernels/*.cu) to PTX (the text candle's module cache is
//!   keyed by) and to a fat binary;
//! - the candle kernel modules a generation loads, from the .cu sources of the candle-kernels
//!   crate this build uses, to fat binaries.
//!
//! A fat binary holds machine code for each of `PHYAI_CUDA_ARCHS` (default `90,100`: Hopper
//! and Blackwell) plus PTX for the oldest one, which the driver compiles only on other GPUs.
//! `layers::cuda::kernel_images` hands these images to the driver in place of the PTX.
//! The generated `kernel_images.rs` lists what was built; when the candle sources cannot be
//! found (set `PHYAI_CANDLE_KERNELS_SRC` to their `src/` folder) the list is empty and those
//! modules fall back to the driver's PTX compiler, with a build warning.
//! - with `PHYAI_FLASHINFER_DIR` (the `flashinfer/data` folder of the flashinfer-python
//!   wheel: its headers, CUTLASS and CCCL), kernels/fp8_attention_sm90.cu, FlashInfer's FP8
//!   attention for Hopper, into a static library linked into the binary (with the static
//!   CUDA runtime); the library then has `cfg(phyai_fp8_attention)`.
//!
//! Without the feature nothing is built and no CUDA toolkit is needed.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The project's own kernel modules (kernels/NAME.cu).
const OWN: &[&str] = &["audio", "fp8", "glue", "video"];
/// candle-kernels' modules that a generation can load (its quantized module is not used).
const CANDLE: &[&str] = &[
    "affine", "binary", "cast", "conv", "fill", "indexing", "reduce", "sort", "ternary", "unary",
];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=PHYAI_CUDA_ARCHS");
    println!("cargo:rerun-if-env-changed=PHYAI_CANDLE_KERNELS_SRC");
    println!("cargo:rerun-if-env-changed=PHYAI_FLASHINFER_DIR");
    println!("cargo:rustc-check-cfg=cfg(phyai_fp8_attention)");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    let archs = fatbin_archs();

    let mut jobs: Vec<Job> = Vec::new();
    for name in OWN {
        let src = PathBuf::from(format!("kernels/{name}.cu"));
        jobs.push(Job {
            src: src.clone(),
            dst: out.join(format!("{name}.ptx")),
            args: vec![
                "--ptx".into(),
                format!("-arch=compute_{cap}"),
                "-O3".into(),
                "--use_fast_math".into(),
                "-std=c++17".into(),
            ],
        });
        jobs.push(Job {
            src,
            dst: out.join(format!("{name}.fatbin")),
            args: [
                vec![
                    "--fatbin".into(),
                    "-O3".into(),
                    "--use_fast_math".into(),
                    "-std=c++17".into(),
                ],
                gencodes(&archs),
            ]
            .concat(),
        });
    }
    let candle_src = candle_kernels_src();
    match &candle_src {
        Some(dir) => {
            for name in CANDLE {
                let src = dir.join(format!("{name}.cu"));
                println!("cargo:rerun-if-changed={}", src.display());
                // candle-kernels' own flags, with a fat binary for the output.
                jobs.push(Job {
                    src,
                    dst: out.join(format!("candle_{name}.fatbin")),
                    args: [
                        vec![
                            "--fatbin".into(),
                            "-O3".into(),
                            "-std=c++17".into(),
                            "--expt-relaxed-constexpr".into(),
                            "--default-stream".into(),
                            "per-thread".into(),
                        ],
                        gencodes(&archs),
                    ]
                    .concat(),
                });
            }
        }
        None => println!(
            "cargo:warning=candle-kernels sources not found (set PHYAI_CANDLE_KERNELS_SRC): \
             candle's modules will be compiled from PTX by the driver at first use"
        ),
    }
    let flashinfer = std::env::var_os("PHYAI_FLASHINFER_DIR").map(PathBuf::from);
    match &flashinfer {
        Some(dir) => jobs.push(fp8_attention_job(dir, &out)),
        None => println!(
            "cargo:warning=PHYAI_FLASHINFER_DIR is not set: built without FP8 attention \
             (--fp8-attention will be refused)"
        ),
    }
    run_parallel(&jobs);
    if flashinfer.is_some() {
        link_fp8_attention(&out);
    }

    // The table the library includes.
    let entry = |name: &str, file: &str| {
        format!(
            "    ({name:?}, include_bytes!({:?})),\n",
            out.join(file).display().to_string()
        )
    };
    let mut table = String::from(
        "/// The project's modules: name, fat binary.\n\
         pub(crate) const OWN_IMAGES: &[(&str, &[u8])] = &[\n",
    );
    for name in OWN {
        table.push_str(&entry(name, &format!("{name}.fatbin")));
    }
    table.push_str(
        "];\n/// candle's modules: name, fat binary (empty when their sources were not found).\n\
         pub(crate) const CANDLE_IMAGES: &[(&str, &[u8])] = &[\n",
    );
    if candle_src.is_some() {
        for name in CANDLE {
            table.push_str(&entry(name, &format!("candle_{name}.fatbin")));
        }
    }
    table.push_str(&format!(
        "];\n/// The GPU architectures the images hold machine code for.\n\
         pub(crate) const IMAGE_ARCHS: &[u32] = &{archs:?};\n"
    ));
    let dst = out.join("kernel_images.rs");
    std::fs::write(&dst, table).unwrap_or_else(|e| panic!("writing {}: {e}", dst.display()));
}

/// FlashInfer's Hopper FP8 attention and its quantization kernels, host code included, as
/// an object for the static library (machine code for sm_90a only: the kernel uses Hopper's
/// wgmma and TMA).
fn fp8_attention_job(flashinfer: &Path, out: &Path) -> Job {
    for sub in ["include", "cutlass/include", "cccl/libcudacxx/include"] {
        let d = flashinfer.join(sub);
        assert!(
            d.is_dir(),
            "PHYAI_FLASHINFER_DIR: {} is missing (expected the flashinfer/data folder of the \
             flashinfer-python wheel)",
            d.display()
        );
    }
    let inc = |sub: &str| format!("-I{}", flashinfer.join(sub).display());
    Job {
        src: PathBuf::from("kernels/fp8_attention_sm90.cu"),
        dst: out.join("fp8_attention_sm90.o"),
        args: vec![
            "-c".into(),
            "-O3".into(),
            "-std=c++17".into(),
            "-DNDEBUG".into(),
            "--expt-relaxed-constexpr".into(),
            "--expt-extended-lambda".into(),
            "-Xcompiler=-fPIC".into(),
            // FlashInfer's headers need a newer CCCL than the compiler's own: theirs first.
            inc("cccl/libcudacxx/include"),
            inc("cccl/cub"),
            inc("cccl/thrust"),
            inc("include"),
            inc("cutlass/include"),
            inc("cutlass/tools/util/include"),
            "-w".into(),
            "-gencode=arch=compute_90a,code=sm_90a".into(),
        ],
    }
}

/// Archives the FP8 attention object and links it with the static CUDA runtime.
fn link_fp8_attention(out: &Path) {
    let lib = out.join("libphyai_fp8_attention.a");
    let _ = std::fs::remove_file(&lib);
    let status = Command::new("ar")
        .arg("crs")
        .arg(&lib)
        .arg(out.join("fp8_attention_sm90.o"))
        .status()
        .unwrap_or_else(|e| panic!("running ar: {e}"));
    assert!(status.success(), "ar failed on {}", lib.display());
    println!("cargo:rustc-link-search=native={}", out.display());
    println!("cargo:rustc-link-lib=static=phyai_fp8_attention");
    if let Some(root) = std::env::var_os("CUDA_ROOT").or_else(|| std::env::var_os("CUDA_PATH")) {
        println!(
            "cargo:rustc-link-search=native={}",
            Path::new(&root).join("lib").display()
        );
        println!(
            "cargo:rustc-link-search=native={}",
            Path::new(&root).join("lib64").display()
        );
    }
    for l in [
        "static=cudart_static",
        "dylib=stdc++",
        "dylib=dl",
        "dylib=rt",
    ] {
        println!("cargo:rustc-link-lib={l}");
    }
    println!("cargo:rustc-cfg=phyai_fp8_attention");
}

/// One nvcc invocation.
struct Job {
    src: PathBuf,
    dst: PathBuf,
    args: Vec<String>,
}

/// `PHYAI_CUDA_ARCHS` (comma-separated compute capabilities, e.g. `90,100`), sorted.
fn fatbin_archs() -> Vec<u32> {
    let text = std::env::var("PHYAI_CUDA_ARCHS").unwrap_or_else(|_| "90,100".into());
    let mut archs: Vec<u32> = text
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .unwrap_or_else(|_| panic!("PHYAI_CUDA_ARCHS: {s:?} is not a compute capability"))
        })
        .collect();
    archs.sort_unstable();
    archs.dedup();
    assert!(!archs.is_empty(), "PHYAI_CUDA_ARCHS is empty");
    archs
}

/// Machine code for every arch, PTX for the oldest (forward-compatible fallback).
fn gencodes(archs: &[u32]) -> Vec<String> {
    let mut args: Vec<String> = archs
        .iter()
        .map(|a| format!("-gencode=arch=compute_{a},code=sm_{a}"))
        .collect();
    args.push(format!(
        "-gencode=arch=compute_{0},code=compute_{0}",
        archs[0]
    ));
    args
}

/// The `src/` folder of the candle-kernels crate in Cargo.lock: `PHYAI_CANDLE_KERNELS_SRC`,
/// else the cargo registry's unpacked copy, else a vendored `vendor/candle-kernels`.
fn candle_kernels_src() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("PHYAI_CANDLE_KERNELS_SRC") {
        return Some(PathBuf::from(dir));
    }
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").ok()?);
    let workspace = manifest.parent()?.parent()?;
    let lock = std::fs::read_to_string(workspace.join("Cargo.lock")).ok()?;
    let version = locked_version(&lock, "candle-kernels")?;
    let vendored = workspace.join("vendor/candle-kernels/src");
    if vendored.join("unary.cu").is_file() {
        return Some(vendored);
    }
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))?;
    let registry = cargo_home.join("registry/src");
    let mut hits: Vec<PathBuf> = std::fs::read_dir(&registry)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join(format!("candle-kernels-{version}/src")))
        .filter(|p| p.join("unary.cu").is_file())
        .collect();
    hits.sort();
    hits.pop()
}

/// The version Cargo.lock pins for package `name`.
fn locked_version(lock: &str, name: &str) -> Option<String> {
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == format!("name = \"{name}\"") {
            let v = lines.next()?.trim();
            return v
                .strip_prefix("version = \"")?
                .strip_suffix('"')
                .map(str::to_string);
        }
    }
    None
}

/// Runs the nvcc jobs, a few at a time; panics naming the first failure.
fn run_parallel(jobs: &[Job]) {
    let width = std::thread::available_parallelism().map_or(2, |n| n.get().min(8));
    for batch in jobs.chunks(width) {
        std::thread::scope(|s| {
            let handles: Vec<_> = batch.iter().map(|j| s.spawn(move || nvcc(j))).collect();
            for h in handles {
                if let Err(e) = h.join().expect("nvcc thread panicked") {
                    panic!("{e}");
                }
            }
        });
    }
}

fn nvcc(job: &Job) -> Result<(), String> {
    let output = Command::new("nvcc")
        .args(&job.args)
        .arg("-o")
        .arg(&job.dst)
        .arg(&job.src)
        .output()
        .map_err(|e| {
            format!(
                "running nvcc for {}: {e} (is the CUDA compiler on PATH?)",
                job.src.display()
            )
        })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nvcc failed on {} ({}):\n{}",
            job.src.display(),
            job.args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}
