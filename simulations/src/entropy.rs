//! Seeded entropy for a simulation run (binary only: it interposes a libc symbol).
//!
//! Two sources of randomness in the code under test are out of our hands: chitchat
//! seeds its gossip-peer RNG from `rand::rng()` (the `getrandom` crate, which finds
//! libc's `getrandom` through `dlsym`), and it picks peers by iterating a `HashSet`,
//! whose order comes from std's per-thread hash keys (also read through libc's
//! `getrandom`). This module defines `getrandom` in the executable (exported to the
//! dynamic symbol table by `build.rs`, so `dlsym` finds it before libc's). On a thread
//! where [`install`] ran, it returns bytes from a stream seeded by the run's seed; on
//! every other thread it is the real system call. A run executes on a fresh thread
//! with the stream installed before it touches a hash map or an RNG, so its hash keys
//! and chitchat's RNG are functions of the seed.
//!
//! Tokio's `select!` draws from a per-runtime seed derived from a process-wide
//! counter; that one only replays in a fresh process, which is why batches run each
//! seed in a child process (see `main.rs`).

use std::cell::Cell;
use std::ffi::{c_uint, c_void};

thread_local! {
    /// The seeded stream's state on this thread; `None`: the system's entropy.
    static STREAM: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Makes every `getrandom` on the current thread read the stream seeded by `seed`.
pub fn install(seed: u64) {
    STREAM.with(|stream| stream.set(Some(seed ^ 0x6765_6f72_6570_2d73)));
    // Keep the interposer referenced, so the linker cannot drop it as unused.
    std::hint::black_box(getrandom as unsafe extern "C" fn(*mut c_void, usize, c_uint) -> isize);
}

/// One SplitMix64 step: a full-period, well-mixed 64-bit sequence.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// getrandom(2), as libc declares it: seeded bytes on a thread where [`install`] ran,
/// the system call everywhere else.
///
/// # Safety
///
/// The caller guarantees what getrandom(2) requires: `buf` is valid for writes of
/// `len` bytes (it may be anything when `len` is 0).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn getrandom(buf: *mut c_void, len: usize, flags: c_uint) -> isize {
    if len == 0 {
        return 0;
    }
    // `try_with`: during thread teardown the slot may be gone; fall back to the kernel.
    let Some(mut state) = STREAM.try_with(Cell::get).ok().flatten() else {
        // SAFETY: the arguments are passed through unchanged to the system call with
        // the same contract as this function.
        return unsafe { libc::syscall(libc::SYS_getrandom, buf, len, flags) } as isize;
    };
    // SAFETY: `len > 0` and the caller guarantees `buf` is valid for `len` writable
    // bytes; nothing else aliases them for the duration of this call.
    let out = unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), len) };
    for chunk in out.chunks_mut(8) {
        let word = next(&mut state).to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
    let _ = STREAM.try_with(|stream| stream.set(Some(state)));
    // A slice never exceeds isize::MAX bytes, so this cannot wrap.
    len as isize
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn order_on_fresh_thread(seed: Option<u64>) -> Vec<u32> {
        std::thread::spawn(move || {
            if let Some(seed) = seed {
                install(seed);
            }
            let set: HashSet<u32> = (0..64).collect();
            set.into_iter().collect()
        })
        .join()
        .unwrap_or_default()
    }

    #[test]
    fn hash_order_follows_the_installed_seed() {
        assert_eq!(
            order_on_fresh_thread(Some(7)),
            order_on_fresh_thread(Some(7))
        );
        assert_ne!(
            order_on_fresh_thread(Some(7)),
            order_on_fresh_thread(Some(8))
        );
        // Without a seed, the system's entropy: two threads disagree (64! orders).
        assert_ne!(order_on_fresh_thread(None), order_on_fresh_thread(None));
    }

    #[test]
    fn the_getrandom_crate_reads_the_stream_too() {
        let draw = |seed: u64| {
            std::thread::spawn(move || {
                install(seed);
                let mut bytes = [0u8; 16];
                // chitchat reaches getrandom through rand::rng(); the same dlsym path.
                let mut rng = rand_probe();
                for b in &mut bytes {
                    *b = rng();
                }
                bytes
            })
            .join()
            .unwrap_or_default()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
    }

    /// Bytes from the `getrandom` crate as `rand` reads them.
    fn rand_probe() -> impl FnMut() -> u8 {
        move || {
            let mut b = [0u8; 1];
            ::getrandom::fill(&mut b).unwrap_or_default();
            b[0]
        }
    }
}
