//! The sandbox state machine as pure logic: which transitions exist and what each lifecycle
//! action means in each state.
//!
//! ```text
//! creating ──► running ◄──► stopped
//!    │            │            │
//!    └──► failed ◄┘◄───────────┘      failed ──► running (start again)
//! every state but destroyed ──► destroyed
//! ```

use prism_types::SandboxState::{self, Creating, Destroyed, Failed, Running, Stopped};

/// What a caller asks of a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    Stop,
    Restart,
    Destroy,
    SetTimeout,
    SetNetwork,
    /// Anything that needs the sandbox's processes: exec, files, terminal, metrics.
    Use,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Restart => "restart",
            Action::Destroy => "destroy",
            Action::SetTimeout => "set the timeout of",
            Action::SetNetwork => "change the network of",
            Action::Use => "use",
        }
    }
}

/// What an action means in the current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// The sandbox is already where the action leads: succeed without doing anything.
    AlreadyDone,
    /// Do the work.
    Proceed,
}

/// An action that the current state forbids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cannot {} a sandbox that is {state}", action.as_str())]
pub struct InvalidState {
    pub action: Action,
    pub state: SandboxState,
}

/// Whether `from → to` is a transition of the state machine.
pub fn can_transition(from: SandboxState, to: SandboxState) -> bool {
    matches!(
        (from, to),
        (Creating, Running | Failed | Destroyed)
            | (Running, Stopped | Failed | Destroyed)
            | (Stopped, Running | Failed | Destroyed)
            | (Failed, Running | Destroyed)
    )
}

/// Decide what `action` means for a sandbox in `state`.
pub fn plan(action: Action, state: SandboxState) -> Result<Plan, InvalidState> {
    let err = Err(InvalidState { action, state });
    match (action, state) {
        (Action::Start, Running) => Ok(Plan::AlreadyDone),
        (Action::Start, Stopped | Failed) => Ok(Plan::Proceed),
        (Action::Stop, Stopped) => Ok(Plan::AlreadyDone),
        (Action::Stop, Running) => Ok(Plan::Proceed),
        (Action::Restart, Running | Stopped | Failed) => Ok(Plan::Proceed),
        (Action::Destroy, Destroyed) => Ok(Plan::AlreadyDone),
        (Action::Destroy, _) => Ok(Plan::Proceed),
        (Action::SetTimeout, Creating | Running | Stopped | Failed) => Ok(Plan::Proceed),
        (Action::SetNetwork, Running | Stopped | Failed) => Ok(Plan::Proceed),
        (Action::Use, Running) => Ok(Plan::Proceed),
        _ => err,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_follow_the_diagram() {
        let allowed = [
            (Creating, Running),
            (Creating, Failed),
            (Creating, Destroyed),
            (Running, Stopped),
            (Running, Failed),
            (Running, Destroyed),
            (Stopped, Running),
            (Stopped, Failed),
            (Stopped, Destroyed),
            (Failed, Running),
            (Failed, Destroyed),
        ];
        for from in SandboxState::ALL {
            for to in SandboxState::ALL {
                assert_eq!(
                    can_transition(from, to),
                    allowed.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
        }
    }

    #[test]
    fn destroyed_is_terminal() {
        for to in SandboxState::ALL {
            assert!(!can_transition(Destroyed, to));
        }
        assert_eq!(plan(Action::Destroy, Destroyed), Ok(Plan::AlreadyDone));
        for a in [
            Action::Start,
            Action::Stop,
            Action::Restart,
            Action::Use,
            Action::SetTimeout,
            Action::SetNetwork,
        ] {
            assert!(plan(a, Destroyed).is_err(), "{a:?}");
        }
    }

    #[test]
    fn idempotent_actions_are_no_ops() {
        assert_eq!(plan(Action::Start, Running), Ok(Plan::AlreadyDone));
        assert_eq!(plan(Action::Stop, Stopped), Ok(Plan::AlreadyDone));
        assert_eq!(plan(Action::Start, Stopped), Ok(Plan::Proceed));
        assert_eq!(plan(Action::Start, Failed), Ok(Plan::Proceed));
    }

    #[test]
    fn use_needs_a_running_sandbox() {
        for s in SandboxState::ALL {
            assert_eq!(plan(Action::Use, s).is_ok(), s == Running, "{s}");
        }
        let e = plan(Action::Use, Stopped).err().unwrap_or(InvalidState {
            action: Action::Stop,
            state: Creating,
        });
        assert_eq!(e.to_string(), "cannot use a sandbox that is stopped");
    }

    #[test]
    fn stop_of_creating_or_failed_is_refused() {
        assert!(plan(Action::Stop, Creating).is_err());
        assert!(plan(Action::Stop, Failed).is_err());
        assert!(plan(Action::Start, Creating).is_err());
    }

    #[test]
    fn every_proceeding_plan_has_a_legal_target() {
        // The state each action leads to must be reachable from every state it proceeds from.
        let target = |a: Action| match a {
            Action::Start | Action::Restart => Some(Running),
            Action::Stop => Some(Stopped),
            Action::Destroy => Some(Destroyed),
            Action::SetTimeout | Action::SetNetwork | Action::Use => None,
        };
        for a in [Action::Start, Action::Stop, Action::Destroy] {
            for s in SandboxState::ALL {
                if plan(a, s) == Ok(Plan::Proceed) {
                    let t = target(a).unwrap_or(s);
                    assert!(can_transition(s, t), "{a:?} from {s}");
                }
            }
        }
    }
}
