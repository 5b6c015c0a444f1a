//! Guided velocity: the velocity the sampler steps with, from one or two branches of the
//! denoiser. Without guidance (`g ≤ 1`) it is the conditional branch; with guidance it is
//! `v_u + g·(v_c − v_u)`. Under CFG parallelism (a cfg axis of size 2) group 0 evaluates
//! the conditional branch and group 1 the unconditional one, and the two are exchanged on
//! the cfg axis so every rank holds the same guided velocity. The denoise loop sees none
//! of this.

use std::sync::Arc;

use candle_core::Tensor;

use super::sampler::{cfg_combine, guided_at, uses_cfg, GuidanceInterval};
use crate::parallel::Communicator;
use crate::Result;

/// Which prompt a velocity is evaluated for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Branch {
    Cond,
    Uncond,
}

/// Where the loop is: step `index` of `count`, at the model timestep `timestep`. Models
/// may apply per-step policies (e.g. the precision of quantized layers).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepInfo {
    pub index: usize,
    pub count: usize,
    pub timestep: f64,
}

/// Velocities of one branch: video `[1, C, t, h, w]`, sound `[1, 64, T]`, both f32.
pub struct Velocity {
    pub video: Tensor,
    pub sound: Option<Tensor>,
}

/// The denoiser as guidance sees it: one branch's velocity at the current latents.
pub trait VelocityModel {
    /// `video`/`sound` are the current f32 latents; `noisy` flags the latent frames that
    /// are being denoised.
    fn velocity(
        &self,
        branch: Branch,
        video: &Tensor,
        sound: Option<&Tensor>,
        step: StepInfo,
        noisy: &[bool],
    ) -> Result<Velocity>;

    /// Both branches' velocities (conditional, unconditional) at the same latents. Models
    /// that can evaluate the two in one pass override this; by default it is two calls.
    fn velocity_pair(
        &self,
        video: &Tensor,
        sound: Option<&Tensor>,
        step: StepInfo,
        noisy: &[bool],
    ) -> Result<(Velocity, Velocity)> {
        Ok((
            self.velocity(Branch::Cond, video, sound, step, noisy)?,
            self.velocity(Branch::Uncond, video, sound, step, noisy)?,
        ))
    }
}

/// The branches one rank evaluates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Branches {
    pub cond: bool,
    pub uncond: bool,
}

/// Classifier-free guidance over a rank's cfg group.
pub struct GuidedVelocity<'a> {
    model: &'a dyn VelocityModel,
    guidance_scale: f64,
    /// Steps whose timestep lies outside run the conditional branch alone.
    interval: Option<GuidanceInterval>,
    cfg: Arc<dyn Communicator>,
}

impl<'a> GuidedVelocity<'a> {
    /// `cfg` is the rank's communicator on the cfg axis (size 1 or 2).
    pub fn new(
        model: &'a dyn VelocityModel,
        guidance_scale: f64,
        cfg: Arc<dyn Communicator>,
    ) -> Self {
        Self {
            model,
            guidance_scale,
            interval: None,
            cfg,
        }
    }

    /// Guides only the steps whose timestep lies in `interval` (the others take the
    /// conditional velocity alone, as a scale of 1 would).
    pub fn with_interval(mut self, interval: Option<GuidanceInterval>) -> Self {
        self.interval = interval;
        self
    }

    /// The branches a rank of cfg group `group` (of `groups`) evaluates at this scale:
    /// both on one group; on two, group 0 the conditional and group 1 the unconditional
    /// one (nothing when there is no guidance).
    pub fn branches(guidance_scale: f64, group: usize, groups: usize) -> Branches {
        let guided = uses_cfg(guidance_scale);
        if groups == 2 {
            Branches {
                cond: group == 0,
                uncond: guided && group == 1,
            }
        } else {
            Branches {
                cond: true,
                uncond: guided,
            }
        }
    }

