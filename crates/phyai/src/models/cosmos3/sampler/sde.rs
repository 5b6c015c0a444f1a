//! The stochastic (SDE) step of distilled checkpoints.
//!
//! Every step predicts the clean sample and re-noises it to the next sigma with fresh
//! Gaussian noise: `x0 = x − σᵢ·v`, `x_next = (1 − σᵢ₊₁)·x0 + σᵢ₊₁·ε`. The noise is drawn at
//! the last step too (where σ = 0 and it has no effect), so a generator shared with the
//! initial noise advances exactly as the reference's does. All arithmetic is f32 in the
//! reference's operation order.

use candle_core::{DType, Device, Tensor};

use super::fixed_step::FixedStepSchedule;
use super::noise::RandomState;
use crate::{Error, Result};

/// Where the per-step noise ε comes from.
pub enum StepNoise {
    /// Recorded draws `[steps, 1, C, t, h, w]`, used in order.
    Given(Tensor),
    /// The request's seeded generator, continued after the initial noise (boxed: its
    /// state is 2.5 KB).
    Seeded(Box<RandomState>),
}

impl StepNoise {
    /// Checks recorded draws against the run's step count and latent shape.
    pub fn given(noise: Tensor, steps: usize, latent: &[usize]) -> Result<Self> {
        let mut want = vec![steps];
        want.extend_from_slice(latent);
        if noise.dims() != want.as_slice() {
            return Err(Error::invalid(
                "step_noise",
                format!("has shape {:?}, the request needs {want:?}", noise.dims()),
            ));
        }
        Ok(StepNoise::Given(noise.to_dtype(DType::F32)?))
    }

    /// The seeded start of a run: the initial noise `[shape]` as the first draw of a fresh
    /// `RandomState(seed)` (what [`super::noise::standard_normal`] returns), and the same
    /// generator, continued, for the steps.
    pub fn seeded(seed: u64, shape: &[usize], device: &Device) -> Result<(Tensor, Self)> {
        let seed = u32::try_from(seed).map_err(|_| {
            Error::invalid(
                "seed",
                format!(
                    "must be between 0 and 2^32 - 1 (the reference generator's range), got {seed}"
                ),
            )
        })?;
        let mut rs = Box::new(RandomState::new(seed));
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rs.gauss() as f32).collect();
        Ok((Tensor::from_vec(v, shape, device)?, StepNoise::Seeded(rs)))
    }

    /// ε for step `index`, shaped `shape`, on `device`.
    fn draw(&mut self, index: usize, shape: &[usize], device: &Device) -> Result<Tensor> {
        match self {
            StepNoise::Given(all) => Ok(all.get(index)?.reshape(shape)?.to_device(device)?),
            StepNoise::Seeded(rs) => {
                let n = shape.iter().product();
                let v: Vec<f32> = (0..n).map(|_| rs.gauss() as f32).collect();
                Ok(Tensor::from_vec(v, shape, device)?)
            }
        }
    }
}

/// The sampler state of one latent stream over a fixed-step schedule.
pub struct SdeSampler {
    sigmas: Vec<f32>,
    index: usize,
    noise: StepNoise,
}

impl SdeSampler {
    pub fn new(schedule: &FixedStepSchedule, noise: StepNoise) -> Self {
        Self {
            sigmas: schedule.sigmas().to_vec(),
            index: 0,
            noise,
        }
    }

    /// Steps taken so far.
    pub fn step_index(&self) -> usize {
        self.index
    }

    /// One step from `sample` with velocity `v` (both f32, same shape); returns the sample
    /// at the next sigma.
    pub fn step(&mut self, v: &Tensor, sample: &Tensor) -> Result<Tensor> {
        let i = self.index;
        if i + 1 >= self.sigmas.len() {
            return Err(Error::msg(format!(
                "SDE sampler stepped past its {} steps",
                self.sigmas.len() - 1
            )));
        }
        let (sigma, next) = (self.sigmas[i], self.sigmas[i + 1]);
        let x0 = (sample - (v * sigma as f64)?)?;
        let eps = self.noise.draw(i, sample.dims(), sample.device())?;
        let keep = 1.0f32 - next;
        let out = ((x0 * keep as f64)? + (eps * next as f64)?)?;
        self.index += 1;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_renoises_the_clean_prediction() {
        let dev = Device::Cpu;
        let sched = FixedStepSchedule::new(&[1.0, 0.5], 1.0, 1000).unwrap();
        let noise = Tensor::new(&[[[2.0f32, -2.0]], [[7.0, 7.0]]], &dev).unwrap(); // [2,1,2]
        let mut s = SdeSampler::new(&sched, StepNoise::given(noise, 2, &[1, 2]).unwrap());
        let x = Tensor::new(&[[1.0f32, 3.0]], &dev).unwrap();
        let v = Tensor::new(&[[0.5f32, 1.0]], &dev).unwrap();
        // x0 = x − 1·v = [0.5, 2]; next σ 0.5: 0.5·x0 + 0.5·ε = [1.25, 0]
        let x1 = s.step(&v, &x).unwrap();
        assert_eq!(x1.to_vec2::<f32>().unwrap(), vec![vec![1.25, 0.0]]);
        // Last step: σ 0.5 → 0, the draw is consumed but x_next = x0 = x1 − 0.5·v.
        let x2 = s.step(&v, &x1).unwrap();
        assert_eq!(x2.to_vec2::<f32>().unwrap(), vec![vec![1.0, -0.5]]);
        assert!(s.step(&v, &x2).is_err());
    }

    #[test]
    fn recorded_noise_must_match_the_run() {
        let noise = Tensor::zeros((3, 1, 2), DType::F32, &Device::Cpu).unwrap();
        let e = StepNoise::given(noise, 4, &[1, 2])
            .err()
            .unwrap()
            .to_string();
        assert!(e.starts_with("step_noise: has shape [3, 1, 2]"), "{e}");
    }

    #[test]
    fn seeded_start_is_the_engine_noise() {
        let shape = [1, 2, 1, 2, 3];
        let (init, _) = StepNoise::seeded(42, &shape, &Device::Cpu).unwrap();
        let want = super::super::noise::standard_normal(42, &shape).unwrap();
        assert_eq!(init.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want);
        assert!(StepNoise::seeded(1 << 32, &shape, &Device::Cpu).is_err());
    }

    #[test]
    fn seeded_noise_continues_the_generator() {
        let sched = FixedStepSchedule::new(&[1.0, 0.5], 1.0, 1000).unwrap();
        let mut reference = RandomState::new(5);
        let draws: Vec<f32> = (0..4).map(|_| reference.gauss() as f32).collect();
        let mut s = SdeSampler::new(&sched, StepNoise::Seeded(Box::new(RandomState::new(5))));
        let zero = Tensor::zeros((1, 3), DType::F32, &Device::Cpu).unwrap();
        // x = v = 0: x_next = 0.5·ε, the first three draws.
        let x1 = s.step(&zero, &zero).unwrap().to_vec2::<f32>().unwrap();
        let want: Vec<f32> = draws[..3].iter().map(|e| e * 0.5).collect();
        assert_eq!(x1[0], want);
        let StepNoise::Seeded(g) = &mut s.noise else {
            unreachable!()
        };
        assert_eq!(g.gauss() as f32, draws[3]);
    }
}
