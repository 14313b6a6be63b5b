//! Group commit: many requests, one transaction, one fsync.
//!
//! A [`GroupWriter`] owns a queue and one writer task. Each request waits in the queue;
//! the task takes every request waiting at that moment (up to a limit), hands them to one
//! commit function as a group, and answers each request with its own result only after
//! that function returned, i.e. after the transaction committed. So an answer still means
//! "committed", while one fsync serves hundreds of agents. Agents' report batches and
//! lease grants go through one each.
//!
//! This module never decides what is written and never answers before the commit.

use std::future::Future;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{mpsc, oneshot};

use crate::store::StoreError;

/// The limits of one group.
#[derive(Debug, Clone, Copy)]
pub struct GroupLimits {
    /// At most this many requests per group...
    pub max_items: usize,
    /// ... and at most about this much weight (e.g. events), summed with [`Weigh`].
    pub max_weight: usize,
}

/// What one request weighs against [`GroupLimits::max_weight`].
pub trait Weigh {
    fn weight(&self) -> usize {
        1
    }
}

struct Job<I, O> {
    input: I,
    reply: oneshot::Sender<Result<O, StoreError>>,
}

/// A group-commit queue whose writer task starts on first use.
pub struct GroupWriter<I, O> {
    queue: OnceLock<mpsc::Sender<Job<I, O>>>,
    /// Requests submitted and not answered yet (queued, or in the group being committed).
    waiting: AtomicUsize,
}

impl<I, O> Default for GroupWriter<I, O> {
    fn default() -> Self {
        GroupWriter {
            queue: OnceLock::new(),
            waiting: AtomicUsize::new(0),
        }
    }
}

impl<I, O> GroupWriter<I, O> {
    /// Requests submitted and not answered yet: the writer's backlog.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }
}

/// Counts one submitted request until it is answered or its caller gives up.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(n: &'a AtomicUsize) -> Waiting<'a> {
        n.fetch_add(1, Ordering::Relaxed);
        Waiting(n)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<I, O> GroupWriter<I, O>
where
    I: Weigh + Send + 'static,
    O: Send + 'static,
{
    /// Queues `input` and waits for its result. On first use starts the writer task with
    /// `commit`, which gets each group and returns one result per item, in order (or one
    /// error for the whole group, when nothing of it was written).
    pub async fn submit<C, F>(
        &self,
        input: I,
        limits: GroupLimits,
        commit: impl FnOnce() -> C,
    ) -> Result<O, StoreError>
    where
        C: FnMut(Vec<I>) -> F + Send + 'static,
        F: Future<Output = Result<Vec<Result<O, StoreError>>, StoreError>> + Send + 'static,
    {
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::channel(4 * limits.max_items);
            tokio::spawn(write_groups(rx, limits, commit()));
            tx
        });
        let _waiting = Waiting::new(&self.waiting);
        let (reply, answer) = oneshot::channel();
        queue
            .send(Job { input, reply })
            .await
            .map_err(|_| StoreError::Task("the group writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Task("the group writer stopped before answering".into()))?
    }
}

/// The writer task: one `commit` call per group of waiting requests, until the queue
/// closes.
async fn write_groups<I, O, C, F>(
    mut rx: mpsc::Receiver<Job<I, O>>,
    limits: GroupLimits,
    mut commit: C,
) where
    I: Weigh,
    C: FnMut(Vec<I>) -> F,
    F: Future<Output = Result<Vec<Result<O, StoreError>>, StoreError>>,
{
    while let Some(first) = rx.recv().await {
        let mut weight = first.input.weight();
        let mut jobs = vec![first];
        while jobs.len() < limits.max_items && weight < limits.max_weight {
            match rx.try_recv() {
                Ok(job) => {
                    weight += job.input.weight();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let (inputs, replies): (Vec<I>, Vec<_>) =
            jobs.into_iter().map(|j| (j.input, j.reply)).unzip();
        let count = inputs.len();
        match commit(inputs).await {
            Ok(outcomes) if outcomes.len() == count => {
                for (outcome, reply) in outcomes.into_iter().zip(replies) {
                    let _ = reply.send(outcome);
                }
            }
            Ok(outcomes) => {
                let why = format!(
                    "the group commit answered {} results for {count} requests",
                    outcomes.len()
                );
                for reply in replies {
                    let _ = reply.send(Err(StoreError::Task(why.clone())));
                }
            }
            Err(e) => {
                let why = e.to_string();
                for reply in replies {
                    let _ = reply.send(Err(StoreError::Task(format!(
                        "the group's transaction failed, nothing of it was written: {why}"
                    ))));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    impl Weigh for u32 {
        fn weight(&self) -> usize {
            *self as usize
        }
    }

    const LIMITS: GroupLimits = GroupLimits {
        max_items: 8,
        max_weight: 100,
    };

    #[tokio::test]
    async fn every_request_gets_its_own_result_and_requests_share_groups() {
        let writer: Arc<GroupWriter<u32, u32>> = Arc::new(GroupWriter::default());
        let groups = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for i in 0..64u32 {
            let (writer, groups) = (writer.clone(), groups.clone());
            tasks.push(tokio::spawn(async move {
                writer
                    .submit(i % 5, LIMITS, move || {
                        move |items: Vec<u32>| {
                            groups.fetch_add(1, Ordering::SeqCst);
                            assert!(items.len() <= LIMITS.max_items);
                            let out = items
                                .into_iter()
                                .map(|n| {
                                    if n == 3 {
                                        Err(StoreError::Conflict("three".into()))
                                    } else {
                                        Ok(n * 10)
                                    }
                                })
                                .collect();
                            async move {
                                tokio::task::yield_now().await;
                                Ok(out)
                            }
                        }
                    })
                    .await
            }));
        }
        for (i, t) in tasks.into_iter().enumerate() {
            let got = t.await.unwrap();
            match i as u32 % 5 {
                3 => assert!(matches!(got, Err(StoreError::Conflict(_))), "{got:?}"),
                n => assert_eq!(got.unwrap(), n * 10),
            }
        }
        let g = groups.load(Ordering::SeqCst);
        assert!((8..64).contains(&g), "64 requests went into {g} groups");
    }

    #[tokio::test]
    async fn a_failed_group_fails_every_request_in_it() {
        let writer: GroupWriter<u32, u32> = GroupWriter::default();
        let got = writer
            .submit(1, LIMITS, || {
                |_items: Vec<u32>| async { Err(StoreError::Task("disk full".into())) }
            })
            .await;
        let e = got.unwrap_err().to_string();
        assert!(
            e.contains("nothing of it was written") && e.contains("disk full"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn waiting_counts_requests_until_they_are_answered() {
        let writer: Arc<GroupWriter<u32, u32>> = Arc::new(GroupWriter::default());
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let mut tasks = Vec::new();
        for i in 0..3u32 {
            let (writer, gate) = (writer.clone(), gate.clone());
            tasks.push(tokio::spawn(async move {
                writer
                    .submit(i, LIMITS, move || {
                        move |items: Vec<u32>| {
                            let gate = gate.clone();
                            async move {
                                // Held until the test lets one group through.
                                gate.acquire().await.unwrap().forget();
                                Ok(items.into_iter().map(Ok).collect())
                            }
                        }
                    })
                    .await
            }));
        }
        while writer.waiting() < 3 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            writer.waiting(),
            3,
            "queued or in the group being committed"
        );
        gate.add_permits(3);
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(writer.waiting(), 0, "every request was answered");
    }
}
