//! Classifier-free guidance on velocities.

use candle_core::Tensor;

use crate::Result;

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
}
