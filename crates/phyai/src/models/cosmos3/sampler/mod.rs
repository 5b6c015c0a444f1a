//! The sampler side of the denoising loop: seeded initial noise, sigma/timestep schedules,
//! the UniPC multistep solver (one state per latent stream), the fixed-step SDE sampler of
//! distilled checkpoints and classifier-free guidance.

pub mod config;
pub mod fixed_step;
pub mod guidance;
pub mod noise;
pub mod schedule;
pub mod sde;
pub mod unipc;

pub use config::{FinalSigma, SchedulerConfig, SolverType};
pub use fixed_step::FixedStepSchedule;
pub use guidance::{cfg_combine, guided_at, uses_cfg, GuidanceInterval};
pub use schedule::{Schedule, ScheduleOptions, SigmaStyle, SolverSettings};
pub use sde::{SdeSampler, StepNoise};
pub use unipc::UniPc;
