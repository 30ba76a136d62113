//! The bits of /proc the benchmark reads: CPU time of a process tree, resident memory, and the
//! kernel's TCP socket memory. Every reader takes the /proc root so tests can use a fake tree.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The fields of `/proc/PID/stat` we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub ppid: u32,
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
}

/// Parses `/proc/PID/stat`. The command name (field 2) may contain spaces and parentheses, so
/// the fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] = state (field 3), f[1] = ppid (4), f[11] = utime (14), f[12] = stime (15).
    let ppid = f.get(1)?.parse().ok()?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(Stat {
        ppid,
        cpu_ticks: utime + stime,
    })
}

/// All processes under `proc_root`, by PID.
fn all_stats(proc_root: &Path) -> BTreeMap<u32, Stat> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(proc_root) else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Some(st) = std::fs::read_to_string(e.path().join("stat"))
            .ok()
            .and_then(|t| parse_stat(&t))
        {
            out.insert(pid, st);
        }
    }
    out
}

/// `roots` and all their live descendants.
pub fn tree_pids(proc_root: &Path, roots: &[u32]) -> BTreeSet<u32> {
    let stats = all_stats(proc_root);
    let mut set: BTreeSet<u32> = roots
        .iter()
        .copied()
        .filter(|p| stats.contains_key(p))
        .collect();
    // Children can only be found after their parent; iterate until nothing is added.
    loop {
        let before = set.len();
        for (pid, st) in &stats {
            if set.contains(&st.ppid) {
                set.insert(*pid);
            }
        }
        if set.len() == before {
            return set;
        }
    }
}

/// utime + stime (ticks) summed over `roots` and their descendants (threads are included in
/// a process's own counters).
pub fn tree_cpu_ticks(proc_root: &Path, roots: &[u32]) -> u64 {
    let stats = all_stats(proc_root);
    tree_pids(proc_root, roots)
        .iter()
        .filter_map(|p| stats.get(p))
        .map(|s| s.cpu_ticks)
        .sum()
}

/// Nanoseconds on CPU (first field of `/proc/PID/task/TID/schedstat`) summed over every
/// thread of the tree: a finer clock than utime+stime's ticks. `None` without schedstats.
pub fn tree_sched_ns(proc_root: &Path, roots: &[u32]) -> Option<u64> {
    let mut total = 0u64;
    let mut any = false;
    for pid in tree_pids(proc_root, roots) {
        let Ok(tasks) = std::fs::read_dir(proc_root.join(pid.to_string()).join("task")) else {
            continue;
        };
        for t in tasks.flatten() {
            if let Some(ns) = std::fs::read_to_string(t.path().join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            {
                total += ns;
                any = true;
            }
        }
    }
    any.then_some(total)
}

/// `VmRSS:   1234 kB` from `/proc/PID/status`, in bytes.
pub fn parse_vmrss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Resident memory summed over the process tree, in bytes.
pub fn tree_rss(proc_root: &Path, roots: &[u32]) -> u64 {
    tree_pids(proc_root, roots)
        .iter()
        .filter_map(|p| std::fs::read_to_string(proc_root.join(p.to_string()).join("status")).ok())
        .filter_map(|s| parse_vmrss(&s))
        .sum()
}

/// `TCP: inuse 5 orphan 0 tw 0 alloc 7 mem 1` from `/proc/net/sockstat`: the `mem` pages.
pub fn parse_sockstat_tcp_mem_pages(sockstat: &str) -> Option<u64> {
    let line = sockstat.lines().find(|l| l.starts_with("TCP:"))?;
    let mut words = line.split_whitespace();
    while let Some(w) = words.next() {
        if w == "mem" {
            return words.next()?.parse().ok();
        }
    }
    None
}

/// Kernel TCP socket memory in bytes (pages × 4096).
pub fn tcp_mem_bytes(proc_root: &Path) -> Option<u64> {
    let s = std::fs::read_to_string(proc_root.join("net/sockstat")).ok()?;
    Some(parse_sockstat_tcp_mem_pages(&s)? * 4096)
}

/// Busy clock ticks of all CPUs from the first line of `/proc/stat`: user + nice + system +
/// irq + softirq. Ticks that land in (soft)irq context are charged to the running task's stime
/// too, so this minus our processes' utime+stime is the CPU other processes took.
pub fn parse_cpu_busy_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq ...
    Some(f.first()? + f.get(1)? + f.get(2)? + f.get(5)? + f.get(6)?)
}

pub fn cpu_busy_ticks(proc_root: &Path) -> Option<u64> {
    parse_cpu_busy_ticks(&std::fs::read_to_string(proc_root.join("stat")).ok()?)
}

