//! UniPC multistep sampler (predictor UniP + corrector UniC, B(h) variants) for flow
//! matching with x0 prediction, as diffusers' `UniPCMultistepScheduler` runs it for Cosmos3.
//!
//! One [`UniPc`] holds the state of one latent stream (video or sound): the step index, the
//! last `order` x0 predictions and the sample before the last predictor. Each stream needs
//! its own instance over the same [`Schedule`].
//!
//! Invariants: the sample and velocity of a step have the same shape; the state and the
//! returned sample are f32 (inputs of other dtypes are converted). Scalar coefficients and
//! tensor updates are evaluated in f32 in the reference's operation order and rounding, so on
//! CPU a trajectory reproduces the reference's samples bit for bit over many steps.

use candle_core::{DType, Tensor};

use super::config::SolverType;
use super::schedule::{Schedule, SolverSettings};
use crate::{Error, Result};

pub struct UniPc {
    sigmas: Vec<f32>,
    solver: SolverSettings,
    step_index: usize,
    /// x0 predictions, oldest first, at most `order` of them.
    x0_history: Vec<Tensor>,
    /// The (corrected) sample the last predictor started from.
    last_sample: Option<Tensor>,
    /// Order used by the last predictor, reused by the next corrector.
    this_order: usize,
    lower_order_nums: usize,
}

/// Correctly rounded f32 `ln` and `exp_m1` (evaluated in f64, rounded once): the reference's
/// scalar math rounds this way, while the f32 libm `expm1f` can be one ulp off.
fn ln32(x: f32) -> f32 {
    (x as f64).ln() as f32
}
fn expm1_32(x: f32) -> f32 {
    (x as f64).exp_m1() as f32
}

/// log-SNR λ = log α − log σ of a flow sigma (α = 1 − σ), f32 like the reference.
fn lambda(sigma: f32) -> f32 {
    ln32(1.0 - sigma) - ln32(sigma)
}

/// `t · s` in the tensor's dtype.
fn scale(t: &Tensor, s: f32) -> Result<Tensor> {
    Ok(t.affine(s as f64, 0.0)?)
}

/// `t / s` as a true division (not a multiplication by the reciprocal), like the reference.
fn divide(t: &Tensor, s: f32) -> Result<Tensor> {
    let s = Tensor::new(&[s], t.device())?.to_dtype(t.dtype())?;
    Ok(t.broadcast_div(&s)?)
}

/// Coefficients shared by predictor and corrector for a step from `sigma_s0` to `sigma_t`.
struct StepCoeffs {
    /// σ_t / σ_s0.
    ratio: f32,
    /// α_t · h·φ₁(h).
    alpha_hphi: f32,
    /// α_t · B(h).
    alpha_bh: f32,
    /// Right-hand side b of the order conditions, one per order.
    b: Vec<f32>,
    /// Ratios r_k = (λ_{s_k} − λ_s0)/h of the older points, then 1.
    rks: Vec<f32>,
}

impl StepCoeffs {
    /// `older` are the sigmas of the earlier points used (most recent first).
    fn new(sigma_t: f32, sigma_s0: f32, older: &[f32], order: usize, kind: SolverType) -> Self {
        let alpha_t = 1.0 - sigma_t;
        let lambda_t = lambda(sigma_t);
        let lambda_s0 = lambda(sigma_s0);
        let h = lambda_t - lambda_s0;
        let mut rks: Vec<f32> = older.iter().map(|&s| (lambda(s) - lambda_s0) / h).collect();
        rks.push(1.0);
        // x0 prediction integrates in −h.
        let hh = -h;
        let h_phi_1 = expm1_32(hh);
        let mut h_phi_k = h_phi_1 / hh - 1.0;
        let b_h = match kind {
            SolverType::Bh1 => hh,
            SolverType::Bh2 => expm1_32(hh),
        };
        let mut b = Vec::with_capacity(order);
        let mut factorial: u64 = 1;
        for i in 1..=order {
            b.push(h_phi_k * factorial as f32 / b_h);
            factorial *= (i + 1) as u64;
            h_phi_k = h_phi_k / hh - (1.0 / factorial as f64) as f32;
        }
        StepCoeffs {
            ratio: sigma_t / sigma_s0,
            alpha_hphi: alpha_t * h_phi_1,
            alpha_bh: alpha_t * b_h,
            b,
            rks,
        }
    }

