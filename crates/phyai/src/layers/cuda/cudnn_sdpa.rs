//! Fused flash attention on CUDA through cuDNN's graph (backend) API, for bf16 and f16.
//!
//! The graph is the scaled-dot-product pattern cuDNN fuses into one flash-attention kernel:
//! `S = Q·Kᵀ`, `S·scale`, optional causal mask, softmax written as max / sub / exp / sum /
//! div (with the log-sum-exp statistics the pattern expects), `O = P·V`. Statistics stay in
//! f32 inside the kernel; only O is written, so memory is `O(S·D)` like the tiled path.
//!
//! Tensors are passed with their own strides (`[H, S, D]` with unit stride on `D`), so
//! callers need no transposes. An execution plan is built once per shape and thread (plan
//! building takes tens of milliseconds) and cached; every later call only binds pointers.
//! Shapes or dtypes cuDNN has no engine for return an error and the caller falls back to
//! the tiled path.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::c_void;
use std::rc::Rc;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{DevicePtr, DevicePtrMut};
use candle_core::cuda_backend::CudaStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};
use cudarc::cudnn::sys as dnn;
use dnn::cudnnBackendAttributeName_t as A;
use dnn::cudnnBackendAttributeType_t as T;
use dnn::cudnnBackendDescriptorType_t as K;
use half::{bf16, f16};

use super::cudnn_handle::{handle_for, Handle};
use crate::{Error, Result};

type DnnResult<R> = std::result::Result<R, String>;

