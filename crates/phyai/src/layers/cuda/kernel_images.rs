//! Compiled kernel images in place of PTX, so no run waits for the driver's PTX compiler.
//!
//! candle loads its kernel modules (and, through `get_or_load_custom_func`, ours) as PTX
//! text, which the driver compiles to machine code on first load: seconds per module on a
//! machine whose compute cache is empty. The build compiles the same sources to fat binaries
//! (machine code for the GPUs we target plus PTX for others; see build.rs). candle's module
//! cache is private and keyed by its PTX, so the substitution happens one level down: this
//! crate defines the driver entry point `cuModuleLoadData` that cudarc (dynamically linked
//! against the driver) calls, recognises a PTX image by its exact text, and passes the
//! matching fat binary to the driver's own function instead. Any other image goes through
//! unchanged, and a fat binary the driver refuses (a GPU it has no code for) is retried as
//! the original PTX, so behaviour never depends on the images being usable.
//! `PHYAI_KERNEL_IMAGES=0` turns the substitution off (to measure the PTX path).
//!
//! Every module load is timed: [`module_loads`] is the kernel set-up cost of a run.

use std::ffi::{c_void, CStr};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use candle_core::cuda_backend::cudarc::driver::sys::{cudaError_enum, CUmodule, CUresult};

include!(concat!(env!("OUT_DIR"), "/kernel_images.rs"));

/// One kernel module the driver loaded in this process.
#[derive(Debug, Clone, PartialEq)]
pub struct ModuleLoad {
    /// `candle unary`, `phyai glue`, or `other` for images this crate does not know.
    pub name: String,
    /// Loaded from a compiled image (no PTX compilation).
    pub compiled: bool,
    pub seconds: f64,
}

/// A module this build has a compiled image for, and the PTX text candle loads it as.
struct Known {
    name: String,
    ptx: &'static str,
    image: &'static [u8],
}

type LoadData = unsafe extern "C" fn(*mut CUmodule, *const c_void) -> CUresult;

static LOADS: Mutex<Vec<ModuleLoad>> = Mutex::new(Vec::new());

/// The PTX each compiled module replaces, by name.
fn ptx_of(name: &str) -> Option<&'static str> {
    use candle_kernels as k;
    Some(match name {
        "affine" => k::AFFINE.ptx(),
        "binary" => k::BINARY.ptx(),
        "cast" => k::CAST.ptx(),
        "conv" => k::CONV.ptx(),
        "fill" => k::FILL.ptx(),
        "indexing" => k::INDEXING.ptx(),
        "reduce" => k::REDUCE.ptx(),
        "sort" => k::SORT.ptx(),
        "ternary" => k::TERNARY.ptx(),
        "unary" => k::UNARY.ptx(),
        _ => return None,
    })
}

fn own_ptx(name: &str) -> Option<&'static str> {
    Some(match name {
        "glue" => super::glue::PTX,
        "video" => super::video::PTX,
        "audio" => super::audio::PTX,
        "fp8" => super::fp8::PTX,
        _ => return None,
    })
}

fn known() -> &'static [Known] {
    static KNOWN: OnceLock<Vec<Known>> = OnceLock::new();
    KNOWN.get_or_init(|| {
        let candle = CANDLE_IMAGES.iter().filter_map(|(n, image)| {
            Some(Known {
                name: format!("candle {n}"),
                ptx: ptx_of(n)?,
                image,
            })
        });
        let own = OWN_IMAGES.iter().filter_map(|(n, image)| {
            Some(Known {
                name: format!("phyai {n}"),
                ptx: own_ptx(n)?,
                image,
            })
        });
        candle.chain(own).collect()
    })
}

/// The modules this build ships compiled, and the GPU architectures they hold code for.
pub fn compiled_modules() -> (Vec<String>, &'static [u32]) {
    (
        known().iter().map(|k| k.name.clone()).collect(),
        IMAGE_ARCHS,
    )
}

/// Every module load of this process so far, in order.
pub fn module_loads() -> Vec<ModuleLoad> {
    ensure_linked();
    LOADS.lock().map(|l| l.clone()).unwrap_or_default()
}

/// Seconds spent loading kernel modules so far (the kernel set-up of this process).
pub fn setup_seconds() -> f64 {
    module_loads().iter().map(|l| l.seconds).sum()
}

/// Keeps the object holding [`cuModuleLoadData`] in every link that creates a CUDA device,
/// so cudarc's reference resolves to it rather than straight to the driver library.
pub fn ensure_linked() {
    std::hint::black_box(cuModuleLoadData as LoadData);
}

fn substitution_enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        std::env::var("PHYAI_KERNEL_IMAGES")
            .ok()
            .is_none_or(|v| v.trim() != "0")
    })
}