    /// Solves R ρ = b for the first `k` conditions, R[i][j] = r_j^i.
    fn rhos(&self, k: usize) -> Vec<f32> {
        let mut a: Vec<Vec<f32>> = (0..k)
            .map(|i| (0..k).map(|j| self.rks[j].powi(i as i32)).collect())
            .collect();
        let mut b: Vec<f32> = self.b[..k].to_vec();
        solve_in_place(&mut a, &mut b);
        b
    }
}

/// Gaussian elimination with partial pivoting in f32, in the rounding pattern of the
/// LAPACK `gesv` the reference calls: pivot on the first largest magnitude, multipliers
/// from the pivot's reciprocal, fused multiply-add updates, back substitution by
/// reciprocal. `a` is tiny (≤ 3×3) and nonsingular for distinct sigmas.
fn solve_in_place(a: &mut [Vec<f32>], b: &mut [f32]) {
    let n = b.len();
    for col in 0..n {
        let mut piv = col;
        for row in col + 1..n {
            if a[row][col].abs() > a[piv][col].abs() {
                piv = row;
            }
        }
        a.swap(col, piv);
        b.swap(col, piv);
        let inv = 1.0 / a[col][col];
        let (top, below) = a.split_at_mut(col + 1);
        let pivot_row = &top[col];
        for (r, row) in below.iter_mut().enumerate() {
            let l = row[col] * inv;
            for (x, &u) in row[col + 1..].iter_mut().zip(&pivot_row[col + 1..]) {
                *x = (-l).mul_add(u, *x);
            }
            let bc = b[col];
            b[col + 1 + r] = (-l).mul_add(bc, b[col + 1 + r]);
        }
    }
    for col in (0..n).rev() {
        b[col] *= 1.0 / a[col][col];
        let x = b[col];
        for row in 0..col {
            b[row] = (-x).mul_add(a[row][col], b[row]);
        }
    }
}

impl UniPc {
    /// A fresh sampler state over `schedule`.
    pub fn new(schedule: &Schedule) -> UniPc {
        UniPc {
            sigmas: schedule.sigmas().to_vec(),
            solver: schedule.solver().clone(),
            step_index: 0,
            x0_history: Vec::new(),
            last_sample: None,
            this_order: 0,
            lower_order_nums: 0,
        }
    }

    /// Index of the next step (0 before the first).
    pub fn step_index(&self) -> usize {
        self.step_index
    }

    /// One sampler step: converts the velocity predicted at the current sample to an x0
    /// prediction (x0 = x − σ·v), corrects the current sample with it (every step after the
    /// first), then predicts the sample at the next sigma. Returns an f32 tensor shaped like
    /// `sample`.
    pub fn step(&mut self, model_output_velocity: &Tensor, sample: &Tensor) -> Result<Tensor> {
        let steps = self.sigmas.len() - 1;
        let i = self.step_index;
        if i >= steps {
            return Err(Error::invalid(
                "sampler step",
                format!("the schedule has {steps} steps and all were taken"),
            ));
        }
        if model_output_velocity.dims() != sample.dims() {
            return Err(Error::invalid(
                "sampler step",
                format!(
                    "velocity shape {:?} differs from sample shape {:?}",
                    model_output_velocity.dims(),
                    sample.dims()
                ),
            ));
        }
        let v = model_output_velocity.to_dtype(DType::F32)?;
        let mut sample = sample.to_dtype(DType::F32)?;
        let x0 = (&sample - scale(&v, self.sigmas[i])?)?;

        let corrector_on = i > 0 && !self.solver.disable_corrector.contains(&(i - 1));
        if corrector_on {
            if let Some(last) = &self.last_sample {
                sample = self.correct(&x0, last)?;
            }
        }

        if self.x0_history.len() == self.solver.order {
            self.x0_history.remove(0);
        }
        self.x0_history.push(x0);

        let order = if self.solver.lower_order_final {
            self.solver.order.min(steps - i)
        } else {
            self.solver.order
        };
        self.this_order = order.min(self.lower_order_nums + 1);

        let next = self.predict(&sample)?;
        self.last_sample = Some(sample);
        if self.lower_order_nums < self.solver.order {
            self.lower_order_nums += 1;
        }
        self.step_index += 1;
        Ok(next)
    }

    /// x0 prediction `back` entries before the newest (0 = newest).
    fn x0_back(&self, back: usize) -> &Tensor {
        &self.x0_history[self.x0_history.len() - 1 - back]
    }

