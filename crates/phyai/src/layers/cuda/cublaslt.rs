//! FP8 GEMMs through cuBLASLt: E4M3 × E4M3 with per-tensor scales read from device memory,
//! f32 accumulation, 16-bit output.
//!
//! Layout: a linear layer computes `y[m, n] = x[m, k] · W[n, k]ᵀ`. In cuBLAS's column-major
//! terms that is `yᵀ = op(W) · xᵀ` with `W` transposed ("TN", the only FP8 layout Hopper
//! runs): A = the weight codes (k × n, ld k, op T), B = the activation codes (k × m, ld k,
//! op N), D = the output (n × m, ld `ldd`). A row block of a fused weight (q | k | v) is its
//! own GEMM writing its rows of D in place, so each block keeps its own scale.
//!
//! One handle and 32 MiB workspace per (thread, stream); the heuristic's algorithm (or, with
//! `PHYAI_FP8_AUTOTUNE=1`, the fastest of its first few, timed on the first call's own
//! operands) is cached per shape, so steady-state calls only set the scale pointers.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::c_void;

use candle_core::DType;
use cudarc::cublaslt::{result as lt, sys};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtrMut};

use crate::{Error, Result};

const WORKSPACE_BYTES: usize = 32 << 20;

fn lt_err(what: &str, e: lt::CublasError) -> Error {
    Error::msg(format!("cuBLASLt {what}: {e:?}"))
}

/// One GEMM shape's descriptors and algorithm.
struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    a: sys::cublasLtMatrixLayout_t,
    b: sys::cublasLtMatrixLayout_t,
    d: sys::cublasLtMatrixLayout_t,
    algo: sys::cublasLtMatmulAlgo_t,
    /// With tuning on, the heuristic's candidates until the first call has timed them.
    candidates: Vec<sys::cublasLtMatmulAlgo_t>,
}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: created once by `Plan::new`, destroyed once here.
        unsafe {
            let _ = lt::destroy_matrix_layout(self.a);
            let _ = lt::destroy_matrix_layout(self.b);
            let _ = lt::destroy_matrix_layout(self.d);
            let _ = lt::destroy_matmul_desc(self.desc);
        }
    }
}

/// The key of a plan: `m`, `n`, `k`, `ldd`, output dtype, fast accumulation, and the
/// byte alignment of the A, B and D addresses (cuBLASLt assumes 256 unless told: a block
/// of a fused weight, or its rows of the output, may start at a smaller one).
type Key = (usize, usize, usize, usize, DType, bool, [u32; 3]);

/// How many of the heuristic's algorithms a tuned first call times.
const CANDIDATES: usize = 8;

/// Whether first calls time the candidates (`PHYAI_FP8_AUTOTUNE=1`). Off by default: at the
/// Nano generation shapes on an H100 the first pick was the fastest for the two large
/// products and the forward took as long either way (2086 against 2090 ms at W720).
fn autotune() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("PHYAI_FP8_AUTOTUNE").is_ok_and(|v| v == "1"))
}

/// Up to `count` algorithms for `plan`, best-first by cuBLASLt's heuristic; never empty.
///
/// # Safety
/// `handle`, `plan`'s descriptors and `pref` are live.
unsafe fn heuristic(
    handle: sys::cublasLtHandle_t,
    plan: &Plan,
    pref: sys::cublasLtMatmulPreference_t,
    count: usize,
) -> std::result::Result<Vec<sys::cublasLtMatmulAlgo_t>, lt::CublasError> {
    let mut results: Vec<sys::cublasLtMatmulHeuristicResult_t> = Vec::with_capacity(count);
    let mut got = 0i32;
    // SAFETY: `results` has room for `count` entries; cuBLASLt writes `got` of them.
    unsafe {
        sys::cublasLtMatmulAlgoGetHeuristic(
            handle,
            plan.desc,
            plan.a,
            plan.b,
            plan.d,
            plan.d,
            pref,
            count as i32,
            results.as_mut_ptr(),
            &mut got,
        )
        .result()?;
        results.set_len(got.clamp(0, count as i32) as usize);
    }
    let algos: Vec<_> = results
        .iter()
        .filter(|r| r.state == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS)
        .map(|r| r.algo)
        .collect();
    if algos.is_empty() {
        return Err(lt::CublasError(
            sys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED,
        ));
    }
    Ok(algos)
}

/// The largest power of two (at most 256) dividing `addr`.
fn alignment(addr: u64) -> u32 {
    1u32 << addr.trailing_zeros().min(8)
}

struct Context {
    handle: sys::cublasLtHandle_t,
    workspace: CudaSlice<u8>,
    plans: HashMap<Key, Plan>,
}

impl Drop for Context {
    fn drop(&mut self) {
        self.plans.clear();
        // SAFETY: created by `create_handle`, destroyed once.
        unsafe {
            let _ = lt::destroy_handle(self.handle);
        }
    }
}

thread_local! {
    static CONTEXTS: RefCell<HashMap<usize, Context>> = RefCell::new(HashMap::new());
}

