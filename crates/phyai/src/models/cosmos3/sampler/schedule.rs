//! Sigma and timestep schedules of the flow-matching UniPC sampler.
//!
//! Two constructions are offered because the references disagree:
//! - [`SigmaStyle::Checkpoint`] (default) reproduces diffusers' `UniPCMultistepScheduler.
//!   set_timesteps` as the Cosmos3 pipeline calls it, driven by the checkpoint's
//!   `scheduler_config.json`: Karras sigmas between `sigma_min`/`sigma_max` remapped by
//!   σ/(σ+1) when `use_karras_sigmas` (then `flow_shift` has no effect), otherwise the
//!   linear grid `1 − i/n·(1 − 1/N)` (or, with the pipeline's native flow schedule, the
//!   grid `(1 − 1/N)·(1 − i/n)`) warped by `shift·s/(1 + (shift−1)·s)`.
//! - [`SigmaStyle::Phyai`] reproduces PhyAI's sampler: fixed Karras bounds 0.147/200, or a
//!   linear grid between the warped ends of the 1000-point training grid, warped again.
//!
//! All grid arithmetic is f64 in the same operation order as numpy, so sigmas (stored as
//! f32, like diffusers) and integer timesteps (truncated from σ·N) match bit for bit.

use super::config::{FinalSigma, SchedulerConfig, SolverType};
use crate::{Error, Result};

/// Which reference's flow-sigma construction to follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SigmaStyle {
    /// diffusers semantics from the checkpoint's scheduler config.
    #[default]
    Checkpoint,
    /// PhyAI's own schedule formula.
    Phyai,
}

/// Per-request choices layered over the checkpoint config.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScheduleOptions {
    /// Number of denoising steps (model evaluations per branch), at least 1.
    pub steps: usize,
    /// Overrides the config's `flow_shift`.
    pub flow_shift: Option<f64>,
    /// Overrides the config's `use_karras_sigmas`.
    pub karras: Option<bool>,
    pub style: SigmaStyle,
    /// `use_native_flow_schedule` of `model_index.json` (checkpoint style only).
    pub native_flow: bool,
}

/// The most steps a request may ask for; far beyond any useful value, it only keeps a
/// typo from allocating without bound.
pub const MAX_STEPS: usize = 10_000;

/// Karras ρ of both references.
const KARRAS_RHO: f64 = 7.0;
/// PhyAI's fixed Karras bounds.
const PHYAI_SIGMA_MIN: f64 = 0.147;
const PHYAI_SIGMA_MAX: f64 = 200.0;

/// Solver settings the UniPC state machine needs besides the sigmas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SolverSettings {
    pub order: usize,
    pub lower_order_final: bool,
    pub solver_type: SolverType,
    pub disable_corrector: Vec<usize>,
}

/// A resolved schedule: `steps + 1` sigmas (last one final, 0 by default) and `steps`
/// timesteps.
#[derive(Debug, Clone)]
pub struct Schedule {
    sigmas: Vec<f32>,
    timesteps: Vec<f64>,
    timesteps_int: Vec<i64>,
    solver: SolverSettings,
}

impl Schedule {
    pub fn new(cfg: &SchedulerConfig, opts: ScheduleOptions) -> Result<Schedule> {
        let n = opts.steps;
        if n == 0 || n > MAX_STEPS {
            return Err(Error::invalid(
                "steps",
                format!("must be between 1 and {MAX_STEPS}, got {n}"),
            ));
        }
        let shift = opts.flow_shift.unwrap_or(cfg.flow_shift);
        if !(shift.is_finite() && shift > 0.0) {
            return Err(Error::invalid(
                "flow_shift",
                format!("must be a positive number, got {shift}"),
            ));
        }
        let train = cfg.num_train_timesteps as f64;
        let (sig, last) = match opts.style {
            SigmaStyle::Checkpoint => {
                let karras = opts
                    .karras
                    .unwrap_or(cfg.use_karras_sigmas.unwrap_or(false));
                checkpoint_sigmas(cfg, n, shift, karras, opts.native_flow)?
            }
            SigmaStyle::Phyai => {
                // PhyAI reads `use_karras_sigmas` with a default of true.
                let karras = opts.karras.unwrap_or(cfg.use_karras_sigmas.unwrap_or(true));
                (phyai_sigmas(cfg.num_train_timesteps, n, shift, karras), 0.0)
            }
        };
        // Truncation toward zero, as the float64 → int64 cast of the references.
        let timesteps_int: Vec<i64> = sig.iter().map(|&s| (s * train) as i64).collect();
        let mut sigmas: Vec<f32> = sig.iter().map(|&s| s as f32).collect();
        sigmas.push(last as f32);
        Ok(Schedule {
            sigmas,
            timesteps: timesteps_int.iter().map(|&t| t as f64).collect(),
            timesteps_int,
            solver: SolverSettings {
                order: cfg.solver_order,
                lower_order_final: cfg.lower_order_final,
                solver_type: cfg.solver()?,
                disable_corrector: cfg.disable_corrector.clone(),
            },
        })
    }

    /// `steps + 1` noise levels in [0, 1), decreasing, f32 as the sampler uses them.
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// The timestep of each step as the transformer receives it: an integer value
    /// (`trunc(σ·N)`, e.g. 999 for the first flow step) carried as f64. The model scales it
    /// by its `timestep_scale` (0.001) before the sinusoidal embedding.
    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    /// The same timesteps as integers (diffusers' `scheduler.timesteps`, int64).
    pub fn timesteps_int(&self) -> &[i64] {
        &self.timesteps_int
    }

    /// Number of denoising steps.
    pub fn steps(&self) -> usize {
        self.timesteps.len()
    }

