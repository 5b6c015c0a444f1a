//! With the `cuda` feature, compiles the project's own CUDA kernels (kernels/*.cu) to PTX
//! with nvcc; the PTX is embedded in the library and loaded by the driver at first use.
//! Without the feature nothing is built and no CUDA toolkit is needed.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    const KERNELS: &[&str] = &["audio", "fp8", "glue", "video"];
    for name in KERNELS {
        let src = format!("kernels/{name}.cu");
        let dst = out.join(format!("{name}.ptx"));
        let status = Command::new("nvcc")
            .args(["--ptx", "-O3", "--use_fast_math", "-std=c++17"])
            .arg(format!("-arch=compute_{cap}"))
            .arg("-o")
            .arg(&dst)
            .arg(&src)
            .status()
            .unwrap_or_else(|e| {
                panic!("running nvcc for {src}: {e} (is the CUDA compiler on PATH?)")
            });
        assert!(status.success(), "nvcc failed on {src}");
    }
}
