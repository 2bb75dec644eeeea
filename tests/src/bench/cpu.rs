//! CPU time as the kernel counts it (user and system), in seconds: of a
//! process, of threads of this one, and of the children reaped so far.

/// One tick of the clock /proc counts CPU time in, in seconds.
pub fn clock_tick() -> f64 {
    // SAFETY: sysconf(3) has no preconditions.
    1.0 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// A process's CPU seconds, all its threads (those that ended too), in
/// clock ticks.
pub fn process_seconds(pid: u32) -> f64 {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {path}: {error}"));
    // The name before ')' may hold spaces; utime and stime are the 14th
    // and 15th fields, the 12th and 13th after it.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = [11, 12]
        .iter()
        .map(|&field| {
            fields
                .get(field)
                .and_then(|value| value.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no CPU time in {stat:?}"))
        })
        .sum();
    ticks as f64 * clock_tick()
}

/// The CPU seconds of threads of this process, by their ids; from their
/// scheduler statistics, in ns: threads that serve a request in a few µs
/// may not be running at any of the clock's ticks.
pub fn threads_seconds(tids: &[libc::pid_t]) -> f64 {
    tids.iter()
        .map(|tid| on_cpu_seconds(&format!("/proc/self/task/{tid}/schedstat")))
        .sum()
}

/// The CPU seconds of a process's threads that still run, in ns as
/// [`threads_seconds`] counts them.
pub fn live_threads_seconds(pid: u32) -> f64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap_or_else(|error| panic!("cannot list the threads of {pid}: {error}"));
    tasks
        .filter_map(Result::ok)
        .map(|task| on_cpu_seconds(&format!("{}/schedstat", task.path().display())))
        .sum()
}

/// The first field of a `schedstat` file: ns on a CPU.
fn on_cpu_seconds(path: &str) -> f64 {
    let stat =
        std::fs::read_to_string(path).unwrap_or_else(|error| panic!("cannot read {path}: {error}"));
    let on_cpu_ns: u64 = stat
        .split_whitespace()
        .next()
        .and_then(|field| field.parse().ok())
        .unwrap_or_else(|| panic!("no time on CPU in {path}: {stat:?}"));
    on_cpu_ns as f64 * 1e-9
}

/// The calling thread's id, for [`threads_seconds`].
pub fn this_thread() -> libc::pid_t {
    // SAFETY: gettid(2) has no preconditions.
    unsafe { libc::gettid() }
}

/// The CPU seconds of every child this process has reaped, and their
/// children's: the one way to count a process to its last tick, the time
/// it took to exit included.
pub fn reaped_children_seconds() -> f64 {
    // SAFETY: getrusage(2) only writes the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage
    };
    let seconds = |time: libc::timeval| time.tv_sec as f64 + time.tv_usec as f64 * 1e-6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}
