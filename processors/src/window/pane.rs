//! One open window of one key (a pane): its bounds, accumulator and the tokens of the inputs
//! folded in, with the check that recognises a redelivery of an input it already holds.

use std::collections::{BTreeMap, HashMap};

use mailroom_core::Error;

use super::operator::Key;
use crate::token::{Position, Token, Tokens};

pub(super) struct Pane<A> {
    pub(super) id: u64,
    pub(super) start: u64,
    pub(super) end: u64,
    pub(super) acc: A,
    pub(super) tokens: Vec<Token>,
    pub(super) count: u64,
    pub(super) lane: u64,
    /// The source positions of the inputs folded in (brokers with offsets only).
    pub(super) positions: HashMap<Position, Seen>,
}

/// The inputs at one source position that a pane has folded in.
pub(super) struct Seen {
    /// The latest delivery of that position.
    input: u64,
    /// Tokens at that position the pane holds.
    count: usize,
    /// How many of them belong to earlier deliveries, still to be replaced.
    older: usize,
}

impl<A> Pane<A> {
    pub(super) fn new(id: u64, start: u64, end: u64, acc: A, lane: u64) -> Self {
        Pane {
            id,
            start,
            end,
            acc,
            tokens: Vec::new(),
            count: 0,
            lane,
            positions: HashMap::new(),
        }
    }

    /// Hold an item's tokens. Returns false when the item is a redelivery of an input this
    /// pane already folded in: its token then takes the place of the earlier delivery's, and
    /// the item must not be folded again.
    ///
    /// Why: a consumer-group rebalance (Kafka's eager protocol revokes every partition and
    /// often hands it straight back) restarts a partition from its last commit, and the inputs
    /// of open windows are not committed yet, so they arrive a second time while the first
    /// delivery is still held here. Counting them again would double the window's result;
    /// keeping the first token would not do either, since the broker ignores settles from a
    /// revoked assignment: the new delivery's token is the one whose ack commits the offset.
    /// The earlier token is dropped, which leaves its (revoked) delivery unsettled.
    pub(super) fn hold(&mut self, tokens: Tokens) -> bool {
        let token = match tokens {
            Tokens::One(token) => token,
            Tokens::Many(tokens) => {
                self.tokens.extend(tokens);
                return true;
            }
        };
        let Some((input, position)) = token.identity() else {
            self.tokens.push(token);
            return true;
        };
        let seen = match self.positions.entry(position) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(Seen {
                    input,
                    count: 1,
                    older: 0,
                });
                self.tokens.push(token);
                return true;
            }
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
        };
        if seen.input != input {
            // A newer delivery: every token held at this position is from an earlier one.
            seen.input = input;
            seen.older = seen.count;
        }
        if seen.older == 0 {
            // Another item derived from the same delivery (a flat_map): a distinct input.
            seen.count += 1;
            self.tokens.push(token);
            return true;
        }
        let earlier = self
            .tokens
            .iter()
            .position(|t| matches!(t.identity(), Some((i, p)) if p == position && i != input));
        match earlier {
            Some(i) => {
                seen.older -= 1;
                self.tokens[i] = token;
                false
            }
            None => {
                seen.older = 0;
                seen.count += 1;
                self.tokens.push(token);
                true
            }
        }
    }

    /// Give back the last tokens [`hold`](Pane::hold) took, `taken` of them from `was_one`
    /// (a single token), when their item could not be folded in after all.
    pub(super) fn unhold(&mut self, taken: usize, was_one: bool) -> Tokens {
        let mut tokens = self
            .tokens
            .split_off(self.tokens.len().saturating_sub(taken));
        if was_one {
            // `hold` tracks the position of a single token only.
            if let Some(position) = tokens.first().and_then(Token::identity).map(|(_, p)| p) {
                if let std::collections::hash_map::Entry::Occupied(mut seen) =
                    self.positions.entry(position)
                {
                    seen.get_mut().count = seen.get().count.saturating_sub(1);
                    if seen.get().count == 0 {
                        seen.remove();
                    }
                }
            }
        }
        match tokens.pop() {
            Some(token) if was_one && tokens.is_empty() => Tokens::One(token),
            Some(token) => {
                tokens.push(token);
                Tokens::Many(tokens)
            }
            None => Tokens::Many(tokens),
        }
    }

    /// Take over another pane of the same key (merging sessions).
    pub(super) fn absorb(&mut self, tokens: Vec<Token>, positions: HashMap<Position, Seen>) {
        self.tokens.extend(tokens);
        for (position, seen) in positions {
            self.positions.entry(position).or_insert(seen);
        }
    }
}

pub(super) type PaneAt = (Key, u64, u64, u64);

/// The pane of `key` starting at `start`, opened with `init`'s accumulator if it is not open
/// yet.
pub(super) fn pane_mut<'a, A>(
    panes: &'a mut HashMap<Key, Vec<Pane<A>>>,
    index: &mut BTreeMap<(u64, u64), Key>,
    next_id: &mut u64,
    init: impl FnOnce() -> Result<A, Error>,
    (key, start, end, lane): PaneAt,
) -> Result<&'a mut Pane<A>, Error> {
    let found = panes
        .get(&key)
        .and_then(|list| list.iter().position(|p| p.start == start));
    let pos = match found {
        Some(pos) => pos,
        None => {
            // Called before the key's entry is made, so a failed init leaves nothing behind.
            let acc = init()?;
            let id = *next_id;
            *next_id += 1;
            index.insert((end, id), key.clone());
            let list = panes.entry(key.clone()).or_default();
            list.push(Pane::new(id, start, end, acc, lane));
            list.len() - 1
        }
    };
    let list = panes.entry(key).or_default();
    Ok(&mut list[pos])
}
