//! Parallelism: the device mesh (cfg, sp, tp axes), the communicator interface and its
//! backends (threads of one process, TCP between processes, NCCL), and the multi-process
//! job (rendezvous, control channel, watchdog). Nothing outside this module and `layers`
//! knows about ranks.

pub mod comm;
pub mod group;
pub mod job;
pub mod local;
pub mod mesh;
#[cfg(feature = "cuda")]
pub mod nccl;
pub mod rendezvous;
pub mod tcp;
mod watchdog;

pub use comm::{Communicator, SingleRank};
pub use group::Group;
pub use mesh::{Axis, Coord, MeshShape, RankMesh};
