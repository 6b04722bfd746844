//! [`StartupArena`]: a global allocator that serves small allocations from one static arena
//! until it is used up, and everything else from the system allocator.
//!
//! The sandbox agent starts once per sandbox, and on this kind of host every page it touches
//! for the first time costs a fault (and every `mmap` a syscall). musl's allocator gives each
//! size class a group of its own, often a fresh single-page `mmap`, so the few dozen small
//! allocations of the agent's start-up and first request are spread over ~30 mappings. The
//! arena packs them into consecutive pages of `.bss` instead, with no syscall.
//!
//! Memory freed in the arena is not reused (except the most recent allocation, which is
//! rolled back, and grown in place by `realloc`): the arena is a bounded, one-time cost, and
//! once it is full every allocation goes to the system allocator as before.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Allocations larger than this always go to the system allocator.
pub const MAX_SMALL: usize = 4096;

/// The arena's bytes, page-aligned.
#[repr(C, align(4096))]
struct Bytes<const N: usize>(UnsafeCell<[u8; N]>);

/// A global allocator with an `N`-byte arena for allocations up to [`MAX_SMALL`] bytes.
pub struct StartupArena<const N: usize> {
    bytes: Bytes<N>,
    /// Bytes of the arena handed out so far.
    used: AtomicUsize,
}

// SAFETY: the arena's bytes are only reached through pointers handed out by `alloc`, each to
// one owner, and `used` is only changed with atomic compare-and-swap operations, so no two
// threads are ever given overlapping ranges.
unsafe impl<const N: usize> Sync for StartupArena<N> {}

impl<const N: usize> Default for StartupArena<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> StartupArena<N> {
    /// An empty arena (for a `static`).
    pub const fn new() -> Self {
        Self {
            bytes: Bytes(UnsafeCell::new([0; N])),
            used: AtomicUsize::new(0),
        }
    }

    fn base(&self) -> usize {
        self.bytes.0.get() as usize
    }

    /// Whether `ptr` points into the arena.
    fn owns(&self, ptr: *mut u8) -> bool {
        let p = ptr as usize;
        p >= self.base() && p < self.base() + N
    }

    /// Bytes of the arena handed out so far.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// A range for `layout` from the arena, if it fits.
    fn bump(&self, layout: Layout) -> Option<*mut u8> {
        if layout.size() > MAX_SMALL || layout.size() == 0 {
            return None;
        }
        let base = self.base();
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let start = (base + used).checked_next_multiple_of(layout.align())? - base;
            let end = start.checked_add(layout.size())?;
            if end > N {
                return None;
            }
            match self
                .used
                .compare_exchange_weak(used, end, Ordering::Relaxed, Ordering::Relaxed)
            {
                // The range [start, end) is ours alone: `used` moved past it atomically.
                Ok(_) => return Some((base + start) as *mut u8),
                Err(now) => used = now,
            }
        }
    }

    /// Whether `[ptr, ptr + size)` is the arena's most recent allocation.
    fn is_last(&self, ptr: *mut u8, size: usize) -> bool {
        ptr as usize + size == self.base() + self.used.load(Ordering::Relaxed)
    }
}

