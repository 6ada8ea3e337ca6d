//! Starting a task where it is made (see [`start_here`]).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Wake, Waker};

use tokio::runtime::Handle;

/// Runs a future on the calling thread until it first waits (usually for a brick's
/// answer, its request written to the brick's socket by then), and hands it to the
/// runtime only when it is woken: the runtime's thread that reads the answer then runs
/// it on. Spawning it at once (`tokio::spawn`) from a thread outside the runtime (the
/// FUSE thread) would cost a wakeup of a runtime thread per request, and the request
/// would reach the brick only once that thread ran.
pub fn start_here<F>(rt: &Handle, f: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let mut fut: Pin<Box<dyn std::future::Future<Output = ()> + Send>> = Box::pin(f);
    let parked = Arc::new(Parked {
        rt: rt.clone(),
        state: Mutex::new(ParkState::Polling { woken: false }),
    });
    let waker = Waker::from(parked.clone());
    {
        let _rt = rt.enter();
        if fut
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_ready()
        {
            return;
        }
    }
    let mut state = parked.state.lock().expect("parked");
    match *state {
        // Woken while it was being polled (a quick answer): the runtime runs it now.
        ParkState::Polling { woken: true } => {
            *state = ParkState::Spawned;
            drop(state);
            rt.spawn(fut);
        }
        _ => *state = ParkState::Parked(fut),
    }
}

/// A future between its first poll on the calling thread and its first wakeup.
struct Parked {
    rt: Handle,
    state: Mutex<ParkState>,
}

enum ParkState {
    /// Being polled on the calling thread.
    Polling { woken: bool },
    /// Waiting for its first wakeup.
    Parked(Pin<Box<dyn std::future::Future<Output = ()> + Send>>),
    /// Handed to the runtime, which polls it with its own waker from then on.
    Spawned,
}

impl Wake for Parked {
    fn wake(self: Arc<Self>) {
        let mut state = self.state.lock().expect("parked");
        match std::mem::replace(&mut *state, ParkState::Spawned) {
            ParkState::Polling { .. } => *state = ParkState::Polling { woken: true },
            ParkState::Parked(fut) => {
                drop(state);
                self.rt.spawn(fut);
            }
            ParkState::Spawned => {}
        }
    }
}