/// The 1-minute load average (first field of `/proc/loadavg`).
pub fn loadavg(proc_root: &Path) -> Option<f64> {
    std::fs::read_to_string(proc_root.join("loadavg"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 if that fails).
pub fn clk_tck() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|t| *t > 0)
        .unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat_line(pid: u32, comm: &str, ppid: u32, utime: u64, stime: u64) -> String {
        format!(
            "{pid} ({comm}) S {ppid} {pid} {pid} 0 -1 4194560 100 0 0 0 {utime} {stime} 0 0 20 0 1 0 1 1 1"
        )
    }

    #[test]
    fn parses_stat_with_odd_names() {
        let s = parse_stat(&stat_line(42, "nginx: worker (x) y", 7, 120, 30)).unwrap();
        assert_eq!(
            s,
            Stat {
                ppid: 7,
                cpu_ticks: 150
            }
        );
        assert!(parse_stat("garbage").is_none());
        assert!(parse_stat("1 (x) S 0").is_none());
    }

    #[test]
    fn parses_cpu_busy() {
        let stat = "cpu  100 2 30 5000 70 4 6 9 0 0\ncpu0 50 1 15 2500 35 2 3 4 0 0\n";
        assert_eq!(parse_cpu_busy_ticks(stat), Some(100 + 2 + 30 + 4 + 6));
        assert_eq!(parse_cpu_busy_ticks("cpu  1 2\n"), None);
        assert_eq!(parse_cpu_busy_ticks("intr 5\n"), None);
    }

    #[test]
    fn parses_status_and_sockstat() {
        assert_eq!(
            parse_vmrss("Name:\tx\nVmPeak:\t 9 kB\nVmRSS:\t    1500 kB\n"),
            Some(1500 * 1024)
        );
        assert_eq!(parse_vmrss("Name: kthread\n"), None);
        let ss =
            "sockets: used 300\nTCP: inuse 5 orphan 0 tw 2 alloc 7 mem 13\nUDP: inuse 1 mem 2\n";
        assert_eq!(parse_sockstat_tcp_mem_pages(ss), Some(13));
        assert_eq!(parse_sockstat_tcp_mem_pages("UDP: inuse 1 mem 2\n"), None);
    }

    #[test]
    fn sums_a_process_tree() {
        let root = std::env::temp_dir().join(format!("xtask-fakeproc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        // 10 = nginx master, 11/12 = workers, 13 = a worker's helper, 20 = backend,
        // 30 = unrelated, "self" and "net" are not PIDs.
        let procs = [
            (10, "nginx", 1, 5, 5, 1000),
            (11, "nginx", 10, 100, 50, 2000),
            (12, "nginx", 10, 200, 0, 2000),
            (13, "helper", 11, 1, 1, 100),
            (20, "echo-plain", 1, 40, 10, 3000),
            (30, "other", 1, 999, 999, 9999),
        ];
        for (pid, comm, ppid, u, s, rss_kb) in procs {
            let d = root.join(pid.to_string());
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("stat"), stat_line(pid, comm, ppid, u, s)).unwrap();
            std::fs::write(
                d.join("status"),
                format!("Name:\t{comm}\nVmRSS:\t{rss_kb} kB\n"),
            )
            .unwrap();
        }
        for (pid, tid, ns) in [(10, 10, 1000), (11, 11, 20), (11, 14, 5), (30, 30, 7)] {
            let d = root.join(format!("{pid}/task/{tid}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("schedstat"), format!("{ns} 0 0\n")).unwrap();
        }
        assert_eq!(tree_sched_ns(&root, &[10]), Some(1025));
        assert_eq!(tree_sched_ns(&root, &[20]), None);
        std::fs::create_dir_all(root.join("self")).unwrap();
        std::fs::create_dir_all(root.join("net")).unwrap();
        std::fs::write(
            root.join("net/sockstat"),
            "TCP: inuse 1 orphan 0 tw 0 alloc 1 mem 3\n",
        )
        .unwrap();

        assert_eq!(
            tree_pids(&root, &[10, 20]).into_iter().collect::<Vec<_>>(),
            vec![10, 11, 12, 13, 20]
        );
        assert_eq!(tree_cpu_ticks(&root, &[10, 20]), 10 + 150 + 200 + 2 + 50);
        assert_eq!(tree_cpu_ticks(&root, &[11]), 152);
        assert_eq!(tree_cpu_ticks(&root, &[99]), 0);
        assert_eq!(tree_rss(&root, &[10]), (1000 + 2000 + 2000 + 100) * 1024);
        assert_eq!(tcp_mem_bytes(&root), Some(3 * 4096));
        assert_eq!(loadavg(&root), None);
        std::fs::write(root.join("loadavg"), "1.25 0.80 0.50 2/300 4242\n").unwrap();
        assert_eq!(loadavg(&root), Some(1.25));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
