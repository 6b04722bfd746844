//! Things made ahead: a background thread at a low priority keeps a few ready, and a start
//! takes one. [`Ahead::take`] never waits: an empty pool means the caller makes its own, as
//! without a pool. Used for network namespaces (`netpool.rs`) and sandbox directories
//! (`spare.rs`).

use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// Nice value of the refill threads (inherited by the threads they start).
const REFILL_NICE: i32 = 10;

/// How long a refill thread rests after a failure before it tries again.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// How long a refill waits after a take while the pool still has a thing ready: the start
/// that took one (and its first exec, a few ms later) then has both cores, and the refill
/// runs in the idle time after it. An empty pool is refilled at once.
const DEFER: Duration = Duration::from_millis(20);

/// Makes one ready thing.
pub type Make<T> = Box<dyn Fn() -> io::Result<T> + Send>;

struct State<T> {
    ready: Vec<T>,
    stop: bool,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    /// Signalled when a thing is taken and when the pool stops.
    wake: Condvar,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A pool of ready things, refilled in the background. Dropping it stops the thread and drops
/// the things nobody took.
pub struct Ahead<T: Send + 'static> {
    shared: Arc<Shared<T>>,
    worker: Option<JoinHandle<()>>,
}

impl<T: Send + 'static> std::fmt::Debug for Ahead<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ahead")
            .field("ready", &self.ready())
            .finish()
    }
}

impl<T: Send + 'static> Ahead<T> {
    /// A pool of `size` things made by `make` on a thread called `name` (none and no thread
    /// when `size` is 0); `what` names a thing in the log.
    pub fn new(name: &str, what: &'static str, size: usize, make: Make<T>) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                ready: Vec::new(),
                stop: false,
            }),
            wake: Condvar::new(),
        });
        let worker = if size == 0 {
            None
        } else {
            let s = shared.clone();
            Some(
                std::thread::Builder::new()
                    .name(name.into())
                    .spawn(move || refill(&s, size, what, &make))?,
            )
        };
        Ok(Self { shared, worker })
    }

    /// A ready thing, or `None` right away when there is none.
    pub fn take(&self) -> Option<T> {
        let thing = self.shared.lock().ready.pop();
        if thing.is_some() {
            self.shared.wake.notify_all();
        }
        thing
    }

    /// Things ready now.
    pub fn ready(&self) -> usize {
        self.shared.lock().ready.len()
    }

    /// Drop every ready thing (the thread makes new ones).
    pub fn clear(&self) {
        let old = std::mem::take(&mut self.shared.lock().ready);
        self.shared.wake.notify_all();
        drop(old);
    }
}

impl<T: Send + 'static> Drop for Ahead<T> {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_all();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

fn refill<T>(shared: &Shared<T>, size: usize, what: &'static str, make: &Make<T>) {
    if let Err(error) = prism_sys::sched::set_thread_nice(0, REFILL_NICE) {
        tracing::debug!(message = "cannot lower a refill thread's priority", what, %error);
    }
    let mut st = shared.lock();
    loop {
        while !st.stop && st.ready.len() >= size {
            st = shared.wake.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        if st.stop {
            return;
        }
        if !st.ready.is_empty() {
            let (g, _) = shared
                .wake
                .wait_timeout_while(st, DEFER, |s| !s.stop && !s.ready.is_empty())
                .unwrap_or_else(|p| p.into_inner());
            st = g;
            if st.stop {
                return;
            }
        }
        drop(st);
        let made = make();
        st = shared.lock();
        match made {
            Ok(thing) => st.ready.push(thing),
            Err(error) => {
                tracing::warn!(message = "cannot make ahead", what, %error);
                let (g, _) = shared
                    .wake
                    .wait_timeout_while(st, RETRY_AFTER, |s| !s.stop)
                    .unwrap_or_else(|p| p.into_inner());
                st = g;
            }
        }
    }
}
