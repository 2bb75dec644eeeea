//! `shift`'s schedule: which share of new flows the idle color gets next,
//! and how an interruption or a failed check ends the walk. Pure: the
//! caller probes, waits and writes the maps, and tells [`Shift`] what
//! happened, so every branch of the policy is tested here rather than only
//! end to end.

use crate::endpoint::Color;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ShiftError {
    #[error("--steps must increase, e.g. 10,25,50,100 (got {0:?})")]
    StepsNotIncreasing(Vec<u8>),
    #[error("--steps are shares of new flows from 1 to 100 (got {0:?})")]
    StepOutOfRange(Vec<u8>),
    #[error(
        "{service}: {color} is already active; shift moves traffic to the idle color (`bluegreen rollback` ends a weighted split toward it)"
    )]
    AlreadyActive { service: String, color: Color },
}

/// A walk through increasing shares of new flows for one color.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shift {
    steps: Vec<u8>,
    /// Steps applied so far.
    done: usize,
    /// The share the color has now: where a retreat starts from.
    weight: u8,
}

/// What the walk does once it is free to go on: at the start, and each
/// time a step's interval has passed with the color healthy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Check the color, then give it `weight` % of new flows: step
    /// `number` of `total`.
    Step {
        weight: u8,
        number: usize,
        total: usize,
    },
    /// The last step (below 100) is reached: the share stays, for the
    /// operator to finish (`switch`) or undo (`rollback`).
    Hold { weight: u8 },
}

/// How a failed check ends the walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Return the shifted share (`from` %) to 0: traffic goes back where it
    /// was, with no check in the way of the retreat.
    Retreat { from: u8 },
    /// Nothing was shifted, so nothing is undone: a rollback now would send
    /// every new flow to the previous color, possibly the one that failed.
    NothingShifted,
}

/// Where an interrupted walk leaves the color.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stopped {
    pub weight: u8,
    pub done: usize,
    pub total: usize,
}

impl Shift {
    /// A walk through `steps` for `color`, the idle color, which has
    /// `weight` % of new flows now (a shift interrupted earlier may have
    /// left some). An `active` color is refused: its share is whatever the
    /// idle one does not take, and steps would only lower it.
    pub fn new(
        service: &str,
        color: Color,
        active: bool,
        weight: u8,
        steps: Vec<u8>,
    ) -> Result<Shift, ShiftError> {
        if steps.iter().any(|step| !(1..=100).contains(step)) {
            return Err(ShiftError::StepOutOfRange(steps));
        }
        if steps.windows(2).any(|pair| pair[0] >= pair[1]) {
            return Err(ShiftError::StepsNotIncreasing(steps));
        }
        if active {
            return Err(ShiftError::AlreadyActive {
                service: service.to_owned(),
                color,
            });
        }
        Ok(Shift {
            steps,
            done: 0,
            weight,
        })
    }

    /// The next step, or where the walk holds once there is none.
    pub fn next(&self) -> Next {
        match self.steps.get(self.done) {
            Some(&weight) => Next::Step {
                weight,
                number: self.done + 1,
                total: self.steps.len(),
            },
            None => Next::Hold {
                weight: self.weight,
            },
        }
    }

    /// Records that the step [`Shift::next`] gave was applied; true when it
    /// made the color active (100 %), which ends the walk.
    pub fn applied(&mut self) -> bool {
        if let Some(&weight) = self.steps.get(self.done) {
            self.weight = weight;
            self.done += 1;
        }
        self.weight == 100
    }

    /// The walk interrupted now.
    pub fn interrupted(&self) -> Stopped {
        Stopped {
            weight: self.weight,
            done: self.done,
            total: self.steps.len(),
        }
    }

    /// The walk after the color failed its check now.
    pub fn check_failed(&self) -> Failure {
        if self.weight == 0 {
            Failure::NothingShifted
        } else {
            Failure::Retreat { from: self.weight }
        }
    }

    /// The share the color has now.
    pub fn weight(&self) -> u8 {
        self.weight
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shift(active: bool, weight: u8, steps: &[u8]) -> Result<Shift, ShiftError> {
        Shift::new("web", Color::Green, active, weight, steps.to_vec())
    }

    #[test]
    fn steps_must_increase_within_1_to_100() {
        assert_eq!(
            shift(false, 0, &[10, 10, 100]),
            Err(ShiftError::StepsNotIncreasing(vec![10, 10, 100]))
        );
        assert_eq!(
            shift(false, 0, &[50, 25]),
            Err(ShiftError::StepsNotIncreasing(vec![50, 25]))
        );
        assert_eq!(
            shift(false, 0, &[0, 50]),
            Err(ShiftError::StepOutOfRange(vec![0, 50]))
        );
        let message = shift(true, 0, &[50]).expect_err("active").to_string();
        assert!(
            message
                .starts_with("web: green is already active; shift moves traffic to the idle color"),
            "{message}"
        );
        // Active under a weighted split toward the other color too: its
        // weight is the other color's share, not one to walk up from.
        assert_eq!(
            shift(true, 25, &[50, 100]),
            Err(ShiftError::AlreadyActive {
                service: "web".to_owned(),
                color: Color::Green
            })
        );
    }

    #[test]
    fn a_walk_to_100_completes_at_its_last_step() {
        let mut walk = shift(false, 0, &[10, 50, 100]).expect("valid");
        for (number, weight) in [(1, 10), (2, 50)] {
            assert_eq!(
                walk.next(),
                Next::Step {
                    weight,
                    number,
                    total: 3
                }
            );
            assert!(!walk.applied(), "{weight} % is not the end");
        }
        assert_eq!(
            walk.next(),
            Next::Step {
                weight: 100,
                number: 3,
                total: 3
            }
        );
        assert!(walk.applied(), "100 % makes the color active");
    }

    #[test]
    fn a_walk_below_100_holds_at_its_last_step() {
        let mut walk = shift(false, 0, &[10, 25]).expect("valid");
        walk.applied();
        walk.applied();
        assert_eq!(walk.next(), Next::Hold { weight: 25 });
        assert!(!walk.applied(), "holding changes nothing");
        assert_eq!(walk.weight(), 25);
    }

    #[test]
    fn an_interruption_keeps_the_share_reached() {
        let mut walk = shift(false, 0, &[25, 50, 100]).expect("valid");
        assert_eq!(
            walk.interrupted(),
            Stopped {
                weight: 0,
                done: 0,
                total: 3
            }
        );
        walk.applied();
        assert_eq!(
            walk.interrupted(),
            Stopped {
                weight: 25,
                done: 1,
                total: 3
            }
        );
    }

    #[test]
    fn a_failed_check_retreats_only_from_what_was_shifted() {
        let mut walk = shift(false, 0, &[25, 100]).expect("valid");
        assert_eq!(walk.check_failed(), Failure::NothingShifted);
        walk.applied();
        assert_eq!(walk.check_failed(), Failure::Retreat { from: 25 });
        // A shift resumed from an earlier one's share retreats from it too.
        let resumed = shift(false, 10, &[50, 100]).expect("valid");
        assert_eq!(resumed.check_failed(), Failure::Retreat { from: 10 });
    }
}
