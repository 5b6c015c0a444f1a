//! Transfer's second guidance axis: the conditional velocity is steered towards the controls,
//! `c₀ + gc·(c − c₀)`, with `c` evaluated with the control items in the sequence and `c₀`
//! without them. Text guidance then extrapolates from the unconditional velocity `u` (with
//! the controls) as usual, so a step takes
//!
//! `v = u + g·(c₀ + gc·(c − c₀) − u)`
//!
//! [`ControlGuided`] is the conditional/unconditional model [`super::guided::GuidedVelocity`]
//! guides: it folds the control axis into the conditional branch, so the text axis (its
//! interval and its CFG-parallel split) works unchanged. A branch a step does not need is not
//! evaluated: `gc = 1` (or a timestep outside the control interval) never runs `c₀`, and
//! `g ≤ 1` never runs `u`, exactly as the reference skips them.

use candle_core::Tensor;

use super::guided::{Branch, StepInfo, Velocity, VelocityModel};
use super::sampler::{cfg_combine, GuidanceInterval};
use crate::{Error, Result};

/// One transformer evaluation of transfer: the prompt branch, with or without the controls.
pub trait ControlBranches {
    /// Video velocity `[1, C, t, h, w]` f32 of `branch`, with the control items in the
    /// sequence when `controls`.
    fn velocity(
        &self,
        branch: Branch,
        controls: bool,
        video: &Tensor,
        step: StepInfo,
        noisy: &[bool],
    ) -> Result<Tensor>;
}

/// Folds control guidance into the conditional branch (see the module doc).
pub struct ControlGuided<'a> {
    model: &'a dyn ControlBranches,
    control_guidance: f64,
    interval: Option<GuidanceInterval>,
}

impl<'a> ControlGuided<'a> {
    pub fn new(
        model: &'a dyn ControlBranches,
        control_guidance: f64,
        interval: Option<GuidanceInterval>,
    ) -> Self {
        Self {
            model,
            control_guidance,
            interval,
        }
    }

    /// Whether the step at `timestep` runs the control-free branch: a scale other than 1
    /// and, with an interval, the timestep inside it.
    pub fn control_guided_at(&self, timestep: f64) -> bool {
        self.control_guidance != 1.0 && self.interval.is_none_or(|i| i.contains(timestep))
    }
}

impl VelocityModel for ControlGuided<'_> {
    fn velocity(
        &self,
        branch: Branch,
        video: &Tensor,
        sound: Option<&Tensor>,
        step: StepInfo,
        noisy: &[bool],
    ) -> Result<Velocity> {
        if sound.is_some() {
            return Err(Error::invalid("sound", "transfer generates video only"));
        }
        let full = self.model.velocity(branch, true, video, step, noisy)?;
        let video = if branch == Branch::Cond && self.control_guided_at(step.timestep) {
            let free = self.model.velocity(branch, false, video, step, noisy)?;
            cfg_combine(&full, &free, self.control_guidance)?
        } else {
            full
        };
        Ok(Velocity { video, sound: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::cosmos3::guided::GuidedVelocity;
    use crate::parallel::SingleRank;
    use candle_core::Device;
    use std::sync::{Arc, Mutex};

    /// Velocity = x · k, with k = 2 (cond with controls), 1 (cond without), −1 (uncond with);
    /// every call recorded.
    #[derive(Default)]
    struct Counting(Mutex<Vec<(Branch, bool)>>);

    impl ControlBranches for Counting {
        fn velocity(
            &self,
            branch: Branch,
            controls: bool,
            video: &Tensor,
            _: StepInfo,
            _: &[bool],
        ) -> Result<Tensor> {
            self.0.lock().unwrap().push((branch, controls));
            let k = match (branch, controls) {
                (Branch::Cond, true) => 2.0,
                (Branch::Cond, false) => 1.0,
                (Branch::Uncond, _) => -1.0,
            };
            Ok((video * k)?)
        }
    }

    fn step(timestep: f64) -> StepInfo {
        StepInfo {
            index: 0,
            count: 1,
            timestep,
        }
    }

    #[test]
    fn three_branches_combine_and_unused_ones_are_skipped() {
        let x = Tensor::new(&[[1.0f32, -2.0]], &Device::Cpu).unwrap();
        let interval = GuidanceInterval::new(500.0, 1000.0, "control_guidance_interval").ok();
        // (g, gc, timestep) → the branches run and the factor v = k·x.
        // Both axes: u + g(c0 + gc(c − c0) − u) = −1 + 3(1 + 1.5·1 + 1) = 9.5.
        // Control only (g = 1): c0 + gc(c − c0) = 1 + 2·1 = 3.
        // Text only (gc = 1, or outside the interval): u + g(c − u) = −1 + 3·3 = 8.
        for (g, gc, t, calls, k) in [
            (3.0, 1.5, 900.0, 3, 9.5),
            (1.0, 2.0, 900.0, 2, 3.0),
            (3.0, 1.0, 900.0, 2, 8.0),
            (3.0, 1.5, 100.0, 2, 8.0),
            (1.0, 1.0, 900.0, 1, 2.0),
        ] {
            let model = Counting::default();
            let folded = ControlGuided::new(&model, gc, interval);
            let guided = GuidedVelocity::new(&folded, g, Arc::new(SingleRank));
            let v = guided.velocity(&x, None, step(t), &[true]).unwrap().video;
            let v: Vec<f32> = v.flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(v, vec![k as f32, -2.0 * k as f32], "g {g}, gc {gc}, t {t}");
            let seen = model.0.lock().unwrap().clone();
            assert_eq!(seen.len(), calls, "g {g}, gc {gc}, t {t}: {seen:?}");
            // The unconditional branch always carries the controls.
            assert!(!seen.contains(&(Branch::Uncond, false)));
        }
    }
}
