//! The process's file descriptor limit: raised to the hard limit at start, so the
//! per-listener connection limits (well below it) are what bounds connections.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the limit now in force
/// (`None` when unlimited).
pub fn raise_fd_limit() -> std::io::Result<Option<u64>> {
    let cur = getrlimit(Resource::Nofile);
    if cur.current != cur.maximum {
        setrlimit(Resource::Nofile, Rlimit { current: cur.maximum, maximum: cur.maximum })?;
    }
    Ok(getrlimit(Resource::Nofile).current)
}

/// The soft `RLIMIT_NOFILE` (`None` when unlimited).
pub fn fd_limit() -> Option<u64> {
    getrlimit(Resource::Nofile).current
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raises_to_the_hard_limit() {
        let now = raise_fd_limit().unwrap();
        assert_eq!(now, getrlimit(Resource::Nofile).maximum);
        assert_eq!(fd_limit(), now);
    }
}
