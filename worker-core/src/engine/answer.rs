//! Reading a worker's answer: a pure step from what the worker wrote in its channel and what
//! it held (the call's return reservation) to an [`Outcome`]. Nothing here touches a process,
//! the call table or shared memory; the engine applies the outcome (see
//! `Engine::read_answer`).
//!
//! Everything in an answer was written by the worker, which may be broken or hostile: a kind
//! that is not a [`Response`], a checksum that does not match, or a length larger than the
//! reservation it was given is [`Outcome::Invalid`], and the worker is replaced.

use crate::arena::Span;
use crate::channel::{Answer, INLINE_RET, Response};

/// What a worker's answer means for the call it held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The method returned: the encoded value is `value` (a prefix of the reservation), or
    /// its first `value.len` bytes came inside the answer (`inline`).
    Returned {
        value: Span,
        inline: Option<[u8; INLINE_RET]>,
    },
    /// The return value needs `len` bytes, more than the reservation: the worker keeps it
    /// until it is given a larger block (or the call fails).
    NeedSpace { len: usize },
    /// The method panicked; its message (UTF-8, maybe cut) is `message`.
    Panicked { message: Span },
    /// Decoding the arguments or encoding the return failed; the explanation is `message`.
    WireError { message: Span },
    /// The worker refused a request that failed its own validation.
    Refused,
    /// The answer fails validation: the channel cannot be trusted.
    Invalid { detail: String },
}

/// The outcome of `answer`, for a call whose return reservation is `reservation`.
pub(crate) fn outcome(answer: &Answer, reservation: Span) -> Outcome {
    let len = answer.ret_len;
    let invalid = || Outcome::Invalid {
        detail: format!(
            "answer of kind {} with length {len} for a reservation of {} bytes, checksum {}",
            answer.raw_kind,
            reservation.len,
            if answer.valid { "valid" } else { "invalid" }
        ),
    };
    let Some(kind) = answer.kind() else {
        return invalid();
    };
    // A message is read only as far as the reservation goes.
    let message = reservation.prefix(len);
    match kind {
        Response::Returned if len <= reservation.len => Outcome::Returned {
            value: reservation.prefix(len),
            inline: answer.inline,
        },
        Response::NeedSpace => Outcome::NeedSpace { len },
        Response::Panicked => Outcome::Panicked { message },
        Response::WireError => Outcome::WireError { message },
        Response::Corrupted => Outcome::Refused,
        Response::Returned | Response::Exiting => invalid(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::{Finished, Ran};

    fn answer(kind: Response, ret_len: usize) -> Answer {
        Answer {
            raw_kind: kind as u32,
            ret_len,
            inline: None,
            ran: Ran {
                started_ns: None,
                finished: Finished::At(0),
            },
            valid: true,
        }
    }

    const RESERVATION: Span = Span {
        offset: 4096,
        len: 256,
    };

    #[test]
    fn a_return_within_the_reservation_is_a_return() {
        assert_eq!(
            outcome(&answer(Response::Returned, 100), RESERVATION),
            Outcome::Returned {
                value: Span::new(4096, 100),
                inline: None
            }
        );
        let mut inline = answer(Response::Returned, 3);
        inline.inline = Some([7; INLINE_RET]);
        assert!(matches!(
            outcome(&inline, RESERVATION),
            Outcome::Returned { value, inline: Some(b) } if value.len == 3 && b[0] == 7
        ));
    }

    #[test]
    fn a_return_longer_than_its_reservation_is_invalid() {
        let o = outcome(&answer(Response::Returned, 257), RESERVATION);
        assert!(
            matches!(&o, Outcome::Invalid { detail } if detail.contains("length 257") && detail.contains("256 bytes")),
            "{o:?}"
        );
        // Huge, worker-chosen lengths overflow nothing.
        let o = outcome(&answer(Response::Returned, usize::MAX), RESERVATION);
        assert!(matches!(o, Outcome::Invalid { .. }));
    }

    #[test]
    fn messages_are_cut_at_the_reservation() {
        assert_eq!(
            outcome(&answer(Response::Panicked, 10_000), RESERVATION),
            Outcome::Panicked {
                message: RESERVATION
            }
        );
        assert_eq!(
            outcome(&answer(Response::WireError, 12), RESERVATION),
            Outcome::WireError {
                message: Span::new(4096, 12)
            }
        );
    }

    #[test]
    fn need_space_refusal_and_bad_answers() {
        assert_eq!(
            outcome(&answer(Response::NeedSpace, 1 << 40), RESERVATION),
            Outcome::NeedSpace { len: 1 << 40 }
        );
        assert_eq!(
            outcome(&answer(Response::Corrupted, 0), RESERVATION),
            Outcome::Refused
        );
        // An exit acknowledgement is no answer to a call.
        assert!(matches!(
            outcome(&answer(Response::Exiting, 0), RESERVATION),
            Outcome::Invalid { .. }
        ));
        // A kind that is no response, or a checksum that fails, whatever the kind.
        let mut unknown = answer(Response::Returned, 0);
        unknown.raw_kind = 99;
        assert!(
            matches!(outcome(&unknown, RESERVATION), Outcome::Invalid { detail } if detail.contains("kind 99"))
        );
        let mut torn = answer(Response::Returned, 0);
        torn.valid = false;
        assert!(
            matches!(outcome(&torn, RESERVATION), Outcome::Invalid { detail } if detail.contains("checksum invalid"))
        );
    }
}
