//! The CPU a benchmark's process used, read from Linux's `/proc`: the
//! whole process (every thread, those that ended too) and each live
//! thread by name, so a figure such as "CPU per task" can be compared on a
//! busy machine, where throughput cannot. Elsewhere than Linux nothing is
//! read and the figures are absent.

use std::collections::HashMap;

use serde::Serialize;

/// What the process had used at one moment.
#[derive(Debug, Clone)]
pub struct CpuSample {
    /// User and system time of the whole process, in clock ticks.
    ticks: u64,
    /// Per live thread: its name and its time on a CPU, in nanoseconds.
    threads: HashMap<u32, (String, u64)>,
}

/// One thread's share of what was used between two samples.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ThreadCpu {
    pub name: String,
    pub ms: f64,
}

/// What was used between two samples.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CpuUse {
    /// The whole process, milliseconds.
    pub total_ms: f64,
    /// The threads that used any, most first.
    pub threads: Vec<ThreadCpu>,
}

/// Clock ticks per second of `/proc/*/stat` (`USER_HZ`: 100 on every
/// Linux architecture kira builds for).
const TICKS_PER_SECOND: f64 = 100.0;

/// The process's use now, or None where `/proc` cannot be read.
pub fn sample() -> Option<CpuSample> {
    let ticks = stat_ticks(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
    let mut threads = HashMap::new();
    for entry in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let dir = entry.path();
        let (Ok(name), Ok(sched)) = (
            std::fs::read_to_string(dir.join("comm")),
            std::fs::read_to_string(dir.join("schedstat")),
        ) else {
            continue;
        };
        if let Some(ns) = sched.split_whitespace().next().and_then(|s| s.parse().ok()) {
            threads.insert(tid, (name.trim().to_owned(), ns));
        }
    }
    Some(CpuSample { ticks, threads })
}

/// User plus system ticks from the text of `/proc/PID/stat` (fields 14
/// and 15, counted after the command's closing parenthesis, since the
/// command may hold spaces).
fn stat_ticks(text: &str) -> Option<u64> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ")" the fields start at the third (state), so utime, the
    // 14th, is the 12th here.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// What was used from `before` to `after`; threads born in between count
/// from zero, threads that ended in between are only in the total.
pub fn used(before: &CpuSample, after: &CpuSample) -> CpuUse {
    #[allow(clippy::cast_precision_loss)]
    let total_ms = after.ticks.saturating_sub(before.ticks) as f64 * 1000.0 / TICKS_PER_SECOND;
    let mut threads: Vec<ThreadCpu> = after
        .threads
        .iter()
        .filter_map(|(tid, (name, ns))| {
            let was = before.threads.get(tid).map_or(0, |(_, b)| *b);
            let d = ns.saturating_sub(was);
            #[allow(clippy::cast_precision_loss)]
            (d > 0).then(|| ThreadCpu {
                name: name.clone(),
                ms: d as f64 / 1e6,
            })
        })
        .collect();
    threads.sort_by(|a, b| b.ms.total_cmp(&a.ms).then_with(|| a.name.cmp(&b.name)));
    CpuUse { total_ms, threads }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_read_after_the_command_even_with_spaces_in_it() {
        let text = "4242 (tokio (rt) w) S 1 2 3 4 5 6 7 8 9 10 150 25 0 0 20 0 9 0 100 0 0";
        assert_eq!(stat_ticks(text), Some(175));
        assert_eq!(stat_ticks("garbage"), None);
    }

    #[test]
    fn use_is_the_difference_busiest_thread_first() {
        let before = CpuSample {
            ticks: 100,
            threads: HashMap::from([(1, ("main".to_owned(), 5_000_000))]),
        };
        let after = CpuSample {
            ticks: 130,
            threads: HashMap::from([
                (1, ("main".to_owned(), 7_000_000)),
                (2, ("writer".to_owned(), 250_000_000)),
                (3, ("idle".to_owned(), 0)),
            ]),
        };
        let u = used(&before, &after);
        assert!((u.total_ms - 300.0).abs() < 1e-9);
        assert_eq!(
            u.threads,
            [
                ThreadCpu {
                    name: "writer".into(),
                    ms: 250.0
                },
                ThreadCpu {
                    name: "main".into(),
                    ms: 2.0
                },
            ]
        );
    }

    #[test]
    fn this_process_can_be_sampled_on_linux() {
        if cfg!(target_os = "linux") {
            let a = sample().expect("sample");
            let mut x = 0u64;
            for i in 0..2_000_000u64 {
                x = x.wrapping_add(i * i);
            }
            std::hint::black_box(x);
            let b = sample().expect("sample");
            assert!(!used(&a, &b).threads.is_empty());
        }
    }
}
