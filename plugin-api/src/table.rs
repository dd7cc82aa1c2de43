//! The table of live tensors behind [`TensorId`]s that every [`crate::ffi::HostOps`]
//! implementation keeps (the host's executor holds burn tensors in it, the shape-only host
//! shapes): ids index slots, a released id's slot is reused by the next insert.

use crate::ffi::TensorId;

/// Live values by [`TensorId`]; freed ids are reused.
#[derive(Debug)]
pub struct TensorTable<T> {
    slots: Vec<Option<T>>,
    free: Vec<usize>,
}

impl<T> Default for TensorTable<T> {
    fn default() -> Self {
        TensorTable {
            slots: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<T> TensorTable<T> {
    /// Stores `v` under a free id.
    pub fn insert(&mut self, v: T) -> TensorId {
        match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(v);
                TensorId(i as u64)
            }
            None => {
                self.slots.push(Some(v));
                TensorId((self.slots.len() - 1) as u64)
            }
        }
    }

    /// The value of `id`, if it is live (`TensorId::INVALID` and released ids are not).
    pub fn get(&self, id: TensorId) -> Option<&T> {
        usize::try_from(id.0)
            .ok()
            .and_then(|i| self.slots.get(i))
            .and_then(|s| s.as_ref())
    }

    /// The value of `id` for replacing in place, if it is live.
    pub fn get_mut(&mut self, id: TensorId) -> Option<&mut T> {
        usize::try_from(id.0)
            .ok()
            .and_then(|i| self.slots.get_mut(i))
            .and_then(|s| s.as_mut())
    }

    /// Takes the value of `id` out and frees the id (nothing for an id that is not live).
    pub fn remove(&mut self, id: TensorId) -> Option<T> {
        let i = usize::try_from(id.0).ok()?;
        let v = self.slots.get_mut(i)?.take();
        if v.is_some() {
            self.free.push(i);
        }
        v
    }

    /// Number of live values.
    pub fn live(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_reused_after_removal() {
        let mut t = TensorTable::default();
        let (a, b) = (t.insert('a'), t.insert('b'));
        assert_eq!((a, b), (TensorId(0), TensorId(1)));
        assert_eq!(t.remove(a), Some('a'));
        assert_eq!(t.remove(a), None);
        assert_eq!(t.get(a), None);
        assert_eq!(t.get(TensorId::INVALID), None);
        assert_eq!(t.insert('c'), a);
        assert_eq!((t.get(a), t.get(b), t.live()), (Some(&'c'), Some(&'b'), 2));
    }
}
