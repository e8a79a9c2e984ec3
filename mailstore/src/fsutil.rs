//! Small helpers shared by the stores.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Takes the next value of a process-wide counter, or `None` when it is used up (it never
/// wraps: a repeated value would repeat a name).
pub(crate) fn bump(counter: &AtomicU64) -> Option<u64> {
    counter
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| c.checked_add(1))
        .ok()
}

/// A token unique among all calls in all processes on this host: time, pid and a counter.
///
/// # Errors
/// [`Error::Exhausted`] once the counter is used up (after 2^64 calls).
pub(crate) fn unique() -> Result<String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let n = bump(&COUNTER).ok_or_else(|| Error::Exhausted {
        what: "unique name counter",
        path: PathBuf::from("(process)"),
    })?;
    Ok(format!(
        "{}.{:09}.{}.{}",
        now.as_secs(),
        now.subsec_nanos(),
        std::process::id(),
        n
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A counter at its end stays there and says so; it never restarts at 0.
    #[test]
    fn counter_never_wraps() {
        let c = AtomicU64::new(u64::MAX - 1);
        assert_eq!(bump(&c), Some(u64::MAX - 1));
        assert_eq!(bump(&c), None);
        assert_eq!(bump(&c), None);
        assert_eq!(c.load(Ordering::Relaxed), u64::MAX);
    }
}