    /// The guided velocity at the current latents, the same on every rank.
    pub fn velocity(
        &self,
        video: &Tensor,
        sound: Option<&Tensor>,
        step: StepInfo,
        noisy: &[bool],
    ) -> Result<Velocity> {
        let g = if guided_at(self.guidance_scale, self.interval.as_ref(), step.timestep) {
            self.guidance_scale
        } else {
            1.0
        };
        let mine = Self::branches(g, self.cfg.rank(), self.cfg.size());
        let eval = |b| self.model.velocity(b, video, sound, step, noisy);
        if self.cfg.size() == 1 {
            if !mine.uncond {
                return eval(Branch::Cond);
            }
            let (c, u) = self.model.velocity_pair(video, sound, step, noisy)?;
            return Ok(Velocity {
                video: cfg_combine(&c.video, &u.video, g)?,
                sound: match (&c.sound, &u.sound) {
                    (Some(cs), Some(us)) => Some(cfg_combine(cs, us, g)?),
                    _ => None,
                },
            });
        }
        if !uses_cfg(g) {
            // One branch for two groups: group 0 evaluates it, group 1 receives it.
            let own = if mine.cond {
                eval(Branch::Cond)?
            } else {
                Velocity {
                    video: video.zeros_like()?,
                    sound: sound.map(|s| s.zeros_like()).transpose()?,
                }
            };
            return Ok(Velocity {
                video: self.cfg.broadcast(&own.video, 0)?,
                sound: own.sound.map(|s| self.cfg.broadcast(&s, 0)).transpose()?,
            });
        }
        let own = eval(if mine.cond {
            Branch::Cond
        } else {
            Branch::Uncond
        })?;
        let combine = |t: &Tensor| -> Result<Tensor> {
            let both = self.cfg.all_gather(t, 0)?;
            cfg_combine(&both.narrow(0, 0, 1)?, &both.narrow(0, 1, 1)?, g)
        };
        Ok(Velocity {
            video: combine(&own.video)?,
            sound: own.sound.as_ref().map(combine).transpose()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parallel::local::run_ranks;
    use crate::parallel::{MeshShape, SingleRank};
    use candle_core::Device;
    use std::time::Duration;

    /// Velocity = latents · 2 for the conditional branch, · (−1) for the unconditional one.
    struct Linear;

    impl VelocityModel for Linear {
        fn velocity(
            &self,
            branch: Branch,
            video: &Tensor,
            sound: Option<&Tensor>,
            _: StepInfo,
            _: &[bool],
        ) -> Result<Velocity> {
            let k = match branch {
                Branch::Cond => 2.0,
                Branch::Uncond => -1.0,
            };
            Ok(Velocity {
                video: (video * k)?,
                sound: sound.map(|s| s * k).transpose()?,
            })
        }
    }

    const STEP: StepInfo = StepInfo {
        index: 0,
        count: 1,
        timestep: 999.0,
    };

    #[test]
    fn cfg_groups_agree_with_one_rank() {
        // Batch-first like the latents: the cfg exchange gathers on axis 0.
        let x = Tensor::new(&[[1.0f32, -3.0]], &Device::Cpu).unwrap();
        let flat = |t: &Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
        for g in [1.0, 6.0] {
            let one = GuidedVelocity::new(&Linear, g, Arc::new(SingleRank))
                .velocity(&x, Some(&x), STEP, &[true])
                .unwrap();
            // v_u + g (v_c − v_u) with v_c = 2x, v_u = −x: (3g − 1)x when guided, else 2x.
            let k = if g > 1.0 { 3.0 * g - 1.0 } else { 2.0 };
            let want: Vec<f32> = vec![k as f32, (-3.0 * k) as f32];
            assert_eq!(flat(&one.video), want);
            let outs = run_ranks(MeshShape::new(2, 1, 1), Duration::from_secs(10), |m| {
                let v = GuidedVelocity::new(&Linear, g, m.cfg.clone()).velocity(
                    &x,
                    Some(&x),
                    STEP,
                    &[true],
                )?;
                Ok((flat(&v.video), flat(&v.sound.unwrap())))
            })
            .unwrap();
            for (v, s) in outs {
                assert_eq!(v, want, "g = {g}");
                assert_eq!(s, want, "g = {g}");
            }
        }
    }

    #[test]
    fn branch_assignment() {
        let b = GuidedVelocity::branches;
        assert_eq!(
            b(6.0, 0, 1),
            Branches {
                cond: true,
                uncond: true
            }
        );
        assert_eq!(
            b(1.0, 0, 1),
            Branches {
                cond: true,
                uncond: false
            }
        );
        assert_eq!(
            b(6.0, 1, 2),
            Branches {
                cond: false,
                uncond: true
            }
        );
        assert_eq!(
            b(1.0, 1, 2),
            Branches {
                cond: false,
                uncond: false
            }
        );
    }
}