    /// UniP: from `x` at σ[i] to σ[i+1] with the newest `this_order` x0 predictions.
    fn predict(&self, x: &Tensor) -> Result<Tensor> {
        let i = self.step_index;
        let order = self.this_order;
        let older: Vec<f32> = (1..order).map(|k| self.sigmas[i - k]).collect();
        let c = StepCoeffs::new(
            self.sigmas[i + 1],
            self.sigmas[i],
            &older,
            order,
            self.solver.solver_type,
        );
        let m0 = self.x0_back(0);
        let base = (scale(x, c.ratio)? - scale(m0, c.alpha_hphi)?)?;
        if order == 1 {
            return Ok(base);
        }
        let rhos = if order == 2 {
            vec![0.5]
        } else {
            c.rhos(order - 1)
        };
        let mut res: Option<Tensor> = None;
        for k in 1..order {
            let d1 = divide(&(self.x0_back(k) - m0)?, c.rks[k - 1])?;
            let term = scale(&d1, rhos[k - 1])?;
            res = Some(match res {
                None => term,
                Some(r) => (r + term)?,
            });
        }
        match res {
            Some(r) => Ok((base - scale(&r, c.alpha_bh)?)?),
            None => Ok(base),
        }
    }

    /// UniC: the corrected sample at σ[i], recomputed from `last_sample` (at σ[i−1]), the
    /// x0 history and the new x0 prediction `model_t`, with the previous step's order. (The
    /// uncorrected sample only served to evaluate the model.)
    fn correct(&self, model_t: &Tensor, last_sample: &Tensor) -> Result<Tensor> {
        let i = self.step_index;
        let order = self.this_order;
        let older: Vec<f32> = (1..order).map(|k| self.sigmas[i - (k + 1)]).collect();
        let c = StepCoeffs::new(
            self.sigmas[i],
            self.sigmas[i - 1],
            &older,
            order,
            self.solver.solver_type,
        );
        let m0 = self.x0_back(0);
        let base = (scale(last_sample, c.ratio)? - scale(m0, c.alpha_hphi)?)?;
        let rhos = if order == 1 { vec![0.5] } else { c.rhos(order) };
        let mut res: Option<Tensor> = None;
        for k in 1..order {
            let d1 = divide(&(self.x0_back(k) - m0)?, c.rks[k - 1])?;
            let term = scale(&d1, rhos[k - 1])?;
            res = Some(match res {
                None => term,
                Some(r) => (r + term)?,
            });
        }
        let d1_t = scale(&(model_t - m0)?, rhos[order - 1])?;
        let total = match res {
            Some(r) => (r + d1_t)?,
            None => d1_t,
        };
        Ok((base - scale(&total, c.alpha_bh)?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::cosmos3::sampler::{ScheduleOptions, SchedulerConfig, SigmaStyle};
    use candle_core::Device;

    fn schedule(steps: usize) -> Schedule {
        Schedule::new(
            &SchedulerConfig::default(),
            ScheduleOptions {
                steps,
                flow_shift: None,
                karras: None,
                style: SigmaStyle::Checkpoint,
                native_flow: false,
            },
        )
        .unwrap()
    }

    #[test]
    fn solve_matches_hand_solution() {
        // [[1, 1], [-2, 1]] x = [3, 0] ⇒ x = [1, 2].
        let mut a = vec![vec![1.0f32, 1.0], vec![-2.0, 1.0]];
        let mut b = vec![3.0f32, 0.0];
        solve_in_place(&mut a, &mut b);
        assert!(
            (b[0] - 1.0).abs() < 1e-6 && (b[1] - 2.0).abs() < 1e-6,
            "{b:?}"
        );
    }

    #[test]
    fn last_step_returns_the_x0_prediction_and_then_refuses() {
        let s = schedule(1);
        let mut u = UniPc::new(&s);
        let dev = Device::Cpu;
        let x = Tensor::new(&[1.0f32, -2.0, 0.5], &dev).unwrap();
        let v = Tensor::new(&[0.25f32, 1.0, -1.0], &dev).unwrap();
        let out = u.step(&v, &x).unwrap().to_vec1::<f32>().unwrap();
        let sigma = s.sigmas()[0];
        let want = [1.0 - sigma * 0.25, -2.0 - sigma, 0.5 + sigma];
        for (o, w) in out.iter().zip(want) {
            assert!((o - w).abs() < 1e-6, "{out:?} vs {want:?}");
        }
        assert!(matches!(u.step(&v, &x), Err(Error::Invalid { .. })));
    }

    #[test]
    fn shape_mismatch_is_invalid() {
        let mut u = UniPc::new(&schedule(3));
        let dev = Device::Cpu;
        let x = Tensor::zeros((2, 3), DType::F32, &dev).unwrap();
        let v = Tensor::zeros((3, 2), DType::F32, &dev).unwrap();
        assert!(matches!(u.step(&v, &x), Err(Error::Invalid { .. })));
    }
}
