//! The Cosmos3 mixture-of-transformers denoiser.
//!
//! One physical layer holds two experts: the text ("und") expert, causal over the prompt,
//! and the generation ("gen") expert, whose video/sound tokens attend over the text K/V and
//! their own. The text side never reads the generation tokens, so [`Cosmos3Transformer::und`]
//! runs once per prompt and [`Cosmos3Transformer::velocity`] once per step, reusing its
//! [`UndKv`] — the same velocity as recomputing the whole joint sequence every step.
//!
//! Sequence parallelism (Ulysses, over the mesh's sp axis) splits the generation tokens —
//! video, sound, then action — contiguously over the sp ranks: each embeds, transforms and final-norms
//! only its shard, the tower exchanges heads for tokens around attention, and the shards are
//! gathered before the output projections, so every rank returns the whole velocity. The
//! text tower is not split (it runs once per prompt).
//!
//! Unused for generation: `lm_head` and the text tower's final `norm` (see
//! [`UNUSED_WEIGHT_PREFIXES`]).

pub mod action;
pub mod block;
pub mod config;
pub mod embed;
pub mod gen;
mod pair;
pub mod positions;
pub mod und;

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

pub use action::{ActionHeads, ActionTokens};
pub use config::TransformerConfig;
pub use und::UndKv;

use crate::io::weights::{WeightStore, Weights};
use crate::layers::fp8::{
    known_amax, ActivationPrecision, Fp8Context, Fp8Source, ModulePatterns, PrecisionSwitch,
    QuantConfig, Quantize, StepPolicy,
};
use crate::layers::linear::Linear;
use crate::layers::rope::MultiAxisRope;
use crate::parallel::Group;
use crate::parallel::RankMesh;
use crate::{Error, Result};
use embed::{patchify, unpatchify, SoundHeads, TimestepEmbedder};
use gen::{noisy_token_mask, GenTower};
use und::UndTower;

/// Checkpoint keys the generation path never reads.
pub const UNUSED_WEIGHT_PREFIXES: &[&str] = &["lm_head.", "norm."];

/// What one denoising step feeds the generation tower.
pub struct GenInputs<'a> {
    /// Current video latent `[1, latent_channel, t, h, w]` (model dtype).
    pub video: &'a Tensor,
    /// Current sound latent `[1, sound_dim, T]`, when the request generates sound.
    pub sound: Option<&'a Tensor>,
    /// The model-facing timestep of this step (e.g. 999), shared by video and sound tokens;
    /// scaled by `timestep_scale` inside.
    pub timestep: f64,
    /// One flag per latent frame: true when the frame is being denoised (timestep added,
    /// velocity predicted), false for clean conditioning frames.
    pub noisy_frames: &'a [bool],
    /// Video frame rate (drives the temporal rotary positions).
    pub fps: f64,
}

/// Velocities of one step: video `[1, C, t, h, w]` (zeros at clean frames), sound `[1, C, T]`.
pub struct GenOutput {
    pub video: Tensor,
    pub sound: Option<Tensor>,
}

/// One branch's generation stream of a step on this rank (see `Cosmos3Transformer::stream`).
struct Stream {
    tokens: Tensor,
    positions: Vec<[f32; 3]>,
    shard: crate::layers::sp::SeqShard,
    grid: embed::PatchGrid,
    n_context: usize,
    /// Context and video tokens.
    n_video: usize,
    n_sound: usize,
    n_action: usize,
}

pub struct Cosmos3Transformer {
    cfg: TransformerConfig,
    und: UndTower,
    gen: GenTower,
    rope: MultiAxisRope,
    proj_in: Linear,
    proj_out: Linear,
    time: TimestepEmbedder,
    sound: Option<SoundHeads>,
    /// Checkpoints trained with `action_gen`: the action token projections.
    action: Option<ActionHeads>,
    /// The sequence-parallel group the generation tokens are split over.
    sp: Group,
    dtype: DType,
    device: Device,
    /// FP8 layers: the generation tower's activation precision and the checkpoint's step
    /// policy (`None` for a 16-bit model).
    fp8: Option<Fp8State>,
    /// Rotary tables of the last generation calls and the positions they were built for:
    /// every step of a request has the same token layouts (one per branch), so the host-side
    /// trigonometry (millions of angles at 720p) runs once per request, not once per step.
    rope_cache: RopeCache,
}

type RopeCache = std::sync::Arc<std::sync::Mutex<Vec<(Vec<[f32; 3]>, Tensor, Tensor)>>>;

