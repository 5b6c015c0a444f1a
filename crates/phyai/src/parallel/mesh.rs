//! The device mesh: ranks laid out on named axes, cfg outermost, then sp, then tp
//! (`rank = (cfg·sp_size + sp)·tp_size + tp`), with one communicator per axis group.

use std::sync::Arc;

use super::comm::{Communicator, SingleRank};
use crate::{Error, Result};

/// A rank's coordinates on the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coord {
    pub cfg: usize,
    pub sp: usize,
    pub tp: usize,
}

/// Mesh shape, independent of any backend: the parallel topology of an engine
/// (`world = cfg · sp · tp`). The one place that checks a topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeshShape {
    /// Classifier-free-guidance groups: 1, or 2 (cond and uncond branches side by side).
    pub cfg: usize,
    /// Sequence-parallel (Ulysses) degree.
    pub sp: usize,
    /// Tensor-parallel degree.
    pub tp: usize,
}

impl Default for MeshShape {
    fn default() -> Self {
        Self::single()
    }
}

impl MeshShape {
    /// Axes in rank order: cfg outermost, tp innermost.
    pub fn new(cfg: usize, sp: usize, tp: usize) -> Self {
        Self { cfg, sp, tp }
    }

    /// One rank.
    pub fn single() -> Self {
        Self::new(1, 1, 1)
    }

    /// The shape's own consistency (errors name the fields `cfg`, `sp`, `tp`).
    pub fn validate(&self) -> Result<()> {
        if !(self.cfg == 1 || self.cfg == 2) {
            return Err(Error::invalid(
                "cfg",
                format!(
                    "must be 1 or 2 (cond and uncond branches), got {}",
                    self.cfg
                ),
            ));
        }
        for (field, n) in [("tp", self.tp), ("sp", self.sp)] {
            if n == 0 {
                return Err(Error::invalid(field, "must be at least 1"));
            }
        }
        Ok(())
    }

    /// The shape against a model: attention is split by heads over tp (projections) and
    /// sp (Ulysses exchange), so tp·sp must divide the key/value heads (and with them the
    /// query heads, a multiple of them).
    pub fn check_heads(&self, num_kv_heads: usize) -> Result<()> {
        self.validate()?;
        let split = self.tp * self.sp;
        if !num_kv_heads.is_multiple_of(split) {
            return Err(Error::invalid(
                if self.sp > 1 { "tp/sp" } else { "tp" },
                format!("tp·sp = {split} must divide the model's {num_kv_heads} key/value heads"),
            ));
        }
        Ok(())
    }

    pub fn world(&self) -> usize {
        self.cfg * self.sp * self.tp
    }

    pub fn coord(&self, rank: usize) -> Coord {
        Coord {
            cfg: rank / (self.sp * self.tp),
            sp: (rank / self.tp) % self.sp,
            tp: rank % self.tp,
        }
    }

    pub fn rank(&self, c: Coord) -> usize {
        (c.cfg * self.sp + c.sp) * self.tp + c.tp
    }

    /// The ranks sharing every coordinate with `rank` except `axis`, in axis order.
    pub fn group(&self, rank: usize, axis: Axis) -> Vec<usize> {
        let c = self.coord(rank);
        let n = self.len(axis);
        (0..n)
            .map(|i| {
                let mut d = c;
                match axis {
                    Axis::Cfg => d.cfg = i,
                    Axis::Sp => d.sp = i,
                    Axis::Tp => d.tp = i,
                }
                self.rank(d)
            })
            .collect()
    }

    pub fn len(&self, axis: Axis) -> usize {
        match axis {
            Axis::Cfg => self.cfg,
            Axis::Sp => self.sp,
            Axis::Tp => self.tp,
        }
    }

    /// Every distinct group along `axis` (each a list of world ranks).
    pub fn groups(&self, axis: Axis) -> Vec<Vec<usize>> {
        let mut out: Vec<Vec<usize>> = Vec::new();
        for r in 0..self.world() {
            let g = self.group(r, axis);
            if !out.contains(&g) {
                out.push(g);
            }
        }
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Axis {
    Cfg,
    Sp,
    Tp,
}

/// One rank's view of the mesh: its coordinates and a communicator for each axis and the
/// whole world. Model code receives only the communicator of the axis it shards over.
#[derive(Clone)]
pub struct RankMesh {
    pub shape: MeshShape,
    pub rank: usize,
    pub world: Arc<dyn Communicator>,
    pub cfg: Arc<dyn Communicator>,
    pub sp: Arc<dyn Communicator>,
    pub tp: Arc<dyn Communicator>,
}

impl RankMesh {
    /// The trivial mesh of a single-device run.
    pub fn single() -> Self {
        let one: Arc<dyn Communicator> = Arc::new(SingleRank);
        Self {
            shape: MeshShape::single(),
            rank: 0,
            world: one.clone(),
            cfg: one.clone(),
            sp: one.clone(),
            tp: one,
        }
    }

    pub fn coord(&self) -> Coord {
        self.shape.coord(self.rank)
    }

    /// Only this rank writes files.
    pub fn is_writer(&self) -> bool {
        self.rank == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coordinates_round_trip_cfg_outer_tp_inner() {
        let s = MeshShape {
            cfg: 2,
            sp: 2,
            tp: 2,
        };
        for r in 0..8 {
            assert_eq!(s.rank(s.coord(r)), r);
        }
        assert_eq!(
            s.coord(5),
            Coord {
                cfg: 1,
                sp: 0,
                tp: 1
            }
        );
        assert_eq!(s.group(5, Axis::Tp), vec![4, 5]);
        assert_eq!(s.group(5, Axis::Cfg), vec![1, 5]);
        assert_eq!(s.group(5, Axis::Sp), vec![5, 7]);
        assert_eq!(s.groups(Axis::Tp).len(), 4);
    }

    #[test]
    fn one_check_of_the_topology() {
        assert!(MeshShape::new(2, 2, 2).check_heads(8).is_ok());
        let e = MeshShape::new(3, 1, 1).validate().unwrap_err().to_string();
        assert!(e.starts_with("cfg: must be 1 or 2"), "{e}");
        let e = MeshShape::new(1, 1, 0).validate().unwrap_err().to_string();
        assert!(e.starts_with("tp: must be at least 1"), "{e}");
        let e = MeshShape::new(1, 1, 3)
            .check_heads(8)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("tp: tp·sp = 3 must divide"), "{e}");
        let e = MeshShape::new(1, 2, 2)
            .check_heads(2)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("tp/sp: tp·sp = 4"), "{e}");
    }
}
