//! Local time formatting through the C library, so times and zone names (`%Z`) come
//! out exactly as finger(1) prints them, from the same zone database and `TZ`.

use std::ffi::CStr;
use std::sync::Once;

static TZSET: Once = Once::new();

unsafe extern "C" {
    /// POSIX tzset(3): reads `TZ` and the zone database (localtime_r need not).
    fn tzset();
}

/// Formats `t` (seconds since the epoch) in local time with strftime(3) format `fmt`.
pub fn format(t: i64, fmt: &CStr) -> String {
    // SAFETY: tzset has no preconditions; Once keeps it to one call.
    TZSET.call_once(|| unsafe { tzset() });
    let tt: libc::time_t = t;
    // SAFETY: `tm` is plain data that localtime_r fills; the result is checked.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call; localtime_r is thread-safe.
    if unsafe { libc::localtime_r(&tt, &mut tm) }.is_null() {
        return t.to_string();
    }
    let mut buf = [0u8; 128];
    // SAFETY: buf is writable for its length; fmt is NUL-terminated; tm was filled above.
    let n = unsafe { libc::strftime(buf.as_mut_ptr().cast(), buf.len(), fmt.as_ptr(), &tm) };
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_strftime() {
        // Only zone-independent parts are asserted: the year and the width of %e.
        let s = format(1_700_000_000, c"%Y");
        assert_eq!(s, "2023");
        assert_eq!(format(0, c"%e").len(), 2);
    }
}