/// The driver library's own `cuModuleLoadData`.
fn driver_load() -> Option<LoadData> {
    static REAL: OnceLock<Option<LoadData>> = OnceLock::new();
    *REAL.get_or_init(|| {
        // SAFETY: loading the driver library runs its initialisers, as cudarc's first call
        // would; it is already loaded (cudarc links it), so this only takes a handle.
        let lib = unsafe { libloading::Library::new("libcuda.so.1") }.ok()?;
        // SAFETY: the symbol has the driver API's documented signature.
        let f = unsafe { lib.get::<LoadData>(b"cuModuleLoadData\0") }
            .ok()
            .map(|s| *s)?;
        // The function must outlive every call: keep the library loaded for good.
        std::mem::forget(lib);
        Some(f)
    })
}

/// The known module whose PTX `image` is, if it is PTX text at all (cubin and fat binary
/// images start with their magic numbers and are passed through).
///
/// # Safety
/// `image` is what `cuModuleLoadData` accepts: a NUL-terminated PTX string or a binary image.
unsafe fn identify(image: *const c_void) -> Option<&'static Known> {
    if image.is_null() {
        return None;
    }
    // SAFETY: every image the driver accepts is at least four bytes long.
    let head = unsafe { std::slice::from_raw_parts(image as *const u8, 4) };
    let elf = head == [0x7f, b'E', b'L', b'F'];
    let fatbin = head == [0x50, 0xed, 0x55, 0xba] || head == [0xb1, 0x43, 0x62, 0x46];
    if elf || fatbin {
        return None;
    }
    // SAFETY: not a binary image, so NUL-terminated PTX text.
    let text = unsafe { CStr::from_ptr(image as *const std::ffi::c_char) }.to_bytes();
    known()
        .iter()
        .find(|k| k.ptx.len() == text.len() && k.ptx.as_bytes() == text)
}

fn record(name: &str, compiled: bool, started: Instant) {
    if let Ok(mut l) = LOADS.lock() {
        l.push(ModuleLoad {
            name: name.to_string(),
            compiled,
            seconds: started.elapsed().as_secs_f64(),
        });
    }
}

/// The driver API's `cuModuleLoadData`, as cudarc calls it: a PTX image this build has a
/// compiled fat binary for is loaded from that binary; everything else is passed through.
/// Never unwinds (a panic across this boundary would abort).
///
/// # Safety
/// The driver API contract: `module` is writable, `image` a valid module image.
#[no_mangle]
pub unsafe extern "C" fn cuModuleLoadData(module: *mut CUmodule, image: *const c_void) -> CUresult {
    let Some(load) = driver_load() else {
        return cudaError_enum::CUDA_ERROR_NOT_INITIALIZED;
    };
    let started = Instant::now();
    // SAFETY: forwarded from the caller.
    let known = unsafe { identify(image) };
    if let (Some(k), true) = (known, substitution_enabled()) {
        // Fat binaries want 8-byte alignment; `include_bytes!` promises none.
        let mut aligned = vec![0u64; k.image.len().div_ceil(8)];
        // SAFETY: `aligned` holds at least `k.image.len()` bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(
                k.image.as_ptr(),
                aligned.as_mut_ptr() as *mut u8,
                k.image.len(),
            )
        };
        // SAFETY: a fat binary built for this purpose; the driver copies what it keeps.
        let r = unsafe { load(module, aligned.as_ptr() as *const c_void) };
        if r == cudaError_enum::CUDA_SUCCESS {
            record(&k.name, true, started);
            return r;
        }
        tracing::warn!(
            "kernel module {}: the compiled image was refused ({r:?}); compiling its PTX",
            k.name
        );
    }
    // SAFETY: forwarded from the caller.
    let r = unsafe { load(module, image) };
    if r == cudaError_enum::CUDA_SUCCESS {
        record(known.map_or("other", |k| k.name.as_str()), false, started);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_image_matches_a_module_and_is_a_fat_binary() {
        let (names, archs) = compiled_modules();
        assert_eq!(names.len(), CANDLE_IMAGES.len() + OWN_IMAGES.len());
        assert!(!archs.is_empty());
        for k in known() {
            assert_eq!(&k.image[..4], &[0x50, 0xed, 0x55, 0xba], "{}", k.name);
            let c = std::ffi::CString::new(k.ptx).unwrap();
            // SAFETY: a NUL-terminated string.
            let hit = unsafe { identify(c.as_ptr() as *const c_void) };
            assert_eq!(hit.map(|h| h.name.as_str()), Some(k.name.as_str()));
        }
        let other = std::ffi::CString::new(".version 8.0\n.target sm_90\n").unwrap();
        // SAFETY: as above.
        assert!(unsafe { identify(other.as_ptr() as *const c_void) }.is_none());
    }
}