    pub fn solver(&self) -> &SolverSettings {
        &self.solver
    }
}

/// diffusers' `set_timesteps` for `use_flow_sigmas`, after the pipeline's optional native
/// grid. Returns the `n` step sigmas (f64) and the final sigma.
fn checkpoint_sigmas(
    cfg: &SchedulerConfig,
    n: usize,
    shift: f64,
    karras: bool,
    native: bool,
) -> Result<(Vec<f64>, f64)> {
    let train = cfg.num_train_timesteps as f64;
    let final_type = cfg.final_sigmas()?;
    if karras {
        // The scheduler ignores the passed (native) grid except for its length, because
        // the Cosmos3 config names both Karras bounds.
        let (Some(lo), Some(hi)) = (cfg.sigma_min, cfg.sigma_max) else {
            return Err(Error::config(
                "scheduler_config.json",
                "sigma_min",
                "Karras sigmas need both sigma_min and sigma_max in the scheduler config",
            ));
        };
        let sig = karras_flow(lo, hi, n);
        let last = match final_type {
            FinalSigma::Zero => 0.0,
            FinalSigma::SigmaMin => sig[n - 1],
        };
        return Ok((sig, last));
    }
    let base = if native {
        linspace(1.0 - 1.0 / train, 0.0, n + 1)
    } else {
        linspace(1.0, 1.0 / train, n + 1)
    };
    let mut sig: Vec<f64> = base[..n].iter().map(|&s| warp(shift, s)).collect();
    // diffusers nudges a first sigma of 1 down so that log(1 − σ) stays finite.
    let eps = 1e-6;
    if (sig[0] - 1.0).abs() < eps {
        sig[0] -= eps;
    }
    let last = match final_type {
        FinalSigma::Zero => 0.0,
        FinalSigma::SigmaMin => sig[n - 1],
    };
    Ok((sig, last))
}

/// PhyAI's `set_timesteps`; the final sigma is always 0.
fn phyai_sigmas(num_train: usize, n: usize, shift: f64, karras: bool) -> Vec<f64> {
    if karras {
        return karras_flow(PHYAI_SIGMA_MIN, PHYAI_SIGMA_MAX, n);
    }
    // Ends of the warped training grid 1 − linspace(1, 1/N, N) reversed: its first point
    // is 1 − 1/N and its last is exactly 0.
    let train = linspace(1.0, 1.0 / num_train as f64, num_train);
    let sigma_max = warp(shift, 1.0 - train[num_train - 1]);
    let sigma_min = warp(shift, 1.0 - train[0]);
    linspace(sigma_max, sigma_min, n + 1)[..n]
        .iter()
        .map(|&s| warp(shift, s))
        .collect()
}

/// The flow shift warp `shift·s / (1 + (shift − 1)·s)`.
fn warp(shift: f64, s: f64) -> f64 {
    shift * s / (1.0 + (shift - 1.0) * s)
}

/// `n` Karras sigmas between `hi` and `lo` (ρ = 7) remapped to flow sigmas σ/(σ+1).
fn karras_flow(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    let min_inv = lo.powf(1.0 / KARRAS_RHO);
    let max_inv = hi.powf(1.0 / KARRAS_RHO);
    linspace(0.0, 1.0, n)
        .into_iter()
        .map(|r| {
            let s = (max_inv + r * (min_inv - max_inv)).powf(KARRAS_RHO);
            s / (s + 1.0)
        })
        .collect()
}

/// `numpy.linspace(start, stop, num)` (endpoint included) with numpy's exact arithmetic:
/// `i·step + start` with `step = (stop − start)/(num − 1)`, the last point set to `stop`.
pub(crate) fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 0 {
        return Vec::new();
    }
    let delta = stop - start;
    let div = num - 1;
    let mut y: Vec<f64> = (0..num).map(|i| i as f64).collect();
    if div > 0 {
        let step = delta / div as f64;
        if step == 0.0 {
            for v in &mut y {
                *v = *v / div as f64 * delta;
            }
        } else {
            for v in &mut y {
                *v *= step;
            }
        }
    } else {
        for v in &mut y {
            *v *= delta;
        }
    }
    for v in &mut y {
        *v += start;
    }
    if num > 1 {
        y[num - 1] = stop;
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(steps: usize) -> ScheduleOptions {
        ScheduleOptions {
            steps,
            flow_shift: None,
            karras: None,
            style: SigmaStyle::Checkpoint,
            native_flow: false,
        }
    }

    #[test]
    fn zero_steps_and_bad_shift_are_invalid() {
        let cfg = SchedulerConfig::default();
        for o in [
            opts(0),
            ScheduleOptions {
                flow_shift: Some(0.0),
                ..opts(4)
            },
            ScheduleOptions {
                flow_shift: Some(f64::NAN),
                ..opts(4)
            },
        ] {
            assert!(matches!(Schedule::new(&cfg, o), Err(Error::Invalid { .. })));
        }
    }

    #[test]
    fn linspace_keeps_numpy_endpoints() {
        assert_eq!(linspace(0.0, 1.0, 1), vec![0.0]);
        assert_eq!(linspace(1.0, 0.001, 3), vec![1.0, 0.5005, 0.001]);
    }

    #[test]
    fn one_step_schedule_ends_at_zero() {
        let s = Schedule::new(&SchedulerConfig::default(), opts(1)).unwrap();
        assert_eq!(s.sigmas().len(), 2);
        assert_eq!(s.sigmas()[1], 0.0);
        // Karras start 200/201 ⇒ timestep 995.
        assert_eq!(s.timesteps_int(), &[995]);
    }
}
