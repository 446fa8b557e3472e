//! Threads for step attempts and their log readers, reused. Each local attempt blocks a
//! thread for its whole process, and each process has a thread reading its output, so a
//! chain of steps would otherwise create and tear down two threads per step (stack
//! mapping, guard page, signal stack), on the path from one step's end to the next one's
//! start. A thread that finishes its job waits [`KEEP_IDLE`] for another before it exits;
//! there is no upper bound, since every job may block for as long as its step runs.

use std::sync::mpsc::{self, Sender};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// How long a thread with nothing to do waits for a job before it exits.
pub const KEEP_IDLE: Duration = Duration::from_secs(10);

type Job = Box<dyn FnOnce() + Send>;

/// Threads that take jobs and wait for more: [`STEP_THREADS`] serves the engine.
pub struct ThreadPool {
    idle: Mutex<Idle>,
}

/// The threads waiting for a job, each by a number of its own and the sender it listens to.
struct Idle {
    last_id: u64,
    created: u64,
    waiting: Vec<(u64, Sender<Job>)>,
}

/// The pool of step attempts and their log readers.
pub static STEP_THREADS: ThreadPool = ThreadPool::new();

impl ThreadPool {
    /// A pool with no thread yet.
    pub const fn new() -> ThreadPool {
        ThreadPool {
            idle: Mutex::new(Idle {
                last_id: 0,
                created: 0,
                waiting: Vec::new(),
            }),
        }
    }

    fn idle(&self) -> MutexGuard<'_, Idle> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `job` on a waiting thread, or on a new one (named `name`) when none waits.
    pub fn run(
        &'static self,
        name: &str,
        job: impl FnOnce() + Send + 'static,
    ) -> std::io::Result<()> {
        let mut job: Job = Box::new(job);
        // A waiting thread leaves the list under its lock before it stops listening, so a
        // send fails only if that thread died; the next one is tried.
        loop {
            let taken = self.idle().waiting.pop();
            let Some((_, sender)) = taken else { break };
            match sender.send(job) {
                Ok(()) => return Ok(()),
                Err(mpsc::SendError(back)) => job = back,
            }
        }
        self.idle().created += 1;
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || self.serve(job))
            .map(drop)
    }

    /// How many threads wait for a job, and how many were ever created.
    pub fn counts(&self) -> (usize, u64) {
        let idle = self.idle();
        (idle.waiting.len(), idle.created)
    }

    /// A thread's life: its first job, then whatever it is handed until it has waited
    /// [`KEEP_IDLE`] in vain.
    fn serve(&self, first: Job) {
        let (sender, receiver) = mpsc::channel::<Job>();
        let mut job = first;
        loop {
            job();
            let id = {
                let mut idle = self.idle();
                idle.last_id += 1;
                let id = idle.last_id;
                idle.waiting.push((id, sender.clone()));
                id
            };
            job = match receiver.recv_timeout(KEEP_IDLE) {
                Ok(next) => next,
                Err(_) => {
                    let mut idle = self.idle();
                    match idle.waiting.iter().position(|(waiting, _)| *waiting == id) {
                        Some(at) => {
                            idle.waiting.swap_remove(at);
                            return;
                        }
                        // Taken from the list meanwhile: its job is on the way.
                        None => {
                            drop(idle);
                            match receiver.recv() {
                                Ok(next) => next,
                                Err(_) => return,
                            }
                        }
                    }
                }
            };
        }
    }
}

impl Default for ThreadPool {
    fn default() -> ThreadPool {
        ThreadPool::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::sync::mpsc::channel;
    use std::sync::Arc;
    use std::time::Instant;

    fn wait_until(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::yield_now();
        }
    }

    #[test]
    fn many_jobs_at_once_each_run_once() {
        static POOL: ThreadPool = ThreadPool::new();
        let (done, finished) = channel();
        for n in 0..200 {
            let done = done.clone();
            POOL.run("test job", move || done.send(n).unwrap()).unwrap();
        }
        let seen: BTreeSet<i32> = (0..200).map(|_| finished.recv().unwrap()).collect();
        assert_eq!(seen, (0..200).collect());
    }

    #[test]
    fn a_waiting_thread_takes_the_next_job_rather_than_a_new_one_being_created() {
        static POOL: ThreadPool = ThreadPool::new();
        let (done, finished) = channel();
        let mut threads = std::collections::HashSet::new();
        for _ in 0..20 {
            let done = done.clone();
            POOL.run("test reuse", move || {
                done.send(std::thread::current().id()).unwrap();
            })
            .unwrap();
            threads.insert(finished.recv().unwrap());
            wait_until("the thread to wait for a job", || POOL.counts().0 == 1);
        }
        assert_eq!(threads.len(), 1);
        assert_eq!(POOL.counts(), (1, 1));
    }

    #[test]
    fn jobs_that_block_each_get_a_thread_of_their_own() {
        static POOL: ThreadPool = ThreadPool::new();
        let (release_sender, release) = channel::<()>();
        let release = Arc::new(Mutex::new(release));
        let (started, seen_started) = channel();
        for _ in 0..8 {
            let (started, release) = (started.clone(), Arc::clone(&release));
            POOL.run("test block", move || {
                started.send(()).unwrap();
                let _ = release.lock().unwrap().recv();
            })
            .unwrap();
        }
        // All eight run at once, though none has ended.
        for _ in 0..8 {
            seen_started
                .recv_timeout(Duration::from_secs(10))
                .expect("every blocking job started");
        }
        assert_eq!(POOL.counts().1, 8);
        drop(release_sender);
        wait_until("all eight to wait for a job", || POOL.counts().0 == 8);
    }
}
