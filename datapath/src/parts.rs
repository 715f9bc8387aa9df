//! Work spread over the cores: a list cut into consecutive parts, each handled on a
//! scoped thread of its own, the results in the list's order. The scan of a large
//! directory and the secondary's runs of independent writes both use it.

/// `f` applied to `items` in consecutive parts, one per core (4 at most), each on a
/// thread of its own; the parts' results in `items`' order. Fewer than `min` items, or
/// one core: `f` on all of them, on this thread. A thread's panic is raised again here,
/// as `f` on this thread would have raised it.
pub fn in_parts<T: Send, R: Send>(
    items: Vec<T>,
    min: usize,
    f: impl Fn(Vec<T>) -> R + Sync,
) -> Vec<R> {
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(4);
    if items.len() < min || threads < 2 {
        return vec![f(items)];
    }
    let per_thread = items.len().div_ceil(threads);
    let mut parts = Vec::with_capacity(threads);
    let mut rest = items.into_iter();
    loop {
        let part: Vec<T> = rest.by_ref().take(per_thread).collect();
        if part.is_empty() {
            break;
        }
        parts.push(part);
    }
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = parts
            .into_iter()
            .map(|part| scope.spawn(move || f(part)))
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_keep_the_order_and_lose_nothing() {
        let items: Vec<u32> = (0..1000).collect();
        let parts = in_parts(items.clone(), 10, |part| part);
        if std::thread::available_parallelism().map_or(1, usize::from) > 1 {
            assert!(parts.len() > 1, "one part for 1000 items");
        }
        assert_eq!(parts.concat(), items);
        assert_eq!(
            in_parts(vec![1, 2, 3], 10, |part| part),
            vec![vec![1, 2, 3]]
        );
    }
}