/// Layouts the rotary cache keeps: one per branch of a step (transfer runs three: with the
/// controls, without them, and the unconditional prompt with them).
const ROPE_CACHE_LAYOUTS: usize = 3;

/// The FP8 side of a quantized model.
struct Fp8State {
    gen: PrecisionSwitch,
    policy: Option<StepPolicy>,
}

/// Where the config of a checkpoint's transformer lives (named in config errors when the
/// weights do not say).
const CONFIG_FILE: &str = "transformer/config.json";

/// The FP8 contexts of the text and generation towers: from the checkpoint's
/// `quantization_config`, else from `--quantize fp8` (published ignore list and step
/// policy, dynamic activation scales), else none. A checkpoint that is already quantized
/// keeps its own scheme whatever `quantize` says.
fn fp8_contexts(
    cfg: &TransformerConfig,
    quantize: Option<Quantize>,
    config_file: &Path,
) -> Result<Option<(Fp8Context, Fp8Context, Option<StepPolicy>)>> {
    let (source, ignore, policy) = match (&cfg.quantization_config, quantize) {
        (Some(q), _) => {
            let q = QuantConfig::parse(config_file, q)?;
            (Fp8Source::Checkpoint, q.ignore, q.policy)
        }
        (None, Some(Quantize::Fp8)) => (
            Fp8Source::Online,
            ModulePatterns::published_ignore(),
            Some(StepPolicy::PUBLISHED),
        ),
        (None, None) => return Ok(None),
    };
    let ignore = Arc::new(ignore);
    let und = policy.map_or(ActivationPrecision::W8A8, |p| p.reasoner);
    let ctx = |p| Fp8Context {
        source: source.clone(),
        ignore: ignore.clone(),
        precision: PrecisionSwitch::new(p),
    };
    Ok(Some((ctx(und), ctx(ActivationPrecision::W8A8), policy)))
}

/// Whether FP8 attention can run for a model whose linear layers are FP8 (`fp8_model`) on
/// `device`: an error naming `fp8_attention` when not (checkable before loading weights).
pub fn check_fp8_attention(fp8_model: bool, device: &candle_core::Device) -> Result<()> {
    let why = if !fp8_model {
        "needs an FP8 transformer (an FP8 checkpoint or --quantize fp8)"
    } else if !device.is_cuda() {
        "needs a CUDA device"
    } else if !crate::layers::attention::fp8_available(device) {
        "this build has no FP8 attention kernels (build with PHYAI_FLASHINFER_DIR set)"
    } else {
        return Ok(());
    };
    Err(Error::invalid("fp8_attention", why))
}

impl Cosmos3Transformer {
    /// Builds the model from checkpoint weights (dtype and device of `w`), unsharded.
    pub fn new(cfg: &TransformerConfig, w: Weights) -> Result<Self> {
        Self::new_sharded(cfg, w, &Group::single())
    }

    /// Builds this rank's shard: heads and MLP channels split over `tp`.
    pub fn new_sharded(cfg: &TransformerConfig, w: Weights, tp: &Group) -> Result<Self> {
        Self::new_parallel(cfg, w, tp, Group::single())
    }

    /// Builds this rank's shard of a tp group, whose generation tokens are split over `sp`;
    /// the heads of this rank must split evenly over `sp`.
    pub fn new_parallel(
        cfg: &TransformerConfig,
        w: Weights,
        tp: &Group,
        sp: Group,
    ) -> Result<Self> {
        Self::new_quantized(cfg, w, tp, sp, None)
    }

