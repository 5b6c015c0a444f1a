//! A rank's group on one mesh axis, as the parallel layers hold it: the communicator of
//! that axis plus the arithmetic of splitting whole units (heads, channels, tokens) over
//! it. The tensor-parallel layers (`layers::linear`, `layers::tp`) and the Ulysses
//! exchange (`layers::sp`) add their own methods to this one type.

use std::ops::Range;
use std::sync::Arc;

use super::comm::{Communicator, SingleRank};
use crate::{Error, Result};

/// The ranks of one mesh axis that share a rank's other coordinates.
#[derive(Clone)]
pub struct Group {
    comm: Arc<dyn Communicator>,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Group({}/{})", self.comm.rank(), self.comm.size())
    }
}

impl Default for Group {
    fn default() -> Self {
        Self::single()
    }
}

impl Group {
    /// A group of one: nothing is split.
    pub fn single() -> Self {
        Self {
            comm: Arc::new(SingleRank),
        }
    }

    pub fn new(comm: Arc<dyn Communicator>) -> Self {
        Self { comm }
    }

    pub fn size(&self) -> usize {
        self.comm.size()
    }

    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    pub fn comm(&self) -> &Arc<dyn Communicator> {
        &self.comm
    }

    /// This rank's contiguous block of `n` units (`what`, e.g. "num_key_value_heads").
    pub fn shard(&self, n: usize, what: &str) -> Result<Range<usize>> {
        shard_range(n, self.rank(), self.size(), what)
    }
}

/// The contiguous block of `n` items that rank `rank` of `size` owns. The topology was
/// checked against the model when the engine started ([`super::MeshShape::check_heads`]), so
/// an uneven split here is a model-config inconsistency, reported as such.
pub fn shard_range(n: usize, rank: usize, size: usize, what: &str) -> Result<Range<usize>> {
    if size == 0 || !n.is_multiple_of(size) {
        return Err(Error::msg(format!(
            "{what} ({n}) cannot be split evenly over a group of {size} ranks"
        )));
    }
    let per = n / size;
    Ok(rank * per..(rank + 1) * per)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_contiguous_and_even() {
        assert_eq!(shard_range(8, 1, 4, "heads").unwrap(), 2..4);
        assert_eq!(Group::single().shard(5, "heads").unwrap(), 0..5);
        let e = shard_range(6, 0, 4, "num_key_value_heads").unwrap_err();
        assert_eq!(
            e.to_string(),
            "num_key_value_heads (6) cannot be split evenly over a group of 4 ranks"
        );
    }
}
