//! A small scoped-thread map: an inventory of ten thousand certificates is CPU-bound (parsing and
//! signature checks), and a node has few cores, so the work is shared out without a thread pool.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Below this many items the threads cost more than they save.
const MIN_PARALLEL: usize = 64;

/// Maps `f` over `items` on all cores, keeping the order.
pub fn map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    map_with(items, MIN_PARALLEL, 16, f)
}

/// [`map`] for items that each cost milliseconds (generating an RSA key): every item is worth a
/// thread, and they are handed out one at a time.
pub fn map_heavy<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    map_with(items, 1, 1, f)
}

fn map_with<T: Sync, R: Send>(
    items: &[T],
    min_parallel: usize,
    batch: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(items.len().div_ceil(min_parallel).max(1));
    if threads <= 1 {
        return items.iter().map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let mut parts: Vec<Vec<(usize, R)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    // Small batches keep both cores busy when item costs differ (a kubeconfig vs a
                    // lone certificate) without contending on the counter for every item.
                    loop {
                        let start = next.fetch_add(batch, Ordering::Relaxed);
                        if start >= items.len() {
                            break;
                        }
                        for (i, item) in items.iter().enumerate().skip(start).take(batch) {
                            out.push((i, f(item)));
                        }
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let mut all: Vec<(usize, R)> = parts.iter_mut().flat_map(std::mem::take).collect();
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, r)| r).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_order() {
        let v: Vec<usize> = (0..1000).collect();
        let out = super::map(&v, |x| x * 2);
        assert_eq!(out, v.iter().map(|x| x * 2).collect::<Vec<_>>());
    }
}
