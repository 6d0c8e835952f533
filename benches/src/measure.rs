//! Process measurements: CPU time and peak RSS (`getrusage`), load average,
//! medians.

use std::io;

/// Process CPU time (user + system, all threads) in seconds, from
/// `getrusage(RUSAGE_SELF)` exactly as the peer measures it.
pub fn cpu_seconds() -> f64 {
    match rusage_self() {
        Ok(ru) => timeval_secs(ru.ru_utime) + timeval_secs(ru.ru_stime),
        Err(_) => f64::NAN,
    }
}

/// Peak resident set size of the process in KiB (`ru_maxrss` on Linux).
pub fn peak_rss_kb() -> i64 {
    match rusage_self() {
        // `ru_maxrss` is a C `long`: i64 here, i32 on 32-bit targets.
        #[allow(
            clippy::useless_conversion,
            reason = "c_long is not i64 on every target"
        )]
        Ok(ru) => i64::from(ru.ru_maxrss),
        Err(_) => -1,
    }
}

/// Machine-wide 1-minute load average from `/proc/loadavg` (-1 if unknown).
pub fn loadavg_1m() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|f| f.parse().ok()))
        .unwrap_or(-1.0)
}

/// Median of `values` (mean of the two middle values for an even count;
/// 0 for an empty slice, as in the peer). NaNs sort last.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => v[n / 2],
        _ => 0.5 * (v[n / 2 - 1] + v[n / 2]),
    }
}

fn timeval_secs(tv: libc::timeval) -> f64 {
    // Lossless enough for CPU-time accounting (microsecond resolution).
    tv.tv_sec as f64 + 1e-6 * tv.tv_usec as f64
}

fn rusage_self() -> io::Result<libc::rusage> {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `ru` points to writable memory of the size and alignment of a
    // `struct rusage`, which is all getrusage requires of its out-pointer;
    // RUSAGE_SELF is a valid `who`.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: getrusage returned 0, so it initialized the whole struct (and
    // it was zeroed before, so every field is initialized either way).
    Ok(unsafe { ru.assume_init() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[5.0]), 5.0);
    }

    #[test]
    fn cpu_time_advances_with_work() {
        let before = cpu_seconds();
        assert!(before.is_finite() && before >= 0.0);
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed().as_millis() < 30 {
            x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
        }
        assert!(
            cpu_seconds() > before,
            "30 ms of spinning must show up as CPU time"
        );
    }

    #[test]
    fn rss_and_load_are_sane() {
        let rss = peak_rss_kb();
        assert!(rss > 0, "peak RSS {rss} KiB");
        // The peak is a high-water mark, so touch more than it already is.
        let bytes = usize::try_from(rss).expect("positive") * 1024 + (32 << 20);
        let grow: Vec<u8> = vec![1; bytes];
        std::hint::black_box(&grow);
        let after = peak_rss_kb();
        assert!(
            after >= rss + (32 << 10),
            "touching {bytes} bytes must raise the peak: {rss} -> {after} KiB"
        );
        let load = loadavg_1m();
        assert!(load >= 0.0, "load average {load}");
    }
}
