//! The fencing token of the wave controller's leadership, carried to the store with every
//! write the controller makes.
//!
//! Several coordinator replicas on one PostgreSQL database elect one leader for the wave
//! controller (see [`crate::leadership`]); each takeover increments the lease row's
//! token. The leader runs its controller inside [`fenced`] with its token: every store
//! call it makes through [`super::Db::run`] then carries the token to the blocking thread
//! that runs it, and the PostgreSQL backend checks it against the lease row in the same
//! transaction as the write ([`current`]). A paused old leader that wakes up after
//! another replica took over therefore has its writes refused with
//! [`super::StoreError::Fenced`] instead of landing. SQLite is one process: nothing to
//! check.
//!
//! This module only carries the token: it never decides who leads.

use std::cell::Cell;
use std::future::Future;

/// The token of one tenure of the controller's leadership (incremented by every
/// takeover).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    pub token: i64,
}

tokio::task_local! {
    static TASK_FENCE: Fence;
}

thread_local! {
    static THREAD_FENCE: Cell<Option<Fence>> = const { Cell::new(None) };
}

/// Runs `f` with every store write it makes through [`super::Db::run`] fenced by `fence`.
pub async fn fenced<F: Future>(fence: Fence, f: F) -> F::Output {
    TASK_FENCE.scope(fence, f).await
}

/// The fence of the task running now (None: outside [`fenced`]).
pub(crate) fn of_task() -> Option<Fence> {
    TASK_FENCE.try_with(|f| *f).ok()
}

/// Runs `f` on this (blocking) thread with `fence` as [`current`], restoring what was
/// there before, even when `f` panics.
pub(crate) fn on_thread<T>(fence: Option<Fence>, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<Fence>);
    impl Drop for Restore {
        fn drop(&mut self) {
            THREAD_FENCE.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(THREAD_FENCE.with(|c| c.replace(fence)));
    f()
}

/// The fence a store write on this thread must check (None: not a controller write).
pub(crate) fn current() -> Option<Fence> {
    THREAD_FENCE.with(|c| c.get()).or_else(of_task)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_fence_reaches_the_blocking_thread_and_goes_with_the_call() {
        assert_eq!(current(), None);
        let seen = fenced(Fence { token: 7 }, async {
            let fence = of_task();
            tokio::task::spawn_blocking(move || on_thread(fence, current))
                .await
                .unwrap()
        })
        .await;
        assert_eq!(seen, Some(Fence { token: 7 }));
        let after = tokio::task::spawn_blocking(current).await.unwrap();
        assert_eq!(after, None, "a later call on a pooled thread is not fenced");
    }
}
