//! The CPUs this process may run on (sched_getaffinity), and a helper thread's share of them
//! (its nice value), through rustix.

use std::io;

use rustix::thread::CpuSet;

/// The CPUs this process (its calling thread) may run on, in ascending order.
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    let set = rustix::thread::sched_getaffinity(None)?;
    Ok((0..CpuSet::MAX_CPU)
        .filter(|&cpu| set.is_set(cpu))
        .collect())
}

/// Sets the calling thread's nice value (Linux: `setpriority(PRIO_PROCESS, 0)` names the
/// calling thread, not the whole process). Raising it needs no privilege.
pub fn set_thread_nice(nice: i32) -> io::Result<()> {
    Ok(rustix::process::setpriority_process(None, nice)?)
}

/// The calling thread's nice value.
pub fn thread_nice() -> io::Result<i32> {
    Ok(rustix::process::getpriority_process(None)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_lowers_its_own_priority_only() {
        let before = thread_nice().unwrap();
        let target = (before + 3).min(19);
        let seen = std::thread::spawn(move || {
            set_thread_nice(target).unwrap();
            thread_nice().unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(seen, target);
        assert_eq!(
            thread_nice().unwrap(),
            before,
            "the caller's thread is untouched"
        );
    }

    #[test]
    fn this_process_has_at_least_one_cpu_and_they_are_sorted() {
        let cpus = allowed_cpus().unwrap();
        assert!(!cpus.is_empty());
        assert!(cpus.windows(2).all(|w| w[0] < w[1]));
        let online = std::thread::available_parallelism().unwrap().get();
        assert!(cpus.len() >= online, "{cpus:?} vs {online}");
    }
}
