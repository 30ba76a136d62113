//! The CPUs this process may run on (sched_getaffinity, through rustix).

use std::io;

use rustix::thread::CpuSet;

/// The CPUs this process (its calling thread) may run on, in ascending order.
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    let set = rustix::thread::sched_getaffinity(None)?;
    Ok((0..CpuSet::MAX_CPU)
        .filter(|&cpu| set.is_set(cpu))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_at_least_one_cpu_and_they_are_sorted() {
        let cpus = allowed_cpus().unwrap();
        assert!(!cpus.is_empty());
        assert!(cpus.windows(2).all(|w| w[0] < w[1]));
        let online = std::thread::available_parallelism().unwrap().get();
        assert!(cpus.len() >= online, "{cpus:?} vs {online}");
    }
}
