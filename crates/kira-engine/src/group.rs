//! Group commit: writes that arrive while another is being written wait
//! their turn, and the next writer takes every one waiting in one store
//! call, so the cost of a transaction is shared by all of them. Used for
//! the ends of runs, for tool calls' audit entries and for audit entries
//! of reads.

use std::future::Future;

use tokio::sync::oneshot;

/// Items waiting to be written, and the turn to write them.
pub(crate) struct Group<T, R> {
    waiting: std::sync::Mutex<Vec<(T, oneshot::Sender<R>)>>,
    turn: tokio::sync::Mutex<()>,
}

impl<T, R> Default for Group<T, R> {
    fn default() -> Self {
        Self {
            waiting: std::sync::Mutex::new(Vec::new()),
            turn: tokio::sync::Mutex::new(()),
        }
    }
}

impl<T: Send, R: Send> Group<T, R> {
    /// Writes `item` with whatever else is waiting: `write` gets the group
    /// in arrival order and returns one result per item, in that order.
    /// `lost` is the result when a writer went away without answering.
    pub(crate) async fn submit<F, Fut>(&self, item: T, write: F, lost: impl FnOnce() -> R) -> R
    where
        F: FnOnce(Vec<T>) -> Fut,
        Fut: Future<Output = Vec<R>>,
    {
        let rx = self.enqueue(item);
        // Let writes arriving at the same moment join this group.
        tokio::task::yield_now().await;
        self.written(rx, write, lost).await
    }

    /// Puts `item` in line now (items are written in the order they are
    /// put in line); [`Group::written`] with the receiver writes it.
    pub(crate) fn enqueue(&self, item: T) -> oneshot::Receiver<R> {
        let (tx, rx) = oneshot::channel();
        self.lock().push((item, tx));
        rx
    }

    /// The result of an item put in line: written by whoever holds the turn
    /// when it comes, or by this call, with whatever else waits.
    pub(crate) async fn written<F, Fut>(
        &self,
        mut rx: oneshot::Receiver<R>,
        write: F,
        lost: impl FnOnce() -> R,
    ) -> R
    where
        F: FnOnce(Vec<T>) -> Fut,
        Fut: Future<Output = Vec<R>>,
    {
        let turn = self.turn.lock().await;
        if let Ok(r) = rx.try_recv() {
            return r;
        }
        let group = std::mem::take(&mut *self.lock());
        let (items, replies): (Vec<_>, Vec<_>) = group.into_iter().unzip();
        let results = write(items).await;
        for (reply, r) in replies.into_iter().zip(results) {
            let _ = reply.send(r);
        }
        drop(turn);
        rx.await.unwrap_or_else(|_| lost())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(T, oneshot::Sender<R>)>> {
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_item_gets_its_own_result_and_writes_are_shared() {
        let group: Arc<Group<usize, usize>> = Arc::new(Group::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for i in 0..200 {
            let (group, calls) = (group.clone(), calls.clone());
            tasks.push(tokio::spawn(async move {
                group
                    .submit(
                        i,
                        |items| async move {
                            calls.fetch_add(1, Ordering::SeqCst);
                            tokio::task::yield_now().await;
                            items.into_iter().map(|x| x * 10).collect()
                        },
                        || usize::MAX,
                    )
                    .await
            }));
        }
        for (i, t) in tasks.into_iter().enumerate() {
            assert_eq!(t.await.expect("task"), i * 10);
        }
        let n = calls.load(Ordering::SeqCst);
        assert!((1..=200).contains(&n));
    }

    #[tokio::test]
    async fn a_writer_that_answers_too_few_gives_the_lost_result() {
        let group: Group<u8, &str> = Group::default();
        let r = group.submit(1, |_| async { Vec::new() }, || "lost").await;
        assert_eq!(r, "lost");
    }
}
