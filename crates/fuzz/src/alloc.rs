//! A measuring allocator: the system allocator plus, per thread, the live and peak bytes it
//! handed out, so the driver can check that a parser given a small input never holds an
//! unbounded amount of memory (a length field believed, a decompression bomb).
//!
//! A binary opts in with
//! `#[global_allocator] static A: nereid_fuzz::alloc::Counting = nereid_fuzz::alloc::Counting;`
//! and passes [`peak_during`] to the driver.

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    // Const-initialised Cells without destructors: using them from inside the allocator
    // never allocates nor registers a destructor.
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn add(n: isize) {
    let _ = LIVE.try_with(|live| {
        let v = live.get() + n;
        live.set(v);
        let _ = PEAK.try_with(|peak| {
            if v > peak.get() {
                peak.set(v);
            }
        });
    });
}

/// The system allocator, counting.
pub struct Counting;

// SAFETY: every call is forwarded unchanged to `System`, which upholds GlobalAlloc's
// contract; the counting only touches thread-local Cells and never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        add(layout.size() as isize);
        // SAFETY: same layout, same contract as our caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        add(layout.size() as isize);
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        add(-(layout.size() as isize));
        // SAFETY: `ptr` came from `System` with this layout (we allocate nothing else).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        add(new_size as isize - layout.size() as isize);
        // SAFETY: as above; `ptr` and `layout` are the caller's, from `System`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Runs `f` and returns the most heap it held at once above what was live before (on this
/// thread; memory freed by another thread is not seen, which only makes this generous).
pub fn peak_during(f: &mut dyn FnMut()) -> Option<usize> {
    let start = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(start));
    f();
    let peak = PEAK.with(Cell::get);
    Some((peak - start).max(0) as usize)
}
