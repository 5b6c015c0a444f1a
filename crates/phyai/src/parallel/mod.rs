//! Parallelism: the device mesh (cfg, sp, tp axes), the communicator interface and its
//! backends. Nothing outside this module and `layers` knows about ranks.

pub mod comm;
pub mod local;
pub mod mesh;
#[cfg(feature = "cuda")]
pub mod nccl;
pub mod rendezvous;

pub use comm::{Communicator, SingleRank};
pub use mesh::{Axis, Coord, MeshShape, RankMesh};