fn check(status: dnn::cudnnStatus_t, what: &str) -> DnnResult<()> {
    if status == dnn::cudnnStatus_t::CUDNN_STATUS_SUCCESS {
        return Ok(());
    }
    let mut buf = vec![0u8; 512];
    // SAFETY: the buffer outlives the call and its length is passed.
    unsafe { dnn::cudnnGetLastErrorString(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Err(format!(
        "cuDNN {what}: {status:?} {}",
        String::from_utf8_lossy(&buf[..end])
    ))
}

/// One backend descriptor, destroyed on drop.
struct Desc(dnn::cudnnBackendDescriptor_t);

impl Drop for Desc {
    fn drop(&mut self) {
        // SAFETY: created by cudnnBackendCreateDescriptor and destroyed once.
        unsafe { dnn::cudnnBackendDestroyDescriptor(self.0) };
    }
}

impl Desc {
    fn new(kind: K) -> DnnResult<Self> {
        let mut d = std::ptr::null_mut();
        // SAFETY: out-pointer to a local.
        check(
            unsafe { dnn::cudnnBackendCreateDescriptor(kind, &mut d) },
            "create descriptor",
        )?;
        Ok(Desc(d))
    }

    fn set<V>(&self, name: A, ty: T, vals: &[V]) -> DnnResult<()> {
        // SAFETY: `vals` holds `len` elements of the type named by `ty`.
        check(
            unsafe {
                dnn::cudnnBackendSetAttribute(
                    self.0,
                    name,
                    ty,
                    vals.len() as i64,
                    vals.as_ptr().cast(),
                )
            },
            &format!("set {name:?}"),
        )
    }

    /// Reads up to `out.len()` elements of attribute `name` (of the type named by `ty`);
    /// returns how many the descriptor holds (with an empty `out`: the count alone).
    fn get<V>(&self, name: A, ty: T, out: &mut [V]) -> DnnResult<usize> {
        let mut n = 0i64;
        let ptr = if out.is_empty() {
            std::ptr::null_mut()
        } else {
            out.as_mut_ptr().cast::<c_void>()
        };
        // SAFETY: `out` has room for `len` elements of the type named by `ty`.
        check(
            unsafe {
                dnn::cudnnBackendGetAttribute(self.0, name, ty, out.len() as i64, &mut n, ptr)
            },
            &format!("get {name:?}"),
        )?;
        Ok(n.max(0) as usize)
    }

    fn set_descs(&self, name: A, descs: &[&Desc]) -> DnnResult<()> {
        let raw: Vec<_> = descs.iter().map(|d| d.0).collect();
        self.set(name, T::CUDNN_TYPE_BACKEND_DESCRIPTOR, &raw)
    }

    fn finalize(self, what: &str) -> DnnResult<Self> {
        // SAFETY: a live descriptor.
        check(unsafe { dnn::cudnnBackendFinalize(self.0) }, what)?;
        Ok(self)
    }
}

/// The global index of `cfg`'s engine and whether cuDNN compiles it at run time (NVRTC),
/// which costs a compilation per new shape on the first call.
fn engine_of(cfg: &Desc) -> DnnResult<(i64, bool)> {
    use dnn::cudnnBackendBehaviorNote_t as Note;
    let engine = Desc::new(K::CUDNN_BACKEND_ENGINE_DESCRIPTOR)?;
    cfg.get(
        A::CUDNN_ATTR_ENGINECFG_ENGINE,
        T::CUDNN_TYPE_BACKEND_DESCRIPTOR,
        &mut [engine.0],
    )?;
    let mut index = [-1i64];
    engine.get(
        A::CUDNN_ATTR_ENGINE_GLOBAL_INDEX,
        T::CUDNN_TYPE_INT64,
        &mut index,
    )?;
    let mut notes =
        [Note::CUDNN_BEHAVIOR_NOTE_TYPE_COUNT; Note::CUDNN_BEHAVIOR_NOTE_TYPE_COUNT as usize];
    let got = engine.get(
        A::CUDNN_ATTR_ENGINE_BEHAVIOR_NOTE,
        T::CUDNN_TYPE_BEHAVIOR_NOTE,
        &mut notes,
    )?;
    let rtc =
        notes[..got.min(notes.len())].contains(&Note::CUDNN_BEHAVIOR_NOTE_RUNTIME_COMPILATION);
    Ok((index[0], rtc))
}

/// Everything that makes two calls share an execution plan.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    ordinal: usize,
    dtype: DType,
    hq: usize,
    hkv: usize,
    sq: usize,
    sk: usize,
    d: usize,
    q_stride: [usize; 2],
    k_stride: [usize; 2],
    v_stride: [usize; 2],
    causal: bool,
}

struct Plan {
    handle: Rc<Handle>,
    plan: Desc,
    workspace: usize,
}

thread_local! {
    /// Plans built on this thread; `None` records a shape cuDNN has no engine for.
    static PLANS: RefCell<HashMap<Key, Option<Rc<Plan>>>> = RefCell::new(HashMap::new());
}

const UID_Q: i64 = 1;
const UID_K: i64 = 2;
const UID_V: i64 = 3;
const UID_O: i64 = 4;
const UID_SCALE: i64 = 5;
const UID_NEG: i64 = 6;

/// Builds the descriptors of one graph; keeps them alive until the plan is finalized.
struct Builder {
    next_uid: i64,
    io: dnn::cudnnDataType_t,
    keep: Vec<Desc>,
    ops: Vec<usize>,
}

impl Builder {
    fn tensor(
        &mut self,
        uid: Option<i64>,
        dims: [usize; 4],
        strides: [usize; 4],
        dt: dnn::cudnnDataType_t,
        by_value: bool,
    ) -> DnnResult<usize> {
        let is_virtual = uid.is_none();
        let uid = uid.unwrap_or_else(|| {
            self.next_uid += 1;
            self.next_uid
        });
        let t = Desc::new(K::CUDNN_BACKEND_TENSOR_DESCRIPTOR)?;
        t.set(
            A::CUDNN_ATTR_TENSOR_DATA_TYPE,
            T::CUDNN_TYPE_DATA_TYPE,
            &[dt],
        )?;
        let dims: Vec<i64> = dims.iter().map(|&x| x as i64).collect();
        let strides: Vec<i64> = strides.iter().map(|&x| x as i64).collect();
        t.set(A::CUDNN_ATTR_TENSOR_DIMENSIONS, T::CUDNN_TYPE_INT64, &dims)?;
        t.set(A::CUDNN_ATTR_TENSOR_STRIDES, T::CUDNN_TYPE_INT64, &strides)?;
        t.set(A::CUDNN_ATTR_TENSOR_UNIQUE_ID, T::CUDNN_TYPE_INT64, &[uid])?;
        t.set(
            A::CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT,
            T::CUDNN_TYPE_INT64,
            &[16i64],
        )?;
        t.set(
            A::CUDNN_ATTR_TENSOR_IS_VIRTUAL,
            T::CUDNN_TYPE_BOOLEAN,
            &[is_virtual],
        )?;
        if by_value {
            t.set(
                A::CUDNN_ATTR_TENSOR_IS_BY_VALUE,
                T::CUDNN_TYPE_BOOLEAN,
                &[true],
            )?;
        }
        self.keep.push(t.finalize("tensor")?);
        Ok(self.keep.len() - 1)
    }

    /// A virtual f32 tensor shaped like `[1, h, sq, cols]`, row-major.
    fn scores(&mut self, h: usize, sq: usize, cols: usize) -> DnnResult<usize> {
        self.scores_typed(h, sq, cols, dnn::cudnnDataType_t::CUDNN_DATA_FLOAT)
    }

    fn scores_typed(
        &mut self,
        h: usize,
        sq: usize,
        cols: usize,
        dt: dnn::cudnnDataType_t,
    ) -> DnnResult<usize> {
        self.tensor(
            None,
            [1, h, sq, cols],
            [h * sq * cols, sq * cols, cols, 1],
            dt,
            false,
        )
    }

    fn push_op(&mut self, op: Desc, what: &str) -> DnnResult<()> {
        self.keep.push(op.finalize(what)?);
        self.ops.push(self.keep.len() - 1);
        Ok(())
    }

    fn matmul(&mut self, a: usize, b: usize, c: usize) -> DnnResult<()> {
        let m = Desc::new(K::CUDNN_BACKEND_MATMUL_DESCRIPTOR)?;
        m.set(
            A::CUDNN_ATTR_MATMUL_COMP_TYPE,
            T::CUDNN_TYPE_DATA_TYPE,
            &[dnn::cudnnDataType_t::CUDNN_DATA_FLOAT],
        )?;
        let m = m.finalize("matmul")?;
        let op = Desc::new(K::CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR)?;
        op.set_descs(A::CUDNN_ATTR_OPERATION_MATMUL_ADESC, &[&self.keep[a]])?;
        op.set_descs(A::CUDNN_ATTR_OPERATION_MATMUL_BDESC, &[&self.keep[b]])?;
        op.set_descs(A::CUDNN_ATTR_OPERATION_MATMUL_CDESC, &[&self.keep[c]])?;
        op.set_descs(A::CUDNN_ATTR_OPERATION_MATMUL_DESC, &[&m])?;
        self.keep.push(m);
        self.push_op(op, "matmul op")
    }

    /// `y = mode(x[, b[, t]])`.
    fn pointwise(
        &mut self,
        mode: dnn::cudnnPointwiseMode_t,
        x: usize,
        b: Option<usize>,
        t: Option<usize>,
        y: usize,
        axis: Option<i64>,
    ) -> DnnResult<()> {
        let p = Desc::new(K::CUDNN_BACKEND_POINTWISE_DESCRIPTOR)?;
        p.set(
            A::CUDNN_ATTR_POINTWISE_MODE,
            T::CUDNN_TYPE_POINTWISE_MODE,
            &[mode],
        )?;
        p.set(
            A::CUDNN_ATTR_POINTWISE_MATH_PREC,
            T::CUDNN_TYPE_DATA_TYPE,
            &[dnn::cudnnDataType_t::CUDNN_DATA_FLOAT],
        )?;
        if let Some(axis) = axis {
            p.set(A::CUDNN_ATTR_POINTWISE_AXIS, T::CUDNN_TYPE_INT64, &[axis])?;
        }
        let p = p.finalize("pointwise")?;
        let op = Desc::new(K::CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR)?;
        op.set_descs(A::CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, &[&p])?;
        op.set_descs(A::CUDNN_ATTR_OPERATION_POINTWISE_XDESC, &[&self.keep[x]])?;
        if let Some(b) = b {
            op.set_descs(A::CUDNN_ATTR_OPERATION_POINTWISE_BDESC, &[&self.keep[b]])?;
        }
        if let Some(t) = t {
            op.set_descs(A::CUDNN_ATTR_OPERATION_POINTWISE_TDESC, &[&self.keep[t]])?;
        }
        op.set_descs(A::CUDNN_ATTR_OPERATION_POINTWISE_YDESC, &[&self.keep[y]])?;
        op.set(
            A::CUDNN_ATTR_OPERATION_POINTWISE_ALPHA1,
            T::CUDNN_TYPE_FLOAT,
            &[1f32],
        )?;
        if b.is_some() {
            op.set(
                A::CUDNN_ATTR_OPERATION_POINTWISE_ALPHA2,
                T::CUDNN_TYPE_FLOAT,
                &[1f32],
            )?;
        }
        self.keep.push(p);
        self.push_op(op, "pointwise op")
    }

    fn reduce(&mut self, op_kind: dnn::cudnnReduceTensorOp_t, x: usize, y: usize) -> DnnResult<()> {
        let r = Desc::new(K::CUDNN_BACKEND_REDUCTION_DESCRIPTOR)?;
        r.set(
            A::CUDNN_ATTR_REDUCTION_OPERATOR,
            T::CUDNN_TYPE_REDUCTION_OPERATOR_TYPE,
            &[op_kind],
        )?;
        r.set(
            A::CUDNN_ATTR_REDUCTION_COMP_TYPE,
            T::CUDNN_TYPE_DATA_TYPE,
            &[dnn::cudnnDataType_t::CUDNN_DATA_FLOAT],
        )?;
        let r = r.finalize("reduction")?;
        let op = Desc::new(K::CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR)?;
        op.set_descs(A::CUDNN_ATTR_OPERATION_REDUCTION_XDESC, &[&self.keep[x]])?;
        op.set_descs(A::CUDNN_ATTR_OPERATION_REDUCTION_YDESC, &[&self.keep[y]])?;
        op.set_descs(A::CUDNN_ATTR_OPERATION_REDUCTION_DESC, &[&r])?;
        self.keep.push(r);
        self.push_op(op, "reduction op")
    }
}

fn io_type(dtype: DType) -> DnnResult<dnn::cudnnDataType_t> {
    match dtype {
        DType::BF16 => Ok(dnn::cudnnDataType_t::CUDNN_DATA_BFLOAT16),
        DType::F16 => Ok(dnn::cudnnDataType_t::CUDNN_DATA_HALF),
        d => Err(format!("fused attention needs bf16 or f16, got {d:?}")),
    }
}

/// Builds the operation graph for `key` and the first execution plan cuDNN finalizes.
fn build_plan(key: &Key, stream: dnn::cudaStream_t) -> DnnResult<Plan> {
    use dnn::cudnnPointwiseMode_t as P;
    let f32t = dnn::cudnnDataType_t::CUDNN_DATA_FLOAT;
    let io = io_type(key.dtype)?;
    let handle = handle_for(stream).map_err(|e| e.to_string())?;

    let Key {
        hq, hkv, sq, sk, d, ..
    } = *key;
    let mut g = Builder {
        next_uid: 100,
        io,
        keep: Vec::new(),
        ops: Vec::new(),
    };
    let q = g.tensor(
        Some(UID_Q),
        [1, hq, sq, d],
        [hq * key.q_stride[0], key.q_stride[0], key.q_stride[1], 1],
        io,
        false,
    )?;
    // Kᵀ: the key tensor read with its sequence and feature strides swapped.
    let kt = g.tensor(
        Some(UID_K),
        [1, hkv, d, sk],
        [hkv * key.k_stride[0], key.k_stride[0], 1, key.k_stride[1]],
        io,
        false,
    )?;
    let v = g.tensor(
        Some(UID_V),
        [1, hkv, sk, d],
        [hkv * key.v_stride[0], key.v_stride[0], key.v_stride[1], 1],
        io,
        false,
    )?;
    // O is written token-major (`[Sq, Hq, D]`), the layout the output projection reads.
    let o = g.tensor(
        Some(UID_O),
        [1, hq, sq, d],
        [hq * sq * d, d, hq * d, 1],
        io,
        false,
    )?;
    let scale = g.tensor(Some(UID_SCALE), [1, 1, 1, 1], [1, 1, 1, 1], f32t, true)?;

    let s = g.scores(hq, sq, sk)?;
    g.matmul(q, kt, s)?;
    let scaled = g.scores(hq, sq, sk)?;
    g.pointwise(P::CUDNN_POINTWISE_MUL, s, Some(scale), None, scaled, None)?;
    let mut last = scaled;
    if key.causal {
        let i32t = dnn::cudnnDataType_t::CUDNN_DATA_INT32;
        let row = g.scores_typed(hq, sq, sk, i32t)?;
        g.pointwise(P::CUDNN_POINTWISE_GEN_INDEX, last, None, None, row, Some(2))?;
        let col = g.scores_typed(hq, sq, sk, i32t)?;
        g.pointwise(P::CUDNN_POINTWISE_GEN_INDEX, last, None, None, col, Some(3))?;
        let keep = g.scores_typed(hq, sq, sk, dnn::cudnnDataType_t::CUDNN_DATA_BOOLEAN)?;
        g.pointwise(P::CUDNN_POINTWISE_CMP_GE, row, Some(col), None, keep, None)?;
        let neg = g.tensor(Some(UID_NEG), [1, 1, 1, 1], [1, 1, 1, 1], f32t, true)?;
        let masked = g.scores(hq, sq, sk)?;
        g.pointwise(
            P::CUDNN_POINTWISE_BINARY_SELECT,
            last,
            Some(neg),
            Some(keep),
            masked,
            None,
        )?;
        last = masked;
    }
    let max = g.scores(hq, sq, 1)?;
    g.reduce(
        dnn::cudnnReduceTensorOp_t::CUDNN_REDUCE_TENSOR_MAX,
        last,
        max,
    )?;
    let sub = g.scores(hq, sq, sk)?;
    g.pointwise(P::CUDNN_POINTWISE_SUB, last, Some(max), None, sub, None)?;
    let exp = g.scores(hq, sq, sk)?;
    g.pointwise(P::CUDNN_POINTWISE_EXP, sub, None, None, exp, None)?;
    let sum = g.scores(hq, sq, 1)?;
    g.reduce(
        dnn::cudnnReduceTensorOp_t::CUDNN_REDUCE_TENSOR_ADD,
        exp,
        sum,
    )?;
    let log = g.scores(hq, sq, 1)?;
    g.pointwise(P::CUDNN_POINTWISE_LOG, sum, None, None, log, None)?;
    let stats = g.scores(hq, sq, 1)?;
    g.pointwise(P::CUDNN_POINTWISE_ADD, max, Some(log), None, stats, None)?;
    let p = g.scores_typed(hq, sq, sk, g.io)?;
    g.pointwise(P::CUDNN_POINTWISE_DIV, exp, Some(sum), None, p, None)?;
    g.matmul(p, v, o)?;

    let graph = Desc::new(K::CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR)?;
    graph.set(
        A::CUDNN_ATTR_OPERATIONGRAPH_HANDLE,
        T::CUDNN_TYPE_HANDLE,
        &[handle.0],
    )?;
    let ops: Vec<&Desc> = g.ops.iter().map(|&i| &g.keep[i]).collect();
    graph.set_descs(A::CUDNN_ATTR_OPERATIONGRAPH_OPS, &ops)?;
    let graph = graph.finalize("operation graph")?;

    let heur = Desc::new(K::CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR)?;
    heur.set_descs(A::CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, &[&graph])?;
    heur.set(
        A::CUDNN_ATTR_ENGINEHEUR_MODE,
        T::CUDNN_TYPE_HEUR_MODE,
        &[dnn::cudnnBackendHeurMode_t::CUDNN_HEUR_MODE_A],
    )?;
    let heur = heur.finalize("engine heuristics")?;
    let count = heur.get::<dnn::cudnnBackendDescriptor_t>(
        A::CUDNN_ATTR_ENGINEHEUR_RESULTS,
        T::CUDNN_TYPE_BACKEND_DESCRIPTOR,
        &mut [],
    )?;
    if count == 0 {
        return Err("cuDNN has no engine for this attention graph".into());
    }
    let cfgs: Vec<Desc> = (0..count)
        .map(|_| Desc::new(K::CUDNN_BACKEND_ENGINECFG_DESCRIPTOR))
        .collect::<DnnResult<_>>()?;
    let mut raw_cfgs: Vec<dnn::cudnnBackendDescriptor_t> = cfgs.iter().map(|c| c.0).collect();
    let got = heur.get(
        A::CUDNN_ATTR_ENGINEHEUR_RESULTS,
        T::CUDNN_TYPE_BACKEND_DESCRIPTOR,
        &mut raw_cfgs,
    )?;
    let mut last_err = String::from("no engine config");
    let cfgs = &cfgs[..got.min(cfgs.len())];
    let mut order: Vec<usize> = (0..cfgs.len()).collect();
    if prefer_precompiled() {
        // Stable: the heuristic's order within each group.
        order.sort_by_cached_key(|&i| engine_of(&cfgs[i]).map_or(true, |(_, rtc)| rtc));
    }
    for i in order {
        let cfg = &cfgs[i];
        let t0 = std::time::Instant::now();
        let plan = Desc::new(K::CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR)?;
        plan.set(
            A::CUDNN_ATTR_EXECUTION_PLAN_HANDLE,
            T::CUDNN_TYPE_HANDLE,
            &[handle.0],
        )?;
        plan.set_descs(A::CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, &[cfg])?;
        match plan.finalize("execution plan") {
            Ok(plan) => {
                let mut ws = [0i64];
                plan.get(
                    A::CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE,
                    T::CUDNN_TYPE_INT64,
                    &mut ws,
                )?;
                let built_ms = t0.elapsed().as_secs_f64() * 1e3;
                if tracing::enabled!(tracing::Level::INFO) {
                    // For the log only: an engine cuDNN will not describe is no error.
                    let (engine, rtc) = engine_of(cfg).unwrap_or((-1, true));
                    tracing::info!(
                        "attention plan {}x{}x{} (heads {}): engine {engine} (heuristic rank {i}, runtime-compiled {rtc}) built in {built_ms:.1} ms",
                        key.sq,
                        key.sk,
                        key.d,
                        key.hq,
                    );
                }
                return Ok(Plan {
                    handle,
                    plan,
                    workspace: ws[0].max(0) as usize,
                });
            }
            Err(e) => last_err = e,
        }
    }
    Err(last_err)
}

/// Whether engines cuDNN ships compiled go before runtime-compiled ones
/// (`PHYAI_CUDNN_PRECOMPILED=1`), to spare first calls the compilation.
fn prefer_precompiled() -> bool {
    std::env::var("PHYAI_CUDNN_PRECOMPILED").is_ok_and(|v| v == "1")
}

fn plan_for(key: &Key, stream: dnn::cudaStream_t) -> DnnResult<Rc<Plan>> {
    PLANS.with(|plans| {
        if let Some(found) = plans.borrow().get(key) {
            return found
                .clone()
                .ok_or_else(|| "cuDNN has no engine for this attention shape".to_string());
        }
        match build_plan(key, stream) {
            Ok(p) => {
                let p = Rc::new(p);
                plans.borrow_mut().insert(key.clone(), Some(p.clone()));
                Ok(p)
            }
            Err(e) => {
                tracing::warn!(
                    "fused attention unavailable for {key:?}, using the tiled path: {e}"
                );
                plans.borrow_mut().insert(key.clone(), None);
                Err(e)
            }
        }
    })
}

/// The candle op: three strided `[H, S, D]` inputs, one contiguous `[Sq, Hq, D]` output.
struct Sdpa {
    causal: bool,
}

/// Strides of a `[H, S, D]` layout as `[head, seq]`, if the last axis is unit-stride and every
/// address the kernel forms stays 16-byte aligned.
fn head_seq_strides(l: &Layout, elem: usize) -> candle_core::Result<[usize; 2]> {
    let st = l.stride();
    let ok = st.len() == 3
        && st[2] == 1
        && (st[0] * elem).is_multiple_of(16)
        && (st[1] * elem).is_multiple_of(16)
        && (l.start_offset() * elem).is_multiple_of(16);
    if !ok {
        candle_core::bail!("fused attention needs 16-byte aligned [H, S, D] rows, got {st:?}");
    }
    Ok([st[0], st[1]])
}

impl Sdpa {
    fn run<E: candle_core::cuda_backend::CudaDType + cudarc::driver::DeviceRepr>(
        &self,
        q: &CudaStorage,
        lq: &Layout,
        k: &CudaStorage,
        lk: &Layout,
        v: &CudaStorage,
        lv: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let elem = std::mem::size_of::<E>();
        let dev = q.device().clone();
        let stream = dev.cuda_stream();
        let (hq, sq, d) = lq.shape().dims3()?;
        let (hkv, sk, _) = lk.shape().dims3()?;
        let key = Key {
            ordinal: stream.cu_stream() as usize,
            dtype: q.dtype(),
            hq,
            hkv,
            sq,
            sk,
            d,
            q_stride: head_seq_strides(lq, elem)?,
            k_stride: head_seq_strides(lk, elem)?,
            v_stride: head_seq_strides(lv, elem)?,
            causal: self.causal,
        };
        let raw_stream = stream.cu_stream() as dnn::cudaStream_t;
        let plan = plan_for(&key, raw_stream).map_err(candle_core::Error::msg)?;
        // SAFETY: every element of `out` is written by the attention kernel.
        let mut out = unsafe { dev.alloc::<E>(hq * sq * d)? };
        // SAFETY: scratch memory for cuDNN, never read before it writes it.
        let mut ws = unsafe { dev.alloc::<u8>(plan.workspace.max(16))? };
        {
            let at = |s: &CudaStorage, l: &Layout| -> candle_core::Result<u64> {
                let slice = s.as_cuda_slice::<E>()?;
                let (p, _sync) = slice.device_ptr(&stream);
                Ok(p + (l.start_offset() * elem) as u64)
            };
            let (qp, kp, vp) = (at(q, lq)?, at(k, lk)?, at(v, lv)?);
            let (op, _so) = out.device_ptr_mut(&stream);
            let (wp, _sw) = ws.device_ptr_mut(&stream);
            let scale = 1.0f32 / (d as f32).sqrt();
            let neg = f32::MIN;
            let mut uids = vec![UID_Q, UID_K, UID_V, UID_O, UID_SCALE];
            let mut ptrs: Vec<*mut c_void> = vec![
                qp as *mut c_void,
                kp as *mut c_void,
                vp as *mut c_void,
                op as *mut c_void,
                (&scale as *const f32).cast_mut().cast(),
            ];
            if self.causal {
                uids.push(UID_NEG);
                ptrs.push((&neg as *const f32).cast_mut().cast());
            }
            let pack = (|| -> DnnResult<Desc> {
                let vp = Desc::new(K::CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR)?;
                vp.set(
                    A::CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS,
                    T::CUDNN_TYPE_INT64,
                    &uids,
                )?;
                vp.set(
                    A::CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS,
                    T::CUDNN_TYPE_VOID_PTR,
                    &ptrs,
                )?;
                vp.set(
                    A::CUDNN_ATTR_VARIANT_PACK_WORKSPACE,
                    T::CUDNN_TYPE_VOID_PTR,
                    &[wp as *mut c_void],
                )?;
                vp.finalize("variant pack")
            })()
            .map_err(candle_core::Error::msg)?;
            // SAFETY: handle (bound to this stream: it is part of the plan's key), plan and
            // variant pack are live; the pointers stay valid until the kernel is enqueued
            // (by-value scalars are read at enqueue time).
            unsafe {
                check(
                    dnn::cudnnBackendExecute(plan.handle.0, plan.plan.0, pack.0),
                    "execute attention",
                )
                .map_err(candle_core::Error::msg)?;
            }
        }
        drop(ws);
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev),
            Shape::from((sq, hq, d)),
        ))
    }
}