fn out_type(dtype: DType) -> Result<sys::cudaDataType> {
    match dtype {
        DType::BF16 => Ok(sys::cudaDataType::CUDA_R_16BF),
        DType::F16 => Ok(sys::cudaDataType::CUDA_R_16F),
        d => Err(Error::msg(format!(
            "FP8 GEMM output must be bf16 or f16, got {d:?}"
        ))),
    }
}

fn set_desc<T>(
    desc: sys::cublasLtMatmulDesc_t,
    attr: sys::cublasLtMatmulDescAttributes_t,
    v: &T,
) -> Result<()> {
    // SAFETY: `v` is a live value of the type the attribute expects (checked by the caller).
    unsafe {
        lt::set_matmul_desc_attribute(desc, attr, (v as *const T).cast(), std::mem::size_of::<T>())
    }
    .map_err(|e| lt_err("set matmul attribute", e))
}

impl Plan {
    fn new(handle: sys::cublasLtHandle_t, key: Key) -> Result<Self> {
        use sys::cublasLtMatmulDescAttributes_t as A;
        let (m, n, k, ldd, dtype, fast, align) = key;
        let desc = lt::create_matmul_desc(
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cudaDataType::CUDA_R_32F,
        )
        .map_err(|e| lt_err("matmul descriptor", e))?;
        let e4m3 = sys::cudaDataType::CUDA_R_8F_E4M3;
        let layout = |t, rows: usize, cols: usize, ld: usize| {
            lt::create_matrix_layout(t, rows as u64, cols as u64, ld as i64)
                .map_err(|e| lt_err("matrix layout", e))
        };
        // Each piece is owned by `plan` as soon as it exists, so an error frees it.
        let mut plan = Self {
            desc,
            a: layout(e4m3, k, n, k)?,
            b: std::ptr::null_mut(),
            d: std::ptr::null_mut(),
            algo: sys::cublasLtMatmulAlgo_t { data: [0; 8] },
            candidates: Vec::new(),
        };
        plan.b = layout(e4m3, k, m, k)?;
        plan.d = layout(out_type(dtype)?, n, m, ldd)?;
        set_desc(desc, A::CUBLASLT_MATMUL_DESC_TRANSA, &1i32)?;
        set_desc(desc, A::CUBLASLT_MATMUL_DESC_TRANSB, &0i32)?;
        set_desc(desc, A::CUBLASLT_MATMUL_DESC_FAST_ACCUM, &(fast as i8))?;
        let pref = lt::create_matmul_pref().map_err(|e| lt_err("preference", e))?;
        let ws = WORKSPACE_BYTES as u64;
        use sys::cublasLtMatmulPreferenceAttributes_t as P;
        let aligns = [
            (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, align[0]),
            (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, align[1]),
            (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, align[2]),
            (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, align[2]),
        ];
        // SAFETY: a live preference; a u64 for the workspace, u32 for the alignments.
        let picked = unsafe {
            lt::set_matmul_pref_attribute(
                pref,
                P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                (&ws as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
            .and_then(|_| {
                for (attr, v) in &aligns {
                    lt::set_matmul_pref_attribute(
                        pref,
                        *attr,
                        (v as *const u32).cast(),
                        std::mem::size_of::<u32>(),
                    )?;
                }
                Ok(())
            })
            .and_then(|_| {
                let count = if autotune() { CANDIDATES } else { 1 };
                heuristic(handle, &plan, pref, count)
            })
        };
        // SAFETY: created above, destroyed once.
        unsafe {
            let _ = lt::destroy_matmul_pref(pref);
        }
        let found = picked.map_err(|e| {
            lt_err(
                &format!(
                    "no FP8 algorithm for m={m} n={n} k={k} (ld {ldd}, {dtype:?}, alignment {align:?})"
                ),
                e,
            )
        })?;
        plan.algo = found[0];
        if found.len() > 1 {
            plan.candidates = found;
        }
        Ok(plan)
    }
}

/// Operands of one FP8 GEMM, all device addresses on the caller's stream.
pub(crate) struct Fp8Gemm {
    /// Weight codes `[n, k]` (row-major), E4M3.
    pub w: u64,
    /// Activation codes `[m, k]` (row-major), E4M3.
    pub x: u64,
    /// `f32` weight and activation scales.
    pub w_scale: u64,
    pub x_scale: u64,
    /// Output `[m, ldd]` (row-major) at column offset already applied; `n` columns written.
    pub out: u64,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub ldd: usize,
    pub dtype: DType,
    /// Hopper's fast (less often promoted) accumulation; off for accuracy.
    pub fast_accum: bool,
}

/// Why a GEMM shape cannot run in FP8 (cuBLASLt's alignment rules), or `None`.
pub(crate) fn unsupported(k: usize, ldd: usize, row_offsets: &[usize]) -> Option<String> {
    if !k.is_multiple_of(16) {
        return Some(format!("inner dimension {k} is not a multiple of 16"));
    }
    if !ldd.is_multiple_of(8) || row_offsets.iter().any(|r| !r.is_multiple_of(8)) {
        return Some(format!(
            "output width {ldd} or a fused block is not a multiple of 8"
        ));
    }
    None
}

/// Enqueues `g` on `stream`.
pub(crate) fn fp8_gemm(stream: &std::sync::Arc<CudaStream>, g: &Fp8Gemm) -> Result<()> {
    use sys::cublasLtMatmulDescAttributes_t as A;
    let align = [alignment(g.w), alignment(g.x), alignment(g.out)];
    let key = (g.m, g.n, g.k, g.ldd, g.dtype, g.fast_accum, align);
    let cu = stream.cu_stream();
    CONTEXTS.with(|c| {
        let mut map = c.borrow_mut();
        let ctx = match map.entry(cu as usize) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let handle = lt::create_handle().map_err(|e| lt_err("create handle", e))?;
                // SAFETY: scratch for cuBLASLt only; never read by us.
                let workspace = unsafe { stream.alloc::<u8>(WORKSPACE_BYTES) }
                    .map_err(|e| Error::msg(format!("cuBLASLt workspace: {e}")))?;
                v.insert(Context {
                    handle,
                    workspace,
                    plans: HashMap::new(),
                })
            }
        };
        if !ctx.plans.contains_key(&key) {
            let plan = Plan::new(ctx.handle, key)?;
            ctx.plans.insert(key, plan);
        }
        let ws = ctx.workspace.device_ptr_mut(stream).0;
        let plan = ctx.plans.get_mut(&key).expect("inserted above");
        set_desc(
            plan.desc,
            A::CUBLASLT_MATMUL_DESC_A_SCALE_POINTER,
            &g.w_scale,
        )?;
        set_desc(
            plan.desc,
            A::CUBLASLT_MATMUL_DESC_B_SCALE_POINTER,
            &g.x_scale,
        )?;
        let run = |algo: &sys::cublasLtMatmulAlgo_t| {
            let (alpha, beta) = (1f32, 0f32);
            // SAFETY: the plan matches the operands' shapes and types; every address is a
            // live device buffer of at least the size the shapes imply, enqueued on `stream`.
            unsafe {
                lt::matmul(
                    ctx.handle,
                    plan.desc,
                    (&alpha as *const f32).cast::<c_void>(),
                    (&beta as *const f32).cast::<c_void>(),
                    g.w as *const c_void,
                    plan.a,
                    g.x as *const c_void,
                    plan.b,
                    g.out as *const c_void,
                    plan.d,
                    g.out as *mut c_void,
                    plan.d,
                    algo,
                    ws as *mut c_void,
                    WORKSPACE_BYTES,
                    cu as sys::cudaStream_t,
                )
            }
        };
        if !plan.candidates.is_empty() {
            let candidates = std::mem::take(&mut plan.candidates);
            plan.algo = fastest(stream, &candidates, &run, g)?;
        }
        run(&plan.algo).map_err(|e| {
            lt_err(
                &format!(
                    "FP8 matmul m={} n={} k={} ld {} alignment {align:?}",
                    g.m, g.n, g.k, g.ldd
                ),
                e,
            )
        })
    })
}