// SAFETY: `alloc` returns either a fresh arena range (distinct from every other live one, see
// `bump`, aligned as asked) or the system allocator's pointer; `dealloc` and `realloc` route a
// pointer back to the allocator that made it, told apart by its address.
unsafe impl<const N: usize> GlobalAlloc for StartupArena<N> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match self.bump(layout) {
            Some(p) => p,
            // SAFETY: the caller's layout contract is passed on unchanged.
            None => unsafe { System.alloc(layout) },
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match self.bump(layout) {
            // A rolled-back range may be handed out again, so it is zeroed here.
            Some(p) => {
                // SAFETY: `p` is valid for `layout.size()` bytes (a fresh arena range).
                unsafe { p.write_bytes(0, layout.size()) };
                p
            }
            // SAFETY: as in `alloc`.
            None => unsafe { System.alloc_zeroed(layout) },
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if !self.owns(ptr) {
            // SAFETY: `ptr` came from `System` with this layout (it is not the arena's).
            return unsafe { System.dealloc(ptr, layout) };
        }
        // The most recent allocation is rolled back (a failed exchange means another one was
        // made since: the range is then simply not reused).
        let end = ptr as usize + layout.size() - self.base();
        let start = ptr as usize - self.base();
        let _ = self
            .used
            .compare_exchange(end, start, Ordering::Relaxed, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !self.owns(ptr) {
            // SAFETY: `ptr` came from `System` with this layout.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        let start = ptr as usize - self.base();
        if new_size <= layout.size() {
            // Shrinking in place is always valid; give the tail back if it is the last one.
            if self.is_last(ptr, layout.size()) {
                let _ = self.used.compare_exchange(
                    start + layout.size(),
                    start + new_size,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            return ptr;
        }
        if new_size <= MAX_SMALL
            && start + new_size <= N
            && self
                .used
                .compare_exchange(
                    start + layout.size(),
                    start + new_size,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            // It was the last allocation and the arena had room: grown in place.
            return ptr;
        }
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return std::ptr::null_mut();
        };
        // SAFETY: `new_layout` is valid (checked above) and non-zero-sized (larger than the old).
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both ranges are valid for `layout.size()` bytes and distinct (`new` is a
            // fresh allocation); the old one stays allocated until after the copy.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size());
                self.dealloc(ptr, layout);
            }
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_allocations_pack_into_the_arena_and_the_rest_go_to_the_system() {
        let arena: Box<StartupArena<8192>> = Box::default();
        let l16 = Layout::from_size_align(16, 8).expect("layout");
        // SAFETY: every pointer is used within its layout and freed with it.
        unsafe {
            let a = arena.alloc(l16);
            let b = arena.alloc(l16);
            assert!(arena.owns(a) && arena.owns(b));
            assert_eq!(b as usize - a as usize, 16, "packed");
            a.write_bytes(0xaa, 16);
            b.write_bytes(0xbb, 16);
            // The last one is rolled back and its range reused; an earlier one is not.
            arena.dealloc(b, l16);
            assert_eq!(arena.used(), 16);
            let c = arena.alloc(l16);
            assert_eq!(c, b);
            // Growing the last allocation happens in place and keeps its bytes.
            c.write_bytes(0xcc, 16);
            let c2 = arena.realloc(c, l16, 64);
            assert_eq!(c2, c);
            assert_eq!(*c2.add(15), 0xcc);
            // Growing an earlier one moves it, with its bytes.
            let a2 = arena.realloc(a, l16, 32);
            assert_ne!(a2, a);
            assert_eq!(*a2.add(15), 0xaa);
            // Alignment is honoured.
            let l64 = Layout::from_size_align(8, 64).expect("layout");
            let d = arena.alloc(l64);
            assert_eq!(d as usize % 64, 0);
            // Too big, or no room left: the system allocator's.
            let big = Layout::from_size_align(MAX_SMALL + 1, 8).expect("layout");
            let e = arena.alloc(big);
            assert!(!e.is_null() && !arena.owns(e));
            arena.dealloc(e, big);
            let l4k = Layout::from_size_align(4096, 8).expect("layout");
            let f = arena.alloc(l4k);
            let g = arena.alloc(l4k);
            assert!(
                arena.owns(f) && !arena.owns(g),
                "the second one does not fit"
            );
            // A moved-out-of-the-arena realloc keeps the bytes.
            f.write_bytes(0x11, 4096);
            let f2 = arena.realloc(f, l4k, 4096 + 10);
            assert!(!arena.owns(f2));
            assert_eq!(*f2.add(4095), 0x11);
            let l4k10 = Layout::from_size_align(4096 + 10, 8).expect("layout");
            arena.dealloc(f2, l4k10);
            arena.dealloc(g, l4k);
            let d2 = arena.alloc(l16);
            d2.write_bytes(0xdd, 16);
            arena.dealloc(d2, l16);
            let zeroed = arena.alloc_zeroed(l16);
            assert_eq!(zeroed, d2, "the rolled-back range is reused, zeroed");
            assert!(
                std::slice::from_raw_parts(zeroed, 16)
                    .iter()
                    .all(|&x| x == 0)
            );
        }
    }
}
