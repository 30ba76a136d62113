//! Which CPUs the core threads run on: the process's allowed set (sched_getaffinity), narrowed
//! by `cores` (the first N) or `cpus` (exactly these).

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    #[error("cannot read this process's CPU affinity: {0}")]
    Affinity(io::Error),
    #[error("--cores {asked}: only {allowed} CPUs are allowed for this process ({list:?})")]
    TooMany {
        asked: usize,
        allowed: usize,
        list: Vec<usize>,
    },
    #[error("--cpus: CPU {cpu} is not allowed for this process (allowed: {list:?})")]
    NotAllowed { cpu: usize, list: Vec<usize> },
}

/// The CPUs this process may run on, in ascending order.
pub use wssedge_sys::affinity::allowed_cpus;

/// The CPU of each core thread.
pub fn choose(cores: Option<usize>, cpus: Option<&[usize]>) -> Result<Vec<usize>, CpuError> {
    let allowed = allowed_cpus().map_err(CpuError::Affinity)?;
    pick(&allowed, cores, cpus)
}

fn pick(
    allowed: &[usize],
    cores: Option<usize>,
    cpus: Option<&[usize]>,
) -> Result<Vec<usize>, CpuError> {
    if let Some(list) = cpus {
        if let Some(&cpu) = list.iter().find(|c| !allowed.contains(c)) {
            return Err(CpuError::NotAllowed {
                cpu,
                list: allowed.to_vec(),
            });
        }
        return Ok(list.to_vec());
    }
    let n = cores.unwrap_or(allowed.len());
    if n > allowed.len() {
        return Err(CpuError::TooMany {
            asked: n,
            allowed: allowed.len(),
            list: allowed.to_vec(),
        });
    }
    Ok(allowed[..n].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_at_least_one_cpu() {
        assert!(!allowed_cpus().unwrap().is_empty());
    }

    #[test]
    fn cores_take_the_first_allowed_and_cpus_must_be_allowed() {
        let allowed = [2, 3, 6];
        assert_eq!(pick(&allowed, None, None).unwrap(), vec![2, 3, 6]);
        assert_eq!(pick(&allowed, Some(2), None).unwrap(), vec![2, 3]);
        assert!(matches!(
            pick(&allowed, Some(4), None),
            Err(CpuError::TooMany { .. })
        ));
        assert_eq!(pick(&allowed, None, Some(&[6, 2])).unwrap(), vec![6, 2]);
        assert!(matches!(
            pick(&allowed, None, Some(&[1])),
            Err(CpuError::NotAllowed { cpu: 1, .. })
        ));
    }
}