/// The fastest of `algos` on `g`'s own operands (each run twice untimed, then three times
/// between CUDA events); an algorithm that fails to launch is skipped. Writes `g.out`, which
/// the caller's real call then overwrites.
fn fastest(
    stream: &std::sync::Arc<CudaStream>,
    algos: &[sys::cublasLtMatmulAlgo_t],
    run: &dyn Fn(&sys::cublasLtMatmulAlgo_t) -> std::result::Result<(), lt::CublasError>,
    g: &Fp8Gemm,
) -> Result<sys::cublasLtMatmulAlgo_t> {
    use cudarc::driver::sys::CUevent_flags;
    const REPS: usize = 3;
    let cuda = |e: cudarc::driver::DriverError| Error::msg(format!("FP8 GEMM tuning: {e}"));
    let ctx = stream.context();
    let (start, end) = (
        ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(cuda)?,
        ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(cuda)?,
    );
    let mut best: Option<(f32, usize)> = None;
    let mut times = Vec::with_capacity(algos.len());
    for (i, algo) in algos.iter().enumerate() {
        if run(algo).and_then(|_| run(algo)).is_err() {
            times.push(f32::NAN);
            continue;
        }
        start.record(stream).map_err(cuda)?;
        let ok = (0..REPS).all(|_| run(algo).is_ok());
        end.record(stream).map_err(cuda)?;
        let ms = start.elapsed_ms(&end).map_err(cuda)? / REPS as f32;
        times.push(if ok { ms } else { f32::NAN });
        if ok && best.is_none_or(|(b, _)| ms < b) {
            best = Some((ms, i));
        }
    }
    let (ms, i) = best.ok_or_else(|| {
        Error::msg(format!(
            "no FP8 algorithm ran for m={} n={} k={}",
            g.m, g.n, g.k
        ))
    })?;
    tracing::info!(
        "FP8 GEMM m={} n={} k={}: candidate {i} of {} at {ms:.3} ms (first pick {:.3} ms; all {times:?})",
        g.m,
        g.n,
        g.k,
        algos.len(),
        times[0]
    );
    Ok(algos[i])
}
