//! Classifier-free guidance on velocities.

use candle_core::Tensor;

use crate::{Error, Result};

/// The timesteps where classifier-free guidance runs, `[lo, hi]` inclusive, compared with
/// the model-facing timestep of each step (0..1000). Outside it a step takes the
/// conditional velocity alone, exactly as a guidance scale of 1 would (vLLM-Omni's
/// text-to-image default is [400, 1000]; diffusers has no interval, i.e. guides everywhere).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GuidanceInterval {
    pub lo: f64,
    pub hi: f64,
}

impl GuidanceInterval {
    /// Checks the bounds: finite, `0 ≤ lo ≤ hi`. `field` names the request field.
    pub fn new(lo: f64, hi: f64, field: &str) -> Result<Self> {
        if !(lo.is_finite() && hi.is_finite() && lo >= 0.0 && lo <= hi) {
            return Err(Error::invalid(
                field,
                format!("needs finite bounds with 0 <= LO <= HI, got {lo},{hi}"),
            ));
        }
        Ok(Self { lo, hi })
    }

    /// Parses `"LO,HI"` (e.g. `400,1000`).
    pub fn parse(text: &str, field: &str) -> Result<Self> {
        let bad = || {
            Error::invalid(
                field,
                format!("expected LO,HI (e.g. 400,1000), got {text:?}"),
            )
        };
        let (lo, hi) = text.split_once(',').ok_or_else(bad)?;
        let lo: f64 = lo.trim().parse().map_err(|_| bad())?;
        let hi: f64 = hi.trim().parse().map_err(|_| bad())?;
        Self::new(lo, hi, field)
    }

    /// Whether the step at `timestep` is guided.
    pub fn contains(&self, timestep: f64) -> bool {
        self.lo <= timestep && timestep <= self.hi
    }
}

/// Whether a step at `timestep` runs the unconditional branch: guidance on (`g > 1`) and,
/// with an interval, the timestep inside it.
pub fn guided_at(guidance_scale: f64, interval: Option<&GuidanceInterval>, timestep: f64) -> bool {
    uses_cfg(guidance_scale) && interval.is_none_or(|i| i.contains(timestep))
}

/// Whether a guidance scale runs the unconditional branch: `g > 1`, as PhyAI and the
/// engine's spec decide. (diffusers' pipeline guides whenever `g != 1`, so for `g < 1` it
/// would blend towards the unconditional velocity where this keeps the conditional one.)
pub fn uses_cfg(guidance_scale: f64) -> bool {
    guidance_scale > 1.0
}

/// `v = v_u + g·(v_c − v_u)`, evaluated in that order in the inputs' dtype (f32 in the
/// loop); `cond` and `uncond` have the same shape.
pub fn cfg_combine(cond: &Tensor, uncond: &Tensor, guidance_scale: f64) -> Result<Tensor> {
    Ok((uncond + ((cond - uncond)? * guidance_scale)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn combine_extrapolates_from_the_unconditional_velocity() {
        let dev = Device::Cpu;
        let c = Tensor::new(&[1.0f32, -2.0, 0.5], &dev).unwrap();
        let u = Tensor::new(&[0.5f32, 1.0, 0.5], &dev).unwrap();
        let v = cfg_combine(&c, &u, 6.0).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(v, vec![3.5, -17.0, 0.5]);
        assert!(uses_cfg(1.5) && !uses_cfg(1.0));
    }

    #[test]
    fn interval_gates_guidance_by_timestep() {
        let i = GuidanceInterval::parse("400, 1000", "guidance_interval").unwrap();
        // The 3-step Karras schedule of the fixtures: 995, 929 guided, 128 not.
        let on: Vec<bool> = [995.0, 929.0, 128.0]
            .iter()
            .map(|&t| guided_at(6.0, Some(&i), t))
            .collect();
        assert_eq!(on, vec![true, true, false]);
        assert!(guided_at(6.0, None, 128.0) && !guided_at(1.0, Some(&i), 995.0));
        assert!(i.contains(400.0) && i.contains(1000.0));
        for bad in ["400", "a,b", "500,400", "-1,10", "nan,1"] {
            let e = GuidanceInterval::parse(bad, "guidance_interval").unwrap_err();
            assert!(e.to_string().starts_with("guidance_interval: "), "{e}");
        }
    }
}
