//! What a measured system spends: the CPU time and resident memory of a process and its
//! descendants (ringlb's master and worker, NGINX's master and worker) and the busy CPU time
//! of the whole machine, which counts the kernel's work for every party (softirqs included)
//! as well as the processes', read from `/proc` through the `procfs` crate; and the calling
//! thread's own CPU clock.

use procfs::process::Process;
use procfs::{CurrentSI, KernelStats, WithCurrentSystemInfo};

/// Process `pid` and its descendants, found through their parents in `/proc`.
fn tree(pid: i32) -> Vec<procfs::process::Stat> {
    let Ok(all) = procfs::process::all_processes() else {
        return Process::new(pid)
            .and_then(|p| p.stat())
            .map_or_else(|_| Vec::new(), |s| vec![s]);
    };
    let stats: Vec<_> = all.flatten().filter_map(|p| p.stat().ok()).collect();
    let mut members = vec![pid];
    // Parents come before their children in most listings, not all: repeat until stable.
    loop {
        let before = members.len();
        for s in &stats {
            if members.contains(&s.ppid) && !members.contains(&s.pid) {
                members.push(s.pid);
            }
        }
        if members.len() == before {
            break;
        }
    }
    stats
        .into_iter()
        .filter(|s| members.contains(&s.pid))
        .collect()
}

/// CPU seconds (user and system) of process `pid` and its descendants so far.
pub fn process_cpu_seconds(pid: u32) -> f64 {
    let Ok(pid) = i32::try_from(pid) else {
        return 0.0;
    };
    let ticks: u64 = tree(pid).iter().map(|s| s.utime + s.stime).sum();
    ticks as f64 / procfs::ticks_per_second() as f64
}

/// Resident memory of process `pid` and its descendants, in bytes.
pub fn process_rss_bytes(pid: u32) -> u64 {
    let Ok(pid) = i32::try_from(pid) else {
        return 0;
    };
    tree(pid).iter().map(|s| s.rss_bytes().get()).sum()
}

/// Busy CPU seconds of the whole machine so far, over every CPU: user, nice, system, irq
/// and softirq time (not idle, I/O wait or time stolen by a hypervisor).
pub fn machine_busy_seconds() -> f64 {
    let Ok(stats) = KernelStats::current() else {
        return 0.0;
    };
    let t = &stats.total;
    let ticks = t.user + t.nice + t.system + t.irq.unwrap_or(0) + t.softirq.unwrap_or(0);
    ticks as f64 / procfs::ticks_per_second() as f64
}

/// The calling thread's CPU time so far (user and system).
pub fn thread_cpu() -> std::time::Duration {
    use nix::time::{clock_gettime, ClockId};
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).map_or(std::time::Duration::ZERO, Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_child_counts_in_its_parents_tree_and_the_machine() {
        let me = std::process::id();
        let (cpu, machine) = (process_cpu_seconds(me), machine_busy_seconds());
        let mut child = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done"])
            .spawn()
            .unwrap();
        let mut seen = 0.0f64;
        while child.try_wait().unwrap().is_none() {
            seen = seen.max(process_cpu_seconds(me) - cpu);
        }
        assert!(seen > 0.0, "the child's CPU shows in this process's tree");
        assert!(machine_busy_seconds() > machine);
        assert!(
            process_rss_bytes(me) > 1 << 20,
            "this process holds more than 1 MiB"
        );
    }
}