    /// Like [`Self::new_parallel`]; a checkpoint whose config has a `quantization_config`
    /// loads its FP8 layers, and `quantize` quantizes a 16-bit one at load.
    pub fn new_quantized(
        cfg: &TransformerConfig,
        w: Weights,
        tp: &Group,
        sp: Group,
        quantize: Option<Quantize>,
    ) -> Result<Self> {
        sp.local_heads(
            tp.local(cfg.num_key_value_heads, "num_key_value_heads")?,
            "num_key_value_heads",
        )?;
        sp.local_heads(
            tp.local(cfg.num_attention_heads, "num_attention_heads")?,
            "num_attention_heads",
        )?;
        cfg.validate(Path::new("transformer/config.json"))?;
        let section = cfg.mrope_section();
        let section: [usize; 3] = section.as_slice().try_into().map_err(|_| {
            Error::invalid(
                "rope_scaling.mrope_section",
                format!("{section:?} needs 3 entries"),
            )
        })?;
        let pd = cfg.patch_latent_dim;
        let h = cfg.hidden_size;
        // The config sits next to the weights (named in quantization_config errors).
        let config_file = match w.store().origin().parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.join("config.json"),
            _ => Path::new(CONFIG_FILE).to_path_buf(),
        };
        let (und_w, gen_w, fp8) = match fp8_contexts(cfg, quantize, &config_file)? {
            Some((und, gen, policy)) => {
                let state = Fp8State {
                    gen: gen.precision.clone(),
                    policy,
                };
                (w.with_fp8(Some(und)), w.with_fp8(Some(gen)), Some(state))
            }
            None => (w.clone(), w.clone(), None),
        };
        // The embedders and output heads follow the generation tower's context: they are
        // on the ignore list, and an FP8 tensor there is reported rather than misread.
        let w = gen_w.clone();
        let sound = match cfg.sound_channels() {
            Some(c) => Some(SoundHeads::load(&w, c, h)?),
            None => None,
        };
        let action = match (cfg.action_gen, cfg.action_dim) {
            (true, Some(d)) => Some(ActionHeads::load(&w, d, h, cfg.num_embodiment_domains)?),
            _ => None,
        };
        Ok(Self {
            cfg: cfg.clone(),
            und: UndTower::load(&und_w, cfg, tp)?,
            gen: GenTower::load(&gen_w, cfg, tp)?,
            rope: MultiAxisRope::new(cfg.head_dim, cfg.rope_theta, section)?,
            proj_in: Linear::load(&w.pp("proj_in"), pd, h, true)?,
            proj_out: Linear::load(&w.pp("proj_out"), h, pd, true)?,
            time: TimestepEmbedder::load(&w.pp("time_embedder"), h)?,
            sound,
            action,
            sp,
            dtype: w.dtype(),
            device: w.device().clone(),
            fp8,
            rope_cache: RopeCache::default(),
        })
    }

    /// Opens `dir` (`*.safetensors` or a sharded index) and builds this rank's shard of
    /// the tensor-parallel group of `mesh`, splitting generation tokens over its sp group.
    pub fn load(
        dir: &Path,
        cfg: &TransformerConfig,
        dtype: DType,
        device: &Device,
        mesh: &RankMesh,
    ) -> Result<Self> {
        Self::load_quantized(dir, cfg, dtype, device, mesh, None)
    }

    /// [`Self::load`] with optional online quantization (`--quantize`).
    pub fn load_quantized(
        dir: &Path,
        cfg: &TransformerConfig,
        dtype: DType,
        device: &Device,
        mesh: &RankMesh,
        quantize: Option<Quantize>,
    ) -> Result<Self> {
        let store = Arc::new(WeightStore::open_dir(dir)?);
        let w = Weights::new(store, dtype, device);
        Self::new_quantized(
            cfg,
            w,
            &Group::new(mesh.tp.clone()),
            Group::new(mesh.sp.clone()),
            quantize,
        )
    }

    /// Whether the linear layers are FP8 (a quantized checkpoint or `--quantize fp8`).
    pub fn is_fp8(&self) -> bool {
        self.fp8.is_some()
    }

    /// Runs the generation tower's attention in FP8 (E4M3 q, k, v with per-head scales, FP8
    /// tensor-core products) in the steps whose linear layers run W8A8; the step policy's
    /// W8A16 steps keep bf16 attention. Needs an FP8 model on a CUDA device of a build with
    /// the FP8 attention kernels; otherwise an error naming `fp8_attention`.
    pub fn enable_fp8_attention(&mut self) -> Result<()> {
        check_fp8_attention(self.fp8.is_some(), &self.device)?;
        if let Some(f) = &self.fp8 {
            self.gen.set_fp8_attention(Some(f.gen.clone()));
        }
        Ok(())
    }

    /// The step policy of an FP8 model (`None`: every step W8A8, or a 16-bit model).
    pub fn step_policy(&self) -> Option<StepPolicy> {
        self.fp8.as_ref().and_then(|f| f.policy)
    }

    /// Sets the generation tower's activation precision for the following velocity calls
    /// (a no-op for a 16-bit model). The text tower's precision is fixed by the policy.
    pub fn set_activation_precision(&self, p: ActivationPrecision) {
        if let Some(f) = &self.fp8 {
            f.gen.set(p);
        }
    }

    /// While alive, the generation tower's glue kernels hand the maxima of their outputs to
    /// the FP8 GEMMs after them (W8A8 steps of an FP8 model; see
    /// [`crate::layers::fp8::known_amax`]).
    pub(crate) fn fp8_amax_scope(&self) -> known_amax::Wanted {
        let on = self
            .fp8
            .as_ref()
            .is_some_and(|f| f.gen.get() == ActivationPrecision::W8A8);
        known_amax::Wanted::new(on)
    }

    /// Applies the step policy for loop iteration `index` of `count` (W8A8 when the model
    /// has no policy): what the denoising loop calls before each step's velocities.
    pub fn begin_step(&self, index: usize, count: usize) {
        let p = self
            .step_policy()
            .map_or(ActivationPrecision::W8A8, |p| p.precision_at(index, count));
        self.set_activation_precision(p);
    }

    /// The action heads, when the checkpoint was trained with `action_gen`.
    pub fn action_heads(&self) -> Option<&ActionHeads> {
        self.action.as_ref()
    }

    pub fn config(&self) -> &TransformerConfig {
        &self.cfg
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Text K/V of one prompt (ids as the processor produced them, no padding).
    pub fn und(&self, text_ids: &[u32]) -> Result<UndKv> {
        self.und.forward(text_ids, &self.rope, self.dtype)
    }

    /// Shapes and values a step cannot run with, as errors naming the input.
    fn check_inputs(&self, inputs: &GenInputs) -> Result<()> {
        let c = self.cfg.latent_channel;
        let dims = inputs.video.dims();
        if dims.len() != 5 || dims[0] != 1 || dims[1] != c || dims[2..].contains(&0) {
            return Err(Error::invalid(
                "video latent",
                format!("shape {dims:?}, expected [1, {c}, t, h, w] with t, h, w ≥ 1"),
            ));
        }
        if inputs.noisy_frames.len() != dims[2] {
            return Err(Error::invalid(
                "noisy frames",
                format!(
                    "{} flags for {} latent frames",
                    inputs.noisy_frames.len(),
                    dims[2]
                ),
            ));
        }
        if inputs.fps.is_nan() || inputs.fps <= 0.0 {
            return Err(Error::invalid(
                "fps",
                format!("{} must be positive", inputs.fps),
            ));
        }
        if let Some(s) = inputs.sound {
            let heads = self.sound.as_ref().ok_or_else(|| {
                Error::invalid("sound", "this checkpoint does not generate sound")
            })?;
            let sd = s.dims();
            if sd.len() != 3 || sd[0] != 1 || sd[1] != heads.channels() || sd[2] == 0 {
                return Err(Error::invalid(
                    "sound latent",
                    format!("shape {sd:?}, expected [1, {}, T]", heads.channels()),
                ));
            }
        }
        Ok(())
    }

    /// `cos`/`sin` for `positions`, from the cache when the layout is the last call's.
    fn gen_rope_tables(&self, positions: Vec<[f32; 3]>) -> Result<(Tensor, Tensor)> {
        let mut cache = self
            .rope_cache
            .lock()
            .map_err(|_| crate::Error::msg("rotary table cache poisoned by a failed rank"))?;
        if let Some((_, cos, sin)) = cache.iter().find(|(p, _, _)| *p == positions) {
            return Ok((cos.clone(), sin.clone()));
        }
        let (cos, sin) = self.rope.tables(&positions, self.dtype, &self.device)?;
        if cache.len() == ROPE_CACHE_LAYOUTS {
            cache.remove(0);
        }
        cache.push((positions, cos.clone(), sin.clone()));
        Ok((cos, sin))
    }

    /// The velocity of one step for one CFG branch.
    pub fn velocity(&self, und: &UndKv, inputs: &GenInputs) -> Result<GenOutput> {
        Ok(self.velocity_full(und, &[], inputs, None)?.0)
    }

    /// [`Self::velocity`] with the action tokens of an action-conditioned request after the
    /// video and sound tokens; also returns the action velocity `[chunk, action_dim]`
    /// (zeros at clean steps).
    pub fn velocity_with_action(
        &self,
        und: &UndKv,
        inputs: &GenInputs,
        action: Option<&ActionTokens>,
    ) -> Result<(GenOutput, Option<Tensor>)> {
        self.velocity_full(und, &[], inputs, action)
    }

    /// The velocity of one step with clean vision items before the video (transfer's control
    /// latents, `[1, latent_channel, t, h, w]` each, the video's shape): each is a further
    /// vision item of the sequence, all of whose frames are clean (no timestep embedding,
    /// no prediction), with its own positions from the same media offset as the video's. The
    /// generation tokens are `[context… | video | sound]`; only the video's are predicted.
    pub fn velocity_in_context(
        &self,
        und: &UndKv,
        context: &[Tensor],
        inputs: &GenInputs,
    ) -> Result<GenOutput> {
        Ok(self.velocity_full(und, context, inputs, None)?.0)
    }

    /// One step's forward with everything a request can add to the generation stream:
    /// clean context items before the video and action tokens after the sound.
    fn velocity_full(
        &self,
        und: &UndKv,
        context: &[Tensor],
        inputs: &GenInputs,
        action: Option<&ActionTokens>,
    ) -> Result<(GenOutput, Option<Tensor>)> {
        let action = self.checked_action(action)?;
        let st = self.stream(und.text_len, context, inputs, action)?;
        let (cos, sin) = self.gen_rope_tables(st.positions.clone())?;
        let _amax = self.fp8_amax_scope();
        let hidden = self
            .gen
            .forward(&st.tokens, und, &cos, &sin, &self.sp, &st.shard)?;
        let hidden = self.sp.gather_tokens(&hidden, &st.shard)?;
        self.outputs(&hidden, &st, inputs, action)
    }

    /// The action heads for `action` tokens, checked against them.
    fn checked_action<'b>(
        &'b self,
        action: Option<&'b ActionTokens<'b>>,
    ) -> Result<Option<(&'b ActionTokens<'b>, &'b ActionHeads)>> {
        match (action, &self.action) {
            (None, _) => Ok(None),
            (Some(_), None) => Err(Error::invalid(
                "action",
                "this checkpoint has no action heads (its transformer config has action_gen false)",
            )),
            (Some(a), Some(heads)) => {
                heads.check(a)?;
                Ok(Some((a, heads)))
            }
        }
    }

    /// This rank's shard of the generation stream of one step: the embedded tokens of the
    /// context items, video, sound and action (and padding), with their rotary positions,
    /// which depend on the prompt's length `text_len`.
    fn stream(
        &self,
        text_len: usize,
        context: &[Tensor],
        inputs: &GenInputs,
        action: Option<(&ActionTokens, &ActionHeads)>,
    ) -> Result<Stream> {
        self.check_inputs(inputs)?;
        let cfg = &self.cfg;
        let p = cfg.latent_patch_size;
        let video = inputs.video;
        let dtype = self.dtype;
        let video = video.to_dtype(dtype)?.to_device(&self.device)?;
        let (target_patches, grid) = patchify(&video, p)?;
        for c in context {
            if c.dims() != video.dims() {
                return Err(Error::invalid(
                    "control latent",
                    format!(
                        "shape {:?}, the video latent is {:?}",
                        c.dims(),
                        video.dims()
                    ),
                ));
            }
        }
        // Context items first, then the video: one token run with one mask and positions.
        let mut item_patches = Vec::with_capacity(context.len() + 1);
        for c in context {
            item_patches.push(patchify(&c.to_dtype(dtype)?.to_device(&self.device)?, p)?.0);
        }
        let n_context = context.len() * grid.tokens();
        let patches = if context.is_empty() {
            target_patches
        } else {
            item_patches.push(target_patches);
            Tensor::cat(&item_patches, 0)?
        };
        let mut noisy_items = vec![false; context.len() * grid.t];
        noisy_items.extend_from_slice(inputs.noisy_frames);
        let temb = self
            .time
            .forward(inputs.timestep, cfg.timestep_scale)?
            .to_dtype(dtype)?;
        let sound_in = match (inputs.sound, &self.sound) {
            (Some(s), Some(heads)) => Some((s.to_dtype(dtype)?.to_device(&self.device)?, heads)),
            _ => None,
        };
        // Tokens of the vision items (context and video) ahead of the sound.
        let n_video = n_context + grid.tokens();
        let n_sound = match &sound_in {
            Some((s, _)) => s.dim(2)?,
            None => 0,
        };
        let n_action = action.map_or(0, |(a, _)| a.noisy.len());
        // This rank's block of the joint sequence [video | sound | action | dummy padding].
        let shard = self.sp.seq_shard(n_video + n_sound + n_action)?;
        let real = shard.real();
        // The part of segment [start, start + len) in this shard, relative to the segment.
        let part = |start: usize, len: usize| {
            let lo = real.start.clamp(start, start + len);
            let hi = real.end.clamp(start, start + len);
            lo - start..hi - start
        };
        let vid = part(0, n_video);
        let snd = part(n_video, n_sound);
        let act = part(n_video + n_sound, n_action);
        let mut pieces = Vec::with_capacity(4);
        let mut positions = Vec::with_capacity(shard.len);
        if !vid.is_empty() {
            let mask =
                noisy_token_mask(&noisy_items, grid.tokens_per_frame(), dtype, &self.device)?;
            let (mask, patches) = if vid.len() == n_video {
                (mask, patches)
            } else {
                (
                    mask.narrow(0, vid.start, vid.len())?,
                    patches.narrow(0, vid.start, vid.len())?,
                )
            };
            pieces.push(
                self.proj_in
                    .forward(&patches)?
                    .broadcast_add(&mask.broadcast_mul(&temb)?)?,
            );
            let item =
                positions::video_positions(cfg, text_len, (grid.t, grid.h, grid.w), inputs.fps);
            let all = item.repeat(context.len() + 1);
            positions.extend_from_slice(&all[vid.clone()]);
        }
        if let (Some((s, heads)), false) = (&sound_in, snd.is_empty()) {
            let s = if snd.len() == n_sound {
                s.clone()
            } else {
                s.narrow(2, snd.start, snd.len())?
            };
            pieces.push(heads.embed(&s)?.broadcast_add(&temb)?);
            let all = positions::sound_positions(cfg, text_len, n_sound);
            positions.extend_from_slice(&all[snd.clone()]);
        }
        if let (Some((a, heads)), false) = (action, act.is_empty()) {
            let latent = a.latent.to_dtype(dtype)?.to_device(&self.device)?;
            let mask = noisy_token_mask(a.noisy, 1, dtype, &self.device)?;
            let tokens = heads
                .embed(&latent.narrow(0, act.start, act.len())?, a.domain)?
                .broadcast_add(&mask.narrow(0, act.start, act.len())?.broadcast_mul(&temb)?)?;
            pieces.push(tokens);
            let all = positions::action_positions(cfg, text_len, n_action, inputs.fps);
            positions.extend_from_slice(&all[act.clone()]);
        }
        if shard.pad() > 0 {
            pieces.push(Tensor::zeros(
                (shard.pad(), cfg.hidden_size),
                dtype,
                &self.device,
            )?);
            positions.resize(shard.len, [0.0; 3]);
        }
        let tokens = if pieces.len() == 1 {
            pieces.swap_remove(0)
        } else {
            Tensor::cat(&pieces, 0)?
        };
        Ok(Stream {
            tokens,
            positions,
            shard,
            grid,
            n_context,
            n_video,
            n_sound,
            n_action,
        })
    }

    /// The velocities of one step from the tower's final hidden states of the whole stream.
    fn outputs(
        &self,
        hidden: &Tensor,
        st: &Stream,
        inputs: &GenInputs,
        action: Option<(&ActionTokens, &ActionHeads)>,
    ) -> Result<(GenOutput, Option<Tensor>)> {
        let cfg = &self.cfg;
        let (grid, n_context, n_video, n_sound) = (&st.grid, st.n_context, st.n_video, st.n_sound);
        let p = cfg.latent_patch_size;
        let v = self
            .proj_out
            .forward(&hidden.narrow(0, n_context, n_video - n_context)?)?;
        let v = unpatchify(&v, grid, grid.t, p)?;
        let zeros = Tensor::zeros(
            (cfg.latent_channel, 1, grid.latent_h, grid.latent_w),
            self.dtype,
            &self.device,
        )?;
        let frames: Vec<Tensor> = inputs
            .noisy_frames
            .iter()
            .enumerate()
            .map(|(f, &noisy)| {
                if noisy {
                    v.narrow(1, f, 1)
                } else {
                    Ok(zeros.clone())
                }
            })
            .collect::<candle_core::Result<_>>()?;
        let video_v = Tensor::cat(&frames, 1)?.unsqueeze(0)?;
        let sound_v = match (&self.sound, inputs.sound) {
            (Some(heads), Some(_)) => {
                Some(heads.project_out(&hidden.narrow(0, n_video, n_sound)?)?)
            }
            _ => None,
        };
        let action_v = match action {
            Some((a, heads)) => Some(heads.project_out(
                &hidden.narrow(0, n_video + n_sound, st.n_action)?,
                a.domain,
                a.noisy,
            )?),
            None => None,
        };
        Ok((
            GenOutput {
                video: video_v,
                sound: sound_v,
            },
            action_v,
        ))
    }
}
