//! Sampling chains: a random walk over the operators whose slots the
//! profile can fill, steered by how far each type is from an answer, so
//! every length from 2 to 8 is reachable without enumerating (no search
//! depth that cuts longer chains). Deterministic for a seed: the only
//! randomness is [`Rng`], seeded from `--seed` and the dataset hash.

use std::collections::BTreeMap;

use super::operator::{KeyRule, Operator};
use super::types::{accepts, output, Step, Ty, Value, MAX_STEPS, MIN_STEPS};
use crate::profile::DataProfile;

/// splitmix64: small, fast, and the same everywhere.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    pub fn pick<'t, T>(&mut self, items: &'t [T]) -> Option<&'t T> {
        if items.is_empty() {
            None
        } else {
            Some(&items[self.below(items.len())])
        }
    }
}

/// Chain lengths 2..=8 and how often each is aimed for.
const LENGTH_WEIGHTS: [(usize, usize); 7] =
    [(2, 3), (3, 4), (4, 4), (5, 3), (6, 2), (7, 2), (8, 1)];

pub struct Sampler<'a> {
    profile: &'a DataProfile,
    /// Operators whose every slot some column of the profile fills.
    usable: Vec<&'a Operator>,
    /// Fewest steps from a type to an answer.
    distance: BTreeMap<Ty, usize>,
}

const FAR: usize = usize::MAX / 4;

impl<'a> Sampler<'a> {
    pub fn new(ops: &'a [Operator], profile: &'a DataProfile) -> Sampler<'a> {
        let usable: Vec<&Operator> = ops
            .iter()
            .filter(|op| {
                op.key.is_some()
                    || op
                        .slots
                        .values()
                        .all(|spec| profile.column_profiles.iter().any(|c| spec.accepts(c)))
            })
            .collect();
        let mut distance: BTreeMap<Ty, usize> = BTreeMap::new();
        for op in &usable {
            for t in [op.input, op.output] {
                distance.insert(t, if t.is_answer() { 0 } else { FAR });
            }
        }
        for _ in 0..16 {
            for op in &usable {
                let d = distance.get(&op.output).copied().unwrap_or(FAR);
                let e = distance.entry(op.input).or_insert(FAR);
                if d.saturating_add(1) < *e {
                    *e = d + 1;
                }
            }
        }
        Sampler {
            profile,
            usable,
            distance,
        }
    }

    pub fn usable(&self) -> &[&'a Operator] {
        &self.usable
    }

    fn distance(&self, t: Ty) -> usize {
        self.distance.get(&t).copied().unwrap_or(FAR)
    }

    fn target_length(rng: &mut Rng) -> usize {
        let total: usize = LENGTH_WEIGHTS.iter().map(|(_, w)| w).sum();
        let mut r = rng.below(total);
        for (len, w) in LENGTH_WEIGHTS {
            if r < w {
                return len;
            }
            r -= w;
        }
        MIN_STEPS
    }

    /// Bind an operator's slots: distinct columns, each accepted by its
    /// slot; a multi-hop slot takes the column its input came from.
    fn bind(
        &self,
        op: &Operator,
        input: &Value,
        rng: &mut Rng,
    ) -> Option<BTreeMap<String, String>> {
        let mut columns: BTreeMap<String, String> = BTreeMap::new();
        for (slot, spec) in &op.slots {
            if let Some(rule) = op.key {
                let from = match rule {
                    KeyRule::Index => input.index_column.clone(),
                    KeyRule::Value => input.value_column.clone(),
                }?;
                let ok = self
                    .profile
                    .column_profiles
                    .iter()
                    .any(|c| c.name == from && spec.accepts(c));
                if !ok {
                    return None;
                }
                columns.insert(slot.clone(), from);
                continue;
            }
            let choices: Vec<&str> = self
                .profile
                .column_profiles
                .iter()
                .filter(|c| spec.accepts(c) && !columns.values().any(|v| v == &c.name))
                // Inside groups, the grouping column is one value per group.
                .filter(|c| input.ty != Ty::Grouped || input.index_column.as_ref() != Some(&c.name))
                .map(|c| c.name.as_str())
                .collect();
            let c = rng.pick(&choices)?;
            columns.insert(slot.clone(), c.to_string());
        }
        Some(columns)
    }

    /// One well-typed chain, or None after too many dead ends.
    pub fn chain(&self, rng: &mut Rng) -> Option<Vec<Step<'a>>> {
        'attempt: for _ in 0..64 {
            let target = Self::target_length(rng);
            let mut current = Value::dataset();
            let mut steps: Vec<Step<'a>> = Vec::new();
            while steps.len() < MAX_STEPS {
                if current.ty.is_answer() && steps.len() >= target {
                    return Some(steps);
                }
                let left = MAX_STEPS - steps.len() - 1;
                let aim = target.saturating_sub(steps.len() + 1);
                let fits = |op: &&&Operator, budget: usize| {
                    accepts(op, &current)
                        && self.distance(op.output) <= budget
                        && steps.last().is_none_or(|s| s.op.name != op.name)
                };
                let mut options: Vec<&&Operator> =
                    self.usable.iter().filter(|op| fits(op, aim)).collect();
                if options.is_empty() {
                    options = self.usable.iter().filter(|op| fits(op, left)).collect();
                }
                // Room left before the length aimed for: mostly take a step
                // that does not answer yet, so long chains are as reachable
                // as short ones; now and then answer early, so a multi-hop
                // step can build on that answer.
                if aim >= 1 && rng.below(4) != 0 {
                    let on: Vec<&&Operator> = options
                        .iter()
                        .copied()
                        .filter(|op| !op.output.is_answer())
                        .collect();
                    if !on.is_empty() {
                        options = on;
                    }
                }
                // Continue past an answer only when the walk was aiming
                // further; otherwise stop there.
                if current.ty.is_answer() && (options.is_empty() || steps.len() >= target) {
                    if steps.len() >= MIN_STEPS {
                        return Some(steps);
                    }
                    continue 'attempt;
                }
                let Some(op) = rng.pick(&options).map(|o| **o) else {
                    continue 'attempt;
                };
                let Some(columns) = self.bind(op, &current, rng) else {
                    continue 'attempt;
                };
                let params = rng.pick(&op.params).cloned().unwrap_or_default();
                current = output(op, &current, &columns);
                steps.push(Step {
                    op,
                    columns,
                    params,
                });
            }
            if current.ty.is_answer() {
                return Some(steps);
            }
        }
        None
    }
}