impl CustomOp3 for Sdpa {
    fn name(&self) -> &'static str {
        "cudnn-sdpa"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("cuDNN attention needs CUDA tensors")
    }

    fn cuda_fwd(
        &self,
        q: &CudaStorage,
        lq: &Layout,
        k: &CudaStorage,
        lk: &Layout,
        v: &CudaStorage,
        lv: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        if k.dtype() != q.dtype() || v.dtype() != q.dtype() {
            candle_core::bail!("fused attention: q, k, v dtypes differ");
        }
        match q.dtype() {
            DType::BF16 => self.run::<bf16>(q, lq, k, lk, v, lv),
            DType::F16 => self.run::<f16>(q, lq, k, lk, v, lv),
            d => candle_core::bail!("fused attention needs bf16 or f16, got {d:?}"),
        }
    }
}

/// Fused attention, or an error when cuDNN cannot run this shape/dtype (the caller then uses
/// the tiled path). Shapes as in [`crate::layers::attention::attention`].
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, causal: bool) -> Result<Tensor> {
    if !matches!(q.dtype(), DType::BF16 | DType::F16) {
        return Err(Error::msg("fused attention needs bf16 or f16"));
    }
    // The kernel writes `[Sq, Hq, D]`; callers get the `[Hq, Sq, D]` view.
    Ok(q.apply_op3_no_bwd(k, v, &Sdpa { causal })?
        .transpose(0, 1)?)
}
